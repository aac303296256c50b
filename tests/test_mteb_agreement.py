"""Our retrieval metrics agree with mteb's on the same scores, ties included; MTEBEncoder passes our vectors through.

The metric comparison feeds both evaluators the *same* vectors: real MiniLM embeddings rounded to a 1/64 grid, so
every dot product is exact in float32 whatever the summation order, and documents that are identical after
truncation tie exactly. (Comparing two separate encoding runs instead would compare float noise: identical texts
embedded in different batch arrangements can differ in the last bits on some CPUs, which flips exact ties.)
"""

import mteb
import numpy as np
import pytest
from transformers import AutoTokenizer

from longctx_plugins import LongContextEmbedder
from longctx_plugins.embedder import default_model_path
from longctx_plugins.longembed import MTEBEncoder, evaluate, get_task, mteb_model

KEYS = (
    "ndcg_at_1",
    "ndcg_at_3",
    "ndcg_at_10",
    "recall_at_1",
    "recall_at_10",
    "mrr_at_10",
    "map_at_10",
    "precision_at_3",
)


class FixedVectors:
    """Serves precomputed vectors by text (the same object goes through our evaluator and through mteb)."""

    def __init__(self, table):
        self.table = table

    def encode_queries(self, texts, **_):
        return np.stack([self.table[t] for t in texts])

    encode_documents = encode_queries


@pytest.fixture(scope="module")
def task_and_vectors():
    tok = AutoTokenizer.from_pretrained(default_model_path())
    task = get_task("passkey", lengths=[256, 1024], tokenizer=tok, n_queries=6, n_docs=12)
    emb = LongContextEmbedder("default", method="none")  # truncation at 512 makes some 1024 documents identical
    texts = sorted({t for s in task.splits for part in (task.corpus[s], task.queries[s]) for t in part.values()})
    with pytest.warns(UserWarning, match="truncated"):
        vectors = emb.encode(texts)
    grid = np.round(vectors * 64) / 64  # exact in float32: sums of k/4096 stay far below 2**24
    return task, FixedVectors(dict(zip(texts, grid.astype(np.float32)))), emb


def test_metrics_agree_with_mteb_including_ties(task_and_vectors):
    task, fixed, _ = task_and_vectors
    ours = evaluate(fixed, [task], progress=False)["passkey"]["splits"]
    res = mteb.evaluate(MTEBEncoder(fixed), tasks=[task.to_mteb()], cache=None, show_progress_bar=False)
    theirs = res.task_results[0].scores
    # the data has exact ties (identical truncated documents) that matter for the ranking
    d = task.corpus["test_1024"].values()
    assert len({fixed.table[t].tobytes() for t in d}) < len(d)
    for split in task.splits:
        for key in KEYS:
            # mteb stores its scores rounded to 5 decimals
            assert ours[split][key] == pytest.approx(theirs[split][0][key], abs=6e-6), (mteb.__version__, split, key)


def test_mteb_encoder_returns_the_embedders_vectors(task_and_vectors):
    task, _, emb = task_and_vectors
    from mteb.types import PromptType

    split = "test_256"
    docs, queries = list(task.corpus[split].values()), list(task.queries[split].values())
    enc = MTEBEncoder(emb)
    batches = [{"text": docs[:5]}, {"text": docs[5:]}]
    got_docs = enc.encode(
        batches, task_metadata=None, hf_split=split, hf_subset="default", prompt_type=PromptType.document
    )
    got_q = enc.encode(
        [{"text": queries}], task_metadata=None, hf_split=split, hf_subset="default", prompt_type=PromptType.query
    )
    np.testing.assert_allclose(got_docs, emb.encode_documents(docs), atol=1e-6)
    np.testing.assert_allclose(got_q, emb.encode_queries(queries), atol=1e-6)


def test_mteb_evaluate_takes_an_extended_embedder_with_its_model_meta(task_and_vectors):
    """``mteb.evaluate(mteb_model(...), tasks)`` on a retrieval task in mteb's own format: results filed under the
    model, method and target length, with the model files' revision; scores as our evaluator's on the same model."""
    task, _, _ = task_and_vectors
    model = mteb_model("default", method="pi", target_length=1024)
    meta = model.mteb_model_meta
    assert meta.name == "sentence-transformers/all-MiniLM-L6-v2-pi-1024", meta.name
    assert meta.max_tokens == 1024 and meta.embed_dim == 384 and meta.revision not in (None, "local")
    res = mteb.evaluate(model, tasks=[task.to_mteb()], cache=None, show_progress_bar=False)
    assert res.task_results[0].scores and res.model_name == meta.name
    ours = evaluate(model.embedder, [task], progress=False)["passkey"]["splits"]
    for split in task.splits:
        assert ours[split]["ndcg_at_1"] == pytest.approx(res.task_results[0].scores[split][0]["ndcg_at_1"], abs=1e-4)
    with pytest.raises(TypeError, match="takes no embedder arguments"):
        mteb_model(model.embedder, method="pi")
