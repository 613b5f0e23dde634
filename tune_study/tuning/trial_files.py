"""What a trial leaves on disk: settling a finished trial's folder, and sizing a study before it starts.

A trial folder holds up to ``checkpoints_to_keep`` checkpoints (``checkpoint_*/``: the full
training state ``state.pt`` plus small JSON side files) and its ``best_model/``. The full state
serves one purpose: continuing an unfinished trial with ``--resume``. ``--resume`` never reruns a
finished trial, so ``keep_when_finished: best_model`` (the default) deletes a finished trial's
``state.pt`` files and keeps everything the exports and the report read (``history.json``,
``predictions.json``, ``meta.json``) and the best model. ``keep_when_finished: checkpoints`` keeps
them all. Errored and unfinished trials always keep theirs.

Paths are read and changed through a pyarrow filesystem, so a remote ``storage_path`` works too.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from ..config import Study
from ..training.checkpoints import BEST_MARKER, BEST_MODEL, BEST_STAGING, CHECKPOINT_FILE, PREVIOUS, PRUNED_MARKER

log = logging.getLogger(__name__)

KEEP_CHOICES = ("best_model", "checkpoints")


def _exists(fs, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _marked_epoch(fs, folder: str) -> int | None:
    try:
        with fs.open_input_stream(f"{folder}/{BEST_MARKER}") as f:
            return json.loads(f.read())["epoch"]
    except (OSError, ValueError, KeyError):
        return None


def settle_finished_trial(fs, trial_path: str, best_epoch: int | None, keep: str) -> list[str]:
    """A finished trial's folder made final: ``best_model.prev`` / ``best_model.tmp`` removed once
    ``best_model`` holds the reported best epoch, and (``keep`` best_model) the training state of its
    checkpoints removed. Returns what was removed (paths), for the caller's log."""
    removed = []
    best = f"{trial_path}/{BEST_MODEL}"
    if best_epoch and _marked_epoch(fs, best) == best_epoch:
        for leftover in (PREVIOUS, BEST_STAGING):
            if _exists(fs, f"{trial_path}/{leftover}"):
                fs.delete_dir(f"{trial_path}/{leftover}")
                removed.append(f"{trial_path}/{leftover}")
    elif best_epoch:
        log.warning("%s: best_model holds epoch %s, the trial reports epoch %s as its best",
                    trial_path, _marked_epoch(fs, best), best_epoch)
    if keep == "best_model":
        for info in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True)):
            state = f"{info.path}/{CHECKPOINT_FILE}"
            if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_") and _exists(fs, state):
                with fs.open_output_stream(f"{info.path}/{PRUNED_MARKER}") as f:
                    f.write(json.dumps({"removed": CHECKPOINT_FILE, "why": "keep_when_finished: best_model"}).encode())
                fs.delete_file(state)
                removed.append(state)
    return removed


def filesystem_of(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


# ----------------------------------------------------------------------------- disk before a study starts

@dataclass
class DiskEstimate:
    checkpoint_gb: float     # one checkpoint: fp32 weights + AdamW's two moments
    best_model_gb: float     # one best model: fp32 weights (+ tokenizer, a few MB)
    peak_gb: float           # the most the study holds at once
    end_gb: float            # what it holds when every trial has finished

    def line(self, n_trials: int, keep: int, when_finished: str) -> str:
        return (f"disk: about {_size(self.peak_gb)} at most, {_size(self.end_gb)} at the end, for {n_trials} "
                f"trials (a checkpoint {_size(self.checkpoint_gb)} x {keep} kept per trial, a best model "
                f"{_size(self.best_model_gb)}; keep_when_finished: {when_finished})")


def _size(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1000:.0f} MB"


def estimate_disk(n_params: int, n_trials: int, concurrent: int, checkpoints_to_keep: int,
                  keep_when_finished: str) -> DiskEstimate:
    """Bytes from the parameter count: a checkpoint is 3 fp32 copies of the parameters (weights,
    AdamW's exp_avg and exp_avg_sq), a best model 1 (plus a second while a new best replaces it).
    Running trials hold their checkpoints (one more while the newest is written); finished trials
    hold their best model, and their checkpoints too with ``keep_when_finished: checkpoints``."""
    gb = 1e9
    ckpt, best = 3 * 4 * n_params / gb, 4 * n_params / gb
    running = min(concurrent, n_trials) * ((checkpoints_to_keep + 1) * ckpt + 2 * best)
    finished_each = best + (checkpoints_to_keep * ckpt if keep_when_finished == "checkpoints" else 0)
    end = n_trials * finished_each
    peak = max(end, running + max(0, n_trials - min(concurrent, n_trials)) * finished_each)
    return DiskEstimate(ckpt, best, peak, end)


def free_gb(path) -> float | None:
    """Free space on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free / 1e9
    except OSError:
        return None


def _parameter_count(model: str) -> int:
    """``models.parameter_count``, remembered in the cache (``<cache>/parameter_counts.json``): even a
    model on the meta device imports transformers' modeling code, seconds before a study can start.
    A local model folder is remembered with its config.json's size and time stamp."""
    from ..data import cache_dir
    from ..files import read_json_cache, write_json_cache
    from ..models import parameter_count

    config = Path(model).expanduser() / "config.json"
    key = f"{model}|{config.stat().st_size}|{config.stat().st_mtime_ns}" if config.is_file() else model
    cache = cache_dir() / "parameter_counts.json"
    known = read_json_cache(cache)
    if key not in known:
        known[key] = parameter_count(model)
        write_json_cache(cache, known)
    return known[key]


def print_disk_estimate(study: Study, n_trials: int, conc, storage: str, models: list[str]) -> None:
    """The disk the study will need (from the largest model's parameter count), and a warning when
    the file system that holds it has less free space."""
    try:
        n_params = max(_parameter_count(m) for m in models)
    except Exception as e:  # sizing is advice: a model whose config cannot be read here is not an error
        log.warning("disk: cannot size the study (%s)", e)
        return
    est = estimate_disk(n_params, n_trials, conc or n_trials, study.checkpoints_to_keep, study.keep_when_finished)
    print(est.line(n_trials, study.checkpoints_to_keep, study.keep_when_finished))
    free = None if "://" in storage else free_gb(storage)
    if free is not None and free < est.peak_gb:
        log.warning("disk: %s has %.1f GB free, less than the %.1f GB this study may need: it can stop "
                    "with ENOSPC (set keep_when_finished: best_model, fewer checkpoints_to_keep or fewer "
                    "trials at once, or free space)", storage, free, est.peak_gb)


# ----------------------------------------------------------------------------- a full disk

_NO_SPACE = ("No space left on device", "[Errno 28]", "ENOSPC", "Disk quota exceeded", "[Errno 122]")


def is_out_of_space(error) -> bool:
    """An exception (or its causes) or an error text that says the disk (or quota) is full."""
    import errno

    seen = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(error) for s in _NO_SPACE):
            return True
        error = error.__cause__ or error.__context__
    return isinstance(error, str) and any(s in error for s in _NO_SPACE)
