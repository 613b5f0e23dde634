"""The training loop: exact accumulated-gradient fine-tuning, one config in, one report per epoch.

Effective batch ``batch_size`` (B) is reached by accumulating micro-batches of ``micro_batch_size``
(m): accumulation = ceil(B / m). Every optimizer step consumes exactly B examples except the last
one of an epoch, which takes the remainder, so an epoch is ceil(N / B) steps. Each window's loss is
the mean over *its* examples, so its gradient equals that of one big batch of the same examples.
Val is evaluated ``evals_per_epoch`` times an epoch, evenly spaced, the last at the epoch's end.

``train(config, report=...)`` runs anywhere (tests, benchmarks, the CLI); ``tuning.trainable`` wraps
it for Ray Tune (``tune.report`` once per epoch, with a checkpoint of the full state).
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from ..columns import EPOCH_COLUMNS, EVAL_COLUMNS
from ..config import TrainConfig, resolve_config
from ..lr_scaling import adamw_settings
from ..metrics import calibration
from . import memory
from .checkpoints import (
    BEST_MODEL,
    load_state,
    mark_best_epoch,
    promote_best_model,
    recover_best_model,
    release_previous_best,
    rng_state,
    save_state,
    set_rng_state,
    stage_best_model,
)
from .device import autocast_for, device_name, peak_memory_gib, pick_device, pick_precision, reset_peak_memory
from .evaluation import eval_points, evaluate, on_device, sdpa_bert
from .noise_scale import NoiseScale
from .noise_scale import read as read_noise

# ----------------------------------------------------------------------------- evaluation

def _evaluate_aside(model, split: dict, batch_size: int, autocast, device: torch.device) -> dict:
    """``evaluate`` with the RNG states put back afterwards: an evaluation in the middle of an epoch
    must leave the dropout draws of the rest of the epoch as they were (eval mode draws none; this
    keeps it so whatever a model does in eval mode)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return evaluate(model, split, batch_size, autocast)


def _columns(names: list[str], values: dict) -> dict:
    """``values`` as a row of exactly the columns ``names`` (the names are defined once, in columns.py)."""
    if set(values) != set(names):
        raise KeyError(f"metrics {sorted(set(values) ^ set(names))} are not (or not only) in columns.py")
    return {k: values[k] for k in names}


def _is_better(val: dict, best: dict) -> bool:
    """Best by val acc, val loss breaking ties."""
    if val["val_acc"] != best["val_acc"]:
        return val["val_acc"] > best["val_acc"]
    return val["val_loss"] < best["val_loss"]


def _best_record(epoch: int, val: dict, test: dict) -> tuple[dict, dict]:
    """The best-so-far summary, and the per-example test predictions of these weights."""
    cal = calibration(test["probs"], test["labels"])
    best = {"epoch": epoch, "val_acc": val["val_acc"], "val_loss": val["val_loss"],
            "test_acc": test["acc"], "test_loss": test["loss"], "test_ece": cal["ece"],
            "test_confidence": cal["mean_confidence"], "test_reliability": _bins_json(cal["bins"])}
    predictions = {"row": list(range(len(test["labels"]))), "label": test["labels"].tolist(),
                   "prob_pos": test["probs"][:, 1].tolist()}
    return best, predictions


# ----------------------------------------------------------------------------- the loop

