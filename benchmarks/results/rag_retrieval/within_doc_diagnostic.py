"""Why late chunking loses on deep-sentence queries: chunk vectors of one address, naive vs late (none / pi 8192).

Run from the repository root after the main run (it reads the queries from rag_retrieval.json):

    python benchmarks/results/rag_retrieval/within_doc_diagnostic.py 1 6     # indices of bundled addresses

Per address and strategy: the mean cosine between two chunks of the address, the mean cosine of a chunk's vector to
the same chunk embedded alone, the mean cosine of a query to its gold chunk, and the gold chunk's rank among the
address's chunks for each query. Chunks: the example's LangChain splitter (256 tokens, no overlap).
"""
import importlib.util
import json
import sys

import numpy as np
from longctx_plugins.embedding.chunking import locate_chunks
from longctx_plugins.shared import get_embedder

HERE = "benchmarks/results/rag_retrieval"
spec = importlib.util.spec_from_file_location("rag_retrieval_example", "examples/rag_retrieval.py")
ex = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ex)
queries = json.load(open(f"{HERE}/rag_retrieval.json"))["queries"]
ids, texts = ex.corpus(16)
emb = {m: get_embedder("default", method=m, target_length=8192) for m in ("none", "pi")}
split = ex.langchain_splitter(emb["none"].tokenizer, 256, 0)
out = {}
for d in [int(a) for a in sys.argv[1:]]:
    text = texts[d]
    spans = locate_chunks(text, [c for c in split.split_text(text) if c.strip()], "splitter")
    qs = [q for q in queries if q["doc"] == ids[d]]
    qv = emb["none"].encode_queries([q["query"] for q in qs])  # queries are short: the same vector for none and pi
    gold = [max(range(len(spans)), key=lambda k: min(spans[k][1], q["end"]) - max(spans[k][0], q["start"]))
            for q in qs]
    naive = emb["none"].encode_documents([text[a:b] for a, b in spans])
    vectors = {"naive": naive, "late none": emb["none"].encode_spans(text, spans),
               "late pi": emb["pi"].encode_spans(text, spans)}
    row = {}
    for name, v in vectors.items():
        n, sim, s = len(v), v @ v.T, qv @ v.T
        row[name] = {"within_doc_cos": float((sim.sum() - n) / (n * n - n)),
                     "cos_to_naive": float(np.mean(np.sum(v * naive, 1))),
                     "query_gold_cos": float(np.mean([s[i, g] for i, g in enumerate(gold)])),
                     "gold_rank_in_doc": [int((s[i] > s[i, g]).sum()) + 1 for i, g in enumerate(gold)]}
    out[ids[d]] = {"tokens": len(emb["none"].tokenize([text])[0]), "chunks": len(spans), **row}
    print(ids[d], json.dumps(out[ids[d]]), flush=True)
with open(f"{HERE}/within_doc_diagnostic.json", "w") as f:
    json.dump(out, f, indent=1)
