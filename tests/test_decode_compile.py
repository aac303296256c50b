"""KV-cache decoding of the position methods under torch.compile: the decode step traces in one graph (no graph
break), runs the same graph every step (no recompile), and gives exactly the uncompiled model's logits and tokens.

The models: tiny Llama (trained length 32) with each method and ``keep_trained_window`` on, prompts of 40 tokens
(beyond the trained length), batch 2 with the second row left padded. The compiled calls use the ``eager``
backend: what is checked is dynamo's trace (graph breaks, guards), not a code generator.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, StaticCache

from longctx_plugins.attention import plan as plans

from .test_position_methods import method_model

METHODS = ["self_extend", "dca", "string"]
PROMPT, PAD, MAX_CACHE = 40, 5, 64


@pytest.fixture(autouse=True)
def fresh_dynamo():
    from longctx_plugins.attention import decode

    decode._CACHE.clear()  # each test starts as a fresh process would: nothing stored by an earlier test
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _prompt(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (2, PROMPT), generator=g)
    am = torch.ones_like(ids)
    am[1, :PAD] = 0
    return ids, am


def _prefill(model, cache):
    """Prefill the prompt (uncompiled, as generate does); returns the decode loop's state."""
    ids, am = _prompt()
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=am, position_ids=pos, past_key_values=cache, use_cache=True)
    full = torch.zeros(2, MAX_CACHE, dtype=am.dtype)  # the 2D mask over every cache slot: fixed shape
    full[:, :PROMPT] = am
    return out.logits[:, -1].argmax(-1, keepdim=True), pos[:, -1:], full


def _step_inputs(tok, last_pos, mask2d, cur, cache, static: bool):
    """One decode step's inputs at slot ``cur``; a static cache takes the fixed-shape mask over all its slots."""
    mask2d = mask2d.clone()
    mask2d[:, cur] = 1
    am = mask2d if static else mask2d[:, : cur + 1]
    return dict(
        input_ids=tok, attention_mask=am, position_ids=last_pos + 1, past_key_values=cache, use_cache=True
    ), mask2d


def _decode(model, forward, static: bool, steps: int):
    """``steps`` greedy decode steps through ``forward`` after an uncompiled prefill: (tokens, logits) per step."""
    cache = StaticCache(config=model.config, max_cache_len=MAX_CACHE) if static else DynamicCache(config=model.config)
    tok, last_pos, mask2d = _prefill(model, cache)
    toks, logits = [], []
    with torch.no_grad():
        for i in range(steps):
            kw, mask2d = _step_inputs(tok, last_pos, mask2d, PROMPT + i, cache, static)
            out = forward(**kw).logits[:, -1]
            tok, last_pos = out.argmax(-1, keepdim=True), last_pos + 1
            toks.append(tok)
            logits.append(out)
    return torch.cat(toks, 1), torch.stack(logits, 1)


def _explain_decode_step(model, static: bool):
    cache = StaticCache(config=model.config, max_cache_len=MAX_CACHE) if static else DynamicCache(config=model.config)
    tok, last_pos, mask2d = _prefill(model, cache)
    kw, _ = _step_inputs(tok, last_pos, mask2d, PROMPT, cache, static)
    with torch.no_grad():
        return torch._dynamo.explain(model.forward)(**kw)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_decode_step_traces_without_graph_breaks(method, cache):
    _, ext = method_model("llama", method)
    ex = _explain_decode_step(ext, cache == "static")
    reasons = [b.reason.splitlines()[0] for b in ex.break_reasons]
    assert ex.graph_break_count == 0, reasons
    assert ex.graph_count == 1


