"""Early stopping whose decisions depend on the metric values alone: ASHA taken in trial order.

Ray's ``ASHAScheduler`` compares a trial reaching a rung with the trials that reached it *before*
it, so which trial is faster decides who stops, and two runs of one command give two studies.
``InOrderASHA`` takes the same kind of decision, but a trial is compared with the trials *created
before it* (the grid's order, or the searcher's) that reach the rung, whenever they get there: it
goes on only if it ranks in the best ``ceil(m / reduction_factor)`` of those ``m`` trials (itself
included), ranked by val accuracy, ties by lower val loss, then by trial order. A trial that reaches
a rung before an earlier trial that can still reach it is paused (Tune keeps its last checkpoint
and later restarts it from there) until that decision can be taken.

Why not Ray's own options (Ray 2.60, ray/tune/schedulers):
  - ``ASHAScheduler`` (async_hyperband.py) has no synchronous mode: its arguments are time_attr,
    metric, mode, max_t, grace_period, reduction_factor, brackets, stop_last_trials, and with
    brackets > 1 it assigns trials to brackets at random.
  - ``MedianStoppingRule`` compares against the trials that have reported so far: timing again.
  - ``HyperBandScheduler`` (hyperband.py) is synchronous but sizes its brackets from max_t and
    reduction_factor alone: with max_t = 2 and reduction factor 2 a band is two brackets of two
    trials, one of which never stops anyone, so of the default's 8 trials at most 2 could stop
    (ASHA's rule stops about half), and it has no grace period. It halves a bracket when the trials
    *in it at that moment* reach the milestone; trials join a bracket only when they are created,
    and under ``max_concurrent_trials`` (which counts paused trials as running) they are created as
    others finish, so who is compared depends on concurrency and timing (ray-project/ray#37605).
  - Deciding a rung only when every trial of the study has reached it would deadlock under
    ``max_concurrent_trials``: the paused trials hold every slot, so the trials that would complete
    the rung are never created.
Here the earliest unfinished trial never waits (it only waits for earlier ones), so under any
concurrency limit the study goes on, and the decisions are ASHA's rule with the results taken in
trial order. A wait costs the trial's slot (idle until the earlier trial reports) and a restart
from its checkpoint (a new worker process and the checkpoint read).

A resumed experiment (``Tuner.restore``) re-adds its trials latest-result first: the order is read
from each trial's experiment tag (Tune's searchers begin it with the creation counter), and each
trial's rung results from its latest checkpoint's ``history.json``. A trial that was waiting when
the experiment stopped comes back PENDING, and Tune starts pending trials without asking the
scheduler: it goes on without its decision.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Optional

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ..config import Study

log = logging.getLogger(__name__)

EARLY_STOPPING_METRIC = "val_acc"   # each epoch's val accuracy (ties: the lower val loss)


def rung_epochs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which trials are compared: ceil(grace_period * reduction_factor**k) below
    max_t (at max_t every trial ends anyway). The first is grace_period."""
    rungs, k = [], 0
    while (r := math.ceil(grace_period * reduction_factor ** k - 1e-9)) < max_t:
        if not rungs or r > rungs[-1]:
            rungs.append(r)
        k += 1
    return rungs


def survives(own: tuple, earlier: list[tuple], reduction_factor: float) -> bool:
    """Does a trial with rank key ``own`` go on, among the rank keys of the earlier trials at its
    rung? It must be in the best ceil(m / reduction_factor) of the m trials (so the first always
    goes on). Keys sort best first and are distinct (the trial's order is their last element), so
    the rank, and the decision, never depend on the order the keys came in."""
    rank = 1 + sum(k < own for k in earlier)
    return rank <= math.ceil((len(earlier) + 1) / reduction_factor - 1e-9)


def _lower_better(x, sign: float = 1.0) -> float:
    """``sign * x`` as a sort key, a missing or NaN value last."""
    try:
        x = sign * float(x)
    except (TypeError, ValueError):
        return math.inf
    return math.inf if math.isnan(x) else x


