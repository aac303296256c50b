"""Embedding corpora bigger than one machine with Ray Data (extra ``[ray]``): one
:class:`~longctx_plugins.LongContextEmbedder` per actor, documents in, vectors (and late-chunk spans) out as columns.

    import ray
    from longctx_plugins.distributed import embed_dataset

    ds = ray.data.read_parquet("s3://bucket/docs/")               # a column "text" (and an id column)
    out = embed_dataset(ds, model="default", method="pi", target_length=8192, late_chunk=True, concurrency=8)
    out.write_parquet("s3://bucket/vectors/")

The same code runs on a laptop (``ray.init()`` starts a local cluster) and on a multi-node cluster (``ray.init(
address="auto")`` on a node of it): Ray places the ``concurrency`` actors on the nodes, each loading the model once
and embedding every batch it is sent. With ``num_gpus=1`` each actor takes a GPU. :func:`embed_to_parquet` resumes an
interrupted run: rows whose id is already in the output folder are skipped.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

EMBEDDING, CHUNK_SPANS, CHUNK_EMBEDDINGS = "embedding", "chunk_spans", "chunk_embeddings"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("Ray Data is not installed: pip install 'longctx-plugins[ray]'") from None
    return ray


class EmbedBatches:
    """A ``map_batches`` callable class: builds the embedder once per actor; each call adds ``embedding`` (float32
    ``[dim]`` per row) and, with ``late_chunk``, ``chunk_spans`` (``[k, 2]`` character offsets) and
    ``chunk_embeddings`` (``[k, dim]``) to the batch. The other columns pass through unchanged."""

    def __init__(
        self,
        model: Any = "default",
        method: str = "auto",
        target_length: int = 8192,
        text_column: str = "text",
        late_chunk: bool = False,
        chunk_size: int = 256,
        chunk_overlap: int = 0,
        **embedder_kwargs: Any,
    ) -> None:
        from .embedder import LongContextEmbedder

        self.embedder = LongContextEmbedder(model, method=method, target_length=target_length, **embedder_kwargs)
        self.text_column, self.late_chunk = text_column, late_chunk
        self.chunk_size, self.chunk_overlap = chunk_size, chunk_overlap

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.text_column not in batch:
            raise ValueError(
                f"the dataset has no column {self.text_column!r} (columns: {sorted(batch)}); pass text_column="
            )
        texts = [str(t) for t in batch[self.text_column]]
        out: dict[str, Any] = dict(batch)
        out[EMBEDDING] = self.embedder.encode_documents(texts)
        if self.late_chunk:
            chunks = self.embedder.late_chunk(texts, self.chunk_size, self.chunk_overlap)
            out[CHUNK_SPANS] = [np.asarray(c["spans"], dtype=np.int64).reshape(-1, 2) for c in chunks]
            out[CHUNK_EMBEDDINGS] = [c["embeddings"] for c in chunks]
        return out


def embed_dataset(
    ds,
    model: Any = "default",
    method: str = "auto",
    target_length: int = 8192,
    *,
    text_column: str = "text",
    late_chunk: bool = False,
    chunk_size: int = 256,
    chunk_overlap: int = 0,
    concurrency: int = 1,
    batch_size: int = 16,
    num_gpus: float = 0,
    **embedder_kwargs: Any,
):
    """``ds`` (a ``ray.data.Dataset`` with a text column) with the embedding columns of :class:`EmbedBatches` added,
    computed by ``concurrency`` actors (lazy, as Ray Data is: write or iterate it to run)."""
    _ray()
    from ._checks import positive_int

    positive_int("concurrency", concurrency)
    positive_int("batch_size", batch_size)
    kwargs = dict(
        model=model,
        method=method,
        target_length=target_length,
        text_column=text_column,
        late_chunk=late_chunk,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        **embedder_kwargs,
    )
    return ds.map_batches(
        EmbedBatches,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_gpus=num_gpus,
    )


def embed_to_parquet(ds, path: str, id_column: str = "id", **kwargs: Any) -> int:
    """Embed ``ds`` (see :func:`embed_dataset`) into Parquet files under ``path``, skipping rows whose ``id_column``
    value is already there (an interrupted run resumes). Returns the number of rows embedded by this call."""
    ray = _ray()
    if id_column not in ds.schema().names:
        raise ValueError(f"the dataset has no column {id_column!r} (columns: {ds.schema().names}); pass id_column=")
    done: set = set()
    if os.path.isdir(path) and any(f.endswith(".parquet") for f in os.listdir(path)):
        done = set(ray.data.read_parquet(path, columns=[id_column]).to_pandas()[id_column].tolist())
    todo = ds.filter(lambda row: row[id_column] not in done) if done else ds
    n = todo.count()
    if n:
        embed_dataset(todo, **kwargs).write_parquet(path)
    return n
