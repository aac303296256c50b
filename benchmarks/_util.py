"""Shared benchmark helpers: environment facts, CUDA-event timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time

import torch


def environment() -> dict:
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def cuda_time_ms(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median wall time of ``fn()`` in ms, measured with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def time_ms(fn, device, warmup: int = 3, iters: int = 10) -> float:
    """Median wall time in ms: CUDA events on a GPU, ``perf_counter`` elsewhere (CPU smoke runs of GPU benchmarks)."""
    if torch.device(device).type == "cuda":
        return cuda_time_ms(fn, warmup, iters)
    return 1000 * cpu_time_s(fn, warmup=min(warmup, 1), iters=min(iters, 2))


def cpu_time_s(fn, warmup: int = 1, iters: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def write_json(result: dict, name: str) -> str:
    out_dir = os.environ.get("BENCH_OUT") or os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
    return path
