"""Does a chunk's own content plus its document's context beat either alone? On the contextual task (seed 0, the
headline's data: 20 queries over 20 documents per length, 128-token chunks, generated as the evaluator does), each
chunk vector is normalize((1 - a) * naive + a * late) for several weights a, where naive embeds the chunk alone and
late is late chunking with method none (windows of the trained length). a = 0 is naive chunking, a = 1 late
chunking. Prints nDCG@10 x100 per length (the evaluator's metric code).

    python benchmarks/results/chunk_retrieval/mixing.py > benchmarks/results/chunk_retrieval/mixing.md
"""
import sys

import numpy as np

from longctx_plugins import LongContextEmbedder
from longctx_plugins.longembed.chunk_tasks import generate
from longctx_plugins.longembed.metrics import dense_results, retrieval_scores
from longctx_plugins.longembed.strategies import LateChunking

LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> int:
    naive = LongContextEmbedder("default", method="none", show_progress_bar=False)
    late = LateChunking(LongContextEmbedder("default", method="none", show_progress_bar=False))
    corpus, queries, qrels, documents, chunks = generate("contextual", naive.tokenizer, LENGTHS, 20, 20, 0)
    print("### Contextual task (seed 0): nDCG@10 x100 of normalize((1 - a) * naive + a * late:none)\n")
    print("| a | " + " | ".join(str(n) for n in LENGTHS) + " |")
    print("|---|" + "---|" * len(LENGTHS))
    rows = {a: [] for a in WEIGHTS}
    for n in LENGTHS:
        split = f"test_{n}"
        ids = list(corpus[split])
        q_ids = list(queries[split])
        qv = naive.encode_queries([queries[split][q] for q in q_ids])
        alone = naive.encode_documents([corpus[split][c] for c in ids])
        context = late.chunk_vectors(documents[split], chunks[split], ids)
        for a in WEIGHTS:
            vecs = unit((1 - a) * alone + a * context)
            score = retrieval_scores(dense_results(qv, vecs, q_ids, ids), qrels[split])["ndcg_at_10"]
            rows[a].append(100 * score)
    for a, values in rows.items():
        print(f"| {a} | " + " | ".join(f"{v:.1f}" for v in values) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
