#!/usr/bin/env bash
# Multi-GPU figures for benchmarks/results/multi_gpu.json, on a machine with >= 2 GPUs (run from the repo root):
#   BENCH_OUT=benchmarks/results bash benchmarks/run_multi_gpu.sh [TOKENIZER_OR_MODEL_DIR] [part]
# part: all (default) | check (equality only) | train64 | train128 | embed
# 1. Ulysses == one process (logits, loss, gradients; fp32, FlexAttention path at 4k)   -> tests/sp_equality.py
# 2. Trainer throughput, 1.1B Llama shape, anchor + Ulysses: N=1 (world size 1) and N=GPUs, at 64k and 128k
# 3. LongContextEmbedder.encode over 1 GPU vs all GPUs                                   -> bench_multi_gpu.py
set -euo pipefail
MODEL=${1:-default}
PART=${2:-all}
OUT=${BENCH_OUT:-benchmarks/results}
RUNS="$OUT/multi_gpu_runs"
mkdir -p "$RUNS"
N=$(python3 -c "import torch; print(torch.cuda.device_count())")
export PYTHONPATH=${PYTHONPATH:-.} NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
run() { echo "+ $*"; "$@"; }
if [[ $PART == all || $PART == check ]]; then
  for case in llama llama_mqa; do
    run torchrun --nproc_per_node "$N" tests/sp_equality.py --device cuda --seq 4096 --case $case \
      --out "$RUNS/equality_${case}_n${N}.json"
  done
fi
TRAIN=(examples/train_anchor_sp.py --model llama-1b --tokenizer "$MODEL" --steps 6)
if [[ $PART == all || $PART == train64 ]]; then
  run torchrun --nproc_per_node 1 "${TRAIN[@]}" --max-length 65536 --metrics-out "$RUNS/train_64k_n1.json"
  run accelerate launch --config_file examples/accelerate_sp.yaml --num_processes "$N" "${TRAIN[@]}" \
    --max-length 65536 --metrics-out "$RUNS/train_64k_n${N}.json"
fi
if [[ $PART == all || $PART == train128 ]]; then
  run torchrun --nproc_per_node 1 "${TRAIN[@]}" --max-length 131072 --metrics-out "$RUNS/train_128k_n1.json"
  run accelerate launch --config_file examples/accelerate_sp.yaml --num_processes "$N" "${TRAIN[@]}" \
    --max-length 131072 --metrics-out "$RUNS/train_128k_n${N}.json"
fi
EMBED=()
[[ $PART == all || $PART == embed ]] && EMBED=(--embed --model "$MODEL")
run python3 -m benchmarks.bench_multi_gpu --runs "$RUNS" "${EMBED[@]}"
