"""InOrderASHA's decisions: the same whatever order the results arrive in (driven through Tune's
scheduler hooks by a small event simulation of the controller), right on cases worked by hand, and
Ray's ASHAScheduler as the negative control that the simulation does tell arrival orders apart."""
from __future__ import annotations

import heapq

import numpy as np
import pytest
from conftest import ensure_local_ray
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune_study.config import load_space
from tune_study.tuning.early_stopping import InOrderASHA, make_scheduler, rung_epochs, survives

# val (acc, loss) at epoch 1 of the 8 trials of a default study run, in trial order
DEFAULT_EPOCH1 = [(0.68, 0.5898), (0.78, 0.5915), (0.68, 0.6806), (0.61, 0.6891),
                  (0.68, 0.6224), (0.73, 0.6471), (0.57, 0.6842), (0.57, 0.6895)]


class FakeTrial:
    def __init__(self, i: int, status=Trial.PENDING, checkpoint=None):
        self.trial_id, self.status, self.checkpoint = f"t{i:02d}", status, checkpoint
        self.experiment_tag = f"{i}_batch_size=8"   # Tune's searchers begin the tag with the creation counter


class FakeController:
    """What a scheduler sees of Tune's controller: the trials, and stop_trial (which, as Tune's
    does, tells the scheduler: on_trial_remove for a paused trial, on_trial_complete for a running one)."""

    def __init__(self, scheduler):
        self.scheduler, self.trials = scheduler, []

    def get_trials(self):
        return list(self.trials)

    def stop_trial(self, trial):
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            return
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
        else:
            self.scheduler.on_trial_complete(self, trial, {})
        trial.status = Trial.TERMINATED


def simulate(scheduler, curves, conc: int, seed: int) -> tuple[int, ...]:
    """Run trials with per-epoch (val_acc, val_loss) ``curves`` under ``scheduler``, at most ``conc``
    unfinished trials at once (Tune's max_concurrent_trials, which counts paused trials), each epoch
    taking a random time: the epochs each trial ran. A paused trial restarts only when the scheduler
    chooses it; a pending one whenever a slot is free. Fails on a deadlock."""
    rng = np.random.default_rng(seed)
    ctl = FakeController(scheduler)
    trials, done_epochs, events, clock, seq = [], {}, [], 0.0, 0
    max_t = len(curves[0])

    def start(t):
        nonlocal seq
        t.status = Trial.RUNNING
        heapq.heappush(events, (clock + rng.exponential(), seq, t))
        seq += 1

    while True:
        while len(trials) < len(curves) and sum(t.status != Trial.TERMINATED for t in trials) < conc:
            t = FakeTrial(len(trials))
            trials.append(t)
            ctl.trials.append(t)
            done_epochs[t] = 0
            scheduler.on_trial_add(ctl, t)
        while sum(t.status == Trial.RUNNING for t in trials) < conc:
            t = scheduler.choose_trial_to_run(ctl) or next((t for t in trials if t.status == Trial.PENDING), None)
            if t is None:
                break
            start(t)
        if not events:
            assert all(t.status == Trial.TERMINATED for t in trials) and len(trials) == len(curves), "deadlock"
            return tuple(done_epochs[t] for t in trials)
        clock, _, t = heapq.heappop(events)
        done_epochs[t] += 1
        e = done_epochs[t]
        acc, loss = curves[trials.index(t)][e - 1]
        result = {"epoch": e, "val_acc": acc, "val_loss": loss}
        decision = scheduler.on_trial_result(ctl, t, result)
        if decision == TrialScheduler.PAUSE:
            t.status = Trial.PAUSED
        elif decision == TrialScheduler.CONTINUE and e < max_t:
            heapq.heappush(events, (clock + rng.exponential(), seq, t))
            seq += 1
        else:
            scheduler.on_trial_complete(ctl, t, result)
            t.status = Trial.TERMINATED


