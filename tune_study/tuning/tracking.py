"""MLflow tracking of a study (``tracking: {mlflow: URI}``): one MLflow run per trial.

Ray Tune's own ``MLflowLoggerCallback`` runs on the driver and does the work: it creates the
experiment (named like the study), one run per trial (named like the trial, see
``trainable.trial_name``), logs the trial's config as params and ends the run with the trial's status.
The subclass here changes what a result becomes:

* every evaluation of val is a point, the mid-epoch ones too (the trainable reports once per epoch,
  its ``evals`` JSON holding the epoch's evaluations);
* the step is the number of training samples seen, so the curves of different batch sizes line
  up (the callback's own step is Tune's training iteration, the epoch);
* an epoch's points are written in one batch (see ``StudyMLflowCallback``);
* only the study's own numeric metrics are logged (not Tune's bookkeeping or the config again);
* tags: ``stage`` (grid / search / repeat), ``study``, and per trial ``seed`` and ``trial_id``
  (the key of trials.csv).

Importing this module imports mlflow: ``callbacks`` imports it only when a study asks for tracking.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

# mlflow decides whether to send usage telemetry when it starts; a study stays offline unless the
# user asked for it (MLFLOW_DISABLE_TELEMETRY=false). Set before anything imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Tune's public path of the callback (a re-export of the one in Ray's AIR integrations). It runs on
# the driver: it is none of the Train / AIR session APIs that raise inside a Ray 2.60 trainable.
from ray.tune.logger.mlflow import MLflowLoggerCallback  # noqa: E402

from ..columns import EPOCH_COLUMNS, EVAL_COLUMNS  # noqa: E402
from ..config import Study, trial_config  # noqa: E402

# What a point logs: the evaluation's numbers and, at an epoch's end, the epoch's (epoch_end is a flag).
METRICS = tuple(dict.fromkeys(c for c in (*EVAL_COLUMNS, *EPOCH_COLUMNS, "time_total_s") if c != "epoch_end"))


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


def metric_point(values: dict) -> tuple[int, dict] | None:
    """One MLflow point of a result or of one of its evaluations: (its step, the samples seen; its
    numeric study metrics); None for a value without samples seen."""
    if not _number(values.get("samples_seen")):
        return None
    return int(values["samples_seen"]), {k: values[k] for k in METRICS if k in values and _number(values[k])}


def evaluations(result: dict) -> list[dict]:
    """The mid-epoch evaluations of an epoch's result (the epoch-end one is the result itself)."""
    evals = result.get("evals")
    evals = json.loads(evals) if isinstance(evals, str) and evals else []
    return [e for e in evals if not e.get("epoch_end")]


def result_metrics(result: dict, timestamp_ms: int) -> list:
    """An epoch's result as MLflow metrics: its mid-epoch evaluations, then its end."""
    from mlflow.entities import Metric

    points = [metric_point(v) for v in (*evaluations(result), result)]
    return [Metric(key=k, value=float(v), timestamp=timestamp_ms, step=step)
            for step, values in filter(None, points) for k, v in values.items()]


class StudyMLflowCallback(MLflowLoggerCallback):
    """MLflowLoggerCallback (experiment, runs named like the trials, params, end status) whose runs
    take per-trial tags and every evaluation as a point stepped by samples seen.

    The callback would log each metric of a result by its own call, stepped by training iteration:
    one SQLite transaction a metric, 1-2 s per epoch on two busy cores, and the trial waits on the
    driver meanwhile. An epoch's points go in one ``MlflowClient.log_batch`` instead."""

    def setup(self, *args, **kwargs):
        super().setup(*args, **kwargs)
        self._runs = {}   # trial id -> MLflow run id (of this Tune run: a resumed study starts afresh)

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def log_trial_start(self, trial):
        # The callback tags every run with ``self.tags``: for this trial's run they name its seed and id too.
        shared = self.tags
        self.tags = {**shared, "seed": str(trial_config(trial.config).seed), "trial_id": trial.trial_id}
        try:
            super().log_trial_start(trial)
        finally:
            self.tags = shared
        if trial.trial_id not in self._runs:   # the run the callback just started: the trial's newest
            client = self._client()
            experiment = client.get_experiment_by_name(self.experiment_name)
            runs = client.search_runs([experiment.experiment_id], f"tags.trial_id = '{trial.trial_id}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
            self._runs[trial.trial_id] = runs[0].info.run_id

    def log_trial_result(self, iteration: int, trial, result: dict):
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return super().log_trial_result(iteration, trial, result)
        self._client().log_batch(run_id, metrics=result_metrics(result, int(time.time() * 1000)))


def mlflow_callback(uri: str, study: Study, stage: str, study_dir: str | Path) -> StudyMLflowCallback:
    """The callback recording one Tune run (a stage) of the study into the experiment named like it."""
    return StudyMLflowCallback(tracking_uri=tracking_uri(uri, study_dir), experiment_name=study.name,
                               tags={"study": study.name, "stage": stage})
