"""Results: Ray Tune's ResultGrids -> the study's tables (trials, history, predictions), CSV and Parquet.

The only writer of those tables; their columns are defined in ``columns``:
  trials       one row per trial of every stage (grid or search, then repeat), with ``stage`` and ``seed``
  history      one row per evaluation of val (each epoch's ``evals``), the epoch-end row carrying the
               epoch's metrics too; a study whose trials reported no ``evals`` has one row per epoch
  predictions  one row per trial x test example, from the trial's latest checkpoint (only when some
               trial stored ``predictions.json``)
Built from ``ResultGrid`` (``metrics_dataframe`` per trial) and checkpoints read through their own
filesystem (remote storage works), never from hand-parsed files or folder names.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..columns import (
    AXIS_ORDER,
    EVAL_COLUMNS,
    HISTORY,
    HISTORY_COLUMNS,
    PREDICTION_COLUMNS,
    PREDICTIONS,
    STAGES,
    TRIAL_COLUMNS,
    TRIALS,
)
from ..config import Study, trial_config
from ..files import write_atomically

EXPERIMENT = "tune"   # the Ray experiment's folder name under the storage path
REPEAT_EXPERIMENT = "repeat"   # the seed repeats of the top configs, when the study asks for them
# test_reliability (a JSON string of bins) rides along in history, though it is not one of its columns
HISTORY_KEEP = [*HISTORY_COLUMNS, "test_reliability"]
CONFIG_EXTRA = ["lr", "warmup_ratio", "weight_decay", "max_len"]   # trials: config values beside the axes
# ... and, in a study that scales lr or beta2 with the batch (only there: unscaled studies keep their columns)
SCALING_CONFIG = ["lr_scaling", "beta2_scaling", "lr_base_batch"]


def load_result_grid(experiment_path: str):
    """The ResultGrid of a finished or interrupted experiment, read from its files (no cluster)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(str(experiment_path)))


def _trials_by_id(result_grid) -> dict:
    """Tune's trials (their config, for a trial that never reported) by id, read from the saved
    experiment state with the public ExperimentAnalysis (a ResultGrid keeps its own private)."""
    from ray.tune import ExperimentAnalysis

    path = getattr(result_grid, "experiment_path", None)
    if not path:
        return {}
    try:
        analysis = ExperimentAnalysis(path, storage_filesystem=getattr(result_grid, "filesystem", None))
        return {t.trial_id: t for t in analysis.trials}
    except Exception:  # no saved state yet: every result carries its own config then
        return {}


def _read_checkpoint_json(checkpoint, name: str):
    """A JSON file of a checkpoint, read through its filesystem (local or remote); None if absent."""
    if checkpoint is None:
        return None
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as f:
            return json.loads(f.read())
    except Exception:  # an older checkpoint without it, or an unreadable one
        return None


def _with_stored_epochs(df: pd.DataFrame | None, checkpoint) -> pd.DataFrame | None:
    """Ray's result log of a trial, plus any epoch that the trial's latest checkpoint recorded but
    the log lost (a line dropped when a trial crashed or the driver was killed)."""
    stored = _read_checkpoint_json(checkpoint, "history.json")
    if not stored:
        return df
    have = set(df["epoch"]) if df is not None and "epoch" in df else set()
    missing = [h for h in stored if h.get("epoch") not in have]
    if not missing:
        return df
    extra = pd.DataFrame(missing).assign(from_checkpoint=True)
    out = pd.concat([d for d in (df, extra) if d is not None and len(d)], ignore_index=True)
    return out.sort_values("epoch", kind="stable").reset_index(drop=True)


def evaluation_rows(epochs: pd.DataFrame) -> list[dict]:
    """A trial's per-epoch results -> one row per evaluation of val. An epoch's ``evals`` (a JSON
    list of dicts with EVAL_COLUMNS) gives its rows; the epoch-end one also carries the epoch's
    metrics. An epoch without ``evals`` (older studies) is one epoch-end row."""
    rows = []
    for rec in epochs.to_dict("records"):
        epoch_level = {k: v for k, v in rec.items() if k in HISTORY_KEEP}
        evals = rec.get("evals")
        evals = json.loads(evals) if isinstance(evals, str) and evals else None
        if not evals:
            rows.append({**epoch_level, "epoch_end": True})
            continue
        for e in evals:
            point = {k: e.get(k) for k in EVAL_COLUMNS}
            rows.append({**epoch_level, **point} if e.get("epoch_end") else point)
    return rows


def _predictions(trial_id: str, checkpoint) -> pd.DataFrame | None:
    """The best-val weights' test predictions stored in the trial's latest checkpoint, if any."""
    p = _read_checkpoint_json(checkpoint, "predictions.json")
    if not p:
        return None
    df = pd.DataFrame({k: p[k] for k in PREDICTION_COLUMNS if k != "trial_id"})
    df.insert(0, "trial_id", trial_id)
    return df


def _error_line(error) -> str:
    """The exception line of a trial's error (Ray wraps it in a traceback), at most 300 chars."""
    if not error:
        return ""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "Error" in ln.split(":")[0]), lines[-1] if lines else "")[:300]


