"""Checkpoints: a trial's full training state on disk, written atomically, read back as data only.

A checkpoint directory holds ``state.pt`` (model, AdamW, scheduler, RNG states, epoch, best-so-far,
progress, history, predictions), ``history.json`` (the metrics so far, readable without torch),
``predictions.json`` (the best-val weights' test predictions, readable without torch) and
``meta.json`` (written last: the checkpoint is complete when it is there and ``state.pt`` has its size).

The best model (``save_pretrained``) lives next to the checkpoints, in ``<output_dir>/best_model``
with ``best_epoch.json`` inside. It is staged in ``best_model.tmp`` and promoted only after the
epoch's checkpoint is persisted, so after any crash and resume the best model and the resumed
checkpoint name the same best epoch (``recover_best_model``).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from .errors import StudyError

CHECKPOINT_FILE = "state.pt"
PREDICTIONS_FILE = "predictions.json"
BEST_MODEL, BEST_STAGING, BEST_MARKER = "best_model", "best_model.tmp", "best_epoch.json"


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
    # The best-val weights' test predictions, for the results exporter (no torch needed to read).
    if state.get("predictions"):
        (path / PREDICTIONS_FILE).write_text(json.dumps(state["predictions"]))
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


# ----------------------------------------------------------------------------- the best model

def stage_best_model(output_dir: str | Path) -> Path:
    """An empty staging folder for a new best model; ``promote_best_model`` moves it into place."""
    staging = Path(output_dir) / BEST_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def mark_best_epoch(folder: str | Path, epoch: int) -> None:
    """Written after the weights: a staged model without it is incomplete and never promoted."""
    (Path(folder) / BEST_MARKER).write_text(json.dumps({"epoch": epoch}))


def best_model_epoch(folder: str | Path) -> int | None:
    try:
        return json.loads((Path(folder) / BEST_MARKER).read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return None


def promote_best_model(output_dir: str | Path) -> None:
    """Staging -> ``best_model``. A directory cannot replace a non-empty one in one rename, so the
    old one steps aside first (``best_model.old``); ``recover_best_model`` finishes a torn swap."""
    out = Path(output_dir)
    old = out / (BEST_MODEL + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if (out / BEST_MODEL).exists():
        os.replace(out / BEST_MODEL, old)
    os.replace(out / BEST_STAGING, out / BEST_MODEL)
    shutil.rmtree(old, ignore_errors=True)


def recover_best_model(output_dir: str | Path, best_epoch: int) -> None:
    """Before training starts (fresh or resumed): make ``best_model`` agree with the checkpoint.

    A crash after staging but before the checkpoint was persisted leaves a staged model of an epoch
    the resumed checkpoint does not know: dropped. A crash after the checkpoint but before the swap
    leaves the staged model of exactly the checkpoint's best epoch: promoted now. A best model of
    another epoch (a run restarted from an older state) would be wrong: removed, it is rewritten at
    the next new best."""
    out = Path(output_dir)
    old, final, staging = out / (BEST_MODEL + ".old"), out / BEST_MODEL, out / BEST_STAGING
    if old.exists():  # torn swap: the old one stepped aside, the staged one never arrived
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)
    if staging.exists():
        if best_epoch and best_model_epoch(staging) == best_epoch:
            promote_best_model(out)
        else:
            shutil.rmtree(staging)
    if final.exists() and (marked := best_model_epoch(final)) is not None and marked != best_epoch:
        print(f"WARNING: {final}: holds epoch {marked}, the checkpoint's best is epoch {best_epoch}; "
              "removed (written again at the next new best)", flush=True)
        shutil.rmtree(final)
