"""Files that appear whole or not at all: written under a hidden temporary name beside the
target, then renamed over it (``os.replace`` is atomic within one filesystem), so a reader never
sees half a file and a failure leaves none behind. Each writer (process and thread) has a
temporary name of its own, so concurrent writers of one path never write into each other's
file: the last rename wins, and what it puts in place is whole."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends without error it replaces
    ``path``. The temporary file is removed in every case."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, sync: bool = False) -> Path:
    """Write ``text`` to ``path`` whole; ``sync`` flushes it to disk before the rename, for
    records that must survive a machine that dies right after."""
    with replacing(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)
