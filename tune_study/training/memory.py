"""GPU memory: a packed trial's share of the card, the micro-batch that fits in it, and what to do
when a step runs out of it anyway (halve the micro-batch, or free the cache once).

The micro-batch probe's results are cached per (model, max_len, precision, device, memory cap) in
``<cache>/micro_batch.json``; a trial that still runs out of memory writes its halved micro-batch
there, so later trials start at the size that fits instead of paying the same OOM.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..files import read_json_cache, write_json_cache
from .device import OOM, autocast_for, free_cache, rng_of, set_rng_of, synchronize
from .evaluation import batch
from .noise_scale import NoiseScale, halves
from .step import accumulate_gradients

log = logging.getLogger(__name__)


def cap_gpu_memory(fraction: float, device: torch.device | None = None) -> float | None:
    """Cap this process's CUDA allocator at its share of the card (a trial holding 0.25 of a GPU gets
    ~0.25 of its memory), so packed trials cannot starve each other: a trial that outgrows its share
    hits an OOM, which halves its micro-batch, instead of taking memory a neighbour was promised.
    Returns the fraction set (5% is left for the CUDA contexts), or None for a whole or no GPU."""
    if not (0 < fraction < 1) or not torch.cuda.is_available():
        return None
    cap = round(fraction * 0.95, 4)
    torch.cuda.set_per_process_memory_fraction(cap, device)
    return cap


# ----------------------------------------------------------------------------- the probe and its cache

def probe_key(c: TrainConfig, device: torch.device, precision: str, memory_cap: float | None = None) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{c.model}|{c.max_len}|{precision}|{name}|cap={memory_cap or 1}"


def _cache_file():
    from ..data import cache_dir

    return cache_dir() / "micro_batch.json"


def cached_micro_batches() -> dict:
    return read_json_cache(_cache_file())


def record_micro_batch(key: str, m: int) -> None:
    """Cache ``m`` (as the power of two at or below it) as the most that fits for ``key``; never raises
    a value already there, so a trial's OOM only ever lowers it."""
    known = cached_micro_batches()
    m = 1 << (m.bit_length() - 1)
    known[key] = min(known.get(key, m), m)
    write_json_cache(_cache_file(), known)


def auto_micro_batch(c: TrainConfig, device: torch.device, precision: str, memory_cap: float | None = None) -> int:
    """The micro-batch for ``micro_batch_size: auto``: on CPU memory is not the limit, 16 (measured
    best); on a GPU the probe's answer (cached)."""
    if device.type != "cuda":
        return min(c.batch_size, 16)
    return probe_micro_batch(c, device, precision, memory_cap)


def probe_micro_batch(c: TrainConfig, device: torch.device, precision: str, memory_cap: float | None = None) -> int:
    """The largest power of two <= batch_size whose real training step (forward and backward in train
    mode, so dropout's masks are counted, and a fused-AdamW step, so the optimizer's state is) fits.
    Cached per ``probe_key``."""
    from ..models import load_model

    B = c.batch_size
    key = probe_key(c, device, precision, memory_cap)
    known = cached_micro_batches()
    if key in known:
        return min(B, known[key])
    t0 = time.perf_counter()
    model = load_model(c.model).to(device)
    model.train()  # dropout on: eval mode would underestimate the activations (~2x measured)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, fused=True)  # lr 0: state only
    autocast = autocast_for(device, precision)
    top = 1 << (min(B, 1024).bit_length() - 1)
    m = top
    while m > 1:
        try:
            x = torch.randint(1000, 2000, (m, c.max_len), device=device)
            accumulate_gradients(model, [{"input_ids": x, "attention_mask": torch.ones_like(x),
                                          "labels": torch.zeros(m, dtype=torch.long, device=device)}], autocast)
            optimizer.step()
            synchronize(device)
            break
        except OOM:
            pass
        # Out of the except block, so the exception's frames (and the tensors they hold) are gone.
        model.zero_grad(set_to_none=True)
        free_cache(device)
        m //= 2
    del model, optimizer
    free_cache(device)
    print(f"micro_batch_size auto: {m} for {c.model} at max_len {c.max_len}, {precision}"
          f"{f', memory cap {memory_cap}' if memory_cap else ''} (probe {time.perf_counter() - t0:.1f} s)", flush=True)
    if B >= 1024 or m < top:  # only a probe that hit a limit (or the 1024 ceiling) is general
        record_micro_batch(key, m)
    return m


# ----------------------------------------------------------------------------- running out of memory

@dataclass
class Windows:
    """A run's accumulation windows: ``accumulate(idx, idx_cpu)`` leaves in ``.grad`` the exact
    gradient of the window's mean loss (``step.accumulate_gradients``) and returns that loss, at the
    largest micro-batch that fits. The GPU-only parts live here, each named:

    - ``four_d_mask``: BERT / RoBERTa under SDPA get the 4-D mask host-side (``evaluation.batch``);
    - on a CUDA OOM the micro-batch halves and the same window runs again, from the same dropout
      RNG state (``_halve``); the smaller size goes into the probe's cache under ``cache_key``.

    Same window, same order, same effective batch: only the micro-batch shrinks. When measuring the
    noise scale, a window of one micro-batch is cut in two halves (``noise_scale.halves``)."""
    model: torch.nn.Module            # the compiled twin when compile is on
    split: dict                       # the training split on the device
    micro_batch_size: int
    optimizer: torch.optim.Optimizer
    device: torch.device
    autocast: object = None
    noise: NoiseScale | None = None
    four_d_mask: bool = False
    cache_key: str | None = None
    halvings: int = 0                 # OOM halvings so far (this train() call)

    def micro_batches(self, idx: torch.Tensor, idx_cpu: torch.Tensor) -> list[dict]:
        m = halves(len(idx), self.micro_batch_size, self.noise is not None)
        return [batch(self.split, idx[i:i + m], idx_cpu[i:i + m], self.four_d_mask) for i in range(0, len(idx), m)]

    def accumulate(self, idx: torch.Tensor, idx_cpu: torch.Tensor) -> torch.Tensor:
        while True:
            micro = self.micro_batches(idx, idx_cpu)
            rng = rng_of(self.device)
            try:
                return accumulate_gradients(self.model, micro, self.autocast, self.noise)
            except OOM:
                if self.micro_batch_size == 1:
                    raise
            # Out of the except block: the failed attempt's activations are free by now.
            del micro
            self._halve(rng)

    def _halve(self, rng: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # the failed attempt's partial gradients
        free_cache(self.device)
        set_rng_of(self.device, rng)   # the retry draws the dropout masks an uninterrupted run would
        self.micro_batch_size //= 2
        self.halvings += 1
        log.warning("CUDA out of memory: micro_batch_size halved to %d (the effective batch stays)",
                    self.micro_batch_size)
        if self.cache_key is not None:
            record_micro_batch(self.cache_key, self.micro_batch_size)


def step_fitting(optimizer, device: torch.device) -> None:
    """``optimizer.step()``, retried once after freeing the allocator's cache. A smaller micro-batch
    cannot help here: by now the activations are gone and the step needs only the weights, their
    gradients and AdamW's state, allocated at the first step: the usual place to fail, before any
    weight is written, so the retry takes the same step."""
    try:
        optimizer.step()
        return
    except OOM:
        pass
    free_cache(device)
    try:
        optimizer.step()
    except OOM as e:
        raise OOM("CUDA out of memory in the optimizer step: the weights, gradients and AdamW state do not "
                  "fit (a smaller micro_batch_size cannot help; give the trial more GPU memory)") from e
