"""The parts of :class:`~longctx_plugins.LongContextEmbedder`, one job per module: ``loading`` (model, tokenizer and
sentence-transformers settings), ``tokenization``, ``batching`` (token-budget batches, multi-device scheduler),
``forward`` (one padded forward pass), ``pooling`` (text and span vectors), ``windows`` and ``chunking``."""
