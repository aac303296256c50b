"""Writing the evaluator's files: whole or not at all, safe when several runs share an output folder."""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a uniquely named temporary file in the same folder, then rename it into
    place: readers (and concurrent runs) see the old file or the new one, never a part; on any failure (a full disk)
    the temporary file is removed."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def check_writable_folder(path: str) -> str | None:
    """None when ``path`` is (or can be made) a folder this process can write files in, else why not."""
    if os.path.exists(path) and not os.path.isdir(path):
        return "it is a file, not a folder"
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # a unique name: concurrent runs never share the probe
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