def train(config: dict, report: Callable[[dict, str | None], object] | None = None,
          data: dict | None = None, resume_from: str | Path | None = None,
          output_dir: str | Path | None = None, memory_cap: float | None = None,
          checkpoints: bool = True) -> list[dict]:
    """Fine-tune one config; returns the per-epoch metrics, also passed to ``report(metrics,
    checkpoint_dir)`` once per epoch with a directory holding the epoch's full state (valid during the
    call; None with ``checkpoints=False``); a truthy return stops training. ``data``: ``load_tokenized``'s
    result (loaded when None). ``resume_from``: a checkpoint directory. ``output_dir`` receives
    ``best_model/`` (``save_pretrained`` + ``best_epoch.json``), put in place before the report of its
    epoch (the model it replaces is kept until that report returns). ``memory_cap``: this process's share of the GPU (``cap_gpu_memory``)."""
    c = resolve_config(config)
    if c.threads:
        torch.set_num_threads(c.threads)
    device = pick_device(c.device)
    precision = pick_precision(c.precision, device)
    autocast = autocast_for(device, precision)
    train_split, val_split, test_split, facts = _splits(c, data, device, precision)
    n_train, B, eval_bs = facts["n_train"], c.batch_size, c.eval_batch_size
    steps_per_epoch = math.ceil(n_train / B)
    points = eval_points(steps_per_epoch, c.evals_per_epoch)
    # The GPU probe (auto) runs before the seeded build: its draws must not shift the run's RNG.
    m = memory.auto_micro_batch(c, device, precision, memory_cap) if c.micro_batch_size == "auto" else c.micro_batch_size
    model, step_model, optimizer, scheduler = _build(c, device, steps_per_epoch * c.epochs)
    run = _start(resume_from, output_dir, model, optimizer, scheduler)
    noise = NoiseScale(model.parameters(), device) if c.noise_scale else None  # hooks on the weights
    m = run.micro_batch_size or m   # a resumed run keeps the micro-batch that fit
    windows = memory.Windows(step_model, train_split, m, optimizer, device, autocast, noise,
                             four_d_mask=sdpa_bert(model),  # BERT/RoBERTa under SDPA: no mask sync per forward
                             cache_key=memory.probe_key(c, device, precision, memory_cap))  # an OOM corrects the probe
    resumed_from, progress = run.epoch, run.progress
    best_path = str(Path(output_dir) / BEST_MODEL) if output_dir else ""

    for epoch in range(run.epoch, c.epochs):
        order_cpu, order = _epoch_order(n_train, c.seed, epoch, device)
        loss_sum, evals, eval_s, t0 = torch.zeros((), device=device), [], 0.0, time.perf_counter()
        halvings_before = windows.halvings
        reset_peak_memory(device)
        for step in range(steps_per_epoch):
            window, window_cpu = order[step * B:(step + 1) * B], order_cpu[step * B:(step + 1) * B]  # last: the rest
            # .grad = the exact gradient of the window's mean loss, however it is cut into micro-batches;
            # a CUDA OOM halves the micro-batch and runs the same window again (memory.Windows)
            loss = windows.accumulate(window, window_cpu)
            if c.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.max_grad_norm)
            memory.step_fitting(optimizer, device)  # an OOM in AdamW's first step: free the cache, retry once
            scheduler.step()           # once per optimizer step, never per micro-batch
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss * len(window)   # stays on the device: no host sync per step
            if step + 1 in points:   # val, mid-epoch or at its end; train loss: the epoch's mean so far
                seen = min((step + 1) * B, n_train)
                at = {"epoch": epoch + points[step + 1], "epoch_end": step + 1 == steps_per_epoch,
                      "optimizer_steps": progress["steps"] + step + 1, "samples_seen": progress["samples"] + seen}
                at.update(read_noise(noise))  # the noise scale since the last evaluation (a host sync)
                row, eval_bs, seconds = _eval_point(model, val_split, eval_bs, autocast, device, loss_sum, seen, at)
                evals, eval_s = [*evals, row], eval_s + seconds
        epoch_time = time.perf_counter() - t0 - eval_s  # training only
        m = windows.micro_batch_size
        progress.update(steps=progress["steps"] + steps_per_epoch, samples=progress["samples"] + n_train,
                        train_time_s=progress["train_time_s"] + epoch_time,
                        oom_halvings=progress["oom_halvings"] + windows.halvings - halvings_before)

        # The best epoch is chosen at epoch ends only, as the seed's protocol does, so the best weights
        # are always those of an epoch with a checkpoint. Test is evaluated only for a new best: the
        # reported test numbers are always those of the best-val weights (early-stopped trials too).
        new_best = _is_better(evals[-1], run.best)
        if new_best:
            test, seconds = _timed(_evaluate_aside, model, test_split, eval_bs, autocast, device)
            eval_s += seconds
            run.best, run.predictions = _best_record(epoch + 1, evals[-1], test)
            if output_dir:  # in place before the report: Tune may stop the trial inside it
                _stage_best_model(model, c.model, output_dir, epoch + 1)
                promote_best_model(output_dir)

        metrics = _epoch_metrics(epoch + 1, evals, run, facts, {
            # what the optimizer holds (a resumed run: its checkpoint's), not what the config asked for
            "lr": scheduler.get_last_lr()[0], "lr_peak": scheduler.base_lrs[0],
            "beta2": optimizer.param_groups[0]["betas"][1],
            "samples_per_s": n_train / epoch_time, "epoch_train_s": epoch_time, "eval_s": eval_s, "micro_batch_size": m, "accumulation_steps": math.ceil(B / m),
            "peak_mem_gib": peak_memory_gib(device), "resumed_from_epoch": resumed_from,
            "best_model_path": best_path if run.best["epoch"] else "",
            "gns_b_simple_epoch": noise.epoch_b_simple() if noise is not None else math.nan})
        run.epoch, run.micro_batch_size = epoch + 1, m
        run.history.append(metrics)
        state = _state(model, optimizer, scheduler, run) if checkpoints and report is not None else None
        stop = _report(report, metrics, state)
        # Only now, with the epoch's checkpoint persisted by ``report``, may the replaced best model
        # go: a crash before this line resumes from the older checkpoint, whose best it is.
        if new_best and output_dir:
            release_previous_best(output_dir)
        if stop:
            break
    return run.history


