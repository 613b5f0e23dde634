"""gpu_check's stage ``noise_scale``: the gradient noise scale B_simple of one model at three batch
sizes, measured by the training loop itself, and what the measurement costs on the micro-batch the
GPU picks.

Per batch size B (16 / 256 / 1024 on a GPU; 4 / 16 / 64 with --smoke): ``training.loop.train`` (no Ray)
on the shortened grid's tokenized data (search_spaces/gpu_short.yaml: real IMDB reviews, max_len
128, bf16, constant lr 5e-5), two epochs of the first min(n_train, 100 B) training examples, so an
epoch is at most 100 optimizer steps (4 with --smoke) and batch 16 stays within seconds; val is evaluated twice an
epoch, and each evaluation closes one measuring interval. Then the same run with ``noise_scale``
off, at the micro-batch the first run used: ``noise_scale_cost`` = samples/s off / samples/s on - 1,
both from the warm second epoch. A window that fits in one micro-batch is measured as two halves
(``noise_scale.halves``): that halving is part of the cost. A script's helper (tools/ is not a
package), imported by gpu_check.py.
"""
from __future__ import annotations

import gc
import json
import math
import time
from pathlib import Path

GPU_BATCHES = (16, 256, 1024)
SMOKE_BATCHES = (4, 16, 64)   # tiny-bert on a CPU (micro-batch min(B, 16)): halved windows and accumulated ones
EPOCHS, EVALS_PER_EPOCH = 2, 2
MAX_STEPS_PER_EPOCH = {"gpu": 100, "smoke": 4}   # the smoke run shows the stage works, in seconds
COLUMNS = ["batch", "micro_batch_size", "accumulation", "micro_measured", "windows", "n_train",
           "b_simple_first", "samples_first", "b_simple_end", "b_simple_last_epoch",
           "samples_per_s", "samples_per_s_off", "noise_scale_cost", "peak_mem_gib", "wall_s"]


def table_row(batch: int, on: list[dict], off: list[dict] | None) -> dict:
    """One row of the stage's table from ``train``'s histories with the measurement (``on``) and
    without it (``off``, same config; None when it did not run).

    ``micro_measured``: the micro-batch a measured window is cut into (half the window when it fits
    in one micro-batch); ``windows``: the windows measured over the whole run; ``b_simple_first``:
    B_simple of the first evaluation's interval (after ``samples_first`` examples); ``b_simple_end``:
    of the last interval; ``b_simple_last_epoch``: over all windows of the last epoch."""
    from tune_study.training.noise_scale import halves

    evals = [e for h in on for e in json.loads(h["evals"])]
    last = on[-1]
    m = int(last["micro_batch_size"])
    rate_off = float(off[-1]["samples_per_s"]) if off else math.nan
    return {"batch": batch, "micro_batch_size": m, "accumulation": int(last["accumulation_steps"]),
            "micro_measured": halves(batch, m, True), "windows": sum(int(e["gns_windows"]) for e in evals),
            "n_train": int(last["n_train"]),
            "b_simple_first": evals[0]["gns_b_simple"], "samples_first": evals[0]["samples_seen"],
            "b_simple_end": evals[-1]["gns_b_simple"], "b_simple_last_epoch": last["gns_b_simple_epoch"],
            "samples_per_s": float(last["samples_per_s"]), "samples_per_s_off": rate_off,
            "noise_scale_cost": rate_off / float(last["samples_per_s"]) - 1, "peak_mem_gib": last["peak_mem_gib"]}


def first_examples(data: dict, n: int) -> dict:
    """``data`` with its training split cut to the first ``n`` examples (val and test as they are)."""
    return {**data, "train": {k: v[:n] for k, v in data["train"].items()}}


def measure(model: str, batch: int, data: dict, fixed: dict, max_steps: int = MAX_STEPS_PER_EPOCH["gpu"]) -> dict:
    """Train ``model`` at ``batch`` with the measurement, then without it at the micro-batch the
    first run used (its probe's answer); the table row of the two."""
    import torch

    from tune_study.training.loop import train

    n = min(len(data["train"]["labels"]), max_steps * batch)
    part = first_examples(data, n)
    cfg = {**{k: fixed[k] for k in ("scheduler", "lr", "max_len", "precision", "seed") if k in fixed},
           "model": model, "batch_size": batch, "micro_batch_size": "auto", "epochs": EPOCHS,
           "evals_per_epoch": EVALS_PER_EPOCH}
    t0 = time.perf_counter()
    on = train({**cfg, "noise_scale": True}, data=part, checkpoints=False)
    _release(torch)
    off = train({**cfg, "noise_scale": False, "micro_batch_size": on[-1]["micro_batch_size"]},
                data=part, checkpoints=False)
    _release(torch)
    return {**table_row(batch, on, off), "wall_s": round(time.perf_counter() - t0, 1)}


