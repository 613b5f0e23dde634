"""data.truncation: which tokens of a review longer than max_len are kept (head, tail, head_tail).

Checked against the full, untruncated tokenization of the same text, for the bundled uncased BERT
(WordPiece, [CLS] ... [SEP]) and a byte-level BPE RoBERTa tokenizer built here (<s> ... </s>, pad 1).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import tune_study.data as data_mod
from tune_study import train
from tune_study.config import study_schema
from tune_study.data import encode, head_tail_budget, load_reviews, load_tokenized, split_reviews, tokenize_splits
from tune_study.models import load_tokenizer

SCHEMA = Path(__file__).resolve().parents[1] / "search_spaces" / "study.schema.json"
MODES = ("head", "tail", "head_tail")


def roberta_tokenizer():
    """A real RobertaTokenizer (RobertaProcessing, byte-level BPE) with the 256-byte alphabet as its
    vocabulary and no merges: every byte is a token, so long texts are long in tokens."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *sorted(ByteLevel.alphabet())])}
    return RobertaTokenizer(vocab=vocab, merges=[])


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tok(request):
    return load_tokenizer("minilm") if request.param == "bert" else roberta_tokenizer()


@pytest.fixture(scope="module")
def real_reviews():
    return list(load_reviews()["text"][:40])


def synthetic_texts() -> list[str]:
    # Numbered words: every token position is told apart. One review types the separator tokens
    # literally: they are review text, not the template's special tokens, and may be cut as text.
    texts = [" ".join(f"w{i}" for i in range(n)) for n in (0, 1, 3, 5, 6, 7, 8, 40, 200)]
    return texts + ["starts [SEP] </s> <s> [CLS] " + " ".join(f"x{i}" for i in range(60)) + " ends [SEP] </s>"]


def kept(enc, row: int) -> list[int]:
    n = int(enc["attention_mask"][row].sum())
    return enc["input_ids"][row, :n].tolist()


def check(tok, texts, max_len, mode, head, tail):
    enc = encode(texts, tok, max_len, mode)
    full = tok(texts, add_special_tokens=False)["input_ids"]   # the untruncated text tokens
    budget = max_len - 2
    assert head + tail == budget
    assert enc["input_ids"].shape == enc["attention_mask"].shape == (len(texts), max_len)
    n_cut = 0
    for row, text_ids in enumerate(full):
        ids = kept(enc, row)
        assert len(ids) <= max_len
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id, (mode, row, ids)
        body = ids[1:-1]
        if len(text_ids) <= budget:
            assert body == text_ids, (mode, row)      # a short review is kept whole in every mode
            assert len(ids) == len(text_ids) + 2
            continue
        n_cut += 1
        assert len(ids) == max_len
        want = {"head": text_ids[:budget], "tail": text_ids[-budget:],
                "head_tail": text_ids[:head] + text_ids[len(text_ids) - tail:]}[mode]
        assert body == want, (mode, row)
        # the padding after the kept tokens is the tokenizer's pad, masked out
        pad = enc["input_ids"][row, len(ids):]
        assert (pad == tok.pad_token_id).all() and (enc["attention_mask"][row, len(ids):] == 0).all()
    return enc, n_cut


@pytest.mark.parametrize("mode", MODES)
def test_kept_tokens_are_the_first_and_last_of_the_full_tokenization(tok, mode):
    # max_len 16: 14 text tokens, head_tail 4 + 10; max_len 33: 31, head_tail 8 + 23
    for max_len, head, tail in ((16, 4, 10), (33, 8, 23)):
        _, n_cut = check(tok, synthetic_texts(), max_len, mode, head, tail)
        assert n_cut >= 3   # the long reviews were cut, the short ones kept whole


@pytest.mark.parametrize("mode", MODES)
def test_real_reviews(real_reviews, mode):
    tok = load_tokenizer("minilm")
    _, n_cut = check(tok, real_reviews, 128, mode, 32, 94)
    assert n_cut > len(real_reviews) // 2   # most IMDB reviews are longer than 126 tokens


def test_modes_differ_only_on_long_reviews(tok):
    texts = synthetic_texts()
    encs = {m: encode(texts, tok, 16, m) for m in MODES}
    full = tok(texts, add_special_tokens=False)["input_ids"]
    for row, text_ids in enumerate(full):
        rows = [encs[m]["input_ids"][row].tolist() for m in MODES]
        same = rows[0] == rows[1] == rows[2]
        assert same == (len(text_ids) <= 14), (row, rows)
    # tail keeps the last text token, head does not
    long = max(range(len(full)), key=lambda r: len(full[r]))
    assert kept(encs["tail"], long)[-2] == full[long][-1] == kept(encs["head_tail"], long)[-2]
    assert kept(encs["head"], long)[-2] == full[long][13] != full[long][-1]


