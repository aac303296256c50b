#!/usr/bin/env bash
# The chunk-retrieval measurements of this folder, on CPU with the bundled all-MiniLM-L6-v2 (2 shared cores).
# Each experiment is one longctx-eval call writing the evaluator's own outputs into its folder; data and score
# caches are shared between experiments through the links data -> .data and cache -> .cache (keyed by what produced
# each entry, so an experiment reuses the splits another one already scored with identical settings).
#   bash benchmarks/results/chunk_retrieval/run.sh EXPERIMENT...      (from the repository root)
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
mkdir -p .cache .data
Q=(--n-queries 20 --n-docs 20 --no-progress)

ev() {  # ev FOLDER ARGS...: one experiment
  local out=$1; shift
  mkdir -p "$out"
  ln -sfn ../.cache "$out/cache"
  ln -sfn ../.data "$out/data"
  echo "== $out: longctx-eval $* --output $out"
  nice -n 10 longctx-eval "$@" "${Q[@]}" --output "$out"
}

for exp in "$@"; do
  case $exp in
    # headline: every strategy, every APE method for late chunking, 256-8192 tokens
    contextual) ev contextual --tasks contextual --lengths 256,512,1024,2048,4096,8192 --method none,pi,gp,rp \
                  --strategies naive,late,whole:pi --target-length 8192 ;;
    # the context-free controls
    context_free) ev context_free --tasks passkey_chunks,needle_chunks --lengths 256,1024,4096 --method none,pi,gp,rp \
                    --strategies naive,late,whole:pi --target-length 8192 ;;
    # (d) PI's target length: the interpolation scale ceil(T/512) and, for longer documents, the window size T
    pi_window) for t in 1024 2048 4096; do
                 ev "pi_target_$t" --tasks contextual --lengths 1024,2048,4096 --method pi --strategies late \
                   --target-length $t --baseline none
               done ;;
    # (d) overlap of the trained-size windows of late:none
    overlap) for w in 0 256 448; do
               ev "overlap_$w" --tasks contextual --lengths 1024,2048,4096 --strategies late:none --window-overlap $w \
                 --baseline none
             done ;;
    # (d) chunk size (new chunks, so new documents: the fact is kept out of the first chunk)
    chunk_size) for c in 64 256; do
                  ev "chunk_$c" --tasks contextual --lengths 512,1024,2048 --method none,pi --strategies naive,late \
                    --target-length 8192 --chunk-size $c
                done ;;
    # the headline's main runs over three seeds (seed 0 comes from the cache of the headline)
    seeds) ev contextual_seeds --tasks contextual --lengths 256,512,1024,2048,4096,8192 --method none,gp \
             --strategies naive,late,whole:pi --target-length 8192 --seeds 3 ;;
    *) echo "unknown experiment $exp"; exit 2 ;;
  esac
done
