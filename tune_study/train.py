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
import typing
from pathlib import Path

import yaml

from .errors import EXIT_BAD_INPUT, StudyError
from .log import show_warnings


def _literal_choices(annotation) -> list[str] | None:
    """The values of a Literal field (through Annotated), None for any other field."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _literal_choices(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is typing.Literal:
        return [str(v) for v in typing.get_args(annotation)]
    return None


def _scalar(text: str):
    """A flag's value: an int or a float where it reads as one (16, 5e-5), else as YAML reads it
    (auto, null); the config's pydantic model then validates it, as it does a study file's."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return yaml.safe_load(text) if text.strip() else text


def add_model_flags(p: argparse.ArgumentParser, model, skip=()) -> list[str]:
    """One flag per field of a pydantic model, its help the field's description, its choices the
    field's Literal values (shown; the model checks them): the model owns the settings, the command
    line only spells them."""
    names = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag, choices = "--" + name.replace("_", "-"), _literal_choices(field.annotation)
        if field.annotation in (str, typing.Optional[str]):   # names and paths stay as typed
            p.add_argument(flag, metavar=name.upper(), help=field.description, default=argparse.SUPPRESS)
        elif field.annotation is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=field.description)
        elif choices:   # checked by the model, not argparse: a bad value is the model's one-line error
            p.add_argument(flag, metavar="{" + ",".join(choices) + "}", help=field.description,
                           default=argparse.SUPPRESS)
        else:   # (a flag not given is absent, so `--max-grad-norm null` can say "none")
            p.add_argument(flag, type=_scalar, metavar=name.upper(), help=field.description,
                           default=argparse.SUPPRESS)
        names.append(name)
    return names


def parser() -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    from .config import DataConfig, TrainConfig

    p = argparse.ArgumentParser(prog="python -m tune_study.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML or JSON file with a training config (flags override it)")
    train_keys = add_model_flags(p.add_argument_group("training (TrainConfig)"), TrainConfig, skip=("data",))
    data_keys = add_model_flags(p.add_argument_group("data (DataConfig)"), DataConfig)
    p.add_argument("--out", help="folder for the latest checkpoint and the best model")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    return p, train_keys, data_keys


def main(argv=None) -> int:
    show_warnings()
    p, train_keys, data_keys = parser()
    args = p.parse_args(argv)

    try:
        config = {}
        if args.config:
            from .config import read_yaml

            config = read_yaml(args.config)
        given = vars(args)   # only the flags on the command line (the others are suppressed)
        config.update({k: given[k] for k in train_keys if k in given})
        data = dict(config.get("data", {}))
        data.update({k: given[k] for k in data_keys if k in given})
        config["data"] = data
        from .config import resolve_config
        from .training.loop import train

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
