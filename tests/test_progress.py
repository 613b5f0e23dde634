"""The progress line's estimate (tune_study.tuning.progress), on cases whose answer is known exactly."""
from __future__ import annotations

import re

import pytest

from tune_study.tuning.progress import TrialState, clock, estimate, interval_s, progress_line

N = 240   # training examples per epoch


def _study(seconds_b=14.0):
    """4 trials of 2 epochs: A stopped early after 1 epoch, B running (1 of 2 done), C pending, one not yet
    created. Per-trial rate: (240 + 240) / (10 + 14) = 20 samples/s; 1200 samples left (B: 240, C and the
    unborn one 480 each); 2 at once -> 30 s."""
    return [TrialState("TERMINATED", 1, 2, 240, 10.0, N), TrialState("RUNNING", 1, 2, 240, seconds_b, N),
            TrialState("PENDING", 0, 2)]


def test_estimate_of_a_known_case():
    p = estimate(_study(), total=4, epochs_default=2, slots=2)
    assert (p.done, p.running, p.pending) == (1, 1, 2)
    assert (p.epochs_done, p.epochs_planned) == (2, 7)   # the stopped trial counts the 1 epoch it ran
    assert p.samples_left == 1200
    assert p.samples_per_s == pytest.approx(20.0)
    assert p.at_once == 2
    assert p.time_left_s == pytest.approx(30.0)


def test_estimate_follows_the_measured_throughput():
    # B took 38 s instead of 14: 480 / 48 = 10 samples/s, so twice the time left
    p = estimate(_study(seconds_b=38.0), total=4, epochs_default=2, slots=2)
    assert p.samples_per_s == pytest.approx(10.0)
    assert p.time_left_s == pytest.approx(60.0)


def test_fewer_trials_left_than_slots_run_fewer_at_once():
    trials = [TrialState("TERMINATED", 2, 2, 480, 24.0, N), TrialState("RUNNING", 1, 2, 240, 12.0, N)]
    p = estimate(trials, total=2, epochs_default=2, slots=2)
    assert p.at_once == 1 and p.pending == 0
    assert p.time_left_s == pytest.approx(240 / 20.0)


def test_unknown_before_any_result_and_nothing_left_at_the_end():
    p = estimate([TrialState("RUNNING", 0, 3), TrialState("PENDING", 0, 3)], total=4, epochs_default=3, slots=2)
    assert p.time_left_s is None and p.samples_left is None
    assert (p.epochs_done, p.epochs_planned, p.pending) == (0, 12, 3)
    assert "time left: unknown" in progress_line(p, 5.0)
    end = estimate([TrialState("TERMINATED", 2, 2, 480, 24.0, N)] * 2, total=2, epochs_default=2, slots=2)
    assert end.samples_left == 0 and end.time_left_s == 0
    assert "time left" not in progress_line(end, 50.0)


def test_line_reads_the_estimate():
    line = progress_line(estimate(_study(), total=4, epochs_default=2, slots=2), 42.0)
    assert re.search(r"progress: 1/4 trials done, 1 running, 2 pending; 2/7 trial-epochs; elapsed 0:00:42; "
                     r"time left ~0:00:30 \(1200 samples left at 20.0 samples/s per trial x 2 at once", line)
    assert clock(3725) == "1:02:05"


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv("TUNE_STUDY_PROGRESS_S", raising=False)
    assert interval_s() == 30.0
    monkeypatch.setenv("TUNE_STUDY_PROGRESS_S", "0.5")
    assert interval_s() == 0.5


def test_running_trial_is_credited_for_the_time_since_its_result():
    # 6 s since B's result at 20 samples/s: 120 of B's 240 remaining samples are credited -> 1080 left, 27 s
    trials = _study()
    trials[1] = TrialState("RUNNING", 1, 2, 240, 14.0, N, since_result_s=6.0)
    p = estimate(trials, total=4, epochs_default=2, slots=2)
    assert p.samples_left == pytest.approx(1080)
    assert p.time_left_s == pytest.approx(27.0)
    # never more than the trial has left: a trial overdue for its result counts as about to finish
    trials[1] = TrialState("RUNNING", 1, 2, 240, 14.0, N, since_result_s=600.0)
    assert estimate(trials, total=4, epochs_default=2, slots=2).samples_left == pytest.approx(960)
    # a finished trial is not credited (it has nothing left), nor is a pending one
    trials[0] = TrialState("TERMINATED", 1, 2, 240, 10.0, N, since_result_s=600.0)
    assert estimate(trials, total=4, epochs_default=2, slots=2).samples_left == pytest.approx(960)
