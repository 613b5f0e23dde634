"""Tiny synthetic studies for the report tests: trials / history / predictions built as dataframes
with chosen numbers and written as a study folder (no training, no Ray)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

N_TEST, N_VAL, N_TRAIN = 150, 150, 1200


def trial(tid: str, model="minilm", batch_size=8, scheduler="constant", stage="grid", seed=0, **kw) -> dict:
    epochs_run = kw.pop("epochs_run", 3)
    spe = math.ceil(N_TRAIN / batch_size)
    row = {"trial_id": tid, "stage": stage, "model": model, "batch_size": batch_size, "scheduler": scheduler,
           "seed": seed, "status": "TERMINATED", "stopped_early": False, "epochs_run": epochs_run,
           "epochs_planned": 3, "optimizer_steps": epochs_run * spe, "samples_seen": epochs_run * N_TRAIN,
           "best_epoch": epochs_run, "best_val_acc": 0.8, "best_val_loss": 0.4, "test_acc": 0.8, "test_loss": 0.45,
           "test_ece": 0.05, "test_confidence": 0.82, "test_reliability": "[]", "n_test": N_TEST, "n_val": N_VAL,
           "val_majority_rate": 0.5, "evals_per_epoch": 1}
    row.update(kw)
    return row


def labels(n=N_TEST) -> np.ndarray:
    return np.arange(n) % 2


def preds(tid: str, correct, conf) -> pd.DataFrame:
    """Predictions of one trial: ``correct`` (bools per test row) made with confidence ``conf``
    (a number or one per row)."""
    y = labels(len(correct))
    correct = np.asarray(correct, dtype=bool)
    conf = np.broadcast_to(np.asarray(conf, dtype=float), correct.shape)
    pred = np.where(correct, y, 1 - y)
    prob_pos = np.where(pred == 1, conf, 1 - conf)
    return pd.DataFrame({"trial_id": tid, "row": np.arange(len(y)), "label": y, "prob_pos": prob_pos})


def correct_mask(n_right: int, n=N_TEST, offset=0) -> np.ndarray:
    """The first ``n_right`` rows (after ``offset``, cyclically) right, the rest wrong."""
    m = np.zeros(n, dtype=bool)
    m[(np.arange(n_right) + offset) % n] = True
    return m


def curve(tid: str, batch_size: int, acc_at_steps, evals_per_epoch=1, epochs=3, **trial_axes) -> list[dict]:
    """History of one trial: val acc = acc_at_steps(optimizer steps) at each evaluation."""
    spe = math.ceil(N_TRAIN / batch_size)
    rows = []
    for j in range(1, epochs * evals_per_epoch + 1):
        ep = j / evals_per_epoch
        steps = ep * spe
        acc = float(acc_at_steps(steps))
        rows.append({"trial_id": tid, "epoch": ep, "epoch_end": j % evals_per_epoch == 0,
                     "optimizer_steps": steps, "samples_seen": ep * N_TRAIN, "train_loss": 0.7 - 0.3 * (acc - 0.5),
                     "val_loss": 0.7 - 0.4 * (acc - 0.5), "val_acc": acc})
    return rows


def flat_history(trials: list[dict], acc=0.8) -> list[dict]:
    out = []
    for t in trials:
        out += curve(t["trial_id"], t["batch_size"], lambda s: acc, epochs=int(t["epochs_run"]))
    return out


def write_study(root: Path, name: str, trials: list[dict], history: list[dict] | None = None,
                predictions: list[pd.DataFrame] | None = None, axes=("model", "batch_size", "scheduler"),
                kind="grid") -> Path:
    d = Path(root) / name
    d.mkdir(parents=True)
    t = pd.DataFrame(trials)
    h = pd.DataFrame(history if history is not None else flat_history(trials))
    if not len(h):  # as results.export writes a history no trial has reported to
        h = pd.DataFrame(columns=["trial_id", "stage", *axes, "epoch"])
    space = {"name": name, "description": "synthetic", "axes": {a: sorted(set(t[a])) for a in axes if a in t},
             "fixed": {"lr": 5e-5, "epochs": 3, "max_len": 128}}
    if kind == "search":
        space["num_samples"] = len(t)
    (d / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    t.to_parquet(d / "trials.parquet", index=False)
    h.to_parquet(d / "history.parquet", index=False)
    if predictions:
        pd.concat(predictions, ignore_index=True).to_parquet(d / "predictions.parquet", index=False)
    return d


def report(root: Path, name: str, *args, **kw) -> str:
    from tune_study.report import build_report

    d = write_study(root, name, *args, **kw)
    return build_report(d, log=lambda *_: None, figures=False).read_text()


def line(text: str, needle: str) -> str:
    """The one report line holding ``needle``."""
    hits = [ln for ln in text.splitlines() if needle in ln]
    assert len(hits) >= 1, f"{needle!r} not in report"
    return hits[0]


def with_noise(history: list[dict], b_simple, trials=None) -> list[dict]:
    """``history`` with the noise-scale columns: each interval's B_simple = ``b_simple`` (a number,
    NaN for undefined, or a function of (trial_id, epoch)), from |G|² = 1 and tr(Σ) = B_simple per
    window; one window per optimizer step of the interval; epoch-end rows carry it as the epoch's
    value too. ``trials`` (rows) get their first-epoch and last-epoch values from it."""
    f = b_simple if callable(b_simple) else (lambda tid, ep: b_simple)
    out, prev = [], {}
    for r in history:
        tid, b = r["trial_id"], f(r["trial_id"], r["epoch"])
        w = int(round(r["optimizer_steps"] - prev.get(tid, 0.0)))
        prev[tid] = r["optimizer_steps"]
        undefined = b != b
        row = {**r, "gns_g2": math.nan if undefined else 1.0, "gns_trace": math.nan if undefined else float(b),
               "gns_b_simple": float(b), "gns_windows": w}
        row["gns_b_simple_epoch"] = float(b) if r["epoch_end"] else math.nan
        out.append(row)
    for t in trials or []:
        t["gns_b_simple_first_epoch"] = float(f(t["trial_id"], 1.0))
        t["gns_b_simple_epoch"] = float(f(t["trial_id"], float(t["epochs_run"])))
    return out
