"""Sequence parallelism for AnchorAttention: DeepSpeed Ulysses through accelerate and the HF ``Trainer``.

Ulysses (DeepSpeed's ``UlyssesSPAttentionHF``) shards a window along the sequence over N ranks; around each attention
call it exchanges q/k/v all-to-all so that every rank holds the *whole* sequence for ``heads / N`` heads, calls the
registered attention, and exchanges the output back. The anchor rule is per head, so it applies unchanged; this
plugin only has to (a) get the document boundaries through DeepSpeed's sequence-sharding data loader whole
(``AnchorPackingCollator(sequence_parallel_size=N)`` emits them as tuples, which the adapter does not shard) and
(b) rebuild the rule from the boundaries when the wrapper drops the per-shard mask (done in the attention).

Usage with ``Trainer`` (launch with ``accelerate launch`` or ``torchrun``, one process per GPU)::

    args = TrainingArguments(..., deepspeed=ds_config, parallelism_config=ulysses_parallelism_config(2))
    collator = AnchorPackingCollator(tok, max_length=131072, sequence_parallel_size=2)

The whole stack (DeepSpeed's all-to-all, its loss aggregation in ``Trainer``) is DeepSpeed's and accelerate's; nothing
here communicates. ``examples/train_anchor_sp.py`` is a complete script.
"""

from __future__ import annotations

from .. import _compat
from .._checks import positive_int


def ulysses_parallelism_config(sp_size: int, attn_implementation: str = "anchor", seq_length: int | None = None):
    """An ``accelerate.ParallelismConfig`` for DeepSpeed Ulysses over ``sp_size`` ranks with a plugin attention.

    Args:
        sp_size: sequence-parallel degree (the number of ranks that share one window); the number of attention
            heads and of KV heads must divide by it (or it by the KV heads), as DeepSpeed requires.
        attn_implementation: the registered attention DeepSpeed wraps; must equal the model's.
        seq_length: fixed global window length, or None for windows whose length varies between batches.
    """
    positive_int("sp_size", sp_size)
    _compat.require_deepspeed_sp()
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    handler = DeepSpeedSequenceParallelConfig(
        sp_seq_length_is_variable=seq_length is None, sp_seq_length=seq_length, sp_attn_implementation="sdpa"
    )
    # accelerate's dataclass validates the name against a fixed list (see _compat, beside MIN_DEEPSPEED_SP); DeepSpeed,
    # which does the work, accepts any name in transformers' attention registry.
    handler.sp_attn_implementation = attn_implementation
    return ParallelismConfig(sp_size=sp_size, sp_backend="deepspeed", sp_handler=handler)
