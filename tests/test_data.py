"""tune_study.data: sources, cleaning, label mapping, dedup, the stratified 8:1:1 split, the token cache."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import tune_study.data as data_mod
from tune_study.data import clean_text, data_config, load_reviews, load_tokenized, split_reviews, tokenize_splits
from tune_study.errors import StudyError

# ----------------------------------------------------------------------------- helpers

def make_df(n_pos: int, n_neg: int) -> pd.DataFrame:
    """Unique synthetic reviews; labels interleaved so that order says nothing about the label."""
    n = n_pos + n_neg
    labels = [1] * n_pos + [0] * n_neg
    order = sorted(range(n), key=lambda i: (i * 7919) % n)  # a fixed shuffle
    return pd.DataFrame({"text": [f"review number {i} says {'good' if labels[i] else 'bad'}" for i in order],
                         "label": [labels[i] for i in order]})


def texts(ds) -> list[str]:
    return list(ds["text"])


def assert_valid_split(splits, df: pd.DataFrame) -> None:
    """8:1:1 sizes, no text in two splits, all texts from df, label ratio per split within 1 example."""
    n = sum(len(s) for s in splits.values())
    assert set(splits) == {"train", "val", "test"}
    # 8:1:1, up to rounding of the two stratified cuts
    assert abs(len(splits["train"]) - 0.8 * n) <= 1
    assert abs(len(splits["val"]) - 0.1 * n) <= 1
    assert abs(len(splits["test"]) - 0.1 * n) <= 1
    tr, va, te = (set(texts(splits[k])) for k in ("train", "val", "test"))
    assert len(tr) == len(splits["train"]) and len(va) == len(splits["val"]) and len(te) == len(splits["test"])
    assert not (tr & va) and not (tr & te) and not (va & te)
    by_text = dict(zip(df["text"], df["label"]))
    assert (tr | va | te) <= set(by_text)
    overall = sum(by_text[t] for t in tr | va | te) / n
    for name, s in splits.items():
        # the split's labels are the source's labels for those texts
        assert [int(by_text[t]) for t in texts(s)] == [int(v) for v in s["label"]], name
        n_pos = sum(s["label"])
        assert abs(n_pos - overall * len(s)) <= 1.0 + 1e-9, (name, n_pos, len(s), overall)


def write_table(df: pd.DataFrame, path) -> None:
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        raise AssertionError(suffix)


# ----------------------------------------------------------------------------- split_reviews (synthetic)

def test_split_sizes_8_1_1_exact():
    df = make_df(60, 140)
    s = split_reviews(df, seed=0)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (160, 20, 20)
    assert_valid_split(s, df)
    # imbalanced 30% positives: stratified exactly in every split
    assert (sum(s["train"]["label"]), sum(s["val"]["label"]), sum(s["test"]["label"])) == (48, 6, 6)


@pytest.mark.parametrize("n_pos,n_neg", [(50, 53), (31, 88), (100, 100)])
def test_split_stratified_no_overlap(n_pos, n_neg):
    df = make_df(n_pos, n_neg)
    s = split_reviews(df, seed=3)
    assert sum(len(v) for v in s.values()) == n_pos + n_neg  # nothing lost without max_examples
    assert_valid_split(s, df)


def test_split_same_seed_identical_different_seed_differs():
    df = make_df(70, 80)
    a, b, c = split_reviews(df, seed=7), split_reviews(df, seed=7), split_reviews(df, seed=8)
    for k in ("train", "val", "test"):
        assert texts(a[k]) == texts(b[k])
        assert list(a[k]["label"]) == list(b[k]["label"])
    assert set(texts(a["val"])) != set(texts(c["val"]))
    assert set(texts(a["test"])) != set(texts(c["test"]))


def test_split_does_not_depend_on_input_index():
    df = make_df(40, 40)
    shifted = df.set_axis(range(1000, 1080))
    assert texts(split_reviews(df, seed=1)["train"]) == texts(split_reviews(shifted, seed=1)["train"])


def test_split_max_examples_subsample():
    df = make_df(90, 210)
    s = split_reviews(df, seed=0, max_examples=100)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (80, 10, 10)
    assert_valid_split(s, df)
    # the subsample itself is stratified: 30% positives
    assert sum(sum(v["label"]) for v in s.values()) == 30
    again = split_reviews(df, seed=0, max_examples=100)
    assert all(texts(s[k]) == texts(again[k]) for k in s)
    other = split_reviews(df, seed=1, max_examples=100)
    assert set(texts(s["train"])) != set(texts(other["train"]))
    # max_examples >= the data size: no subsampling
    assert sum(len(v) for v in split_reviews(df, seed=0, max_examples=10_000).values()) == 300


def test_split_too_small_to_stratify_is_study_error():
    with pytest.raises(StudyError, match="cannot split"):
        split_reviews(make_df(5, 5), seed=0)


# ----------------------------------------------------------------------------- bundled IMDB

@pytest.fixture(scope="module")
def bundled():
    return load_reviews()


def test_bundled_counts_and_cleaning(bundled):
    assert list(bundled.columns) == ["text", "label"]
    assert len(bundled) == 24_902
    assert bundled["text"].is_unique
    counts = bundled["label"].value_counts().to_dict()
    assert counts == {1: 12_471, 0: 12_431}
    assert str(bundled["label"].dtype) == "int64"
    assert not bundled["text"].str.contains("<br", case=False, regex=False).any()
    assert (bundled["text"].str.len() > 0).all()
    assert (bundled["text"] == bundled["text"].str.strip()).all()
    assert load_reviews({"source": "bundled"}).equals(bundled)


def test_bundled_full_split(bundled):
    s = split_reviews(bundled, seed=0)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (19_921, 2_490, 2_491)
    assert_valid_split(s, bundled)


def test_bundled_max_examples_deterministic(bundled):
    a = split_reviews(bundled, seed=0, max_examples=500)
    b = split_reviews(bundled, seed=0, max_examples=500)
    c = split_reviews(bundled, seed=1, max_examples=500)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (400, 50, 50)
    assert_valid_split(a, bundled)
    assert all(texts(a[k]) == texts(b[k]) for k in a)
    assert set(texts(a["train"])) != set(texts(c["train"]))
    n_pos = sum(sum(v["label"]) for v in a.values())
    assert abs(n_pos - 500 * 12_471 / 24_902) <= 1


# ----------------------------------------------------------------------------- cleaning, labels, dedup

def test_clean_text():
    assert clean_text("Great.<br /><br />Really<br/>great<BR>ok< br / >end") == "Great. Really great ok end"
    assert clean_text("  a \n\t b  ") == "a b"
    assert clean_text("Tom &amp; Jerry &quot;fun&quot; <p>x</p>") == 'Tom & Jerry "fun" x'
    assert clean_text(12) == "12"


def test_dedup_and_conflicting_labels(tmp_path):
    path = tmp_path / "dups.csv"
    pd.DataFrame({"text": ["good", "good", "meh", "meh", "bad", "a<br />b", "a b", None, "<br />"],
                  "label": [1, 1, 1, 0, 0, 1, 1, 1, 0]}).to_csv(path, index=False)
    df = load_reviews({"source": "file", "path": str(path)})
    # exact duplicates collapse (also after cleaning), a text with both labels is dropped entirely,
    # missing and empty-after-cleaning texts are dropped
    assert dict(zip(df["text"], df["label"])) == {"good": 1, "bad": 0, "a b": 1}
    assert len(df) == 3 and list(df.index) == [0, 1, 2]


# ----------------------------------------------------------------------------- file sources

LABEL_STYLES = {
    "int": (1, 0),
    "posneg": ("pos", "neg"),
    "positive_mixed_case": ("Positive", "NEGATIVE"),
    "pos_upper": (" POS ", "Neg"),
    "bool": (True, False),
}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl"])
@pytest.mark.parametrize("style", list(LABEL_STYLES))
def test_file_sources_custom_columns_and_labels(tmp_path, suffix, style):
    pos, neg = LABEL_STYLES[style]
    raw = pd.DataFrame({
        "id": range(6),
        "review": ["Loved it.<br /><br />Would watch again", "Awful &amp; boring", "fine film",
                   "terrible", "a gem<br/>truly", "waste of time"],
        "sentiment": [pos, neg, pos, neg, pos, neg],
    })
    path = tmp_path / f"reviews{suffix}"
    write_table(raw, path)
    df = load_reviews({"source": "file", "path": str(path), "text_column": "review",
                       "label_column": "sentiment"})
    assert list(df.columns) == ["text", "label"]
    assert df.to_dict("list") == {
        "text": ["Loved it. Would watch again", "Awful & boring", "fine film", "terrible",
                 "a gem truly", "waste of time"],
        "label": [1, 0, 1, 0, 1, 0],
    }


def test_file_default_columns_and_float_labels(tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"text": ["x", "y", "z"], "label": [1.0, 0.0, 1.0]}).to_csv(path, index=False)
    df = load_reviews({"source": "file", "path": str(path)})
    assert df["label"].tolist() == [1, 0, 1]


@pytest.mark.parametrize("bad", [[0, 1, 2], ["pos", "neg", "neutral"], [0.0, 1.0, 0.5]])
def test_non_binary_labels_name_the_file(tmp_path, bad):
    path = tmp_path / "three_classes.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": bad}).to_csv(path, index=False)
    with pytest.raises(StudyError, match="binary") as e:
        load_reviews({"source": "file", "path": str(path)})
    assert str(path) in str(e.value)
    assert repr(bad[2]) in str(e.value) or str(bad[2]) in str(e.value)


def test_single_class_is_study_error(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos", "pos", "pos"]}).to_csv(path, index=False)
    with pytest.raises(StudyError, match="only one class"):
        load_reviews({"source": "file", "path": str(path)})


def test_single_class_after_dedup_is_study_error(tmp_path):
    path = tmp_path / "one_after_dedup.csv"
    pd.DataFrame({"text": ["a", "b", "a"], "label": [1, 1, 0]}).to_csv(path, index=False)
    with pytest.raises(StudyError, match="only one class"):
        load_reviews({"source": "file", "path": str(path)})


@pytest.mark.parametrize("content", ["text,label\n", "text,label\n<br />,1\n  ,0\n"])
def test_empty_is_study_error(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(StudyError, match="empty"):
        load_reviews({"source": "file", "path": str(path)})


def test_all_blank_texts_is_study_error(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("text,label\n,1\n,0\n")
    with pytest.raises(StudyError, match="empty"):
        load_reviews({"source": "file", "path": str(path)})


def test_missing_file_is_study_error(tmp_path):
    with pytest.raises(StudyError, match="file not found") as e:
        load_reviews({"source": "file", "path": str(tmp_path / "nope.csv")})
    assert "nope.csv" in str(e.value)


@pytest.mark.parametrize("key,column", [("text_column", "review"), ("label_column", "stars")])
def test_missing_column_names_the_column(tmp_path, key, column):
    path = tmp_path / "r.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_parquet(path)
    with pytest.raises(StudyError) as e:
        load_reviews({"source": "file", "path": str(path), key: column})
    msg = str(e.value)
    assert f"'{column}'" in msg and key in msg and "r.parquet" in msg


def test_unsupported_and_unreadable_files(tmp_path):
    xlsx = tmp_path / "r.xlsx"
    xlsx.write_text("x")
    with pytest.raises(StudyError, match="unsupported file type '.xlsx'"):
        load_reviews({"source": "file", "path": str(xlsx)})
    broken = tmp_path / "r.parquet"
    broken.write_bytes(b"not a parquet file")
    with pytest.raises(StudyError, match="could not read"):
        load_reviews({"source": "file", "path": str(broken)})


# ----------------------------------------------------------------------------- aclImdb tree

def make_aclimdb(root):
    reviews = {}
    for split in ("train", "test"):
        for name, label in (("neg", 0), ("pos", 1)):
            d = root / "aclImdb" / split / name
            d.mkdir(parents=True)
            for i in range(2):
                text = f"{split} {name} review {i}.<br /><br />The end"
                (d / f"{i}_{7 if label else 3}.txt").write_text(text, encoding="utf-8")
                reviews[f"{split} {name} review {i}. The end"] = label
    (root / "aclImdb" / "train" / "unsup").mkdir()  # unlabeled: must be ignored
    (root / "aclImdb" / "train" / "unsup" / "0_0.txt").write_text("unlabeled", encoding="utf-8")
    return reviews


@pytest.mark.parametrize("point_at", ["parent", "aclImdb"])
def test_aclimdb_tree(tmp_path, point_at):
    expected = make_aclimdb(tmp_path)
    path = tmp_path if point_at == "parent" else tmp_path / "aclImdb"
    df = load_reviews({"source": "aclimdb", "path": str(path)})
    assert len(df) == 8
    assert dict(zip(df["text"], df["label"])) == expected


def test_aclimdb_missing_folder(tmp_path):
    with pytest.raises(StudyError, match="aclImdb folder not found"):
        load_reviews({"source": "aclimdb", "path": str(tmp_path / "nothing")})


# ----------------------------------------------------------------------------- hub (real code path)

def test_hub_local_directory_concatenates_train_and_test(tmp_path):
    train = pd.DataFrame({"text": ["good one", "bad one<br />really", "great", "poor"], "label": [1, 0, 1, 0]})
    test = pd.DataFrame({"text": ["superb", "dreadful", "nice"], "label": [1, 0, 1]})
    train.to_parquet(tmp_path / "train.parquet", index=False)
    test.to_parquet(tmp_path / "test.parquet", index=False)
    df = load_reviews({"source": "hub", "hub_id": str(tmp_path)})
    assert df.to_dict("list") == {
        "text": ["good one", "bad one really", "great", "poor", "superb", "dreadful", "nice"],
        "label": [1, 0, 1, 0, 1, 0, 1],
    }


def test_hub_custom_columns(tmp_path):
    pd.DataFrame({"review": ["a", "b"], "sentiment": ["pos", "neg"]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"review": ["c", "d"], "sentiment": ["neg", "pos"]}).to_parquet(tmp_path / "test.parquet")
    df = load_reviews({"source": "hub", "hub_id": str(tmp_path), "text_column": "review",
                       "label_column": "sentiment"})
    assert dict(zip(df["text"], df["label"])) == {"a": 1, "b": 0, "c": 0, "d": 1}
    with pytest.raises(StudyError, match="no column 'text'"):
        load_reviews({"source": "hub", "hub_id": str(tmp_path)})


def test_hub_without_train_or_test_split(tmp_path):
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_parquet(tmp_path / "validation.parquet")
    with pytest.raises(StudyError, match="no train or test split"):
        load_reviews({"source": "hub", "hub_id": str(tmp_path)})


def test_hub_unreachable_is_study_error():
    with pytest.raises(StudyError, match="could not load 'no-such-org/no-such-dataset-xyz'"):
        load_reviews({"source": "hub", "hub_id": "no-such-org/no-such-dataset-xyz"})


# ----------------------------------------------------------------------------- data_config

@pytest.mark.parametrize("data,match", [
    ({"sorce": "file"}, "unknown key 'sorce'"),
    ({"source": "kaggle"}, "unknown source 'kaggle'"),
    ({"source": "file"}, "data.path"),
    ({"source": "aclimdb"}, "data.path"),
    ({"max_examples": 5}, "data.max_examples"),
    ({"max_examples": 100.0}, "data.max_examples"),
    ({"max_examples": True}, "data.max_examples"),
])
def test_data_config_errors(data, match):
    with pytest.raises(StudyError, match=match):
        data_config(data)


def test_data_config_defaults():
    cfg = data_config(None)
    assert cfg["source"] == "bundled" and cfg["split_seed"] == 0 and cfg["max_examples"] is None
    assert data_config({"max_examples": 10})["max_examples"] == 10


# ----------------------------------------------------------------------------- tokenized cache

@pytest.fixture
def review_csv(tmp_path):
    path = tmp_path / "reviews.csv"
    make_df(20, 20).to_csv(path, index=False)
    return path


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNE_STUDY_CACHE", str(cache))
    return cache


def _assert_same_tokens(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for split in ("train", "val", "test"):
        assert set(a[split]) == {"input_ids", "attention_mask", "labels"}
        for k in a[split]:
            assert a[split][k].dtype == b[split][k].dtype
            assert torch.equal(a[split][k], b[split][k]), (split, k)
    assert a["meta"] == b["meta"]


def test_load_tokenized_builds_then_reads_cache(review_csv, private_cache, monkeypatch):
    cfg = {"source": "file", "path": str(review_csv), "split_seed": 2}
    first = load_tokenized(cfg, "tiny-bert", 16)
    files = list(private_cache.glob("tokens-*.pt"))
    assert len(files) == 1
    assert not list(private_cache.glob("*.tmp"))

    assert first["meta"] == {"source": "file", "tokenizer": "minilm", "max_len": 16, "truncation": "head",
                             "n_train": 32, "n_val": 4, "n_test": 4}
    for split, n in (("train", 32), ("val", 4), ("test", 4)):
        t = first[split]
        assert t["input_ids"].dtype == torch.int32 and t["input_ids"].shape == (n, 16)
        assert t["attention_mask"].dtype == torch.int8 and t["attention_mask"].shape == (n, 16)
        assert t["labels"].dtype == torch.int64 and t["labels"].shape == (n,)
        assert (t["input_ids"][:, 0] == 101).all()  # [CLS]
        # padded positions are masked and hold [PAD] (0)
        assert ((t["attention_mask"] == 0) == (t["input_ids"] == 0)).all()

    # the tensors are those of the documented pipeline
    splits = split_reviews(load_reviews(cfg), seed=2)
    from tune_study.models import load_tokenizer
    direct = tokenize_splits(splits, load_tokenizer("tiny-bert"), 16)
    for split in ("train", "val", "test"):
        for k in direct[split]:
            assert torch.equal(direct[split][k], first[split][k])

    # second call: from the cache file only
    def no_reload(*a, **k):
        raise AssertionError("load_reviews called although the cache exists")
    monkeypatch.setattr(data_mod, "load_reviews", no_reload)
    second = load_tokenized(cfg, "tiny-bert", 16)
    _assert_same_tokens(first, second)
    assert list(private_cache.glob("tokens-*.pt")) == files

    # another max_len / split seed / model tokenizer is another cache entry: it must rebuild
    for args in ((cfg, "tiny-bert", 24), ({**cfg, "split_seed": 3}, "tiny-bert", 16)):
        with pytest.raises(AssertionError, match="load_reviews called"):
            load_tokenized(*args)
    # the random-weight models share the bundled tokenizer, hence the cache entry
    _assert_same_tokens(first, load_tokenized(cfg, "bert-base-random", 16))


def test_load_tokenized_source_file_change_invalidates(review_csv, private_cache, monkeypatch):
    cfg = {"source": "file", "path": str(review_csv)}
    load_tokenized(cfg, "tiny-bert", 16)
    make_df(25, 25).to_csv(review_csv, index=False)  # different size -> different stamp
    calls = []
    real = data_mod.load_reviews
    monkeypatch.setattr(data_mod, "load_reviews", lambda c: calls.append(1) or real(c))
    new = load_tokenized(cfg, "tiny-bert", 16)
    assert calls == [1]
    assert new["meta"]["n_train"] == 40
    assert len(list(private_cache.glob("tokens-*.pt"))) == 2


def test_load_tokenized_torn_cache_file_is_rebuilt(review_csv, private_cache):
    cfg = {"source": "file", "path": str(review_csv)}
    first = load_tokenized(cfg, "tiny-bert", 16)
    (path,) = private_cache.glob("tokens-*.pt")
    path.write_bytes(path.read_bytes()[:100])  # a torn write
    again = load_tokenized(cfg, "tiny-bert", 16)
    _assert_same_tokens(first, again)
    assert torch.load(path, weights_only=True)["meta"] == first["meta"]


def test_load_tokenized_aclimdb_change_invalidates(tmp_path, private_cache):
    root = tmp_path / "data"  # not tmp_path itself: the cache folder is created there
    root.mkdir()
    make_aclimdb(root)
    for split in ("train", "test"):
        for name in ("pos", "neg"):
            for i in range(2, 10):
                (root / "aclImdb" / split / name / f"{i}_5.txt").write_text(f"{split} {name} extra {i}")
    cfg = {"source": "aclimdb", "path": str(root)}
    before = load_tokenized(cfg, "tiny-bert", 16)
    assert before["meta"]["n_train"] == 32
    for i in range(10, 20):
        (root / "aclImdb" / "train" / "pos" / f"{i}_9.txt").write_text(f"a new positive review {i}")
    after = load_tokenized(cfg, "tiny-bert", 16)
    assert after["meta"]["n_train"] == 40


def test_load_tokenized_hub_folder_change_invalidates(tmp_path, private_cache, monkeypatch):
    """A local dataset folder given as hub_id: its files are stamped, so new rows mean new tokens."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    make_df(20, 20).to_parquet(folder / "train.parquet", index=False)
    cfg = {"source": "hub", "hub_id": str(folder)}
    before = load_tokenized(cfg, "tiny-bert", 16)
    assert before["meta"]["n_train"] == 32

    calls = []
    real = data_mod.load_reviews
    monkeypatch.setattr(data_mod, "load_reviews", lambda c: calls.append(1) or real(c))
    _assert_same_tokens(before, load_tokenized(cfg, "tiny-bert", 16))
    assert calls == []  # unchanged folder: read from the cache

    make_df(40, 40).to_parquet(folder / "train.parquet", index=False)  # grown to 80 rows
    after = load_tokenized(cfg, "tiny-bert", 16)
    assert calls == [1]
    assert after["meta"]["n_train"] == 64
    extra = make_df(30, 30)
    extra["text"] = "another " + extra["text"]
    extra.to_parquet(folder / "test.parquet", index=False)  # a file added: 140 rows
    assert load_tokenized(cfg, "tiny-bert", 16)["meta"]["n_train"] == 112
    assert len(list(private_cache.glob("tokens-*.pt"))) == 3


