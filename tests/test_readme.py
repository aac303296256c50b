"""Every ```python block of README.md runs as written.

``path`` (the README's stand-in for "your checkpoint") is a tiny random Llama saved to disk with the bundled
MiniLM tokenizer, so the snippets exercise the real save/load path. A block preceded by
``<!-- readme-test: skip: REASON -->`` is reported as skipped with that reason; none is skipped silently.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import transformers

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(<!-- readme-test: skip: (?P<skip>[^>]*?) -->\s*)?```python\n(?P<code>.*?)```", re.S)


def _blocks() -> list[tuple[str, str, str | None]]:
    text = README.read_text()
    out = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code"))
        out.append((f"README.md:{line}", m.group("code"), m.group("skip")))
    return out


BLOCKS = _blocks()


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4, "README.md lost its Python examples (or this test's pattern no longer matches them)"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Llama with the bundled MiniLM tokenizer, saved like any hub checkpoint."""
    from longctx_plugins.embedding.loading import default_model_path

    folder = tmp_path_factory.mktemp("readme_ckpt")
    tok = transformers.AutoTokenizer.from_pretrained(default_model_path())
    tok.bos_token = "[CLS]"
    tok.eos_token = "[SEP]"
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    transformers.set_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("where,code,skip", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_block_runs(where, code, skip, checkpoint, tmp_path, monkeypatch):
    if skip:
        pytest.skip(f"{where}: {skip}")
    monkeypatch.chdir(tmp_path)  # files the snippets write (Trainer output, plots) stay in the test's folder
    monkeypatch.setenv("WANDB_DISABLED", "true")
    namespace = {"path": checkpoint, "__name__": "__readme__"}
    exec(compile(code, where, "exec"), namespace)
