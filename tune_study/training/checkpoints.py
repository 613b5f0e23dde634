"""Checkpoints: a trial's full training state on disk, written atomically, read back as data only.

A checkpoint directory holds ``state.pt`` (model, AdamW, scheduler, RNG states, epoch, best-so-far,
progress, history, predictions), ``history.json`` (the metrics so far, readable without torch),
``predictions.json`` (the best-val weights' test predictions, readable without torch) and
``meta.json`` (written last: the checkpoint is complete when it is there and ``state.pt`` has its size).

The best model (``save_pretrained``) lives next to the checkpoints, in ``<output_dir>/best_model``
with ``best_epoch.json`` inside. It is staged in ``best_model.tmp`` and put in place before its
epoch's report, the model it replaces kept as ``best_model.prev`` until that report has persisted
the checkpoint; after any crash and resume the best model and the resumed checkpoint name the same
best epoch (``recover_best_model``).
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import torch

from ..errors import StudyError
from ..files import write_atomically

CHECKPOINT_FILE = "state.pt"
PREDICTIONS_FILE = "predictions.json"
PRUNED_MARKER = "pruned.json"   # in a checkpoint whose state.pt was removed when its trial finished
BEST_MODEL, BEST_STAGING, BEST_MARKER = "best_model", "best_model.tmp", "best_epoch.json"

log = logging.getLogger(__name__)


def save_state(path: str | Path, state: dict) -> None:
    """Write the full training state; loaded back with ``torch.load(weights_only=True)``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_atomically(path / CHECKPOINT_FILE, lambda tmp: torch.save(state, tmp))
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
        if (Path(path) / PRUNED_MARKER).exists():
            raise StudyError(f"checkpoint {path}: its training state was removed when the trial finished "
                             "(keep_when_finished: best_model); a finished trial is never resumed")
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
#
# The best model must be the reported one even for a trial whose last report never returns (Tune
# stops a trial inside ``tune.report``: an early-stopping decision, or the last epoch). So a new
# best goes into place *before* its epoch's report, and the one it replaces steps aside as
# ``best_model.prev`` until that report has persisted the epoch's checkpoint. Whatever the moment of
# a crash, one of the folders holds the checkpoint's best epoch, and ``recover_best_model`` keeps it.

PREVIOUS = BEST_MODEL + ".prev"


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
    """Staging -> ``best_model``; the model it replaces stays as ``best_model.prev`` until
    ``release_previous_best`` (the new best's checkpoint is persisted). A directory cannot replace a
    non-empty one in one rename, hence two renames; ``recover_best_model`` settles a torn pair."""
    out = Path(output_dir)
    shutil.rmtree(out / PREVIOUS, ignore_errors=True)
    if (out / BEST_MODEL).exists():
        os.replace(out / BEST_MODEL, out / PREVIOUS)
    os.replace(out / BEST_STAGING, out / BEST_MODEL)


def release_previous_best(output_dir: str | Path) -> None:
    """The checkpoint naming the new best is persisted: the model it replaced is no longer needed."""
    shutil.rmtree(Path(output_dir) / PREVIOUS, ignore_errors=True)


def recover_best_model(output_dir: str | Path, best_epoch: int) -> None:
    """Before training starts (fresh or resumed): make ``best_model`` the model of the checkpoint's
    best epoch, from whichever folder holds it (``best_model``, ``best_model.prev`` after a crash
    before the new best's checkpoint was persisted, or a staged model whose checkpoint was); every
    other copy is removed. With no copy of that epoch (a run restarted from an older state) the
    best model is rewritten at the next new best."""
    out = Path(output_dir)
    folders = [out / BEST_MODEL, out / PREVIOUS, out / BEST_STAGING]
    present = [f for f in folders if f.exists()]
    keep = next((f for f in present if best_epoch and best_model_epoch(f) == best_epoch), None)
    if keep is None and (out / BEST_MODEL).exists() and best_model_epoch(out / BEST_MODEL) is None:
        keep = out / BEST_MODEL  # unmarked (written by an older version): kept as is
    for f in present:
        if f != keep:
            marked = best_model_epoch(f)
            if f.name == BEST_MODEL and marked is not None:
                log.warning("%s: holds epoch %s, the checkpoint's best is epoch %s; removed (written again "
                            "at the next new best)", f, marked, best_epoch)
            shutil.rmtree(f)
    if keep is not None and keep != out / BEST_MODEL:
        os.replace(keep, out / BEST_MODEL)
