"""What defines the position methods: the method and model tables (:mod:`.catalog`, :mod:`.rope_methods`; pure data,
no torch import), the RoPE types registered into transformers (:mod:`.rope`), reading RoPE parameters from configs
(:mod:`.rope_config`) and the absolute-position adapter (:mod:`.ape`). The math is in :mod:`longctx_plugins.ops`;
``longctx_plugins.extend`` is the front door."""
