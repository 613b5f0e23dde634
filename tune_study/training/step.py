"""Exact gradient accumulation over a window's micro-batches: the heart of one optimizer step,
shared by the loop and the GPU memory probe. torch only."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .noise_scale import NoiseScale


def accumulate_gradients(model, micro_batches: list[dict], autocast=None,
                         noise: NoiseScale | None = None) -> torch.Tensor:
    """Backpropagate one effective batch given as micro-batches (sizes may differ).

    Leaves in ``.grad`` the gradient of the mean cross-entropy over *all* examples of all
    micro-batches, exactly as one forward/backward of the concatenated batch would (up to float
    rounding), and returns that mean loss as a 0-d tensor (no host sync). Each micro-batch is a dict
    with ``input_ids``, ``attention_mask`` and ``labels`` on the model's device. Gradients add up
    onto whatever ``.grad`` holds already; zero them before calling. ``noise``: the noise-scale
    meter, whose hooks on the parameters read each micro-batch's gradient (``.grad`` must be None).
    """
    n_total = sum(len(mb["labels"]) for mb in micro_batches)
    total = None
    if noise is not None:
        noise.start_window()  # here, so an OOM retry of the window starts its measurement over
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
        if noise is not None:
            noise.micro_batch_done(len(mb["labels"]))
    if noise is not None:
        noise.end_window()
    return total / n_total