def test_load_tokenized_hub_revision_change_invalidates(private_cache, monkeypatch):
    """A hub dataset is keyed on the revision its builder resolves to; resolving it loads no data."""
    from types import SimpleNamespace

    import datasets

    revision = ["1111aaaa"]
    asked = []

    def builder(hub_id, *a, **k):
        asked.append(hub_id)
        return SimpleNamespace(config_id="plain_text", hash=revision[0])

    rows = [40]
    loads = []
    monkeypatch.setattr(datasets, "load_dataset_builder", builder)
    monkeypatch.setattr(data_mod, "load_reviews", lambda c: loads.append(1) or make_df(rows[0] // 2, rows[0] // 2))
    cfg = {"source": "hub", "hub_id": "someone/reviews"}
    assert load_tokenized(cfg, "tiny-bert", 16)["meta"]["n_train"] == 32
    assert load_tokenized(cfg, "tiny-bert", 16)["meta"]["n_train"] == 32
    assert loads == [1] and asked == ["someone/reviews"] * 2  # same revision: a cache hit

    revision[0], rows[0] = "2222bbbb", 80  # the repo moved on
    assert load_tokenized(cfg, "tiny-bert", 16)["meta"]["n_train"] == 64
    assert loads == [1, 1]


def test_load_tokenized_unreachable_hub_dataset_is_study_error(private_cache):
    with pytest.raises(StudyError, match="data.hub_id: could not load 'no-such-org/no-such-dataset-xyz'"):
        load_tokenized({"source": "hub", "hub_id": "no-such-org/no-such-dataset-xyz"}, "tiny-bert", 16)
    assert not list(private_cache.glob("tokens-*.pt"))
