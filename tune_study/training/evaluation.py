"""A tokenized split on the device, the batches cut from it, and evaluation over it.

Shared by the training loop (its micro-batches and its val / test evaluations) and the GPU checks.
"""
from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F

from ..metrics import says_positive
from .device import OOM, free_cache

log = logging.getLogger(__name__)


def sdpa_bert(model) -> bool:
    """BERT / RoBERTa under SDPA: these take a ready 4-D boolean mask as is (checked in the tests)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", None) in ("bert", "roberta") and getattr(cfg, "_attn_implementation", None) == "sdpa"


def batch(split: dict, idx: torch.Tensor, idx_cpu: torch.Tensor | None = None, prepared: bool = False) -> dict:
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


def on_device(split: dict, device: torch.device) -> dict:
    out = {k: v.to(device) for k, v in split.items() if k in ("input_ids", "attention_mask", "labels")}
    out["full"] = split["attention_mask"].bool().all(1).cpu()  # host-side: which rows have no padding
    return out


@torch.no_grad()
def _evaluate(model, split: dict, batch_size: int, autocast) -> dict:
    n = len(split["labels"])
    loss_sum = torch.zeros((), device=split["labels"].device)
    probs = []
    prepared = "full" in split and sdpa_bert(model)
    for i in range(0, n, batch_size):
        # Indices made on each side: a host-to-device copy of them would wait for the GPU's queue.
        j = min(i + batch_size, n)
        b = batch(split, torch.arange(i, j, device=split["labels"].device), torch.arange(i, j), prepared)
        with autocast or contextlib.nullcontext():
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
        loss_sum += F.cross_entropy(logits, b["labels"], reduction="sum")
        probs.append(logits.softmax(-1))
    probs = torch.cat(probs).cpu()
    labels = split["labels"].cpu()
    return {"loss": float(loss_sum) / n, "acc": float((says_positive(probs[:, 1]) == labels).double().mean()),
            "probs": probs, "labels": labels}


def evaluate(model, split: dict, batch_size: int = 64, autocast=None) -> dict:
    """Mean loss, accuracy and class probabilities of ``model`` on a tokenized split (one sync), in
    eval mode (no dropout: no RNG drawn), back in train mode afterwards. On a CUDA OOM the eval batch
    is halved and the evaluation starts over; ``batch_size`` in the result is the one that fit."""
    model.eval()
    try:
        while True:
            try:
                return {**_evaluate(model, split, batch_size, autocast), "batch_size": batch_size}
            except OOM:
                if batch_size == 1:
                    raise
            free_cache(split["labels"].device)  # out of the except block: the attempt's tensors are gone
            batch_size //= 2
            log.warning("CUDA out of memory in evaluation: eval batch halved to %d", batch_size)
    finally:
        model.train()



def eval_points(steps: int, k: int) -> dict[int, float]:
    """After which optimizer steps of an epoch val is evaluated: round(j * steps / k), j = 1..k, each
    step once (the largest j wins when steps < k), the last at the epoch's end. Maps step -> j / k."""
    points = {}
    for j in range(1, k + 1):
        if (s := round(j * steps / k)) > 0:
            points[s] = j / k
    return points
