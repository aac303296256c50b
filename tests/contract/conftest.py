"""Shared pieces of the exactness contract: texts of exact token lengths, the models (the bundled MiniLM and tiny
random RoPE models saved with its tokenizer) and their references, each computed once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from longctx_plugins.embedder import default_model_path

from . import definitions as D

WORDS = (
    "river harbour senate bridge garden window lantern copper meadow violin pepper marble cotton ladder winter "
    "falcon orchard candle mirror thunder carpet signal pocket silver basket engine timber valley velvet rocket "
    "parade ticket anchor harvest button jacket magnet pillow saddle tunnel"
).split()
APE_TRAINED, APE_TARGET = 512, 2048
ROPE_TRAINED, ROPE_TARGET = 64, 256
# Token counts (special tokens included) per scenario: one text, equal lengths (no padding), mixed lengths (padding);
# inside the trained window and beyond it.
APE_SCENARIOS = {
    "inside-one": [14],
    "inside-equal": [60, 60],
    "inside-mixed": [20, 90, 45],
    "beyond-one": [700],
    "beyond-equal": [650, 650],
    "beyond-mixed": [900, 30, 600],
}
ROPE_SCENARIOS = {
    "inside-one": [9],
    "inside-equal": [40, 40],
    "inside-mixed": [12, 60, 33],
    "beyond-one": [150],
    "beyond-equal": [120, 120],
    "beyond-mixed": [200, 20, 96],
}


def pytest_report_header(config):
    import importlib.metadata as md

    names = ("torch", "transformers", "sentence-transformers", "llama-index-core", "langchain-core")
    found = []
    for name in names:
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return "exactness contract on: " + ", ".join(found)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="session")
def make_text(tokenizer):
    cache: dict = {}

    def make(n_tokens: int, seed: int) -> str:
        """A sentence of exactly ``n_tokens`` tokens, [CLS] and [SEP] included."""
        if (n_tokens, seed) not in cache:
            rng = np.random.default_rng(seed)
            words = [WORDS[i] for i in rng.integers(0, len(WORDS), n_tokens - 2)]
            text = " ".join(words)
            assert len(tokenizer(text)["input_ids"]) == n_tokens
            cache[(n_tokens, seed)] = text
        return cache[(n_tokens, seed)]

    return make


def scenario_texts(make_text, scenarios: dict, name: str) -> list[str]:
    return [make_text(n, 100 * i + n) for i, n in enumerate(scenarios[name])]


# ------------------------------------------------------------------------------------------------- APE reference
@pytest.fixture(scope="session")
def ape_reference(tokenizer):
    """``vector(method, text)`` and ``states(method, text)``: MiniLM's mean-pooled vector / final states of one text
    read alone, positions from the method's definition, explicit all-ones mask (no padding)."""
    base = AutoModel.from_pretrained(default_model_path()).eval()
    table = base.embeddings.position_embeddings.weight.data
    s = APE_TARGET // APE_TRAINED
    pi_model = AutoModel.from_pretrained(default_model_path()).eval()
    pi_model.embeddings.position_embeddings = torch.nn.Embedding.from_pretrained(D.pi_table(table, APE_TRAINED, s))
    pi_model.embeddings.position_ids = torch.arange(APE_TRAINED * s)[None]
    pi_model.embeddings.token_type_ids = torch.zeros(1, APE_TRAINED * s, dtype=torch.long)
    cache: dict = {}

    def states_of_ids(method: str, ids: list[int]) -> torch.Tensor:
        model = pi_model if method == "pi" else base
        pos = D.ape_positions(method, len(ids), APE_TRAINED, APE_TARGET)
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                position_ids=torch.tensor([pos]),
                token_type_ids=torch.zeros(1, len(ids), dtype=torch.long),
            )
        return out.last_hidden_state[0]

    def states(method: str, text: str) -> torch.Tensor:
        key = ("states", method, text)
        if key not in cache:
            ids = tokenizer(text)["input_ids"]
            if method == "none" and len(ids) > APE_TRAINED:  # truncated to the trained window, [SEP] kept
                ids = ids[: APE_TRAINED - 1] + ids[-1:]
            cache[key] = states_of_ids(method, ids)
        return cache[key]

    def vector(method: str, text: str) -> np.ndarray:
        key = ("vector", method, text)
        if key not in cache:
            if method == "pcw":
                ids = tokenizer(text)["input_ids"]
                parts = [D.mean_pool(states_of_ids("none", w)) for w in D.pcw_windows(ids, APE_TRAINED)]
                cache[key] = D.normalized(np.mean(parts, axis=0))
            else:
                cache[key] = D.normalized(D.mean_pool(states(method, text)))
        return cache[key]

    return {"vector": vector, "states": states}