class InOrderASHA(FIFOScheduler):
    """ASHA whose rung decisions follow trial order, not arrival order (see the module doc).

    ``time_attr`` counts epochs (our trainable reports once per epoch); ``metric``/``mode`` as given
    (``make_scheduler``: EARLY_STOPPING_METRIC), else Tune's; ``tie_metric`` (lower is better) breaks ties of the metric.
    """

    # each result must be seen before the trial trains on: a buffered run would train past a rung
    _supports_buffered_results = False

    def __init__(self, max_t: int, grace_period: int = 1, reduction_factor: float = 2,
                 time_attr: str = "epoch", metric: Optional[str] = None, mode: Optional[str] = None,
                 tie_metric: str = "val_loss"):
        assert 1 <= grace_period <= max_t and reduction_factor > 1, (grace_period, max_t, reduction_factor)
        super().__init__()
        self._metric, self._mode = metric, mode
        self._time_attr, self._tie_metric = time_attr, tie_metric
        self._max_t, self._rf = max_t, reduction_factor
        self._rungs = rung_epochs(grace_period, reduction_factor, max_t)
        self._order: dict[str, tuple] = {}         # trial id -> its place in creation order
        self._keys: dict[int, dict[str, tuple]] = {r: {} for r in self._rungs}   # rung -> id -> rank key
        self._decided: dict[tuple[str, int], bool] = {}   # (id, rung) -> goes on
        self._waiting: dict[str, int] = {}         # paused id -> the rung it waits at
        self._done: set[str] = set()               # ids that reach no further rung
        self._settling = self._again = False

    # -- Tune's hooks

    def set_search_properties(self, metric, mode, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric, self._mode = self._metric or metric, self._mode or mode
        return True

    def on_trial_add(self, tune_controller, trial: Trial):
        if not self._metric or self._mode not in ("min", "max"):
            raise ValueError(f"InOrderASHA needs a metric and a mode, got {self._metric!r} and {self._mode!r}")
        n = len(self._order)   # (creation index, order added) is unique: the last tie-breaker
        self._order.setdefault(trial.trial_id, (_creation_index(trial, n), n))
        if trial.status in (Trial.TERMINATED, Trial.ERROR):   # a restored experiment's finished trial
            self._done.add(trial.trial_id)
        self._restore_rungs(trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        tid, epoch = trial.trial_id, result.get(self._time_attr)
        if epoch not in self._keys or self._metric not in result:
            return TrialScheduler.CONTINUE
        self._keys[epoch].setdefault(tid, self._key(tid, result))
        if (tid, epoch) not in self._decided:
            if self._blocked(tid, epoch):
                self._waiting[tid] = epoch
                self._settle(tune_controller)
                return TrialScheduler.PAUSE
            self._decide(tid, epoch)
        self._settle(tune_controller)   # its record may complete the comparisons later trials wait on
        return TrialScheduler.CONTINUE if self._decided[tid, epoch] else TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict):
        self._finish(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial: Trial):
        self._finish(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial):
        self._finish(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller) -> Optional[Trial]:
        """The earliest trial that may run: pending, or paused and no longer waiting for a decision."""
        ready = [t for t in tune_controller.get_trials()
                 if t.status == Trial.PENDING or (t.status == Trial.PAUSED and t.trial_id not in self._waiting)]
        return min(ready, key=lambda t: self._order.get(t.trial_id, math.inf), default=None)

    def debug_string(self) -> str:
        stopped = sum(not v for v in self._decided.values())
        return (f"Using ASHA in trial order (rungs at epochs {self._rungs}): {stopped} stopped, "
                f"{len(self._waiting)} paused for a rung decision")

    def _restore_rungs(self, trial: Trial):
        """A trial of a resumed experiment: its rung results, from its latest checkpoint's
        ``history.json`` (the metrics of every epoch so far), count for the trials after it; the
        rungs it has passed are decided (it went on), and a finished trial that ended at a rung
        before ``max_t`` was stopped there."""
        stored = _stored_history(trial)
        last = max((h.get(self._time_attr) or 0 for h in stored), default=0)
        for h in stored:
            r = h.get(self._time_attr)
            if r not in self._keys or self._metric not in h:
                continue
            self._keys[r].setdefault(trial.trial_id, self._key(trial.trial_id, h))
            if r < last:
                self._decided[trial.trial_id, r] = True
            elif trial.status == Trial.TERMINATED:
                self._decided[trial.trial_id, r] = False

    # -- decisions

    def _key(self, tid: str, result: dict) -> tuple:
        sign = -1.0 if self._mode == "max" else 1.0
        return (_lower_better(result[self._metric], sign), _lower_better(result.get(self._tie_metric)),
                self._order[tid])

    def _blocked(self, tid: str, rung: int) -> bool:
        """Can an earlier trial still reach this rung without having reported there?"""
        mine = self._order[tid]
        return any(i < mine and t not in self._done and t not in self._keys[rung]
                   for t, i in self._order.items())

    def _decide(self, tid: str, rung: int) -> bool:
        mine = self._order[tid]
        earlier = [k for t, k in self._keys[rung].items() if self._order[t] < mine]
        ok = self._decided[tid, rung] = survives(self._keys[rung][tid], earlier, self._rf)
        if not ok:
            self._done.add(tid)
        log.debug("trial %s at epoch %s: %s (%d earlier trials)", tid, rung, "goes on" if ok else "stops",
                  len(earlier))
        return ok

    def _finish(self, tune_controller, trial: Trial):
        self._done.add(trial.trial_id)
        self._waiting.pop(trial.trial_id, None)
        self._settle(tune_controller)

    def _settle(self, tune_controller):
        """Decide every paused trial whose comparison is now complete: it goes on (``choose_trial_to_run``
        restarts it) or stops. Stopping one calls back into ``on_trial_remove``: the loop reruns then."""
        if self._settling:
            self._again = True
            return
        self._settling = True
        try:
            self._again = True
            while self._again:
                self._again = False
                for tid, rung in sorted(self._waiting.items(), key=lambda x: self._order[x[0]]):
                    if tid not in self._waiting or self._blocked(tid, rung):
                        continue
                    del self._waiting[tid]
                    if not self._decide(tid, rung):
                        trial = next((t for t in tune_controller.get_trials() if t.trial_id == tid), None)
                        if trial is not None:
                            tune_controller.stop_trial(trial)
                            _save_status(tune_controller, trial)
                    self._again = True
        finally:
            self._settling = False


def _save_status(tune_controller, trial: Trial) -> None:
    """Make Tune write a trial stopped while PAUSED into its experiment state. Ray 2.60 re-serializes a
    trial there only when it is marked (on a result, when its actor stops); a paused trial has no
    actor, so its TERMINATED status never reached the file: the exports called it PAUSED and
    ``--resume`` would have trained it on. No public API marks a trial; the scheduler's controller
    is wrapped (``TrialRunnerWrapper``), so this reaches through it, and says so if it cannot."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    mark = getattr(controller, "_mark_trial_to_checkpoint", None)
    if mark is None:
        log.warning("trial %s was stopped while paused, but this Ray version cannot be asked to save its "
                    "status: the saved experiment state may still call it PAUSED", trial)
        return
    mark(trial)


def _creation_index(trial: Trial, fallback: int) -> int:
    """The trial's place in creation order: Tune's searchers begin the experiment tag with it
    (``<counter>_<config>``); a resumed experiment re-adds its trials latest-result first."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) if head.isdigit() else fallback


def _stored_history(trial: Trial) -> list[dict]:
    """``history.json`` of the trial's latest checkpoint, read through its filesystem; [] if none."""
    ckpt = getattr(trial, "checkpoint", None)
    if ckpt is None:
        return []
    try:
        with ckpt.filesystem.open_input_stream(f"{ckpt.path}/history.json") as f:
            return json.loads(f.read())
    except Exception:   # no such file (a trainable of another kind) or an unreadable checkpoint
        return []


def make_scheduler(study: Study):
    """The study's early stopping (its ``early_stopping``, up to its trials' most epochs), or None when off."""
    es, epochs = study.early_stopping, study.max_epochs()
    if es is None:
        return None
    return InOrderASHA(max_t=epochs, grace_period=min(es.grace_period, epochs),
                       reduction_factor=es.reduction_factor, metric=EARLY_STOPPING_METRIC, mode="max")
