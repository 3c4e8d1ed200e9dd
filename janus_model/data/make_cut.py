"""Build a small, learnable cut of the DDTP German-English corpus for the demo's part (b).

A tiny model trained for a few CPU minutes can only learn words it sees many times, so the
cut keeps the pairs made of the corpus's frequent words:

1. *Frequent words*: a word is a maximal run of letters/digits (``\\w+``), lower-cased. The
   ``top_k`` most frequent words of each language are counted on the source's **train**
   split only (ties broken alphabetically, so the list is reproducible).
2. *Filter*: a pair is kept when both sides have 1 to ``max_words`` whitespace-separated
   words and every word of each side is among that language's ``top_k``.
3. *Pool and deduplicate*: the kept pairs of the source's train, valid and test splits are
   pooled (the train split alone leaves a test set of only ~100 pairs); a pair whose German
   side occurred earlier is dropped, so no German sentence is in two splits.
4. *Split*: the pool is shuffled with ``seed``; the first ``test`` pairs are the test
   split, the next ``valid`` the valid split, the rest the train split. Every split is a
   random sample of the same distribution; test sentences are never trained on.

The result is written as ``{train,valid,test}.{de,en}`` plus nothing else (the README is
written by hand). A script, not a module of the package (``janus_model.data`` is the
data-loading module)::

    python janus_model/data/make_cut.py --source DDTP_DIR --out janus_model/data/ddtp_frequent

rebuilds the bundled cut from the full DDTP split (``DDTP_DIR`` holds ``train.de``,
``train.en``, ``valid.*``, ``test.*``) with the default parameters.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import random
import re
from typing import Dict, List, Optional, Sequence, Set, Tuple

__all__ = ["CutSpec", "words", "frequent_words", "keep_pair", "build_cut", "write_cut", "main"]

SPLITS = ("train", "valid", "test")
LANGS = ("de", "en")
_WORD = re.compile(r"\w+")

Pair = Tuple[str, str]


@dataclasses.dataclass(frozen=True)
class CutSpec:
    """The cut's parameters (the defaults built ``ddtp_frequent``), checked when built: a
    ValueError naming the field."""

    top_k: int = 3000           # frequent words kept per language
    max_words: int = 10         # whitespace words per side, at most
    test: int = 300             # pairs in the test split
    valid: int = 200            # pairs in the valid split
    seed: int = 1               # of the shuffle that splits the pool

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v, low = getattr(self, f.name), 0 if f.name == "seed" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{f.name}: expected an integer >= {low}, got {v!r}")


def words(sentence: str) -> List[str]:
    """The words the frequency filter looks at: lower-cased runs of letters/digits."""
    return _WORD.findall(sentence.lower())


def frequent_words(sentences: Sequence[str], top_k: int) -> Set[str]:
    """The ``top_k`` most frequent words of `sentences` (ties alphabetically)."""
    counts = collections.Counter(w for s in sentences for w in words(s))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {w for w, _ in ranked[:top_k]}


def keep_pair(de: str, en: str, vocab: Dict[str, Set[str]], max_words: int) -> bool:
    """The filter of step 2."""
    for side, lang in ((de, "de"), (en, "en")):
        n = len(side.split())
        if not 1 <= n <= max_words or not set(words(side)) <= vocab[lang]:
            return False
    return True


def _read_split(source: str, split: str) -> List[Pair]:
    sides = []
    for lang in LANGS:
        path = os.path.join(source, f"{split}.{lang}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"source: missing file {path!r} (expected the DDTP split "
                                    f"as {{train,valid,test}}.{{de,en}})")
        with open(path, encoding="utf-8") as f:
            sides.append([line.rstrip("\r\n").strip() for line in f])
    if len(sides[0]) != len(sides[1]):
        raise ValueError(f"source: {split}.de has {len(sides[0])} lines but {split}.en has "
                         f"{len(sides[1])}")
    return list(zip(*sides))


def build_cut(source: str, spec: CutSpec) -> Dict[str, List[Pair]]:
    """The cut's splits (steps 1-4 of the module docstring) from the DDTP split in `source`."""
    data = {s: _read_split(source, s) for s in SPLITS}
    vocab = {lang: frequent_words([p[i] for p in data["train"]], spec.top_k)
             for i, lang in enumerate(LANGS)}
    pool: List[Pair] = []
    seen: Set[str] = set()
    for split in SPLITS:
        for de, en in data[split]:
            if de not in seen and keep_pair(de, en, vocab, spec.max_words):
                seen.add(de)
                pool.append((de, en))
    if len(pool) < spec.test + spec.valid + 1:
        raise ValueError(f"{spec}: only {len(pool)} pairs pass the filter; need more than "
                         f"test + valid = {spec.test + spec.valid}")
    random.Random(spec.seed).shuffle(pool)
    return {"test": pool[:spec.test], "valid": pool[spec.test:spec.test + spec.valid],
            "train": pool[spec.test + spec.valid:]}


def write_cut(cut: Dict[str, List[Pair]], out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for split, pairs in cut.items():
        for i, lang in enumerate(LANGS):
            with open(os.path.join(out, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(p[i] + "\n" for p in pairs)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="make_cut.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="the full DDTP de-en split (a directory)")
    p.add_argument("--out", required=True, help="output directory")
    fields = [f.name for f in dataclasses.fields(CutSpec)]
    for name in fields:
        p.add_argument(f"--{name.replace('_', '-')}", type=int,
                       default=getattr(CutSpec(), name), help="default: %(default)s")
    a = p.parse_args(argv)
    try:
        spec = CutSpec(**{name: getattr(a, name) for name in fields})
    except ValueError as e:                 # "top_k: ..." -> "--top-k: ..."
        name, _, why = str(e).partition(":")
        p.error(f"--{name.replace('_', '-')}:{why}")
    cut = build_cut(a.source, spec)
    write_cut(cut, a.out)
    print(f"{spec}: " + ", ".join(f"{s} {len(cut[s])}" for s in SPLITS) + f" pairs -> {a.out}")


if __name__ == "__main__":
    main()