@pytest.mark.parametrize("method", METHODS)
def test_compiled_static_decode_does_not_recompile_and_equals_eager(method):
    _, ext = method_model("llama", method)
    steps = 6
    ref_toks, ref_logits = _decode(ext, ext.forward, static=True, steps=steps)
    compiled = torch.compile(ext.forward, backend="eager", fullgraph=True)
    calls = []

    def forward(**kw):  # the first step compiles; any later step that would recompile raises
        if not calls:
            calls.append(1)
            return compiled(**kw)
        with torch.compiler.set_stance("fail_on_recompile"):
            return compiled(**kw)

    toks, logits = _decode(ext, forward, static=True, steps=steps)
    assert torch.equal(toks, ref_toks)
    torch.testing.assert_close(logits, ref_logits, atol=0, rtol=0)
    # one graph captured, once: every later step ran it
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("method", METHODS)
def test_dynamic_cache_decode_is_stateless(method, monkeypatch):
    """Decoding with a dynamic cache builds no attention plan, adopts none, keeps nothing per step, and equals a
    full recompute; every step's attention reads the cache it is given and nothing else (the step traces in one
    graph above: no host sync, no data-dependent Python)."""
    _, ext = method_model("llama", method)
    ids, am = _prompt()
    cache = DynamicCache(config=ext.config)
    with torch.no_grad():
        ext(
            input_ids=ids,
            attention_mask=am,
            position_ids=(am.cumsum(-1) - 1).clamp(min=0),
            past_key_values=cache,
            use_cache=True,
        )
    built = []
    orig_init = plans.AttentionPlan.__init__

    def counting_init(self, *a, **k):
        built.append(1)
        orig_init(self, *a, **k)

    monkeypatch.setattr(plans.AttentionPlan, "__init__", counting_init)
    adopted = len(plans._ADOPTED)
    from longctx_plugins.attention import decode

    cached = len(decode._CACHE)
    seq, mask = ids, am
    with torch.no_grad():
        tok = None
        for i in range(4):
            step_ids = seq[:, -1:] if tok is None else tok
            if tok is not None:
                seq, mask = torch.cat([seq, tok], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = (mask.cumsum(-1) - 1)[:, -1:]
            if tok is None:  # the first step re-feeds nothing: take the prefill's next token
                logits = ext(input_ids=ids, attention_mask=am, use_cache=False).logits[:, -1]
                tok = logits.argmax(-1, keepdim=True)
                continue
            step = ext(
                input_ids=step_ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
            ).logits[:, -1]
            full = ext(
                input_ids=seq, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False
            ).logits[:, -1]
            torch.testing.assert_close(step, full, atol=2e-5, rtol=1e-5)
            tok = step.argmax(-1, keepdim=True)
    assert cache.get_seq_length() == PROMPT + 3
    # full recomputes (q_len == kv_len) build plans; the cached steps (3 of them, 2 layers each) build none
    assert len(built) == 4
    assert len(plans._ADOPTED) == adopted
    assert len(decode._CACHE) == cached


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("padded", [True, False])
def test_generate_compiles_on_cpu_with_identical_tokens(method, padded):
    """``generate(..., cache_implementation="static")`` compiles the decode step itself (on CPU only when the
    compile config allows every device); the tokens equal an uncompiled generate and no step recompiles. Unpadded,
    the prompt takes the prefill path (not the decode path), and the compiled steps still trace in one graph."""
    from transformers import CompileConfig

    _, ext = method_model("llama", method)
    ids, am = _prompt()
    if not padded:
        am = torch.ones_like(am)
    kw = dict(attention_mask=am, max_new_tokens=8, min_new_tokens=8, do_sample=False, cache_implementation="static")
    with torch.no_grad():  # compiled first: no eager decode step has run before it
        cfg = CompileConfig(backend="eager", fullgraph=True, mode=None)
        cfg._compile_all_devices = True
        out = ext.generate(ids, compile_config=cfg, **kw)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        ref = ext.generate(ids, disable_compile=True, **kw)
    # the decode step was compiled, once (a recompile would capture a second graph), for 7 decode steps
    assert graphs == 1
    assert torch.equal(out, ref)


@pytest.mark.parametrize("method", METHODS)
def test_prompt_into_an_empty_static_cache_takes_the_prefill_path(monkeypatch, method):
    """A prompt written into an empty static cache (more slots than tokens) is a prefill over its own keys: it runs
    the prefill path (one plan per forward, as without a cache) and gives the logits of a forward without a cache;
    a padded batch keeps the decode path, and so does the next step."""
    from longctx_plugins.attention import positional

    _, model = method_model("llama", method, keep=True)
    plans_made = []
    real = positional._fresh_cache_plan
    monkeypatch.setattr(positional, "_fresh_cache_plan", lambda *a: plans_made.append(real(*a)) or plans_made[-1])
    ids = torch.randint(3, 100, (2, PROMPT), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        cache = StaticCache(config=model.config, max_cache_len=MAX_CACHE)
        got = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
    layers = model.config.num_hidden_layers
    assert len(plans_made) == layers and all(p is not None for p in plans_made)
    assert len({id(p) for p in plans_made}) == 1  # one plan for every layer of the forward
    plans_made.clear()
    ids2, am = _prompt()
    with torch.no_grad():
        model(input_ids=ids2, attention_mask=am, past_key_values=StaticCache(config=model.config, max_cache_len=64))
    assert plans_made and all(p is None for p in plans_made)  # left padding: not a plain causal prefill
