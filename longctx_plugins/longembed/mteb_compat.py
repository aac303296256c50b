"""mteb compatibility: ``MTEBEncoder(embedder)`` for ``mteb.evaluate`` and ``Task.to_mteb()`` (mteb is optional)."""
from __future__ import annotations

import numpy as np


def _mteb():
    try:
        import mteb
    except ImportError as exc:
        raise ImportError("mteb is not installed: `pip install 'longctx-plugins[eval]'` (or `pip install mteb`).") from exc
    return mteb


def MTEBEncoder(embedder, name: str = "longctx-plugins/long-context-embedder", revision: str = "local"):
    """Wrap a :class:`~longctx_plugins.LongContextEmbedder` as an mteb encoder (queries vs documents by prompt type)."""
    _mteb()
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta
    from mteb.types import PromptType

    class _Encoder(AbsEncoder):
        def __init__(self):
            self.embedder = embedder
            self.mteb_model_meta = ModelMeta.create_empty(overwrites={"name": name, "revision": revision})

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = [t for batch in inputs for t in batch["text"]]
            if prompt_type == PromptType.query:
                return np.asarray(self.embedder.encode_queries(texts))
            return np.asarray(self.embedder.encode_documents(texts))

    return _Encoder()


def to_mteb_task(task):
    _mteb()
    from mteb import TaskMetadata
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    splits = task.splits

    class _LongEmbedTask(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name=f"{task.mteb_name}Local", description=task.description or task.name,
            dataset={"path": f"longctx-plugins/{task.name}", "revision": "local"}, type="Retrieval",
            category="t2t", modalities=["text"], eval_splits=splits, eval_langs=["eng-Latn"],
            main_score=task.main_score, reference=None, date=None, domains=None, task_subtypes=None,
            license=None, annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation="",
        )

        def load_data(self, **kwargs):
            self.corpus, self.queries, self.relevant_docs = {}, {}, {}
            for split in splits:
                self.corpus[split] = {d: {"text": t} for d, t in task.corpus[split].items()}
                self.queries[split] = dict(task.queries[split])
                self.relevant_docs[split] = {q: dict(r) for q, r in task.qrels[split].items()}
            self.data_loaded = True

    return _LongEmbedTask()