# ----------------------------------------------------------------------------- train()'s helpers

def _splits(c: TrainConfig, data: dict | None, device: torch.device, precision: str) -> tuple[dict, dict, dict, dict]:
    """train, val and test on the device (``load_tokenized`` when ``data`` is None), and the facts of
    the run reported every epoch (split sizes, precision, device)."""
    from ..data import load_tokenized

    data = data if data is not None else load_tokenized(c.data.model_dump(), c.model, c.max_len)
    train_split, val_split, test_split = (on_device(data[s], device) for s in ("train", "val", "test"))
    facts = {**_split_facts(train_split, val_split, test_split), "precision": precision, "device": device_name(device)}
    return train_split, val_split, test_split, facts


def _split_facts(train_split: dict, val_split: dict, test_split: dict) -> dict:
    val_pos = float(val_split["labels"].float().mean())
    return {"n_train": len(train_split["labels"]), "n_val": len(val_split["labels"]),
            "n_test": len(test_split["labels"]),
            # the accuracy of always answering the majority class: the report's "chance" line
            "val_majority_rate": max(val_pos, 1 - val_pos)}


def _epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's example order, on the host and on the device. It depends on (seed, epoch) alone,
    so a resumed run sees the same order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order, order.to(device)


def _build(c: TrainConfig, device: torch.device, total_steps: int):
    """The model (seeded: classifier-head init and dropout), its compiled twin, AdamW and the LR schedule."""
    from transformers import get_scheduler, set_seed

    from ..models import load_model

    set_seed(c.seed)
    model = load_model(c.model).to(device)
    model.train()
    # Default mode (CUDA graphs break on HF outputs). Static shapes: the epoch's last window and its
    # remainder micro-batches get graphs of their own once, instead of turning every call dynamic.
    step_model = torch.compile(model, dynamic=False) if c.compile else model
    lr, betas = adamw_settings(c)   # lr and beta2 scaled with the batch (lr_scaling, beta2_scaling)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=c.weight_decay,
                                  fused=True)  # one kernel per step (CPU too), as HF Trainer's default
    sched_name = "constant_with_warmup" if c.scheduler == "constant" and c.warmup_ratio else c.scheduler
    scheduler = get_scheduler(sched_name, optimizer, num_warmup_steps=round(c.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    return model, step_model, optimizer, scheduler


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _eval_point(model, split: dict, batch_size: int, autocast, device: torch.device, loss_sum: torch.Tensor,
                seen: int, at: dict) -> tuple[dict, int, float]:
    """One evaluation of val at a point ``at`` of training: (its EVAL_COLUMNS row, the eval batch
    that fit, seconds). The train loss, the mean over the epoch's ``seen`` examples so far, is read
    first: the one host sync, before the clock starts."""
    train_loss = float(loss_sum) / seen
    val, seconds = _timed(_evaluate_aside, model, split, batch_size, autocast, device)
    row = _columns(EVAL_COLUMNS, {**at, "train_loss": train_loss, "val_loss": val["loss"], "val_acc": val["acc"]})
    return row, val.get("batch_size", batch_size), seconds


def _epoch_metrics(epoch: int, evals: list[dict], run: Run, facts: dict, this_epoch: dict) -> dict:
    """The epoch's report: the epoch-end evaluation, the epoch's evaluations as JSON, the best-val
    weights' test numbers, progress, and facts of the run; exactly columns.py's names."""
    best, progress = run.best, run.progress
    first = (run.history[0].get("gns_b_simple_epoch", math.nan) if run.history  # carried from epoch 1
             else this_epoch["gns_b_simple_epoch"])
    return _columns(EVAL_COLUMNS + EPOCH_COLUMNS, {
        **evals[-1], "epoch": epoch, "evals": json.dumps(evals), **this_epoch, **facts,
        "train_time_s": progress["train_time_s"], "oom_halvings": progress["oom_halvings"],
        "best_epoch": best["epoch"], "best_val_acc": best["val_acc"], "best_val_loss": best["val_loss"],
        "test_acc": best["test_acc"], "test_loss": best["test_loss"], "test_nll": best["test_loss"],
        "test_ece": best["test_ece"], "test_confidence": best["test_confidence"],
        "test_reliability": best["test_reliability"], "gns_b_simple_first_epoch": first})


def _no_best() -> dict:
    return {"epoch": 0, "val_acc": -1.0, "val_loss": math.inf, "test_acc": math.nan, "test_loss": math.nan,
            "test_ece": math.nan, "test_confidence": math.nan, "test_reliability": "[]"}


@dataclass
class Run:
    """What a checkpoint holds besides the tensors (its keys, in this order)."""
    epoch: int = 0                                   # epochs done
    best: dict = field(default_factory=_no_best)     # the best epoch's val and test numbers (_best_record)
    progress: dict = field(default_factory=lambda: {"steps": 0, "samples": 0, "train_time_s": 0.0,
                                                    "oom_halvings": 0})
    history: list = field(default_factory=list)      # every epoch's report
    micro_batch_size: int | None = None              # the one that fit (after any OOM halving)
    predictions: dict | None = None                  # the best weights' per-example test predictions


def _start(resume_from, output_dir, model, optimizer, scheduler) -> Run:
    """A fresh run or the checkpoint's; the best model on disk made to agree with it."""
    run = _restore(resume_from, model, optimizer, scheduler) if resume_from is not None else Run()
    if output_dir:
        recover_best_model(output_dir, run.best["epoch"])
    return run


def _restore(path, model, optimizer, scheduler) -> Run:
    state = load_state(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    kept = {f.name: state[f.name] for f in fields(Run) if f.name in state and f.name != "history"}
    return Run(**kept, history=list(state.get("history", [])))


def _state(model, optimizer, scheduler, run: Run) -> dict:
    """A checkpoint's content: the tensors' states, the RNGs, and ``run``'s fields."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(), **vars(run)}


def _report(report, metrics: dict, state: dict | None) -> object:
    """``report(metrics, checkpoint_dir)`` with ``state`` (the full training state) saved into a
    temporary checkpoint folder for the call; ``state`` None: a report without a checkpoint."""
    if report is None:
        return False
    if state is None:
        return report(metrics, None)
    with tempfile.TemporaryDirectory(prefix="tune_study_ckpt_") as ckpt:
        save_state(ckpt, state)
        return report(metrics, ckpt)


def _stage_best_model(model, model_name: str, output_dir, epoch: int) -> None:
    """The new best weights (and tokenizer) into the staging folder, then marked complete."""
    staging = stage_best_model(output_dir)
    model.save_pretrained(staging)
    _save_tokenizer(model_name, staging)
    mark_best_epoch(staging, epoch)


def _save_tokenizer(model_name: str, best_dir: Path) -> None:
    """The tokenizer next to the best model. Random-weight models borrow the bundled one; a host
    without that package (the GPU box) keeps the weights and says so, instead of failing the trial."""
    from ..models import RANDOM, load_tokenizer

    try:
        load_tokenizer(model_name).save_pretrained(best_dir)
    except ImportError as e:
        if model_name not in RANDOM:
            raise
        logging.getLogger(__name__).warning("%s: saved without a tokenizer (%s)", best_dir, e)


def _bins_json(bins) -> str:
    return json.dumps([[round(lo, 4), round(hi, 4), k, round(conf, 6), round(acc, 6)]
                       for lo, hi, k, conf, acc in bins])

