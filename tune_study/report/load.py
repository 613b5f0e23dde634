"""Reading a study folder, read-only: its exports (trials, history, predictions) and space.yaml.

The report needs nothing else: not the Ray experiment (tune/, repeat/), not the checkpoints. Older
studies lack some columns; they are filled here with what the data imply (every history row of a
per-epoch export is an epoch end; a study without ``stage`` was a plain grid or search).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import columns as C
from ..errors import StudyError

MAIN_AXES = ("model", "scheduler", "batch_size")


@dataclass
class Study:
    """One study folder's data. ``predictions`` is None when the study did not store them."""
    path: Path
    space: dict                     # space.yaml as written ({} when missing)
    kind: str                       # "grid" or "search"
    trials: pd.DataFrame
    history: pd.DataFrame
    predictions: pd.DataFrame | None
    sources: dict = field(default_factory=dict)  # table -> the file it was read from

    @property
    def axes(self) -> list[str]:
        return list((self.space.get("axes") or {}))


def _read_table(d: Path, name: str) -> tuple[pd.DataFrame | None, str]:
    for ext, reader in (("parquet", pd.read_parquet), ("csv", pd.read_csv)):
        f = d / f"{name}.{ext}"
        if f.exists():
            try:
                return reader(f), f.name
            except Exception:  # a half-written parquet: try the CSV twin
                continue
    return None, ""


def _read_space(d: Path) -> dict:
    from ..config import read_yaml

    f = d / "space.yaml"
    if not f.exists():
        return {}
    doc = read_yaml(f)
    return doc if isinstance(doc, dict) else {}


def load_study(path) -> Study:
    """The study folder's tables and study file, as a ``Study``; writes nothing.

    Raises StudyError when ``path`` is not a folder or holds neither space.yaml nor trials.
    """
    d = Path(path).expanduser()
    if not d.is_dir():
        raise StudyError(f"report: no study folder at {d}")
    if not any((d / f).exists() for f in ("space.yaml", "trials.parquet", "trials.csv")):
        raise StudyError(f"report: {d} is not a study folder (no space.yaml or trials.parquet/.csv)")
    space = _read_space(d)
    kind = "search" if ("num_samples" in space or "search_seed" in space) else "grid"
    trials, t_src = _read_table(d, C.TRIALS)
    history, h_src = _read_table(d, C.HISTORY)
    preds, p_src = _read_table(d, C.PREDICTIONS)
    trials = _prepare_trials(trials if trials is not None else pd.DataFrame(columns=["trial_id"]), space, kind)
    history = _prepare_history(history if history is not None else pd.DataFrame(columns=["trial_id", "epoch"]),
                               trials)
    if preds is not None and not set(C.PREDICTION_COLUMNS) <= set(preds.columns):
        preds = None  # not the contract's table: treat as absent rather than guess
    if preds is not None and not len(preds):
        preds = None
    return Study(d, space, kind, trials, history, preds,
                 {"trials": t_src, "history": h_src, "predictions": p_src})


def _prepare_trials(t: pd.DataFrame, space: dict, kind: str) -> pd.DataFrame:
    # an older report wrote its collapse flags into trials: the report derives its own
    t = t.drop(columns=["collapsed", "collapse_epoch", "collapse_kind"], errors="ignore").copy()
    fixed = space.get("fixed") or {}
    for k in MAIN_AXES:
        if k not in t.columns:
            t[k] = fixed.get(k)
    if "stage" not in t.columns:
        t["stage"] = kind
    t["stage"] = t["stage"].fillna(kind)
    numeric = ["batch_size", "epochs_run", "epochs_planned", "optimizer_steps", "samples_seen", "best_epoch",
               "best_val_acc", "best_val_loss", "test_acc", "test_loss", "test_nll", "test_ece", "test_confidence",
               "n_test", "n_val", "val_majority_rate", "evals_per_epoch", "seed"]
    for c in numeric:
        if c in t.columns:
            t[c] = pd.to_numeric(t[c], errors="coerce")
        else:
            t[c] = float("nan")
    if "stopped_early" not in t.columns:
        t["stopped_early"] = False
    t["stopped_early"] = t["stopped_early"].astype("boolean").fillna(False).astype(bool)
    if "status" not in t.columns:
        t["status"] = ""
    t["trial_id"] = t["trial_id"].astype(str)
    return t.reset_index(drop=True)


def _prepare_history(h: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    h = h.copy()
    if "trial_id" not in h.columns:
        h["trial_id"] = []
    h["trial_id"] = h["trial_id"].astype(str)
    if "epoch_end" not in h.columns:  # an older per-epoch export: every row is an epoch's end
        h["epoch_end"] = True
    h["epoch_end"] = h["epoch_end"].astype("boolean").fillna(True).astype(bool)
    for c in ("epoch", "optimizer_steps", "samples_seen", "train_loss", "val_loss", "val_acc"):
        h[c] = pd.to_numeric(h[c], errors="coerce") if c in h.columns else float("nan")
    # the axes come from trials (the one place a trial's config is recorded)
    axes = [c for c in trials.columns if c in (*MAIN_AXES, "seed", "stage")]
    h = h.drop(columns=[c for c in axes if c in h.columns])
    if len(trials):
        h = h.merge(trials[["trial_id", *axes]], on="trial_id", how="left")
    h = h.dropna(subset=["epoch"]).drop_duplicates(["trial_id", "epoch"], keep="last")
    return h.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)
