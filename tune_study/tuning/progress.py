"""A progress line with a time left, printed while a study's Tune run goes on.

    progress: 1/4 trials done, 2 running, 1 pending; 3/8 trial-epochs; elapsed 0:00:42; time left ~0:01:10 (...)

at Tune's reporting interval (``REPORT_INTERVAL_S``, the CLIReporter's), and once at the end.

How the time left is estimated: the samples still to train are, for every trial not finished (the
running ones, the pending ones and those the searcher has not created yet), its planned epochs
times the training split's size, less the samples it has seen. They are divided by the measured
throughput: the per-trial samples/s of the trials so far (all their samples over all their wall
time, evaluations and start-up included) times the trials that run at once (the most seen running,
at most the trials left). A running trial is credited with what it has trained since its latest
result at that rate (at most the rest of its epochs), so the time left counts down between
results. The planned epochs are those of a trial that is never stopped early, so
with early stopping (ASHA) the estimate is an upper bound on the training left: a trial cut at a
rung never runs the rest. Trial-epochs: the epochs the trials have run, of those they would run if
no further trial were stopped early (a finished trial counts the epochs it ran).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from ray.tune import Callback

from ..config import trial_config

REPORT_INTERVAL_S = 30.0   # the CLIReporter's max_report_frequency (runner._tuner)
INTERVAL_ENV = "TUNE_STUDY_PROGRESS_S"   # seconds between lines, to see them in a short run
FINISHED = ("TERMINATED", "ERROR")


@dataclass(frozen=True)
class TrialState:
    """What the estimate needs of one trial: Tune's status and its latest result's counters."""
    status: str
    epochs_done: int = 0
    epochs_planned: int = 0
    samples_seen: float = 0.0
    seconds: float = 0.0          # the trial's wall time so far (Tune's time_total_s)
    n_train: int | None = None    # training examples per epoch
    since_result_s: float = 0.0   # a running trial: seconds since its latest result


@dataclass(frozen=True)
class Progress:
    done: int
    running: int
    pending: int
    epochs_done: int
    epochs_planned: int
    samples_left: float | None      # None: not known before a trial has reported
    samples_per_s: float | None     # per trial
    at_once: int
    time_left_s: float | None


def trial_state(trial, now: float) -> TrialState:
    """A ray.tune Trial's state at ``now`` (time.time()); its planned epochs are its config's
    (``trial_config``: the study's, or training's default)."""
    r = trial.last_result or {}
    n_train = r.get("n_train")
    stamp = r.get("timestamp")   # Tune's: when the result was reported (Unix seconds)
    return TrialState(status=trial.status, epochs_done=int(r.get("epoch") or 0),
                      epochs_planned=trial_config(trial.config).epochs,
                      samples_seen=float(r.get("samples_seen") or 0.0), seconds=float(r.get("time_total_s") or 0.0),
                      n_train=int(n_train) if n_train else None,
                      since_result_s=max(now - stamp, 0.0) if stamp else 0.0)


def estimate(trials: list[TrialState], total: int, epochs_default: int, slots: int) -> Progress:
    """The progress of a Tune run of ``total`` trials (``trials``: those created so far; the others
    run ``epochs_default`` epochs each) whose trials ran ``slots`` at once at most."""
    done = [t for t in trials if t.status in FINISHED]
    running = sum(t.status == "RUNNING" for t in trials)
    unborn = max(total - len(trials), 0)
    open_ = [t for t in trials if t.status not in FINISHED]
    epochs_done = sum(t.epochs_done for t in trials)
    planned = sum(t.epochs_done for t in done) + sum(t.epochs_planned for t in open_) + unborn * epochs_default
    n_train = next((t.n_train for t in trials if t.n_train), None)
    measured = [t for t in trials if t.samples_seen > 0 and t.seconds > 0]
    rate = sum(t.samples_seen for t in measured) / sum(t.seconds for t in measured) if measured else None

    def rest(t: TrialState) -> float:
        todo = max(t.epochs_planned * n_train - t.samples_seen, 0.0)
        since = rate * t.since_result_s if rate and t.status == "RUNNING" and t.samples_seen > 0 else 0.0
        return todo - min(since, todo)

    samples_left = None
    if n_train:
        samples_left = sum(rest(t) for t in open_) + unborn * epochs_default * n_train
    left = len(open_) + unborn
    at_once = max(min(slots, left), 1)
    time_left = None
    if samples_left is not None and rate:
        time_left = samples_left / (rate * at_once)
    return Progress(done=len(done), running=running, pending=len(trials) - len(done) - running + unborn,
                    epochs_done=epochs_done, epochs_planned=planned, samples_left=samples_left,
                    samples_per_s=rate, at_once=at_once, time_left_s=time_left)


def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def progress_line(p: Progress, elapsed_s: float) -> str:
    head = (f"progress: {p.done}/{p.done + p.running + p.pending} trials done, {p.running} running, "
            f"{p.pending} pending; {p.epochs_done}/{p.epochs_planned} trial-epochs; elapsed {clock(elapsed_s)}")
    if p.done + p.running + p.pending == p.done:
        return head
    if p.time_left_s is None:
        return f"{head}; time left: unknown until a trial has reported an epoch"
    return (f"{head}; time left ~{clock(p.time_left_s)} ({p.samples_left:.0f} samples left at "
            f"{p.samples_per_s:.1f} samples/s per trial x {p.at_once} at once; at most this with early stopping)")


def interval_s() -> float:
    v = os.environ.get(INTERVAL_ENV)
    try:
        return float(v) if v else REPORT_INTERVAL_S
    except ValueError:
        return REPORT_INTERVAL_S


class StudyProgress(Callback):
    """Prints ``progress_line`` every ``interval`` seconds of a Tune run and once when it ends;
    ``epochs_default`` is what a trial not created yet counts (a search's: the study's most epochs)."""

    def __init__(self, epochs_default: int, interval: float | None = None):
        self.epochs_default = epochs_default
        self.interval = interval_s() if interval is None else interval

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        # Also on a resumed run (this object comes back from the experiment's pickle): a fresh clock.
        self.total = total_num_samples or 0
        self.started = self.last = time.monotonic()
        self.slots = 1

    def _print(self, trials) -> None:
        now = time.time()
        states = [trial_state(t, now) for t in trials]
        p = estimate(states, max(self.total, len(states)), self.epochs_default, self.slots)
        print(progress_line(p, time.monotonic() - self.started), flush=True)

    def on_step_end(self, iteration, trials, **info):
        self.slots = max(self.slots, sum(t.status == "RUNNING" for t in trials))
        now = time.monotonic()
        if now - self.last >= self.interval and math.isfinite(self.interval):
            self.last = now
            self._print(trials)

    def on_experiment_end(self, trials, **info):
        self._print(trials)
