"""The training loop: exact accumulated-gradient fine-tuning, one ``config`` dict in, one report per epoch.

Effective batch ``batch_size`` (B) is reached by accumulating micro-batches of ``micro_batch_size``
(m): accumulation = ceil(B / m). Every optimizer step consumes exactly B examples except the last
one of an epoch, which takes the remainder, so an epoch is ceil(N / B) steps. Each window's loss is
the mean over *its* examples, so its gradient equals that of one big batch of the same examples.

``train(config, report=...)`` runs anywhere (tests, benchmarks, the CLI); ``trainable`` wraps it for
Ray Tune (``tune.report`` once per epoch, with a checkpoint of the full state).
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .checkpoints import checkpoint_epoch, load_state, rng_state, save_state, set_rng_state
from .errors import StudyError
from .memory import auto_micro_batch, cap_gpu_memory
from .metrics import calibration

TRAIN_DEFAULTS = {
    "model": "minilm",
    "batch_size": 16,          # the effective batch: examples per optimizer step
    "micro_batch_size": "auto",  # examples per forward/backward: an int, or "auto" (min(B, 16) on CPU,
                               # the largest power of two that fits on a GPU)
    "lr": 5e-5,
    "epochs": 5,
    "scheduler": "constant",   # constant | linear | cosine (transformers.get_scheduler)
    "warmup_ratio": 0.0,       # share of all optimizer steps spent warming up
    "weight_decay": 0.0,
    "max_len": 128,
    "seed": 0,
    "precision": "auto",       # fp32 | bf16 (autocast, fp32 master weights) | auto: bf16 on CUDA
    "max_grad_norm": None,     # the seed does not clip
    "eval_batch_size": 64,
    "threads": None,           # torch CPU threads for this trial; None leaves torch's default
    "device": "auto",          # auto | cpu | cuda
    "compile": False,          # torch.compile the model (CUDA; never CUDA-graph mode)
    "data": {},
}
SCHEDULERS = ("constant", "linear", "cosine")


# ----------------------------------------------------------------------------- config

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def resolve_config(config: dict) -> dict:
    """Defaults filled in and every value checked; raises StudyError naming the key."""
    from .data import data_config

    unknown = sorted(set(config) - set(TRAIN_DEFAULTS))
    if unknown:
        raise StudyError(f"unknown key '{unknown[0]}' (known: {', '.join(TRAIN_DEFAULTS)})", key=unknown[0])
    c = {**TRAIN_DEFAULTS, **config}
    checks = [
        ("batch_size", _is_int(c["batch_size"]) and c["batch_size"] > 0, "an integer > 0"),
        ("micro_batch_size", c["micro_batch_size"] == "auto"
         or (_is_int(c["micro_batch_size"]) and c["micro_batch_size"] > 0), "an integer > 0 or 'auto'"),
        ("lr", _is_num(c["lr"]) and c["lr"] > 0, "a number > 0"),
        ("epochs", _is_int(c["epochs"]) and c["epochs"] >= 1, "an integer >= 1"),
        ("scheduler", c["scheduler"] in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
        ("warmup_ratio", _is_num(c["warmup_ratio"]) and 0 <= c["warmup_ratio"] < 1, "a number in [0, 1)"),
        ("weight_decay", _is_num(c["weight_decay"]) and c["weight_decay"] >= 0, "a number >= 0"),
        ("max_len", _is_int(c["max_len"]) and 8 <= c["max_len"] <= 512, "an integer in [8, 512]"),
        ("seed", _is_int(c["seed"]), "an integer"),
        ("precision", c["precision"] in ("auto", "fp32", "bf16"), "one of auto, fp32, bf16"),
        ("max_grad_norm", c["max_grad_norm"] is None or (_is_num(c["max_grad_norm"]) and c["max_grad_norm"] > 0),
         "a number > 0 or null"),
        ("eval_batch_size", _is_int(c["eval_batch_size"]) and c["eval_batch_size"] > 0, "an integer > 0"),
        ("threads", c["threads"] is None or (_is_int(c["threads"]) and c["threads"] > 0), "an integer > 0 or null"),
        ("device", c["device"] in ("auto", "cpu", "cuda"), "one of auto, cpu, cuda"),
        ("compile", isinstance(c["compile"], bool), "true or false"),
        ("data", isinstance(c["data"], dict), "a mapping"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise StudyError(f"{key}: expected {expected}, got {c[key]!r}")
    if _is_int(c["micro_batch_size"]) and c["micro_batch_size"] > c["batch_size"]:
        raise StudyError(f"micro_batch_size: {c['micro_batch_size']} is larger than the effective "
                         f"batch_size {c['batch_size']}")
    from .models import resolve

    resolve(c["model"])  # unknown model -> error listing the known ones
    c["data"] = data_config(c["data"])
    return c


# ----------------------------------------------------------------------------- the update

def accumulate_gradients(model, micro_batches: list[dict], autocast=None) -> torch.Tensor:
    """Backpropagate one effective batch given as micro-batches (sizes may differ).

    Leaves in ``.grad`` the gradient of the mean cross-entropy over *all* examples of all
    micro-batches, exactly as one forward/backward of the concatenated batch would (up to float
    rounding), and returns that mean loss as a 0-d tensor (no host sync). Each micro-batch is a dict
    with ``input_ids``, ``attention_mask`` and ``labels`` on the model's device. Gradients add up
    onto whatever ``.grad`` holds already; zero them before calling.
    """
    n_total = sum(len(mb["labels"]) for mb in micro_batches)
    total = None
    for mb in micro_batches:
        with autocast or contextlib.nullcontext():
            logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
        # Sum over this micro-batch, divided by the *window's* size: the micro-batches' gradients
        # then add up to the gradient of the window's mean, however unequal their sizes.
        # fp32 loss under bf16 autocast; float64 stays float64 (the exactness tests run in it).
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        loss_sum = F.cross_entropy(logits, mb["labels"], reduction="sum")
        (loss_sum / n_total).backward()
        total = loss_sum.detach() if total is None else total + loss_sum.detach()
    return total / n_total


def autocast_for(device: torch.device, precision: str):
    if precision != "bf16":
        return None
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _sdpa_bert(model) -> bool:
    """BERT / RoBERTa under SDPA: these take a ready 4-D boolean mask as is (checked in the tests)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", None) in ("bert", "roberta") and getattr(cfg, "_attn_implementation", None) == "sdpa"