def in_order(max_t, grace=1, rf=2):
    return InOrderASHA(max_t=max_t, grace_period=grace, reduction_factor=rf, metric="val_acc", mode="max")


def outcomes(make, curves, concs=(1, 2, 3, 8), seeds=range(25)) -> set:
    return {simulate(make(), curves, conc, seed) for conc in concs for seed in seeds}


def test_rungs():
    assert rung_epochs(1, 2, 2) == [1]
    assert rung_epochs(1, 2, 9) == [1, 2, 4, 8]
    assert rung_epochs(2, 3, 20) == [2, 6, 18]
    assert rung_epochs(1, 1.5, 5) == [1, 2, 3, 4]   # 1, 1.5, 2.25, 3.375 -> whole epochs, no repeats
    assert rung_epochs(2, 2, 2) == []               # grace_period = epochs: nobody is cut


def test_survives_ranks_among_earlier_trials():
    assert survives((0.5,), [], 2)                      # the first trial always goes on
    assert survives((0.4,), [(0.5,)], 2) and not survives((0.6,), [(0.5,)], 2)
    assert survives((0.55,), [(0.5,), (0.6,)], 2)       # 2nd of 3: within ceil(3/2)
    assert not survives((0.7,), [(0.5,), (0.6,)], 2)
    assert not survives((0.5,), [(0.1,), (0.2,), (0.3,)], 4)  # 4th of 4 with factor 4: only 1 goes on
    # the arrival order of the earlier keys never matters
    keys = [(0.1, 0), (0.3, 1), (0.2, 2), (0.4, 3)]
    assert len({survives((0.25, 9), list(p), 2) for p in (keys, keys[::-1], keys[1::2] + keys[::2])}) == 1


def test_default_rung_worked_by_hand():
    """Rung 1 of the measured default, in trial order: 0 goes on (first); 1 beats 0; 2 is 3rd of 3
    (0.68 ties 0's 0.68, its val loss 0.68 loses to 0's 0.59); 3 is 4th of 4; 4 is 3rd of 5 (0.68,
    loss 0.62: behind 1 and 0, ahead of 2); 5 is 2nd of 6; 6 and 7 are last."""
    curves = [[c, c] for c in DEFAULT_EPOCH1]
    assert outcomes(lambda: in_order(2), curves) == {(2, 2, 1, 1, 2, 2, 1, 1)}


def test_decisions_follow_the_data():
    """The flip: raise trial 3's val acc to the top: 3 is 1st of 4 and goes on, and pushes 4 to
    4th of 5 (behind 0, 1, 3), which stops; 5 is now 3rd of 6 and still goes on."""
    curves = [[c, c] for c in DEFAULT_EPOCH1]
    curves[3] = [(0.90, 0.30)] * 2
    assert outcomes(lambda: in_order(2), curves) == {(2, 2, 1, 2, 1, 2, 1, 1)}


def test_ties_broken_by_val_loss_then_trial_order():
    by_loss = [[(0.5, loss)] * 2 for loss in (0.7, 0.6, 0.5, 0.4)]   # each better than all before it
    assert outcomes(lambda: in_order(2), by_loss) == {(2, 2, 2, 2)}
    by_order = [[(0.5, 0.6)] * 2 for _ in range(4)]                   # full ties: earlier ranks first
    assert outcomes(lambda: in_order(2), by_order) == {(2, 1, 1, 1)}


@pytest.mark.parametrize("seed", range(3))
def test_permuted_arrivals_give_one_outcome_over_several_rungs(seed):
    """8 trials, 6 epochs (rungs at 1, 2, 4), random curves with ties: every concurrency and
    arrival order gives the same epochs per trial; Ray's ASHA on the same curves does not."""
    rng = np.random.default_rng(100 + seed)
    curves = [[(round(float(rng.uniform(0.5, 0.9)), 1), float(rng.uniform(0.3, 0.7))) for _ in range(6)]
              for _ in range(8)]
    ours = outcomes(lambda: in_order(6), curves)
    assert len(ours) == 1
    assert any(e < 6 for e in next(iter(ours)))   # it did stop some
    asha = outcomes(lambda: ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=6,
                                          grace_period=1, reduction_factor=2), curves)
    assert len(asha) > 1   # the negative control: arrival order changes Ray's ASHA's study


