"""Tune callbacks of the study runner (on the driver)."""
from __future__ import annotations

import logging
import posixpath

from ray.tune import Callback

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