def test_head_is_the_tokenizers_own_truncation():
    tok = load_tokenizer("minilm")
    texts = synthetic_texts()
    ref = tok(texts, truncation=True, max_length=16, padding="max_length", return_tensors="pt")
    enc = encode(texts, tok, 16, "head")
    assert torch.equal(enc["input_ids"], ref["input_ids"]) and torch.equal(enc["attention_mask"], ref["attention_mask"])
    encode(texts, tok, 16, "tail")
    assert tok.truncation_side == "right"   # tail leaves the tokenizer as it found it


def test_head_tail_is_deterministic_and_independent_of_batching(tok):
    texts = synthetic_texts() * 3
    a = encode(texts, tok, 16, "head_tail")
    b = encode(texts, tok, 16, "head_tail", chunk=4)   # chunk borders fall inside the list
    for k in ("input_ids", "attention_mask"):
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], encode(texts, tok, 16, "head_tail")[k])


def test_budget_split():
    assert head_tail_budget(512, 2) == (128, 382)   # Sun et al. 2019, sec. 5.3
    assert head_tail_budget(128, 2) == (32, 94)
    assert head_tail_budget(16, 2) == (4, 10)
    assert head_tail_budget(8, 2) == (2, 4)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="middle"):
        encode(["a b"], load_tokenizer("minilm"), 16, "middle")


# ----------------------------------------------------------------------------- schema, cache, CLI

def test_truncation_is_in_the_schema():
    for schema in (study_schema(), json.loads(SCHEMA.read_text())):
        prop = schema["$defs"]["DataConfig"]["properties"]["truncation"]
        assert prop["enum"] == list(MODES) and prop["default"] == "head"
        assert "Sun et al. 2019" in prop["description"]


@pytest.fixture
def long_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_STUDY_CACHE", str(tmp_path / "cache"))
    words = [" ".join(f"w{i}x{j}" for j in range(5 + 3 * i)) for i in range(40)]
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": words, "label": [i % 2 for i in range(40)]}).to_csv(path, index=False)
    return path


def test_cache_key_differs_per_mode(long_csv, tmp_path, monkeypatch):
    cfg = {"source": "file", "path": str(long_csv)}
    built = {m: load_tokenized({**cfg, "truncation": m}, "tiny-bert", 16) for m in MODES}
    assert len(list((tmp_path / "cache").glob("tokens-*.pt"))) == 3
    splits = split_reviews(load_reviews(cfg))
    for m in MODES:
        assert built[m]["meta"]["truncation"] == m
        direct = tokenize_splits(splits, load_tokenizer("tiny-bert"), 16, m)
        assert torch.equal(direct["train"]["input_ids"], built[m]["train"]["input_ids"])
    assert not torch.equal(built["head"]["train"]["input_ids"], built["head_tail"]["train"]["input_ids"])
    assert not torch.equal(built["tail"]["train"]["input_ids"], built["head_tail"]["train"]["input_ids"])
    # the default is head, and shares head's cache entry
    assert torch.equal(load_tokenized(cfg, "tiny-bert", 16)["train"]["input_ids"], built["head"]["train"]["input_ids"])

    def no_reload(*a, **k):
        raise AssertionError("load_reviews called although the cache exists")
    monkeypatch.setattr(data_mod, "load_reviews", no_reload)
    for m in MODES:   # each mode reads its own entry back
        again = load_tokenized({**cfg, "truncation": m}, "tiny-bert", 16)
        assert torch.equal(again["train"]["input_ids"], built[m]["train"]["input_ids"])


def test_train_cli_takes_truncation_and_evals_per_epoch(long_csv, capsys):
    rc = train.main(["--model", "tiny-bert", "--batch-size", "8", "--epochs", "1", "--max-len", "16",
                     "--threads", "1", "--source", "file", "--path", str(long_csv),
                     "--truncation", "head_tail", "--evals-per-epoch", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    config = json.loads(out.splitlines()[0].removeprefix("config: "))
    assert config["data"]["truncation"] == "head_tail" and config["evals_per_epoch"] == 2
    assert "best epoch 1" in out