def test_negative_control_asha_on_the_default_rung():
    curves = [[c, c] for c in DEFAULT_EPOCH1]
    asha = outcomes(lambda: ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=2,
                                          grace_period=1, reduction_factor=2), curves)
    assert len(asha) > 1


def test_make_scheduler_from_the_study_file(tmp_path):
    body = "axes: {model: [tiny-bert], batch_size: [8]}\nfixed: {epochs: 3}\n"   # max_t: 3
    files = {"nostop": "early_stopping: off\n", "long": "early_stopping: {grace_period: 5}\n",
             "rf2": "", "rf3": "early_stopping: {reduction_factor: 3}\n"}
    study = {}
    for name, es in files.items():
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\n" + body + es)
        study[name] = load_space(tmp_path / f"{name}.yaml")
    assert make_scheduler(study["nostop"]) is None

    def made(name):
        s = make_scheduler(study[name])
        assert s.metric == "val_acc"          # its own metric: the Tuner names none
        assert s.set_search_properties(None, None)           # as Tune calls it then
        assert not s.set_search_properties("val_acc", "max")  # a TuneConfig metric as well would be refused
        return s

    curves = [[(acc, 0.5)] * 3 for acc in (0.9, 0.5, 0.8, 0.4)]
    # grace_period 5 > 3 epochs is capped at 3: no rung below the last epoch, nobody stops
    assert outcomes(lambda: made("long"), curves) == {(3, 3, 3, 3)}
    # the defaults (grace 1, factor 2: rungs at epochs 1 and 2): 2 is 2nd of 3 at epoch 1 and goes
    # on, then 2nd of 2 at epoch 2 and stops; factor 3 (one rung, epoch 1) keeps only the best of 3
    assert outcomes(lambda: made("rf2"), curves) == {(3, 1, 2, 1)}
    assert outcomes(lambda: made("rf3"), curves) == {(3, 1, 1, 1)}


def test_resumed_experiment_keeps_creation_order_and_finished_trials_rungs(tmp_path):
    """Tune re-adds a resumed experiment's trials latest-result first: the order still comes from
    creation (the tag), and a trial that finished before the interruption still counts at its rungs
    (read from its checkpoint's history.json)."""
    import json

    from ray import tune

    # trial 0 was stopped at epoch 1 with val acc 0.9 before the interruption; 1 and 2 never ran
    ckpt = tmp_path / "checkpoint_000000"
    ckpt.mkdir()
    (ckpt / "history.json").write_text(json.dumps([{"epoch": 1, "val_acc": 0.9, "val_loss": 0.3}]))
    done = FakeTrial(0, status=Trial.TERMINATED, checkpoint=tune.Checkpoint.from_directory(ckpt))
    s = in_order(2)
    ctl = FakeController(s)
    t1, t2 = FakeTrial(1), FakeTrial(2)
    for t in (t2, done, t1):          # not in creation order
        ctl.trials.append(t)
        s.on_trial_add(ctl, t)
    t1.status = t2.status = Trial.RUNNING
    # 2 reaches epoch 1 first: it waits for 1 (created before it), whatever the order they were added in
    assert s.on_trial_result(ctl, t2, {"epoch": 1, "val_acc": 0.85, "val_loss": 0.4}) == TrialScheduler.PAUSE
    t2.status = Trial.PAUSED
    # 1 is 2nd of 2 behind the finished trial 0's 0.9: stops (it would go on, first, had 0 been forgotten)
    assert s.on_trial_result(ctl, t1, {"epoch": 1, "val_acc": 0.8, "val_loss": 0.4}) == TrialScheduler.STOP
    # that decides 2: 2nd of 3 (0.9, 0.85, 0.8) goes on, and may run again
    assert t2.status == Trial.PAUSED and s.choose_trial_to_run(ctl) is t2


