"""What the framework packages (``llama-index-embeddings-longctx``, ``langchain-longctx``) share: the shared embedder
built from a wrapper's fields, and late chunking of a document split by the framework's own splitter.

It sits above :mod:`longctx_plugins.shared` (it builds embedders through it), so nothing in the package imports it;
the integration packages import only this module (and :mod:`longctx_plugins.shared`).

* :class:`EmbedderFields`: which field of a wrapper (a pydantic model) sets which :class:`LongContextEmbedder`
  parameter; refuses ``model_kwargs`` keys that would silently override a field; loads the shared embedder.
* :func:`late_chunk_pieces`: locate a splitter's chunks in their document and embed them by late chunking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .embedding.chunking import locate_chunks

__all__ = ["EMBEDDER_FIELDS", "EmbedderFields", "late_chunk_pieces"]

# The LongContextEmbedder parameters the wrappers expose as fields, each with its default field name. ``truncate`` (the
# earlier spelling of ``overlength``) is set by the overlength field; ``batch_size`` is passed with each call.
EMBEDDER_FIELDS: Mapping[str, str] = {
    "model_name_or_path": "model_name",
    "method": "method",
    "target_length": "target_length",
    "pooling": "pooling",
    "normalize": "normalize",
    "device": "device",
    "query_prompt": "query_instruction",
    "document_prompt": "document_instruction",
    "overlength": "overlength",
    "window_overlap": "window_overlap",
    "truncate": "overlength",
    "batch_size": "batch_size",
}
# the parameters the embedder is built with (the others are set per call, or are another spelling of one of these)
_LOADED = (
    "model_name_or_path",
    "method",
    "target_length",
    "device",
    "pooling",
    "normalize",
    "query_prompt",
    "document_prompt",
    "overlength",
    "window_overlap",
)


class EmbedderFields:
    """How one framework wrapper names the :class:`~longctx_plugins.LongContextEmbedder` parameters as its fields.

    Args:
        **renamed: ``parameter="field"`` for the fields that differ from :data:`EMBEDDER_FIELDS` (LlamaIndex:
            ``document_prompt="text_instruction", batch_size="embed_batch_size"``).

    The wrapper keeps the remaining ``LongContextEmbedder`` / ``from_pretrained`` keyword arguments in a
    ``model_kwargs`` field.
    """

    def __init__(self, **renamed: str):
        unknown = sorted(set(renamed) - set(EMBEDDER_FIELDS))
        if unknown:
            raise TypeError(
                f"EmbedderFields: {', '.join(unknown)} are not parameters the wrappers expose as fields; "
                f"known: {', '.join(EMBEDDER_FIELDS)}."
            )
        self.field_of: dict[str, str] = {**EMBEDDER_FIELDS, **renamed}

    def check_model_kwargs(self, model_kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        """``model_kwargs`` unchanged, or ``ValueError`` for a key that is one of the wrapper's fields (it would
        silently override the field): the body of the wrapper's pydantic validator of ``model_kwargs``."""
        for key in model_kwargs:
            if key in self.field_of:
                raise ValueError(f"model_kwargs[{key!r}]: set the field {self.field_of[key]!r} instead.")
        return model_kwargs

    def load(self, wrapper: Any):
        """The shared :class:`~longctx_plugins.LongContextEmbedder` (:func:`longctx_plugins.shared.get_embedder`: one
        model load per configuration) for the field values of ``wrapper`` and its ``model_kwargs``."""
        from .shared import get_embedder

        settings = {name: getattr(wrapper, self.field_of[name]) for name in _LOADED}
        return get_embedder(**settings, **wrapper.model_kwargs)


def late_chunk_pieces(
    text: str,
    chunks: Sequence[str],
    splitter: str,
    embed_spans: Callable[[str, list[tuple[int, int]]], Sequence],
    document: str,
) -> list[tuple[int, tuple[int, int], Any]]:
    """Late chunking of one document split by a framework's splitter.

    Args:
        text: the document's text.
        chunks: the splitter's chunks of ``text``, in its order; they must be exact substrings of ``text``.
        splitter: the splitter's name, for errors.
        embed_spans: ``(text, spans) -> one vector per span`` (the wrapper's late-chunking method, e.g.
            :meth:`LongContextEmbedder.encode_spans`).
        document: how errors name the document (``"documents[3]"``, ``"document 'abc'"``).

    Returns ``[(index in chunks, (start, end), vector), ...]`` for the chunks that are not whitespace only, where
    ``text[start:end] == chunks[index]``; empty when none is left. A chunk that is not part of ``text`` raises
    :func:`~longctx_plugins.embedding.chunking.locate_chunks`' ``ValueError`` (naming ``splitter``); an error
    while embedding is re-raised as ``ValueError("<document> split by <splitter>: ...")``.
    """
    kept = [k for k, chunk in enumerate(chunks) if chunk.strip()]
    if not kept:
        return []
    spans = locate_chunks(text, [chunks[k] for k in kept], splitter)
    try:
        vectors = embed_spans(text, spans)
    except ValueError as exc:
        raise ValueError(f"{document} split by {splitter}: {exc}") from exc
    return list(zip(kept, spans, vectors))