def build_frames(result_grid, study: Study, stage: str = "grid") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(trials, history, predictions) of one Tune run; ``stage`` is one of columns.STAGES."""
    assert stage in STAGES, stage
    axes = list(study.axes)
    known = _trials_by_id(result_grid)
    rows, hist, preds = [], [], []
    for result in result_grid:
        m = result.metrics or {}
        # Our trial folders end in "_<trial_id>"; a trial that never reported has no metrics yet.
        trial_id = m.get("trial_id") or "_".join(Path(result.path).name.split("_")[-2:])
        trial = known.get(trial_id)
        cfg = result.config or (trial.config if trial is not None else {})
        axis_values = {k: cfg.get(k) for k in axes}
        # every trial has a seed: its config's (an axis, the fixed value or a repeat's), else
        # training's default, 0
        settings = trial_config(cfg)
        seed = {"seed": settings.seed} if "seed" not in axes else {}
        df = _with_stored_epochs(result.metrics_dataframe, result.checkpoint)
        if df is not None and len(df):
            df = pd.DataFrame(evaluation_rows(df))
            df = df[[c for c in HISTORY_KEEP if c in df.columns]]
            for k, v in reversed([*axis_values.items(), *seed.items()]):
                if k not in df.columns:  # an axis named like a reported metric (lr): the metric stays
                    df.insert(0, k, v)
            df.insert(0, "stage", stage)
            df.insert(0, "trial_id", trial_id)
            hist.append(df)
        p = _predictions(trial_id, result.checkpoint)
        if p is not None:
            preds.append(p)
        status = trial.status if trial is not None else ("ERROR" if result.error else "TERMINATED")
        if result.error:
            status = "ERROR"
        epochs_run = int(m.get("epoch", 0) or 0)
        planned = settings.epochs
        row = {"trial_id": trial_id, "stage": stage, **axis_values, **seed}
        row.update({k: m.get(k) for k in TRIAL_COLUMNS})
        row.update({
            "status": status,
            "stopped_early": bool(status == "TERMINATED" and epochs_run < planned),
            "epochs_run": epochs_run, "epochs_planned": planned,
            "samples_per_s": (m["samples_seen"] / m["train_time_s"]) if m.get("train_time_s") else None,
            "wall_time_s": m.get("time_total_s"),
            "evals_per_epoch": settings.evals_per_epoch,
            "error": _error_line(result.error), "trial_path": result.path,
        })
        row.update({k: cfg.get(k) for k in CONFIG_EXTRA if k not in axes})
        row.update({k: cfg[k] for k in SCALING_CONFIG if k in cfg and k not in axes})
        rows.append(row)
    trials = pd.DataFrame(rows)
    history = (pd.concat(hist, ignore_index=True) if hist
               else pd.DataFrame(columns=["trial_id", "stage", *axes, "epoch"]))
    predictions = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(columns=PREDICTION_COLUMNS)
    sort = [k for k in AXIS_ORDER if k in trials.columns] + [k for k in axes if k not in AXIS_ORDER]
    if len(trials):
        trials = trials.sort_values(sort, kind="stable").reset_index(drop=True)
    return trials, history, predictions


def export(result_grids: list[tuple[str, object]], study: Study,
           out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write trials/history (and predictions, when some trial stored them) as CSV and Parquet into
    ``out_dir``; return (trials, history). ``result_grids``: (stage, ResultGrid) for each Tune run of
    the study (the grid or search, then its repeats): one table each over all of them."""
    frames = [build_frames(rg, study, stage) for stage, rg in result_grids]
    trials, history, predictions = (pd.concat([f[i] for f in frames if len(f[i])] or [frames[0][i]],
                                              ignore_index=True) for i in range(3))
    out = Path(out_dir)
    tables = [(TRIALS, trials), (HISTORY, history)] + ([(PREDICTIONS, predictions)] if len(predictions) else [])
    for name, df in tables:  # a full disk leaves the previous exports whole
        write_atomically(out / f"{name}.csv", lambda tmp: df.to_csv(tmp, index=False))
        write_atomically(out / f"{name}.parquet", lambda tmp: df.to_parquet(tmp, index=False))
    return trials, history


def console_table(trials: pd.DataFrame, axes: list[str]) -> str:
    """The final table, sorted by test accuracy."""
    if trials.empty:
        return "(no trials)"
    extra = [c for c in ("stage", "seed") if c in trials.columns and c not in axes and trials[c].nunique() > 1]
    cols = [c for c in [*extra, *axes, "status", "stopped_early", "epochs_run", "optimizer_steps", "best_epoch",
                        "best_val_acc", "test_acc", "test_loss", "test_ece", "samples_per_s", "wall_time_s"]
            if c in trials.columns]
    t = trials.sort_values("test_acc", ascending=False, na_position="last")[cols]
    return t.to_string(index=False, float_format=lambda x: "nan" if math.isnan(x) else f"{x:.4g}")
