"""LlamaIndex ``IngestionPipeline(num_workers=N)`` with ``LateChunkingNodeParser`` on 2 CPU cores: the same 20
documents with 1 and 2 worker processes. Checks first that both give the same nodes and vectors as a
single-process run, then times each (a fresh pipeline per run, the model already loaded in the parent as users
have it).

    python -m benchmarks.bench_llama_index_workers        # writes benchmarks/results/llama_index_workers.json
"""

from __future__ import annotations

import time

import numpy as np

from ._util import environment, write_json


def main() -> None:
    from llama_index.core import Document
    from llama_index.core.ingestion import IngestionPipeline

    from llama_index.embeddings.longctx import LateChunkingNodeParser, LongContextEmbedding
    from longctx_plugins.longembed.synthetic import sotu_documents

    docs = [Document(text=d["text"], doc_id=d["id"]) for d in sotu_documents()[:20]]
    parser = LateChunkingNodeParser(embed_model=LongContextEmbedding(method="pi", target_length=2048), chunk_size=256)

    def run(workers: int):
        start = time.perf_counter()
        nodes = IngestionPipeline(transformations=[parser]).run(documents=docs, num_workers=workers)
        return nodes, time.perf_counter() - start

    reference, one_s = run(1)
    result = {"environment": environment(), "documents": len(docs), "nodes": len(reference), "seconds": {"1": one_s}}

    def by_span(nodes):  # node ids are fresh per run; a chunk is its document and character span
        return {(n.ref_doc_id, n.start_char_idx, n.end_char_idx): np.asarray(n.embedding) for n in nodes}

    ref = by_span(reference)
    nodes, two_s = run(2)
    got = by_span(nodes)
    assert got.keys() == ref.keys(), "2 workers gave other nodes"
    worst = max(float(np.abs(got[k] - ref[k]).max()) for k in ref)
    assert worst < 1e-5, worst
    result["seconds"]["2"] = two_s
    result["max_abs_difference_2_vs_1"] = worst
    print(result)
    write_json(result, "llama_index_workers.json")


if __name__ == "__main__":
    main()
