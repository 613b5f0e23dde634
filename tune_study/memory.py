"""GPU memory: a packed trial's share of the card, and the micro-batch that fits in it."""
from __future__ import annotations

import json
import os
import time

import torch


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


def auto_micro_batch(c: dict, device: torch.device, precision: str, memory_cap: float | None = None) -> int:
    """The largest power of two <= batch_size whose real training step (forward, backward and a
    fused-AdamW step, so the optimizer's state is counted) fits, cached per (model, max_len,
    precision, GPU, memory cap). On CPU memory is not the limit: 16 (measured best)."""
    B = c["batch_size"]
    if device.type != "cuda":
        return min(B, 16)
    from .data import cache_dir
    from .models import load_model
    from .training import accumulate_gradients, autocast_for

    key = f"{c['model']}|{c['max_len']}|{precision}|{torch.cuda.get_device_name(device)}|cap={memory_cap or 1}"
    cache = cache_dir() / "micro_batch.json"
    try:
        known = json.loads(cache.read_text()) if cache.exists() else {}
    except ValueError:  # a torn write by a concurrent trial: probe again
        known = {}
    if key in known:
        return min(B, known[key])
    t0 = time.perf_counter()
    model = load_model(c["model"]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, fused=True)  # lr 0: state only
    autocast = autocast_for(device, precision)
    top = 1 << (min(B, 1024).bit_length() - 1)
    m = top
    while m > 1:
        try:
            x = torch.randint(1000, 2000, (m, c["max_len"]), device=device)
            accumulate_gradients(model, [{"input_ids": x, "attention_mask": torch.ones_like(x),
                                          "labels": torch.zeros(m, dtype=torch.long, device=device)}], autocast)
            optimizer.step()
            torch.cuda.synchronize(device)
            break
        except torch.cuda.OutOfMemoryError:
            pass
        # Out of the except block, so the exception's frames (and the tensors they hold) are gone.
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        m //= 2
    del model, optimizer
    torch.cuda.empty_cache()
    print(f"micro_batch_size auto: {m} for {c['model']} at max_len {c['max_len']}, {precision}"
          f"{f', memory cap {memory_cap}' if memory_cap else ''} (probe {time.perf_counter() - t0:.1f} s)", flush=True)
    if B >= 1024 or m < top:  # only a probe that hit a limit (or the 1024 ceiling) is general
        known[key] = m
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, cache)
    return m
