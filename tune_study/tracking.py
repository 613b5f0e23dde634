"""MLflow tracking of a study (``tracking: {mlflow: URI}``): one MLflow run per trial.

Ray Tune's own ``MLflowLoggerCallback`` runs on the driver and does the work: it creates the
experiment (named like the study), one run per trial (named like the trial, see
``study.trial_name``), logs the trial's config as params and ends the run with the trial's status.
The subclass here changes what a result becomes:

* every evaluation of val is a point, the mid-epoch ones too (the trainable reports once per epoch,
  its ``evals`` JSON holding the epoch's evaluations);
* the step is the number of training samples seen, so the curves of different batch sizes line
  up. The callback steps by ``timesteps_total`` when a result has it: each point carries it, equal
  to ``samples_seen`` (it is logged as a metric too);
* only the study's own numeric metrics are logged (not Tune's bookkeeping or the config again);
* tags: ``stage`` (grid / search / repeat), ``study``, and per trial ``seed`` and ``trial_id``
  (the key of trials.csv).

Importing this module imports mlflow: ``callbacks`` imports it only when a study asks for tracking.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

# mlflow decides whether to send usage telemetry when it starts; a study stays offline unless the
# user asked for it (MLFLOW_DISABLE_TELEMETRY=false). Set before anything imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Tune's public path of the callback (ray.tune.logger.mlflow re-exports
# ray.air.integrations.mlflow's). It is a driver-side callback, not one of the ray.train / ray.air
# session APIs that raise inside a trainable.
from ray.tune.logger.mlflow import MLflowLoggerCallback  # noqa: E402

from .columns import EPOCH_COLUMNS, EVAL_COLUMNS  # noqa: E402

# What a point logs: the evaluation's numbers and, at an epoch's end, the epoch's (epoch_end is a flag).
METRICS = tuple(dict.fromkeys(c for c in (*EVAL_COLUMNS, *EPOCH_COLUMNS, "time_total_s") if c != "epoch_end"))
STEP_KEY = "timesteps_total"   # ray.tune.result.TIMESTEPS_TOTAL: MLflowLoggerCallback's step when present


def tracking_uri(uri: str, study_dir: str | Path) -> str:
    """The tracking URI a study's ``tracking.mlflow`` names; ``auto``: a SQLite file in the study folder.
    A SQLite file's folder is created (SQLite creates the file, not its folder)."""
    if uri == "auto":
        return f"sqlite:///{Path(study_dir).expanduser().resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return uri


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metric_point(values: dict, iteration: int) -> dict:
    """One MLflow point of a result or of one of its evaluations: its numeric study metrics, and the
    step (samples seen; Tune's training_iteration when a value lacks it)."""
    point = {k: values[k] for k in METRICS if k in values and _number(values[k])}
    if _number(values.get("samples_seen")):
        point[STEP_KEY] = values["samples_seen"]
    else:
        point["training_iteration"] = iteration
    return point


def evaluations(result: dict) -> list[dict]:
    """The mid-epoch evaluations of an epoch's result (the epoch-end one is the result itself)."""
    evals = result.get("evals")
    evals = json.loads(evals) if isinstance(evals, str) and evals else []
    return [e for e in evals if not e.get("epoch_end")]


class StudyMLflowCallback(MLflowLoggerCallback):
    """MLflowLoggerCallback with every evaluation as a point, stepped by samples seen, and per-trial tags."""

    def log_trial_start(self, trial):
        # The callback tags every run with ``self.tags``: for this trial's run they name its seed and id too.
        shared = self.tags
        self.tags = {**shared, "seed": str(trial.config.get("seed", 0)), "trial_id": trial.trial_id}
        try:
            super().log_trial_start(trial)
        finally:
            self.tags = shared

    def log_trial_result(self, iteration: int, trial, result: dict):
        for e in evaluations(result):
            if _number(e.get("samples_seen")):
                super().log_trial_result(iteration, trial, metric_point(e, iteration))
        super().log_trial_result(iteration, trial, metric_point(result, iteration))


def mlflow_callback(uri: str, study: dict, stage: str, study_dir: str | Path) -> StudyMLflowCallback:
    """The callback recording one Tune run (a stage) of the study into the experiment named like it."""
    return StudyMLflowCallback(tracking_uri=tracking_uri(uri, study_dir), experiment_name=study["name"],
                               tags={"study": study["name"], "stage": stage})
