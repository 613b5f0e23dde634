"""tune_study.tuning.trainable's replay of the epochs a killed driver's experiment state lost, on a
trial folder built by hand (``tune.report`` recorded, no Ray cluster); the kills themselves run in
test_faults."""
from __future__ import annotations

import contextlib
import json

import pytest
from ray import tune

from tune_study.training.checkpoints import PRUNED_MARKER, save_state
from tune_study.tuning.trainable import replay_lost_epochs


def _checkpoint(trial_dir, epoch, pruned=False):
    d = trial_dir / f"checkpoint_{epoch - 1:06d}"
    history = [{"epoch": e, "val_acc": 0.5 + e / 10} for e in range(1, epoch + 1)]
    save_state(d, {"epoch": epoch, "history": history, "model": {}})
    if pruned:  # a finished trial's checkpoint: its training state removed
        (d / "state.pt").unlink()
        (d / PRUNED_MARKER).write_text("{}")
    return d


@pytest.fixture
def reports(monkeypatch):
    seen = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: seen.append(
        (metrics["epoch"], metrics.get("replayed"), checkpoint is not None)))
    return seen


def test_lost_epochs_are_replayed_and_the_newest_checkpoint_resumed(tmp_path, reports):
    one, three = _checkpoint(tmp_path, 1), _checkpoint(tmp_path, 3)
    with contextlib.ExitStack() as stack:
        resume, finished = replay_lost_epochs(tmp_path, one, stack, extra={"node_id": "n"})
    # Tune knew epoch 1: epochs 2 and 3 are reported again, the last with the checkpoint to go on from
    assert (resume, finished) == (three, False)
    assert reports == [(2, True, False), (3, True, True)]


def test_nothing_lost_nothing_replayed(tmp_path, reports):
    _checkpoint(tmp_path, 1)
    two = _checkpoint(tmp_path, 2)
    with contextlib.ExitStack() as stack:
        assert replay_lost_epochs(tmp_path, two, stack, extra={}) == (two, False)
    with contextlib.ExitStack() as stack:   # a fresh trial: no folder content, nothing to do
        assert replay_lost_epochs(tmp_path / "new", None, stack, extra={}) == (None, False)
    assert reports == []


def test_a_finished_trial_is_replayed_and_not_trained_again(tmp_path, reports):
    one = _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 2, pruned=True)
    with contextlib.ExitStack() as stack:
        resume, finished = replay_lost_epochs(tmp_path, one, stack, extra={})
    assert finished and reports == [(2, True, False)]


def test_a_torn_checkpoint_starts_the_trial_again(tmp_path, reports, caplog):
    d = _checkpoint(tmp_path, 1)
    (d / "state.pt").write_bytes(b"torn")          # its size no longer matches meta.json
    with contextlib.ExitStack() as stack:
        assert replay_lost_epochs(tmp_path, None, stack, extra={}) == (None, False)
    assert reports == [] and "starts again from epoch 0" in caplog.text
    assert json.loads((d / "meta.json").read_text())["epoch"] == 1
