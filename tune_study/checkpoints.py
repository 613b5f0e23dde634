"""Checkpoints: a trial's full training state on disk, written atomically, read back as data only.

A checkpoint directory holds ``state.pt`` (model, AdamW, scheduler, RNG states, epoch, best-so-far,
progress, history), ``history.json`` (the metrics so far, readable without torch) and ``meta.json``
(written last: the checkpoint is complete when it is there and ``state.pt`` has its size).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch

from .errors import StudyError

CHECKPOINT_FILE = "state.pt"


def save_state(path: str | Path, state: dict) -> None:
    """Write the full training state; loaded back with ``torch.load(weights_only=True)``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / CHECKPOINT_FILE)
    # The per-epoch metrics so far, small and readable without torch: exports use it to fill any
    # result line Ray lost to a crash or a killed driver.
    (path / "history.json").write_text(json.dumps(state.get("history", []), default=str))
    # Written last: a checkpoint is complete when meta.json is there and state.pt has its size.
    (path / "meta.json").write_text(json.dumps({"epoch": state["epoch"],
                                               "bytes": (path / CHECKPOINT_FILE).stat().st_size}))


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch a checkpoint holds, or None if it is partial (cheap: reads meta.json only)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        return meta["epoch"] if (path / CHECKPOINT_FILE).stat().st_size == meta["bytes"] else None
    except (OSError, ValueError, KeyError):
        return None


def load_state(path: str | Path) -> dict:
    f = Path(path) / CHECKPOINT_FILE
    if not f.exists():
        raise StudyError(f"checkpoint {path}: no {CHECKPOINT_FILE} in it (partial checkpoint)")
    try:
        # weights_only: a checkpoint is data; never run an unpickler that can execute code.
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise StudyError(f"checkpoint {f} is corrupt or unreadable: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e
    missing = {"model", "optimizer", "scheduler", "rng", "epoch", "best", "progress"} - set(state)
    if missing:
        raise StudyError(f"checkpoint {f} is incomplete: missing {sorted(missing)}")
    return state


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
