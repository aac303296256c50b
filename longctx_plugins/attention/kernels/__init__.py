"""Kernels the attention plans run, one module per backend: ``sdpa`` (exact dense path), ``flex`` (FlexAttention with
block masks), ``fused_lse`` (PyTorch's fused causal kernels with their log-sum-exp) and ``flash4`` (flash-attn-4
varlen). Each takes tensors already laid out by the plan and does no host synchronisation."""
