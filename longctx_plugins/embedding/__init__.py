"""The parts of :class:`~longctx_plugins.LongContextEmbedder`, one job per module: ``loading`` (model, tokenizer and
sentence-transformers settings), ``tokenization``, ``batching`` (token-budget batches, multi-device scheduler),
``encoding`` (the encode pipeline: tokenisation one block ahead in ``prefetch``'s worker thread, vectors kept on the
device until one copy to the host), ``forward`` (one padded forward pass; ``transfer``: pinned asynchronous copies to
CUDA), ``pooling`` (text and span vectors), ``windows`` and ``chunking``."""
