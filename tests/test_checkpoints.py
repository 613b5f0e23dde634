"""tune_study.training.checkpoints: the side files of a checkpoint, and the best model's staging, promotion and
recovery after a crash at any point of the swap."""
from __future__ import annotations

import json

import pytest
import torch

from tune_study.training import checkpoints as ck


def _model_dir(folder, epoch, marked=True):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text(f"weights of epoch {epoch}")
    if marked:
        ck.mark_best_epoch(folder, epoch)
    return folder


def _epoch_of(folder):
    return (folder / "model.safetensors").read_text()


def _state(**extra):
    return {"model": {"w": torch.zeros(2)}, "optimizer": {}, "scheduler": {}, "rng": {}, "epoch": 2,
            "best": {"epoch": 1}, "progress": {}, "history": [{"epoch": 1}, {"epoch": 2}], **extra}


def test_predictions_side_file(tmp_path):
    pred = {"row": [0, 1, 2], "label": [1, 0, 1], "prob_pos": [0.9, 0.2, 0.4]}
    ck.save_state(tmp_path / "a", _state(predictions=pred))
    assert json.loads((tmp_path / "a" / ck.PREDICTIONS_FILE).read_text()) == pred
    assert ck.load_state(tmp_path / "a")["predictions"] == pred
    assert ck.checkpoint_epoch(tmp_path / "a") == 2
    ck.save_state(tmp_path / "b", _state(predictions=None))  # no best yet: no side file
    assert not (tmp_path / "b" / ck.PREDICTIONS_FILE).exists()


def test_promote_keeps_the_replaced_model_until_released(tmp_path):
    _model_dir(tmp_path / ck.BEST_MODEL, 1)
    staging = ck.stage_best_model(tmp_path)
    (staging / "model.safetensors").write_text("weights of epoch 3")
    ck.mark_best_epoch(staging, 3)
    ck.promote_best_model(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ck.BEST_MODEL, ck.PREVIOUS]
    assert ck.best_model_epoch(tmp_path / ck.BEST_MODEL) == 3 and _epoch_of(tmp_path / ck.BEST_MODEL).endswith("3")
    assert ck.best_model_epoch(tmp_path / ck.PREVIOUS) == 1
    ck.release_previous_best(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ck.BEST_MODEL]


@pytest.mark.parametrize("best_epoch", [1, 3], ids=["crash_before_checkpoint", "crash_after_checkpoint"])
def test_recover_after_promotion(tmp_path, best_epoch):
    """Epoch 3 put in place over epoch 1's model (kept aside). Resumed from a checkpoint whose best is
    epoch 1 (the crash came before epoch 3's checkpoint): epoch 1's model comes back; whose best is
    3: epoch 3's stays. Either way one folder is left."""
    _model_dir(tmp_path / ck.PREVIOUS, 1)
    _model_dir(tmp_path / ck.BEST_MODEL, 3)
    ck.recover_best_model(tmp_path, best_epoch=best_epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ck.BEST_MODEL]
    assert ck.best_model_epoch(tmp_path / ck.BEST_MODEL) == best_epoch
    assert _epoch_of(tmp_path / ck.BEST_MODEL).endswith(str(best_epoch))


@pytest.mark.parametrize("best_epoch", [1, 3], ids=["resumed_before_3", "resumed_at_3"])
def test_recover_a_torn_promotion(tmp_path, best_epoch):
    """Killed between the two renames: the old model stepped aside, the new one is still staged."""
    _model_dir(tmp_path / ck.PREVIOUS, 1)
    _model_dir(tmp_path / ck.BEST_STAGING, 3)
    ck.recover_best_model(tmp_path, best_epoch=best_epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ck.BEST_MODEL]
    assert ck.best_model_epoch(tmp_path / ck.BEST_MODEL) == best_epoch


def test_recover_drops_incomplete_staging_and_wrong_best_model(tmp_path):
    _model_dir(tmp_path / ck.BEST_STAGING, 2, marked=False)   # killed while saving: no marker
    _model_dir(tmp_path / ck.BEST_MODEL, 4)                    # of an epoch the checkpoint does not know
    ck.recover_best_model(tmp_path, best_epoch=2)
    assert list(tmp_path.iterdir()) == []
    _model_dir(tmp_path / ck.BEST_MODEL, 0, marked=False)      # unmarked (older runs): kept as is
    ck.recover_best_model(tmp_path, best_epoch=2)
    assert (tmp_path / ck.BEST_MODEL).exists()
