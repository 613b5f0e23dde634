"""Throughput benchmark: the project's own training loop against the HF Trainer baseline.

    python -m tune_study.bench                       # CPU: tiny-bert; GPU: bert-base-random, roberta-base-random
    python -m tune_study.bench --models bert-base-random --batch-sizes 16 256 1024
    python -m tune_study.bench --concurrent 4        # + 4 batch-16 trials sharing the device
    python -m tune_study.bench --compile 16 256      # + torch.compile at batch 16 and 256 (GPU)
    python -m tune_study.bench --check-bf16 300      # + bf16 vs fp32 loss over 300 steps
    python -m tune_study.bench --repeats 3           # each of ours on / off 3 times, interleaved: median

"ours" is ``training.loop.train`` itself (one warm-up epoch, one timed epoch, synthetic tokens): the
same accumulation, optimizer, autocast and micro-batch choice as a trial, with the gradient noise scale
measured (a trial's default) and, in the row after it, without: ``noise_scale_cost`` is the step-time
increase the measurement costs (time on / time off - 1). The baseline is what the
seed would write with transformers: ``Trainer`` at micro-batch 16 x accumulation, bf16 on a GPU.
MFU = samples/s x training FLOPs per sample / the bf16 matmul rate measured here at start.
Writes bench.md and bench.csv to --out and prints the table.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from .log import show_warnings
from .tables import frame_table
from .training.device import device_name


def synthetic(n: int, max_len: int, vocab: int = 30522, seed: int = 0, learnable: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, min(vocab, 30522) - 1, (n, max_len), generator=g, dtype=torch.int32)
    labels = (ids[:, 1] % 2).long() if learnable else torch.randint(0, 2, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(n, max_len, dtype=torch.int8), "labels": labels}


def flops_per_sample(model, max_len: int) -> float:
    """6 N L for the dense layers (forward + backward) plus attention's L^2 terms."""
    cfg = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)
    return 6 * n * max_len + 12 * cfg.num_hidden_layers * max_len * max_len * cfg.hidden_size


@functools.lru_cache(maxsize=None)
def model_flops_per_sample(model: str, max_len: int) -> float:
    """``flops_per_sample`` of a registry model, built once per process (not once per case)."""
    from .models import load_model

    return flops_per_sample(load_model(model, attn_implementation=None), max_len)


def matmul_peak() -> float:
    """Measured bf16 matmul FLOP/s on this GPU (the MFU denominator); nan on CPU."""
    if not torch.cuda.is_available():
        return math.nan
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (time.perf_counter() - t)


NOISE_OFF = ", noise scale off"
MIN_TIMED_SAMPLES = 2048  # a timed epoch shorter than this is mostly noise at batch 16


def timed_steps(batch: int, steps: int) -> int:
    return max(steps, math.ceil(MIN_TIMED_SAMPLES / batch))


def ours(model: str, batch: int, micro, max_len: int, steps: int, precision: str, compile_: bool = False,
         barrier=None, noise_scale: bool = True) -> dict:
    """``training.loop.train`` for two epochs on synthetic tokens; epoch 2 is the timed one. With a
    ``barrier`` (concurrent trials), every process starts its timed epoch at the same moment."""
    from .training.loop import train

    n = batch * timed_steps(batch, steps)
    data = {"train": synthetic(n, max_len), "val": synthetic(8, max_len, seed=1), "test": synthetic(8, max_len, seed=2)}
    cfg = {"model": model, "batch_size": batch, "micro_batch_size": micro, "max_len": max_len, "epochs": 2,
           "precision": precision, "compile": compile_, "lr": 5e-5, "noise_scale": noise_scale}

    marks = {}

    def start_together(metrics, ckpt):  # after the warm-up epoch only; returns None: never stops
        if metrics["epoch"] == 1:
            barrier.wait(timeout=600)
            marks["start"] = time.time()  # wall clock: comparable across the processes

    if compile_:
        torch._dynamo.reset()  # each case compiles its own model, not on top of the last case's guards
    t0 = time.perf_counter()
    hist = train(cfg, data=data, report=start_together if barrier else None, checkpoints=False)
    m = hist[-1]  # epoch 2: warm (allocator, kernels, compile) and timed alone
    fps = model_flops_per_sample(model, max_len)
    case = "tune_study" + (" compiled" if compile_ else "") + ("" if noise_scale else NOISE_OFF)
    return {"model": model, "case": case, "batch": batch,
            "micro": m["micro_batch_size"], "accum": m["accumulation_steps"], "precision": m["precision"],
            "samples_per_s": m["samples_per_s"], "flops_per_sample": fps, "peak_gib": m["peak_mem_gib"],
            "oom_halvings": m["oom_halvings"], "wall_s": time.perf_counter() - t0, "device": m["device"],
            "samples": n, "start": marks.get("start"),
            "end": marks["start"] + m["epoch_train_s"] if "start" in marks else None}


