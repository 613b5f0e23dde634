"""The Tune callbacks of a study run (on the driver): the progress line, settling finished trials'
folders, and MLflow tracking when the study asks."""
from __future__ import annotations

import logging
import posixpath
from pathlib import Path

from ray.tune import Callback

from ..config import Study
from .progress import StudyProgress
from .trial_files import settle_finished_trial

log = logging.getLogger(__name__)


class SettleFinishedTrials(Callback):
    """When a trial finishes (Tune calls this before it stops the trial's actor, which is then
    blocked in its last report with its checkpoint persisted): its best model made final and, with
    ``keep_when_finished: best_model``, its checkpoints' training state removed, so a study's disk
    is what its running trials need plus one best model per finished trial."""

    def __init__(self, keep: str):
        self.keep = keep

    def on_trial_complete(self, iteration, trials, trial, **info):
        ckpt = trial.checkpoint
        if ckpt is None:
            return
        best_epoch = (trial.last_result or {}).get("best_epoch")
        try:
            settle_finished_trial(ckpt.filesystem, posixpath.dirname(ckpt.path.rstrip("/")), best_epoch, self.keep)
        except OSError as e:   # never fail a finished trial over its clean-up
            log.warning("%s: could not settle the finished trial's folder (%s)", trial, e)


def study_callbacks(study: Study, stage: str, study_dir: str | Path) -> list:
    """The callbacks for one Tune run (``stage``: grid / search / repeat) of ``study``.
    mlflow is imported only here, and only for a study with ``tracking.mlflow``."""
    callbacks = [StudyProgress(epochs_default=study.max_epochs()),
                 SettleFinishedTrials(study.keep_when_finished)]
    uri = study.tracking.mlflow
    if uri:
        from .tracking import mlflow_callback

        callbacks.append(mlflow_callback(uri, study, stage, study_dir))
    return callbacks
