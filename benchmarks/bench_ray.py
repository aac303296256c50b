"""Ray Data throughput on this machine's CPUs: ``embed_dataset`` over the 39 bundled State of the Union addresses
(MiniLM, ``pi`` to 8192 tokens, texts read whole) with 1 and 2 actors on a local cluster. Checks first that the
vectors equal the embedder run in-process, then times each (the actors' model load included, as a job pays it).

    python -m benchmarks.bench_ray        # writes benchmarks/results/ray_throughput.json
"""

from __future__ import annotations

import time

import numpy as np

from ._util import environment, write_json


def main() -> None:
    import ray

    from longctx_plugins import LongContextEmbedder
    from longctx_plugins.distributed import embed_dataset
    from longctx_plugins.longembed.synthetic import sotu_documents

    settings = dict(model="default", method="pi", target_length=8192)
    docs = [d["text"] for d in sotu_documents()]
    local = LongContextEmbedder("default", method="pi", target_length=8192)
    tokens = sum(min(len(ids), 8192) for ids in local.tokenize(docs))
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = [{"id": i, "text": t} for i, t in enumerate(docs)]
    result = {
        "environment": environment(),
        "ray": ray.__version__,
        "documents": len(docs),
        "tokens": tokens,
        "runs": {},
    }
    expected = local.encode_documents(docs)
    for actors in (1, 2):
        start = time.perf_counter()
        out = sorted(
            embed_dataset(ray.data.from_items(rows), **settings, concurrency=actors, batch_size=4).take_all(),
            key=lambda r: r["id"],
        )
        seconds = time.perf_counter() - start
        worst = float(np.abs(np.stack([r["embedding"] for r in out]) - expected).max())
        assert worst < 1e-4, worst
        result["runs"][str(actors)] = {
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "max_abs_difference_vs_in_process": worst,
        }
    ray.shutdown()
    print(result)
    write_json(result, "ray_throughput.json")


if __name__ == "__main__":
    main()
