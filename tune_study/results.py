"""Results: Ray Tune's ResultGrid -> the study's dataframes (trials, history) as CSV and Parquet.

  trials   one row per trial: config axes, status, stopped early?, epochs run, optimizer steps,
           samples seen, best-val epoch / acc / loss, test acc / loss / calibration of the best-val
           weights, samples/s, wall time, best model path, micro-batch, accumulation, OOM halvings,
           peak GPU memory, device and the trial's share of a GPU
  history  one row per trial x epoch with everything the trial reported
Built from ``ResultGrid`` (``metrics_dataframe`` per trial), never from hand-parsed files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

EXPERIMENT = "tune"   # the Ray experiment's folder name under the storage path
AXIS_ORDER = ["model", "batch_size", "scheduler", "seed"]
HISTORY_KEEP = ["epoch", "train_loss", "val_loss", "val_acc", "lr", "optimizer_steps", "samples_seen",
                "samples_per_s", "epoch_train_s", "eval_s", "best_epoch", "best_val_acc", "test_acc", "test_loss",
                "test_ece", "test_confidence", "micro_batch_size", "accumulation_steps", "peak_mem_gib",
                "time_total_s", "time_this_iter_s", "resumed_from_epoch", "oom_halvings", "replayed", "from_checkpoint"]


def load_result_grid(experiment_path: str):
    """The ResultGrid of a finished or interrupted experiment, read from its files (no cluster)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(str(experiment_path)))


def _trials_by_id(result_grid) -> dict:
    analysis = getattr(result_grid, "_experiment_analysis", None)
    return {t.trial_id: t for t in getattr(analysis, "trials", None) or []}


def _with_stored_epochs(df: pd.DataFrame | None, checkpoint) -> pd.DataFrame | None:
    """Ray's result log of a trial, plus any epoch that the trial's latest checkpoint recorded but
    the log lost (a line dropped when a trial crashed or the driver was killed)."""
    if checkpoint is None:
        return df
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/history.json") as f:
            stored = json.loads(f.read())
    except Exception:  # an older or remote-unreadable checkpoint: keep what Ray logged
        return df
    have = set(df["epoch"]) if df is not None and "epoch" in df else set()
    missing = [h for h in stored if h.get("epoch") not in have]
    if not missing:
        return df
    extra = pd.DataFrame(missing).assign(from_checkpoint=True)
    out = pd.concat([d for d in (df, extra) if d is not None and len(d)], ignore_index=True)
    return out.sort_values("epoch", kind="stable").reset_index(drop=True)


def _error_line(error) -> str:
    """The exception line of a trial's error (Ray wraps it in a traceback), at most 300 chars."""
    if not error:
        return ""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "Error" in ln.split(":")[0]), lines[-1] if lines else "")[:300]


def build_frames(result_grid, study: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    epochs_planned = study["fixed"].get("epochs", 5)
    axes = list(study["axes"])
    known = _trials_by_id(result_grid)
    rows, hist = [], []
    for result in result_grid:
        m = result.metrics or {}
        # Our trial folders end in "_<trial_id>"; a trial that never reported has no metrics yet.
        trial_id = m.get("trial_id") or "_".join(Path(result.path).name.split("_")[-2:])
        trial = known.get(trial_id)
        cfg = result.config or (trial.config if trial is not None else {})
        axis_values = {k: cfg.get(k) for k in axes}
        df = _with_stored_epochs(result.metrics_dataframe, result.checkpoint)
        if df is not None and len(df):
            df = df[[c for c in df.columns if c in HISTORY_KEEP or c == "test_reliability"]].copy()
            for k, v in axis_values.items():
                if k not in df.columns:  # an axis named like a reported metric (lr): the metric stays
                    df.insert(0, k, v)
            df.insert(0, "trial_id", trial_id)
            hist.append(df)
        status = trial.status if trial is not None else ("ERROR" if result.error else "TERMINATED")
        if result.error:
            status = "ERROR"
        epochs_run = int(m.get("epoch", 0) or 0)
        planned = cfg.get("epochs", epochs_planned)
        rows.append({
            "trial_id": trial_id, **axis_values,
            "status": status,
            "stopped_early": bool(status == "TERMINATED" and epochs_run < planned),
            "epochs_run": epochs_run, "epochs_planned": planned,
            "optimizer_steps": m.get("optimizer_steps"), "samples_seen": m.get("samples_seen"),
            "best_epoch": m.get("best_epoch"), "best_val_acc": m.get("best_val_acc"),
            "best_val_loss": m.get("best_val_loss"), "test_acc": m.get("test_acc"),
            "test_loss": m.get("test_loss"), "test_nll": m.get("test_nll"), "test_ece": m.get("test_ece"),
            "test_confidence": m.get("test_confidence"), "test_reliability": m.get("test_reliability"),
            "samples_per_s": (m["samples_seen"] / m["train_time_s"]) if m.get("train_time_s") else None,
            "wall_time_s": m.get("time_total_s"), "best_model_path": m.get("best_model_path"),
            "micro_batch_size": m.get("micro_batch_size"), "accumulation_steps": m.get("accumulation_steps"),
            "peak_mem_gib": m.get("peak_mem_gib"), "oom_halvings": m.get("oom_halvings"),
            "device": m.get("device"), "gpu_share": m.get("gpu_share"), "precision": m.get("precision"),
            "node_id": m.get("node_id"),
            "n_train": m.get("n_train"), "n_val": m.get("n_val"), "n_test": m.get("n_test"),
            "val_majority_rate": m.get("val_majority_rate"),
            **{k: cfg.get(k) for k in ("lr", "warmup_ratio", "weight_decay", "max_len") if k not in axes},
            "error": _error_line(result.error),
            "trial_path": result.path,
        })
    trials = pd.DataFrame(rows)
    history = pd.concat(hist, ignore_index=True) if hist else pd.DataFrame(columns=["trial_id", *axes, "epoch"])
    sort = [k for k in AXIS_ORDER if k in trials.columns] + [k for k in axes if k not in AXIS_ORDER]
    if len(trials):
        trials = trials.sort_values(sort, kind="stable").reset_index(drop=True)
    return trials, history


def export(result_grid, study: dict, out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write trials/history as CSV and Parquet into ``out_dir``; return both frames."""
    out = Path(out_dir)
    trials, history = build_frames(result_grid, study)
    for name, df in (("trials", trials), ("history", history)):
        df.to_csv(out / f"{name}.csv", index=False)
        df.to_parquet(out / f"{name}.parquet", index=False)
    return trials, history


def console_table(trials: pd.DataFrame, axes: list[str]) -> str:
    """The final table, sorted by test accuracy."""
    if trials.empty:
        return "(no trials)"
    cols = [c for c in [*axes, "status", "stopped_early", "epochs_run", "optimizer_steps", "best_epoch",
                        "best_val_acc", "test_acc", "test_loss", "test_ece", "samples_per_s", "wall_time_s"]
            if c in trials.columns]
    t = trials.sort_values("test_acc", ascending=False, na_position="last")[cols]
    return t.to_string(index=False, float_format=lambda x: "nan" if math.isnan(x) else f"{x:.4g}")
