"""Run one config without Ray: ``python -m tune_study.train --model minilm --batch-size 16 ...``.

Prints one line per epoch. ``--out DIR`` keeps the latest checkpoint (DIR/checkpoint) and the
best-val model (DIR/best_model, save_pretrained); ``--resume`` continues from DIR/checkpoint.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from .errors import EXIT_BAD_INPUT, StudyError
from .log import show_warnings


def main(argv=None) -> int:
    show_warnings()
    from .config import DataConfig, TrainConfig

    p = argparse.ArgumentParser(prog="python -m tune_study.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML or JSON file with a training config (flags override it)")
    p.add_argument("--model", help="minilm | bert-base-uncased | roberta-base | *-random | tiny-bert | hub id | dir")
    p.add_argument("--batch-size", type=int, help="effective batch (examples per optimizer step)")
    p.add_argument("--micro-batch-size", help="examples per forward/backward, or 'auto'")
    p.add_argument("--lr", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--scheduler", choices=["constant", "linear", "cosine"])
    p.add_argument("--warmup-ratio", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lr-scaling", choices=["none", "sqrt", "linear"],
                   help="lr * (batch / lr-base-batch)^0.5 (sqrt) or ^1 (linear)")
    p.add_argument("--lr-base-batch", type=int, help="the batch at which --lr is used as given")
    p.add_argument("--beta2-scaling", choices=["none", "halflife"], help="halflife: beta2 = 0.999^(batch / base)")
    p.add_argument("--max-len", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--threads", type=int)
    p.add_argument("--evals-per-epoch", type=int, help=TrainConfig.model_fields["evals_per_epoch"].description)
    p.add_argument("--source", help="data source: bundled | hub | file | aclimdb")
    p.add_argument("--path", help="data file or aclImdb folder (source file / aclimdb)")
    p.add_argument("--max-examples", type=int, help="stratified subsample of the data before the 8:1:1 split")
    p.add_argument("--truncation", help=DataConfig.model_fields["truncation"].description)
    p.add_argument("--out", help="folder for the latest checkpoint and the best model")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    args = p.parse_args(argv)

    try:
        config = {}
        if args.config:
            from .config import read_yaml

            config = read_yaml(args.config)
        flags = {"model": args.model, "batch_size": args.batch_size, "lr": args.lr, "epochs": args.epochs,
                 "scheduler": args.scheduler, "warmup_ratio": args.warmup_ratio,
                 "weight_decay": args.weight_decay, "max_len": args.max_len, "seed": args.seed,
                 "precision": args.precision, "threads": args.threads, "lr_scaling": args.lr_scaling,
                 "lr_base_batch": args.lr_base_batch, "beta2_scaling": args.beta2_scaling,
                 "evals_per_epoch": args.evals_per_epoch}
        if args.micro_batch_size is not None:
            mb = args.micro_batch_size
            flags["micro_batch_size"] = mb if mb == "auto" else int(mb)
        config.update({k: v for k, v in flags.items() if v is not None})
        data = dict(config.get("data", {}))
        for key, val in (("source", args.source), ("path", args.path), ("max_examples", args.max_examples),
                         ("truncation", args.truncation)):
            if val is not None:
                data[key] = val
        config["data"] = data
        if "micro_batch_size" not in config and "batch_size" in config:
            config["micro_batch_size"] = "auto"
        from .config import resolve_config
        from .training import train

        resolve_config(config)
        out = Path(args.out) if args.out else None
        resume = None
        if args.resume:
            if out is None or not (out / "checkpoint").exists():
                raise StudyError(f"--resume: no checkpoint at {out / 'checkpoint' if out else '(no --out given)'}")
            resume = out / "checkpoint"
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

        t0 = time.time()
        print(f"config: {json.dumps(config)}", flush=True)

        def report(m, ckpt):
            print(f"epoch {m['epoch']}: train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
                  f"val_acc {m['val_acc']:.4f}  lr {m['lr']:.2e} (peak {m['lr_peak']:.2e}, beta2 {m['beta2']:.4g})  "
                  f"steps {m['optimizer_steps']}  "
                  f"{m['samples_per_s']:.1f} samples/s  | best epoch {m['best_epoch']}: "
                  f"test_acc {m['test_acc']:.4f} test_loss {m['test_loss']:.4f}  ({time.time() - t0:.0f} s)",
                  flush=True)
            if out is not None:
                tmp = out / "checkpoint.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(ckpt, tmp)
                shutil.rmtree(out / "checkpoint", ignore_errors=True)
                tmp.rename(out / "checkpoint")

        history = train(config, report=report, resume_from=resume, output_dir=out)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if history:
        last = history[-1]
        print(f"done in {time.time() - t0:.0f} s: best epoch {last['best_epoch']}, val_acc "
              f"{last['best_val_acc']:.4f}, test_acc {last['test_acc']:.4f}, test_loss {last['test_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