def _batch(split: dict, idx: torch.Tensor, idx_cpu: torch.Tensor | None = None, prepared: bool = False) -> dict:
    """One micro-batch of a split on its device.

    ``prepared`` (BERT / RoBERTa under SDPA, with ``split["full"]``: the rows without padding, kept
    on the host): given a 2-D mask, transformers asks the GPU whether it holds any padding
    (``padding_mask.all()``), a host sync in every forward. Answered on the host instead: no padding
    -> no mask (SDPA may use flash attention), else the 4-D boolean mask SDPA takes, passed through.
    Same logits either way (tested)."""
    am = split["attention_mask"][idx]
    if prepared:
        am = None if bool(split["full"][idx_cpu].all()) else am[:, None, None, :].bool()
    else:
        am = am.long()
    return {"input_ids": split["input_ids"][idx].long(), "attention_mask": am, "labels": split["labels"][idx]}


def _on_device(split: dict, device: torch.device) -> dict:
    out = {k: v.to(device) for k, v in split.items() if k in ("input_ids", "attention_mask", "labels")}
    out["full"] = split["attention_mask"].bool().all(1).cpu()  # host-side: which rows have no padding
    return out


@torch.no_grad()
def evaluate(model, split: dict, batch_size: int = 64, autocast=None) -> dict:
    """Mean loss, accuracy and class probabilities of ``model`` on a tokenized split (one sync)."""
    model.eval()
    n = len(split["labels"])
    loss_sum = torch.zeros((), device=split["labels"].device)
    probs = []
    prepared = "full" in split and _sdpa_bert(model)
    for i in range(0, n, batch_size):
        # Indices made on each side: a host-to-device copy of them would wait for the GPU's queue.
        j = min(i + batch_size, n)
        b = _batch(split, torch.arange(i, j, device=split["labels"].device), torch.arange(i, j), prepared)
        with autocast or contextlib.nullcontext():
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
        loss_sum += F.cross_entropy(logits, b["labels"], reduction="sum")
        probs.append(logits.softmax(-1))
    model.train()
    probs = torch.cat(probs).cpu()
    labels = split["labels"].cpu()
    return {"loss": float(loss_sum) / n, "acc": float((probs.argmax(1) == labels).double().mean()),
            "probs": probs, "labels": labels}


# ----------------------------------------------------------------------------- the loop

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StudyError("device: 'cuda' asked for, but no CUDA device is visible")
    return torch.device(name)