# ----------------------------------------------------------------------------- through Ray Tune

# trial -> (seconds per epoch, val_acc at epochs 1, 2, 3). 1 and 3 are fast: each reaches epoch 1
# before the slow trial before it, so it is paused; 1 then goes on (restarted from its checkpoint),
# 3 is stopped while paused (last of 4 at epoch 1). "Before" is made sure, not left to timing: a
# slow trial's first epoch ends only after the fast trial after it has reported its epoch 1.
FAKE = {0: (4.0, [0.6, 0.6, 0.6]), 1: (0.1, [0.7, 0.75, 0.75]), 2: (4.0, [0.8, 0.9, 0.9]), 3: (0.1, [0.5, 0.5, 0.5])}


@pytest.mark.slow
def test_through_tune_pauses_resume_from_checkpoints_without_deadlock(tmp_path):
    """Real Tune, max_concurrent_trials 2 (paused trials count against it): the study finishes,
    the decisions are the worked ones, and a paused trial goes on from its checkpoint with every
    epoch reported once."""
    import os

    from ray import tune

    fake, marks = dict(FAKE), str(tmp_path / "marks")
    os.makedirs(marks)

    # nested: Ray's workers cannot import this test module, a nested function travels by value
    def fake_trainable(config):
        import json
        import os
        import tempfile
        import time
        from pathlib import Path

        from ray import tune

        start = 0
        if (ckpt := tune.get_checkpoint()) is not None:
            with ckpt.as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["epoch"]
        i = config["i"]
        seconds, accs = fake[i]
        for epoch in range(start + 1, len(accs) + 1):
            # slow only in epoch 1: a paused fast trial's restart (seconds) then never catches up
            # with the slow one at the next rung, so it waits once
            time.sleep(seconds if epoch == 1 else 0.1)
            if epoch == 1 and i in (0, 2):   # the slow one waits for the fast one after it to report
                deadline = time.time() + 120
                while not os.path.exists(os.path.join(marks, str(i + 1))) and time.time() < deadline:
                    time.sleep(0.05)
                time.sleep(2.0)   # its report reaches the driver first
            if epoch == 1 and i in (1, 3):
                open(os.path.join(marks, str(i)), "w").close()
            d = tempfile.mkdtemp()
            (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "val_acc": accs[epoch - 1], "val_loss": 0.5, "started_at": start},
                        checkpoint=tune.Checkpoint.from_directory(d))

    ensure_local_ray()
    grid = tune.Tuner(
        tune.with_resources(fake_trainable, {"cpu": 1}),
        param_space={"i": tune.grid_search(list(FAKE))},
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", max_concurrent_trials=2,
                                    scheduler=InOrderASHA(max_t=3, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="fake", verbose=0)).fit()
    runs = {r.config["i"]: r.metrics_dataframe for r in grid}
    # the saved experiment state (what the exports and --resume read) knows every trial finished,
    # the one stopped while paused included
    from ray.tune import ExperimentAnalysis

    saved = {t.config["i"]: t.status for t in ExperimentAnalysis(str(tmp_path / "fake")).trials}
    assert saved == {0: "TERMINATED", 1: "TERMINATED", 2: "TERMINATED", 3: "TERMINATED"}, saved
    assert {i: list(df["epoch"]) for i, df in runs.items()} == {0: [1, 2, 3], 1: [1, 2, 3], 2: [1, 2, 3], 3: [1]}
    # a trial paused at epoch 1 restarted from its epoch-1 checkpoint (1 or 3 reached epoch 1 first)
    assert list(runs[1]["started_at"]) == [0, 1, 1], "trial 1 was not paused: the slow trial 0 was not slow enough"