def _release(torch) -> None:
    gc.collect()   # the last run's model and optimizer, before the next one allocates its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def stage(out: Path, space: str, model: str, smoke: bool) -> None:
    """Every batch size in turn; the table is rewritten after each, so a stage stopped at its
    deadline keeps the rows it finished. Exits 1 if a batch size failed (the others still run)."""
    from tune_study.config import load_space
    from tune_study.data import load_tokenized

    out.mkdir(parents=True, exist_ok=True)
    fixed = load_space(space, kind="grid").fixed
    data = load_tokenized(fixed["data"], model, fixed["max_len"])
    rows, steps = [], MAX_STEPS_PER_EPOCH["smoke" if smoke else "gpu"]
    for b in SMOKE_BATCHES if smoke else GPU_BATCHES:
        try:
            rows.append(measure(model, b, data, fixed, steps))
        except Exception as e:   # one batch size's failure (an OOM the loop could not halve away) costs itself only
            rows.append({"batch": b, "error": f"{type(e).__name__}: {e}"[:300]})
        print(json.dumps(rows[-1]), flush=True)
        write(out, model, rows, steps)
    if any("error" in r for r in rows):
        raise SystemExit(1)


def write(out: Path, model: str, rows: list[dict], max_steps: int) -> None:
    doc = {"model": model, "max_steps_per_epoch": max_steps, "rows": rows}
    (out / "noise_scale.json").write_text(json.dumps(doc, indent=1))


def read(out: Path) -> dict | None:
    f = out / "noise_scale" / "noise_scale.json"
    return json.loads(f.read_text()) if f.exists() else None


def summary_lines(result: dict, smoke: bool) -> list[str]:
    """gpu_check.md's section: what was measured, the table, and the measurement's cost on the
    largest micro-batch measured (the GPU-sized one on a GPU)."""
    import pandas as pd

    from tune_study.tables import frame_table

    ok = [r for r in result["rows"] if "error" not in r]
    lines = [f"## noise_scale: B_simple of {result['model']} at batch "
             f"{' / '.join(str(r['batch']) for r in result['rows'])}", "",
             f"`training.train` on the shortened grid's data, {EPOCHS} epochs of the first min(n_train, "
             f"{result['max_steps_per_epoch']} x batch) training examples, val {EVALS_PER_EPOCH}x an epoch (one measuring "
             "interval each); then the same run with noise_scale off. b_simple_first: the first interval "
             "(after samples_first examples); b_simple_end: the last; b_simple_last_epoch: all windows of the "
             "last epoch. micro_measured: the micro-batch a measured window is cut into (a window that fits in "
             "one micro-batch runs as two halves). noise_scale_cost = samples/s off / on - 1 (warm epoch 2). "
             "Windows drawn without replacement bias B_simple up by about B_simple / n_train, relative.", ""]
    if ok:
        lines += [frame_table(pd.DataFrame(ok)[[c for c in COLUMNS if c in ok[0]]], ".4g"), ""]
        costed = [r for r in ok if math.isfinite(r["noise_scale_cost"])]
        if costed:
            r = max(costed, key=lambda r: (r["micro_measured"], r["batch"]))
            where = "a CPU smoke run, not a GPU-sized micro-batch" if smoke else "this GPU"
            lines += [f"Cost of the measurement on the largest micro-batch measured ({r['micro_measured']}, "
                      f"batch {r['batch']}, {where}): {r['noise_scale_cost']:+.1%} step time "
                      f"({r['samples_per_s']:,.0f} samples/s with it, {r['samples_per_s_off']:,.0f} without).", ""]
    failed = [f"- batch {r['batch']}: failed: {r['error']}" for r in result["rows"] if "error" in r]
    return lines + (["\n".join(failed), ""] if failed else [])