def hf_trainer(model: str, batch: int, max_len: int, steps: int) -> dict:
    """The seed's way with transformers: Trainer at micro 16 x accumulation, bf16 on a GPU.

    Its rate does not depend on the effective batch (micro-batch 16 either way), so at large batches
    it is timed over fewer optimizer steps: about 2,048 to 4,096 samples, after 1 to 3 warm-up steps."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from .models import load_model

    cuda = torch.cuda.is_available()
    micro = min(16, batch)
    accum = math.ceil(batch / micro)
    steps = max(2, math.ceil(max(MIN_TIMED_SAMPLES, min(steps * batch, 2 * MIN_TIMED_SAMPLES)) / batch))
    warm = 3 if batch <= 256 else 1
    torch.manual_seed(0)
    net = load_model(model)
    data = synthetic(micro * accum * (steps + warm), max_len)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(data["labels"])

        def __getitem__(self, i):
            return {"input_ids": data["input_ids"][i].long(), "attention_mask": data["attention_mask"][i].long(),
                    "labels": data["labels"][i]}

    marks = {}

    class Clock(TrainerCallback):  # time the steps after the warm-up ones, as for ours
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warm:
                if cuda:
                    torch.cuda.synchronize()
                marks["t0"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            marks["t1"] = time.perf_counter()

    import tempfile

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
                                 max_steps=steps + warm, learning_rate=5e-5, lr_scheduler_type="constant",
                                 bf16=cuda, use_cpu=not cuda, report_to="none", save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
        t0 = time.perf_counter()
        Trainer(model=net, args=args, train_dataset=DS(), callbacks=[Clock()]).train()
    sps = steps * micro * accum / (marks["t1"] - marks["t0"])
    return {"model": model, "case": "HF Trainer", "batch": batch, "micro": micro, "accum": accum,
            "precision": "bf16" if cuda else "fp32", "samples_per_s": sps,
            "flops_per_sample": flops_per_sample(net, max_len), "peak_gib": math.nan,
            "wall_s": time.perf_counter() - t0,
            "device": device_name()}


def _worker(args):
    model, batch, max_len, steps, precision, compile_, barrier, q = args
    try:
        q.put({**ours(model, batch, batch, max_len, steps, precision, compile_, barrier=barrier), "pid": os.getpid()})
    except BaseException as e:  # the parent must not wait forever on a worker that died
        barrier.abort()
        q.put({"error": f"{type(e).__name__}: {e}", "pid": os.getpid()})


def concurrent(model: str, k: int, batch: int, max_len: int, steps: int, precision: str,
               compile_: bool = False) -> dict:
    """k processes, each training one batch-``batch`` trial on the same device at once (packing).

    The processes wait for each other after their warm-up epoch, so the timed epochs overlap; the
    row's rate is the sum of theirs."""
    import queue

    ctx = mp.get_context("spawn")
    q, barrier = ctx.Queue(), ctx.Barrier(k)
    procs = [ctx.Process(target=_worker, args=((model, batch, max_len, steps, precision, compile_, barrier, q),))
             for _ in range(k)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    rows = []
    while len(rows) < k:  # a worker that dies hard (a crash, the OOM killer) must not hang the bench
        try:
            rows.append(q.get(timeout=5))
        except queue.Empty:
            done = {r.get("pid") for r in rows}  # a worker that crashes on teardown after its row is fine
            dead = [p.exitcode for p in procs if p.pid not in done and p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"a concurrent trial process died (exit code {dead[0]})")
    for p in procs:
        p.join()
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        raise RuntimeError(f"concurrent trials failed: {errors[0]}")
    # All the work over the whole window in which any of them ran: a process that finished early
    # cannot lend the others a less crowded device and still count as sharing it.
    window = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    return {"model": model, "case": f"{k} trials sharing the device" + (" compiled" if compile_ else ""),
            "batch": batch, "micro": rows[0]["micro"], "accum": rows[0]["accum"], "precision": rows[0]["precision"],
            "samples_per_s": sum(r["samples"] for r in rows) / window, "flops_per_sample": rows[0]["flops_per_sample"],
            "peak_gib": max(r["peak_gib"] for r in rows), "oom_halvings": sum(r["oom_halvings"] for r in rows),
            "wall_s": time.perf_counter() - t0, "device": rows[0]["device"],
            "per_process": "/".join(f"{r['samples_per_s']:.0f}" for r in rows)}


def check_bf16(model: str, steps: int, max_len: int, batch: int = 32) -> dict:
    """bf16 autocast against fp32 on the same learnable data and order: per-epoch train loss gap."""
    from .training.loop import train

    n = batch * 25
    data = {"train": synthetic(n, max_len, learnable=True), "val": synthetic(64, max_len, seed=1, learnable=True),
            "test": synthetic(64, max_len, seed=2, learnable=True)}
    epochs = max(1, round(steps / 25))
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = {"model": model, "batch_size": batch, "max_len": max_len, "epochs": epochs, "precision": precision,
               "lr": 1e-4, "seed": 0}
        runs[precision] = [h["train_loss"] for h in train(cfg, data=data)]
    gap = max(abs(a - b) for a, b in zip(runs["fp32"], runs["bf16"]))
    return {"steps": epochs * 25, "fp32_final": runs["fp32"][-1], "bf16_final": runs["bf16"][-1], "max_gap": gap}


def table(rows: list[dict], peak: float):
    """The rows as a DataFrame with MFU and the ratio to HF Trainer (same model; at the same batch
    if it was timed there, else at the largest batch it was timed at: its micro-batch is 16 anyway)."""
    df = pd.DataFrame(rows)
    key = ["model", "case", "batch"] + (["error"] if "error" in df else [])  # a failed repeat: a row of its own
    df = df.groupby(key, sort=False, as_index=False, dropna=False).agg(  # --repeats: the median rate
        {c: "median" if c == "samples_per_s" else "first" for c in df.columns if c not in key})
    for col in ("micro", "accum", "precision", "samples_per_s", "flops_per_sample", "peak_gib", "oom_halvings",
                "wall_s", "error"):
        if col not in df:
            df[col] = math.nan
    df["mfu"] = df["samples_per_s"] * df["flops_per_sample"] / peak
    hf = df[(df.case == "HF Trainer") & df.samples_per_s.notna()].sort_values("batch")
    same = hf.set_index(["model", "batch"])["samples_per_s"]
    largest = hf.groupby("model")["samples_per_s"].last()
    df["x_vs_trainer"] = [math.nan if r.case == "HF Trainer" else
                          r.samples_per_s / same.get((r.model, r.batch), largest.get(r.model, math.nan))
                          for r in df.itertuples()]
    off = {(r.model, r.case.removesuffix(NOISE_OFF), r.batch): r.samples_per_s for r in df.itertuples()
           if r.case.endswith(NOISE_OFF)}
    df["noise_scale_cost"] = [off.get((r.model, r.case, r.batch), math.nan) / r.samples_per_s - 1
                              for r in df.itertuples()]
    return df


def main(argv=None) -> int:
    show_warnings()
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m tune_study.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["bert-base-random", "roberta-base-random"] if cuda else ["tiny-bert"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 256, 1024] if cuda else [16, 64])
    p.add_argument("--micro", default="auto", help="micro-batch for ours: an int or 'auto' (default)")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per case")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--no-baseline", action="store_true", help="skip the HF Trainer baseline")
    p.add_argument("--baseline-max-batch", type=int, default=256,
                   help="time HF Trainer up to this batch only; its rate at micro 16 does not depend on the "
                        "batch, and larger batches take minutes (default 256)")
    p.add_argument("--compile", nargs="*", type=int, default=None, metavar="BATCH",
                   help="also time ours under torch.compile (GPU), at the given batch sizes (default: all)")
    p.add_argument("--skip-eager", action="store_true", help="do not time ours uncompiled (e.g. with --compile)")
    p.add_argument("--concurrent", type=int, default=0, help="also time K batch-16 trials sharing the device")
    p.add_argument("--repeats", type=int, default=1, help="run ours with and without the noise scale this many "
                   "times each, interleaved, and report the median rate (a loaded machine's timing noise)")
    p.add_argument("--check-bf16", type=int, default=0, metavar="STEPS", help="also compare bf16 and fp32 loss")
    p.add_argument("--out", default=None, help="folder for bench.md / bench.csv (default results/bench/<device>)")
    args = p.parse_args(argv)
    micro = args.micro if args.micro == "auto" else int(args.micro)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    peak = matmul_peak()
    device = device_name()
    print(f"device: {device}; torch {torch.__version__}; bf16 matmul peak "
          f"{peak / 1e12:.0f} TFLOP/s" if cuda else f"device: {device}; torch {torch.__version__}", flush=True)
    out = Path(args.out or Path("results") / "bench" / device.replace(" ", "_").lower())
    out.mkdir(parents=True, exist_ok=True)
    rows, extra = [], []
    cols = ["model", "case", "batch", "micro", "accum", "precision", "samples_per_s", "x_vs_trainer", "mfu",
            "noise_scale_cost", "peak_gib", "wall_s"]

    def write() -> str:
        """bench.csv and bench.md as they stand: a run cut short keeps every case it finished."""
        df = table(rows, peak) if rows else pd.DataFrame(columns=cols + ["oom_halvings", "error"])
        shown = cols + (["oom_halvings"] if df["oom_halvings"].fillna(0).any() else []) + \
            (["error"] if df["error"].notna().any() else [])
        text = frame_table(df[shown])
        text = f"# tune_study bench\n\ndevice: {device}, torch {torch.__version__}, max_len {args.max_len}\n\n{text}\n"
        text += "".join(extra)
        df.to_csv(out / "bench.csv", index=False)
        (out / "bench.md").write_text(text)
        return text

    def case(label, fn, *a, **kw):
        # One failing case (a compile error, an OOM) is a row saying so, not a lost table.
        try:
            rows.append(fn(*a, **kw))
        except Exception as e:
            rows.append({"model": a[0], "case": label, "batch": a[1] if fn is not concurrent else 16,
                         "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"})
        print(rows[-1], flush=True)
        gc.collect()  # give the next case (or the next processes) the memory this one cached
        if cuda:
            torch.cuda.empty_cache()
        write()

    def compiled(b):
        return args.compile is not None and cuda and (not args.compile or b in args.compile)

    for model in args.models:
        if args.concurrent:  # first: before this process holds any memory the others would need
            if not args.skip_eager:
                case(f"{args.concurrent} trials sharing the device", concurrent, model, args.concurrent, 16,
                     args.max_len, args.steps, args.precision)
            if compiled(16):
                case(f"{args.concurrent} trials sharing the device compiled", concurrent, model, args.concurrent,
                     16, args.max_len, args.steps, args.precision, True)
        for b in args.batch_sizes:
            m = micro if micro == "auto" else min(micro, b)
            for _ in range(args.repeats):
                for noise in (True, False):  # same run, back to back: the measurement's cost
                    tail = "" if noise else NOISE_OFF
                    if not args.skip_eager:
                        case("tune_study" + tail, ours, model, b, m, args.max_len, args.steps, args.precision,
                             noise_scale=noise)
                    if compiled(b):
                        case("tune_study compiled" + tail, ours, model, b, m, args.max_len, args.steps, args.precision,
                             compile_=True, noise_scale=noise)
            if not args.no_baseline and b <= args.baseline_max_batch:
                case("HF Trainer", hf_trainer, model, b, args.max_len, args.steps)
    if args.check_bf16:
        c = check_bf16(args.models[0], args.check_bf16, args.max_len)
        extra.append(f"\nbf16 vs fp32 ({args.models[0]}, {c['steps']} optimizer steps at batch 32): final train loss "
                     f"{c['bf16_final']:.4f} vs {c['fp32_final']:.4f}; largest per-epoch gap {c['max_gap']:.4f} "
                     f"(tolerance 0.05: {'ok' if c['max_gap'] <= 0.05 else 'EXCEEDED'})\n")
        (out / "bf16_check.json").write_text(json.dumps({"model": args.models[0], "device": device, **c}, indent=1))
    text = write()
    print("\n" + text)
    print(f"wrote {out / 'bench.md'} and {out / 'bench.csv'}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
