"""One Tune trial: the trainable Tune runs for each config, and its name. The trainable is boring by
design (Ray Tune's examples): it hands ``training.loop.train`` a report callback (``tune.report`` with
the epoch's checkpoint) and the checkpoint Tune restored; Tune schedules, stops and retries. What
it adds is for faults: a new best model is promoted before its epoch's report (Tune may end the
trial inside that report), and epochs a killed driver's experiment state lost are replayed from
the trial folder's own checkpoints."""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def trainable(config: dict, datasets: dict | None = None, experiment_dir: str | None = None,
              experiment_uri: str | None = None) -> None:
    """One trial = one ``training.loop.train`` call; reports and checkpoints once per epoch.

    ``datasets`` (tokenized splits per tokenizer key) travel once through the object store.
    ``experiment_dir`` is the experiment's folder on a local (or shared) filesystem: the trial's
    checkpoints and best model live in ``experiment_dir/<trial name>``. With remote storage
    (``experiment_uri``, e.g. s3:// or file://) the trial writes into Ray's local staging folder,
    Ray syncs it up (SyncConfig(sync_artifacts=True)), and ``best_model_path`` names the copy there.
    """
    import ray
    from ray import tune

    from ..config import trial_config
    from ..models import tokenizer_id
    from ..training.checkpoints import release_previous_best
    from ..training.loop import train
    from ..training.memory import cap_gpu_memory

    settings = trial_config(config)
    data = datasets.get(f"{tokenizer_id(settings.model)}|{settings.max_len}") if datasets else None
    _fresh_worker(settings.compile)
    runtime = ray.get_runtime_context()
    node = runtime.get_node_id()  # which machine of a cluster ran this trial
    # A fractional GPU (packed small-batch trials) also means a fractional share of its memory.
    gpu_share = runtime.get_assigned_resources().get("GPU", 0.0)
    memory_cap = cap_gpu_memory(gpu_share)
    ctx = tune.get_context()
    persisted = f"{experiment_uri}/{ctx.get_trial_name()}/best_model" if experiment_uri else None

    def report(metrics, ckpt_dir):
        extra = {"node_id": node, "gpu_share": gpu_share}
        if persisted and metrics.get("best_model_path"):
            extra["best_model_path"] = persisted  # not the staging folder, which goes with the node
        try:
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))
        except SystemExit:
            # Tune stops a trial (early stopping, its last epoch) by raising SystemExit inside
            # report, after persisting its checkpoint: the best model it replaced is not needed.
            release_previous_best(trial_dir)
            raise

    local = experiment_dir is not None and Path(experiment_dir).is_dir()
    trial_dir = Path(experiment_dir) / ctx.get_trial_name() if local else Path(ctx.get_trial_dir())
    checkpoint = tune.get_checkpoint()
    with contextlib.ExitStack() as stack:
        resume = Path(stack.enter_context(checkpoint.as_directory())) if checkpoint else None
        resume, finished = replay_lost_epochs(trial_dir, resume, stack, extra={"node_id": node})
        if not finished:
            train(config, report=report, data=data, resume_from=resume, output_dir=trial_dir, memory_cap=memory_cap)


def _fresh_worker(compiled: bool) -> None:
    """Tune reuses a finished trial's worker (reuse_actors): what the previous trial left is freed
    first. Its model is held in reference cycles (the noise-scale hooks on its weights), so only a
    full collection frees it, and its GPU memory must be back before this trial probes or fills its
    share; torch.compile's cache of the previous model's graphs would count against this one's
    recompile limit. Nothing here draws random numbers."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if compiled:
        torch.compiler.reset()


def replay_lost_epochs(trial_dir: Path, resume: Path | None, stack: contextlib.ExitStack,
                       extra: dict) -> tuple[Path | None, bool]:
    """(the checkpoint the trial goes on from, whether it had finished), after reporting to Tune the
    epochs its experiment state lost.

    A driver killed between a trial's checkpoint and Tune's next experiment snapshot restarts that
    trial as if it had none (or an older one: ``resume``, what Tune restored); a torn copy may also
    be what Tune hands over. The trial folder still holds every complete checkpoint: take the
    newest, and replay the epochs Tune lost (their real, stored metrics) so its history and ASHA's
    rungs stay whole. A trial that had finished (its training state pruned) is replayed and ended,
    never trained again. ``stack`` holds the temporary copy of the checkpoint handed to Tune."""
    from ray import tune

    from ..training.checkpoints import PRUNED_MARKER, checkpoint_epoch

    known = checkpoint_epoch(resume) if resume else 0
    pruned = sorted(((json.loads((d / "meta.json").read_text())["epoch"], d)
                     for d in trial_dir.glob("checkpoint_*") if (d / PRUNED_MARKER).exists()), key=lambda x: x[0])
    if pruned:
        seen = json.loads((resume / "meta.json").read_text())["epoch"] if resume else 0
        for m in json.loads((pruned[-1][1] / "history.json").read_text())[seen:]:
            tune.report({**m, **extra, "replayed": True})
        return resume, True
    on_disk = sorted(((e, d) for d in trial_dir.glob("checkpoint_*") if (e := checkpoint_epoch(d))),
                     key=lambda x: x[0])
    if on_disk and known is not None and on_disk[-1][0] > known:  # (None: Tune's is torn -> clear error)
        epoch, newest = on_disk[-1]
        lost = json.loads((newest / "history.json").read_text())[known:]  # not the 100s-of-MB state
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tune_study_replay_")))
        for m in lost[:-1]:
            tune.report({**m, **extra, "replayed": True})
        shutil.copytree(newest, tmp / "ckpt")
        tune.report({**lost[-1], **extra, "replayed": True}, checkpoint=tune.Checkpoint.from_directory(tmp / "ckpt"))
        return newest, False
    if resume is None and any(trial_dir.glob("checkpoint_*")):
        log.warning("%s: no complete checkpoint (torn by an interrupted write); this trial starts "
                    "again from epoch 0", trial_dir)
    return resume, False


def trial_name(trial) -> str:
    c = trial.config
    parts = [str(c.get("model", "m")).replace("/", "_"), f"b{c.get('batch_size')}", str(c.get("scheduler", ""))]
    if "seed" in c:
        parts.append(f"s{c['seed']}")
    return "_".join(parts) + f"_{trial.trial_id}"
