"""Every ```python block of README.md and of the integration packages' READMEs runs alone, as pasted: each in a
fresh namespace with nothing defined beforehand, offline, on the real bundled models (all-MiniLM-L6-v2 and
Gemma-3-270M written once as a local checkpoint by ``longctx_plugins.bundled.gemma3_270m()``).

A block preceded by ``<!-- readme-test: skip: REASON -->`` is reported as skipped with that reason; none is skipped
silently.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [
    ROOT / "README.md",
    ROOT / "integrations" / "langchain" / "README.md",
    ROOT / "integrations" / "llama-index" / "README.md",
]
_BLOCK = re.compile(r"(<!-- readme-test: skip: (?P<skip>[^>]*?) -->\s*)?```python\n(?P<code>.*?)```", re.S)


def _blocks() -> list[tuple[str, str, str | None]]:
    out = []
    for readme in READMES:
        text = readme.read_text()
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start("code"))
            out.append((f"{readme.relative_to(ROOT)}:{line}", m.group("code"), m.group("skip")))
    return out


BLOCKS = _blocks()


def test_readmes_have_python_blocks():
    per_file = {
        r.relative_to(ROOT).as_posix(): sum(w.startswith(r.relative_to(ROOT).as_posix() + ":") for w, _, _ in BLOCKS)
        for r in READMES
    }
    assert per_file["README.md"] >= 4 and min(per_file.values()) >= 2, per_file


@pytest.mark.parametrize("where,code,skip", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_block_runs_alone(where, code, skip, tmp_path, monkeypatch):
    if skip:
        pytest.skip(f"{where}: {skip}")
    monkeypatch.chdir(tmp_path)  # files the snippets write (Trainer output, plots) stay in the test's folder
    monkeypatch.setenv("WANDB_DISABLED", "true")
    namespace = {"__name__": "__readme__"}
    exec(compile(code, where, "exec"), namespace)