def train(config: dict, report: Callable[[dict, str | None], object] | None = None,
          data: dict | None = None, resume_from: str | Path | None = None,
          output_dir: str | Path | None = None, memory_cap: float | None = None,
          checkpoints: bool = True) -> list[dict]:
    """Fine-tune one config; returns the per-epoch metrics (also passed to ``report``).

    ``report(metrics, checkpoint_dir)`` is called once per epoch, with a directory holding the full
    state of that epoch (valid only during the call). A truthy return value stops training.
    ``data`` is ``load_tokenized``'s result (loaded, and cached, when None). ``resume_from`` is a
    checkpoint directory. ``output_dir`` receives ``best_model/`` (``save_pretrained``).
    ``memory_cap`` is the share of the GPU's memory this process may use (``cap_gpu_memory``); the
    micro-batch probe fits under it. ``checkpoints=False`` calls ``report(metrics, None)`` without
    writing the state (the benchmark only needs the epoch's end).
    """
    from transformers import get_scheduler, set_seed

    from .data import load_tokenized
    from .models import load_model

    c = resolve_config(config)
    if c["threads"]:
        torch.set_num_threads(c["threads"])
    device = pick_device(c["device"])
    precision = c["precision"]
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    autocast = autocast_for(device, precision)

    data = data if data is not None else load_tokenized(c["data"], c["model"], c["max_len"])
    train_split, val_split, test_split = (_on_device(data[s], device) for s in ("train", "val", "test"))
    n_train = len(train_split["labels"])
    split_facts = {"n_train": n_train, "n_val": len(val_split["labels"]), "n_test": len(test_split["labels"]),
                   # the accuracy of always answering the majority class: the report's "chance" line
                   "val_majority_rate": max(float(val_split["labels"].float().mean()),
                                            1 - float(val_split["labels"].float().mean()))}
    B = c["batch_size"]
    m = (auto_micro_batch(c, device, precision, memory_cap) if c["micro_batch_size"] == "auto"
         else c["micro_batch_size"])
    steps_per_epoch = math.ceil(n_train / B)
    total_steps = steps_per_epoch * c["epochs"]

    set_seed(c["seed"])  # classifier-head init and dropout
    model = load_model(c["model"]).to(device)
    model.train()
    prepared = _sdpa_bert(model)
    # Default mode (CUDA graphs break on HF outputs). Static shapes: the epoch's last window and its
    # remainder micro-batches get graphs of their own once, instead of turning every call dynamic.
    step_model = torch.compile(model, dynamic=False) if c["compile"] else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=c["weight_decay"],
                                  fused=True)  # one kernel per step (CPU too), as HF Trainer's default
    sched_name = "constant_with_warmup" if c["scheduler"] == "constant" and c["warmup_ratio"] else c["scheduler"]
    scheduler = get_scheduler(sched_name, optimizer, num_warmup_steps=round(c["warmup_ratio"] * total_steps),
                              num_training_steps=total_steps)

    best = {"epoch": 0, "val_acc": -1.0, "val_loss": math.inf, "test_acc": math.nan, "test_loss": math.nan,
            "test_ece": math.nan, "test_confidence": math.nan, "test_reliability": "[]"}
    progress = {"steps": 0, "samples": 0, "train_time_s": 0.0, "oom_halvings": 0}
    start_epoch, history = 0, []
    resumed_from = 0
    if resume_from is not None:
        state = load_state(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, best, progress = state["epoch"], state["best"], state["progress"]
        history = list(state.get("history", []))
        m = state.get("micro_batch_size", m)
        resumed_from = start_epoch

    best_dir = Path(output_dir) / "best_model" if output_dir else None
    for epoch in range(start_epoch, c["epochs"]):
        # The example order depends on (seed, epoch) alone, so a resumed run sees the same order.
        order_cpu = torch.randperm(n_train, generator=torch.Generator().manual_seed(c["seed"] * 100_003 + epoch))
        order = order_cpu.to(device)
        loss_sum = torch.zeros((), device=device)
        t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for step in range(steps_per_epoch):
            window = order[step * B:(step + 1) * B]          # the last window takes the remainder
            window_cpu = order_cpu[step * B:(step + 1) * B]
            while True:
                micro = [_batch(train_split, window[i:i + m], window_cpu[i:i + m], prepared)
                         for i in range(0, len(window), m)]
                # The dropout RNG as it was before this window: a retry after an OOM draws the same
                # masks as an uninterrupted run (the CUDA generator's state lives on the host: no sync).
                rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
                try:
                    loss = accumulate_gradients(step_model, micro, autocast)
                    break
                except torch.cuda.OutOfMemoryError:
                    if m == 1:
                        raise
                # Out of the except block: the failed attempt's activations are free by now.
                # Same window, same order, same effective batch: only the micro-batch shrinks.
                del micro
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.set_rng_state(rng, device)
                else:
                    torch.set_rng_state(rng)
                m //= 2
                progress["oom_halvings"] += 1
                print(f"CUDA out of memory: micro_batch_size halved to {m} (batch_size stays {B})", flush=True)
            if c["max_grad_norm"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), c["max_grad_norm"])
            optimizer.step()
            scheduler.step()           # once per optimizer step, never per micro-batch
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss * len(window)   # stays on the device: no host sync per step
        train_loss = float(loss_sum) / n_train  # the epoch's one sync
        epoch_time = time.perf_counter() - t0
        progress["steps"] += steps_per_epoch
        progress["samples"] += n_train
        progress["train_time_s"] += epoch_time

        # Evaluation runs the uncompiled module (same weights): eval mode, no_grad and the eval
        # batch would each cost the compiled one a recompile.
        t_eval = time.perf_counter()
        val = evaluate(model, val_split, c["eval_batch_size"], autocast)
        # Best by val acc, val loss breaking ties; test is evaluated only for a new best, so the
        # reported test numbers are always those of the best-val weights (early-stopped trials too).
        new_best = val["acc"] > best["val_acc"] or (val["acc"] == best["val_acc"] and val["loss"] < best["val_loss"])
        if new_best:
            test = evaluate(model, test_split, c["eval_batch_size"], autocast)
            cal = calibration(test["probs"], test["labels"])
            best = {"epoch": epoch + 1, "val_acc": val["acc"], "val_loss": val["loss"],
                    "test_acc": test["acc"], "test_loss": test["loss"], "test_ece": cal["ece"],
                    "test_confidence": cal["mean_confidence"],
                    "test_reliability": _bins_json(cal["bins"])}
        eval_s = time.perf_counter() - t_eval  # val, and test for a new best (the part that grows with them)
        if new_best and best_dir is not None:
            model.save_pretrained(best_dir)
            _save_tokenizer(c["model"], best_dir)

        metrics = {
            "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val["loss"], "val_acc": val["acc"],
            "lr": scheduler.get_last_lr()[0], "optimizer_steps": progress["steps"],
            "samples_seen": progress["samples"], "samples_per_s": n_train / epoch_time,
            "epoch_train_s": epoch_time, "eval_s": eval_s, "train_time_s": progress["train_time_s"],
            "best_epoch": best["epoch"], "best_val_acc": best["val_acc"], "best_val_loss": best["val_loss"],
            "test_acc": best["test_acc"], "test_loss": best["test_loss"], "test_nll": best["test_loss"],
            "test_ece": best["test_ece"], "test_confidence": best["test_confidence"],
            "test_reliability": best["test_reliability"],
            "micro_batch_size": m, "accumulation_steps": math.ceil(B / m), "oom_halvings": progress["oom_halvings"],
            "precision": precision, "device": _device_name(device),
            "peak_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan),
            **split_facts, "resumed_from_epoch": resumed_from, "best_model_path": str(best_dir) if best_dir and best["epoch"] else "",
        }
        history.append(metrics)
        stop = False
        if report is not None and not checkpoints:
            stop = report(metrics, None)
        elif report is not None:
            with tempfile.TemporaryDirectory(prefix="tune_study_ckpt_") as ckpt:
                save_state(ckpt, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "rng": rng_state(),
                                  "epoch": epoch + 1, "best": best, "progress": progress,
                                  "history": history, "micro_batch_size": m})
                stop = report(metrics, ckpt)
        if stop:
            break
    return history


def _save_tokenizer(model_name: str, best_dir: Path) -> None:
    """The tokenizer next to the best model. Random-weight models borrow the bundled one; a host
    without that package (the GPU box) keeps the weights and says so, instead of failing the trial."""
    from .models import RANDOM, load_tokenizer

    try:
        load_tokenizer(model_name).save_pretrained(best_dir)
    except ImportError as e:
        if model_name not in RANDOM:
            raise
        print(f"WARNING: {best_dir}: saved without a tokenizer ({e})", flush=True)


def _bins_json(bins) -> str:
    import json

    return json.dumps([[round(lo, 4), round(hi, 4), k, round(conf, 6), round(acc, 6)]
                       for lo, hi, k, conf, acc in bins])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()}"
