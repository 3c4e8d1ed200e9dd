"""The demo's data cut (janus_model/data/make_cut.py): its filter, split and determinism on
a synthetic corpus, its errors, and the properties of the bundled cut it built."""
import collections
import importlib.util
import os
import sys

import pytest
from hypothesis import given, settings, strategies as st

_DATA = os.path.join(os.path.dirname(__file__), "..", "janus_model", "data")
_spec = importlib.util.spec_from_file_location("make_cut", os.path.join(_DATA, "make_cut.py"))
make_cut = importlib.util.module_from_spec(_spec)
sys.modules["make_cut"] = make_cut             # dataclasses look their module up
_spec.loader.exec_module(make_cut)

BUNDLED = os.path.join(_DATA, "ddtp_frequent")
#: the parameters the bundled cut was built with (its README)
BUNDLED_SPEC = make_cut.CutSpec()


def _write_corpus(d, splits):
    for split, pairs in splits.items():
        for i, lang in enumerate(("de", "en")):
            with open(os.path.join(d, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(p[i] + "\n" for p in pairs)


def _corpus(n=60):
    """Frequent words a/b/c (de) and x/y/z (en), rare ones r<i> / s<i>, some long pairs."""
    train = [(f"a b{' c' * (i % 3)}", f"x y{' z' * (i % 3)}.") for i in range(n)]
    train += [(f"a r{i}", f"x s{i}") for i in range(10)]              # rare German/English word
    train += [("a " * 12, "x " * 3), ("a b", "x " * 12)]              # too long
    valid = [(f"b{' a' * (i % 4)}", f"y{' x' * (i % 4)}") for i in range(8)] + [("c r99", "z")]
    test = [(f"c{' b' * (i % 4)}", f"z{' y' * (i % 4)}") for i in range(8)]
    return {"train": train, "valid": valid, "test": test}


def _check_filter(cut, vocab, max_words):
    for pairs in cut.values():
        for de, en in pairs:
            assert 1 <= len(de.split()) <= max_words and 1 <= len(en.split()) <= max_words
            assert set(make_cut.words(de)) <= vocab["de"]
            assert set(make_cut.words(en)) <= vocab["en"]


def test_filter_split_and_determinism(tmp_path):
    corpus = _corpus()
    _write_corpus(tmp_path, corpus)
    spec = make_cut.CutSpec(top_k=3, max_words=10, test=3, valid=2, seed=5)
    cut = make_cut.build_cut(str(tmp_path), spec)
    vocab = {"de": {"a", "b", "c"}, "en": {"x", "y", "z"}}
    _check_filter(cut, vocab, 10)
    assert [len(cut[s]) for s in ("test", "valid")] == [3, 2]
    # every pair that passes the filter is in exactly one split (German side unique)
    passing = {p for ps in corpus.values() for p in ps
               if make_cut.keep_pair(*p, vocab, 10)}
    got = [p for ps in cut.values() for p in ps]
    assert len({de for de, _ in got}) == len(got)
    assert set(got) <= passing and {de for de, _ in passing} == {de for de, _ in got}
    assert make_cut.build_cut(str(tmp_path), spec) == cut                    # reproducible
    other = make_cut.build_cut(str(tmp_path), make_cut.CutSpec(3, 10, 3, 2, seed=6))
    assert sorted(p for ps in other.values() for p in ps) == sorted(got)  # same pool
    assert other["test"] != cut["test"]


def test_write_cut_round_trips(tmp_path):
    os.makedirs(tmp_path / "src")
    _write_corpus(tmp_path / "src", _corpus())
    cut = make_cut.build_cut(str(tmp_path / "src"), make_cut.CutSpec(3, 10, 3, 2))
    make_cut.main(["--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                   "--top-k", "3", "--test", "3", "--valid", "2"])
    for split, pairs in cut.items():
        for i, lang in enumerate(("de", "en")):
            with open(tmp_path / "out" / f"{split}.{lang}", encoding="utf-8") as f:
                assert f.read().splitlines() == [p[i] for p in pairs]


@given(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=60), st.integers(1, 10))
@settings(max_examples=50, deadline=None)
def test_frequent_words_are_the_most_frequent(letters, k):
    sentences = [" ".join(letters[i:i + 3]) for i in range(0, len(letters), 3)]
    counts = collections.Counter(letters)
    top = make_cut.frequent_words(sentences, k)
    assert len(top) == min(k, len(counts))
    dropped = set(counts) - top
    assert all(counts[w] >= counts[d] for w in top for d in dropped)


@pytest.mark.parametrize("de, en, keep", [
    ("A b", "x", True), ("a-B (c)", "X, y!", True),        # words: lower-cased \w runs
    ("a d", "x", False), ("a", "x w", False),               # a rare word on either side
    ("", "x", False), ("a " * 4, "x", False),               # empty, longer than max_words
])
def test_keep_pair(de, en, keep):
    vocab = {"de": {"a", "b", "c"}, "en": {"x", "y"}}
    assert make_cut.keep_pair(de, en, vocab, max_words=3) is keep


@pytest.mark.parametrize("kw, what", [
    ({"top_k": 0}, "top_k"), ({"max_words": 0}, "max_words"), ({"test": 0}, "test"),
    ({"valid": 1.5}, "valid"), ({"seed": -1}, "seed"), ({"top_k": True}, "top_k"),
])
def test_bad_spec_is_named(kw, what):
    with pytest.raises(ValueError, match=what):
        make_cut.CutSpec(**kw)


def test_bad_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.de"):
        make_cut.build_cut(str(tmp_path), make_cut.CutSpec())
    corpus = _corpus()
    _write_corpus(tmp_path, corpus)
    with pytest.raises(ValueError, match="only .* pairs pass"):
        make_cut.build_cut(str(tmp_path), make_cut.CutSpec(top_k=3, test=300))
    with open(tmp_path / "test.en", "a", encoding="utf-8") as f:
        f.write("extra\n")
    with pytest.raises(ValueError, match="test.de has 8 lines but test.en has 9"):
        make_cut.build_cut(str(tmp_path), make_cut.CutSpec(top_k=3, test=3, valid=2))


def test_cli_names_bad_argument(capsys):
    with pytest.raises(SystemExit) as e:
        make_cut.main(["--source", "x", "--out", "y", "--max-words", "0"])
    assert e.value.code == 2 and "--max-words" in capsys.readouterr().err


def _read_bundled(split):
    with open(os.path.join(BUNDLED, f"{split}.de"), encoding="utf-8") as f:
        de = f.read().splitlines()
    with open(os.path.join(BUNDLED, f"{split}.en"), encoding="utf-8") as f:
        en = f.read().splitlines()
    assert len(de) == len(en)
    return list(zip(de, en))


def test_bundled_cut_holds_the_filter():
    """Without the full corpus the top-K lists can't be recomputed; what must hold: each
    language uses at most top_k distinct words, sides have 1..max_words words, the split
    sizes, and no German sentence in two splits."""
    cut = {s: _read_bundled(s) for s in make_cut.SPLITS}
    assert len(cut["test"]) == BUNDLED_SPEC.test and len(cut["valid"]) == BUNDLED_SPEC.valid
    for i, lang in enumerate(make_cut.LANGS):
        used = {w for ps in cut.values() for p in ps for w in make_cut.words(p[i])}
        assert len(used) <= BUNDLED_SPEC.top_k, lang
    for ps in cut.values():
        for p in ps:
            assert all(1 <= len(side.split()) <= BUNDLED_SPEC.max_words for side in p)
    german = [p[0] for ps in cut.values() for p in ps]
    assert len(set(german)) == len(german)
    size = sum(os.path.getsize(os.path.join(BUNDLED, f)) for f in os.listdir(BUNDLED))
    assert size < 2 * 2 ** 20


@pytest.mark.skipif(not os.path.isdir(os.environ.get("JANUS_DDTP_DIR", "/nonexistent")),
                    reason="set JANUS_DDTP_DIR to the full DDTP de-en split to rebuild")
def test_bundled_cut_rebuilds_exactly():
    cut = make_cut.build_cut(os.environ["JANUS_DDTP_DIR"], BUNDLED_SPEC)
    for split in make_cut.SPLITS:
        assert cut[split] == _read_bundled(split)
