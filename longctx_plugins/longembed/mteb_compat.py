"""mteb compatibility (mteb is optional): ``mteb_model(...)`` / ``MTEBEncoder(embedder)`` give ``mteb.evaluate`` a model
with its ``ModelMeta``; ``Task.to_mteb()`` turns an evaluator task into an mteb retrieval task."""

from __future__ import annotations

import numpy as np

BUNDLED_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def _mteb():
    try:
        import mteb
    except ImportError as exc:
        raise ImportError(
            "mteb is not installed: `pip install 'longctx-plugins[eval]'` (or `pip install mteb`)."
        ) from exc
    return mteb


def model_name(embedder) -> str:
    """The name results are filed under: the model, the method and the target length (``org/model-pi-8192``).
    Local folders are named by their last path component under ``longctx-plugins/``; the bundled default model by
    its hub name."""
    import os

    from ..embedding.loading import default_model_path

    base = str(embedder.model_name_or_path).rstrip("/\\")
    if base == default_model_path().rstrip("/\\"):  # the bundled copy of all-MiniLM-L6-v2
        base = BUNDLED_NAME
    elif not (base.count("/") == 1 and not os.path.exists(base)):  # a local folder, not an org/name hub id
        base = "longctx-plugins/" + os.path.basename(base)
    return f"{base}-{embedder.method}-{embedder.target_length}"


def model_meta(embedder, name: str | None = None, revision: str | None = None):
    """An mteb ``ModelMeta`` describing ``embedder``: name (see :func:`model_name`), revision (the model folder's
    fingerprint when none is given), max tokens = the target length, dimension, parameters, cosine similarity."""
    _mteb()
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    from .cache import digest, folder_fingerprint

    if revision is None:  # the model files' fingerprint: results of changed weights are filed apart
        files = folder_fingerprint(str(embedder.model_name_or_path))
        revision = digest(files) if files else "local"
    return ModelMeta.create_empty(
        overwrites={
            "name": name or model_name(embedder),
            "revision": revision,
            "max_tokens": embedder.target_length,
            "embed_dim": embedder.dim,
            "n_parameters": sum(p.numel() for p in embedder.model.parameters()),
            "framework": ["PyTorch"],
            "similarity_fn_name": ScoringFunction.COSINE,
            "open_weights": True,
            "use_instructions": bool(embedder.query_prompt or embedder.document_prompt),
        }
    )


def MTEBEncoder(embedder, name: str | None = None, revision: str | None = None):
    """Wrap a :class:`~longctx_plugins.LongContextEmbedder` as an mteb model for ``mteb.evaluate`` (queries vs
    documents by prompt type), with a ``ModelMeta`` from :func:`model_meta`."""
    _mteb()
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.types import PromptType

    from ..embedder import LongContextEmbedder

    if isinstance(embedder, LongContextEmbedder):
        meta = model_meta(embedder, name, revision)
    else:  # any object with encode_queries / encode_documents
        from mteb.models.model_meta import ModelMeta

        meta = ModelMeta.create_empty(
            overwrites={"name": name or "longctx-plugins/custom-encoder", "revision": revision or "local"}
        )

    class _Encoder(AbsEncoder):
        def __init__(self):
            self.embedder = embedder
            self.mteb_model_meta = meta

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = [t for batch in inputs for t in batch["text"]]
            if prompt_type == PromptType.query:
                return np.asarray(self.embedder.encode_queries(texts))
            return np.asarray(self.embedder.encode_documents(texts))

    return _Encoder()


def mteb_model(
    model_name_or_path="default", method: str | None = None, target_length: int | None = None, **embedder_kwargs
):
    """The mteb model of a long-context embedder, for any mteb task: ``mteb.evaluate(mteb_model("default",
    method="pi", target_length=32768), mteb.get_tasks(tasks=["LEMBPasskeyRetrieval"]))``. Takes the arguments of
    :class:`~longctx_plugins.LongContextEmbedder` (defaults ``method="auto"``, ``target_length=8192``) or an embedder
    itself; results are filed under :func:`model_name`."""
    from ..embedder import LongContextEmbedder

    if isinstance(model_name_or_path, LongContextEmbedder):
        given = sorted(embedder_kwargs) + [
            k for k, v in (("method", method), ("target_length", target_length)) if v is not None
        ]
        if given:
            raise TypeError(
                f"mteb_model(embedder) takes no embedder arguments (the embedder has its settings); got {given}."
            )
        return MTEBEncoder(model_name_or_path)
    return MTEBEncoder(
        LongContextEmbedder(
            model_name_or_path,
            method=method or "auto",
            target_length=8192 if target_length is None else target_length,
            **embedder_kwargs,
        )
    )


def to_mteb_task(task):
    _mteb()
    from mteb import TaskMetadata
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    splits = task.splits

    class _LongEmbedTask(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name=f"{task.mteb_name}Local",
            description=task.description or task.name,
            dataset={"path": f"longctx-plugins/{task.name}", "revision": "local"},
            type="Retrieval",
            category="t2t",
            modalities=["text"],
            eval_splits=splits,
            eval_langs=["eng-Latn"],
            main_score=task.main_score,
            reference=None,
            date=None,
            domains=None,
            task_subtypes=None,
            license=None,
            annotations_creators=None,
            dialect=None,
            sample_creation=None,
            bibtex_citation="",
        )

        def load_data(self, **kwargs):
            self.corpus, self.queries, self.relevant_docs = {}, {}, {}
            for split in splits:
                self.corpus[split] = {d: {"text": t} for d, t in task.corpus[split].items()}
                self.queries[split] = dict(task.queries[split])
                self.relevant_docs[split] = {q: dict(r) for q, r in task.qrels[split].items()}
            self.data_loaded = True

    return _LongEmbedTask()
