"""Writing a file so that a reader never sees half of it: write a temporary twin, then rename."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``, which then replaces ``path`` in one
    rename. On any failure (a full disk: ENOSPC) the temporary file is removed and ``path`` keeps
    its previous content. The twin's name carries the process id: processes writing the same file
    (trials sharing a cache) never write into one twin."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