@pytest.fixture(scope="session")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(default_model_path(), device="cpu")


# ------------------------------------------------------------------------------------------------ tiny RoPE models
ROPE_MODELS = {  # name -> (config class, base-model class, extra, causal)
    "encoder": ("NomicBertConfig", "NomicBertModel", {}, False),
    "decoder": ("LlamaConfig", "LlamaModel", {"num_key_value_heads": 2}, True),
}


@pytest.fixture(scope="session")
def rope_checkpoints(tmp_path_factory, tokenizer):
    """Tiny random RoPE models (trained window 64) saved with MiniLM's tokenizer: ``{name: path}``."""
    paths = {}
    for name, (cfg_cls, model_cls, extra, _) in ROPE_MODELS.items():
        cfg = getattr(transformers, cfg_cls)(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=len(tokenizer),
            max_position_embeddings=ROPE_TRAINED,
            pad_token_id=tokenizer.pad_token_id,
            **extra,
        )
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(cfg).eval()
        with torch.no_grad():  # small random weights keep every layer away from saturation
            for p in model.parameters():
                p.normal_(0, 0.2)
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        if ROPE_MODELS[name][3]:  # the causal-LM head for extend()/logit checks shares the base weights
            lm = transformers.LlamaForCausalLM(cfg).eval()
            lm.model.load_state_dict(model.state_dict())
            lm_path = tmp_path_factory.mktemp(f"tiny-{name}-lm")
            lm.save_pretrained(lm_path)
            tokenizer.save_pretrained(lm_path)
            paths[f"{name}-lm"] = lm_path
        paths[name] = path
    D.register_reference()
    return paths


@pytest.fixture(scope="session")
def rope_reference(rope_checkpoints, tokenizer):
    """``states(kind, method, params, ids)``: final states (or logits for ``decoder-lm``) of one sequence read alone
    through the reference attention for ``method`` with ``params``, explicit positions 0..n-1 and all-ones mask."""
    models: dict = {}
    cache: dict = {}

    def model_for(kind: str):
        if kind not in models:
            cls = AutoModelForCausalLM if kind.endswith("-lm") else AutoModel
            models[kind] = cls.from_pretrained(rope_checkpoints[kind], attn_implementation=D.REFERENCE_ATTENTION).eval()
        return models[kind]

    def states(kind: str, method: str, params: dict, ids: list[int]) -> torch.Tensor:
        key = (kind, method, tuple(sorted((k, str(v)) for k, v in params.items())), tuple(ids))
        if key not in cache:
            model = model_for(kind)
            theta = float(model.config.rope_parameters["rope_theta"])  # the checkpoint's own base
            model.config.contract_reference = {
                "method": method,
                "params": params,
                "trained": ROPE_TRAINED,
                "theta": theta,
            }
            n = len(ids)
            with torch.no_grad():
                out = model(
                    input_ids=torch.tensor([ids]),
                    attention_mask=torch.ones(1, n, dtype=torch.long),
                    position_ids=torch.arange(n)[None],
                )
            cache[key] = out.logits[0] if kind.endswith("-lm") else out.last_hidden_state[0]
        return cache[key]

    return states


def assert_same_vectors(ours, ref, atol: float = 2e-5):
    """Row by row: cosine 1 within 1e-6 and max abs difference within ``atol``."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    cos = (ours * ref).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert np.all(cos > 1 - 1e-6), f"cosine with the reference: {cos}"
    np.testing.assert_allclose(ours, ref, atol=atol, rtol=0)
