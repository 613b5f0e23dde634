"""Writing a file so that a reader never sees half of it (write a temporary twin, then rename), and
the small JSON caches kept that way."""
from __future__ import annotations

import json
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


def read_json_cache(path: str | Path) -> dict:
    """A JSON cache file's mapping; {} when it is absent or unreadable (then its values are simply
    computed again)."""
    try:
        return json.loads(Path(path).read_text()) if Path(path).exists() else {}
    except ValueError:
        return {}


def write_json_cache(path: str | Path, known: dict) -> None:
    """``known`` into the JSON cache file ``path``, atomically (its folder made if need be)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(known, indent=1)))
