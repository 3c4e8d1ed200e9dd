"""Parallel text data for JANUS training: plain-text files, a joined subword vocabulary,
token-budget batching.

Files: one sentence per line, UTF-8, ``{data_dir}/{split}.{lang}`` (``train.de`` /
``train.en``, ``valid.*``, ``test.*``); line i of the source file translates line i of the
target file. Lines are split on ``\\n`` only (a trailing ``\\r`` is stripped), so a stray
Unicode line separator inside a sentence can not shift the alignment.

Bad data gives a clear error naming the file: a missing file (``FileNotFoundError``), line
counts that differ, or bytes that are not UTF-8 (``ValueError`` with the line number).
**Empty lines** (either side blank after stripping) are *skipped* by default and counted in
:attr:`ParallelText.skipped_empty` (with their line numbers), because a blank line usually
means a sentence the aligner dropped; ``empty="error"`` raises instead.

Vocabulary (:class:`SubwordVocab`): one sentencepiece model (BPE by default) trained on the
source and target sides together, so encoder, decoder and output projection share one
embedding (``--share-all-embeddings``). Special ids follow fairseq / the spec (§0):
BOS=0, PAD=1, EOS=2, UNK=3 (UNK doubles as the decoder's MASK).

Sequences fed to the model are ``[BOS, x1..xn, EOS]`` (source and target, spec §7.1) and
right-padded with PAD.

Batching (:func:`make_batches`): sentences are ordered by (target length, source length) with
a random tie-break, then cut greedily into batches whose padded size
``n_sentences * max(max_src_len, max_tgt_len)`` (BOS/EOS included) stays within
``max_tokens``; the batch order is shuffled. Both orders depend only on (seed, epoch), so an
epoch's batch list can be rebuilt exactly when training resumes. :func:`shard_batches` gives
every data-parallel rank the same number of batches.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from .layout import BOS, EOS, PAD, UNK

__all__ = ["ParallelText", "read_parallel", "SubwordVocab", "ParallelDataset", "make_batches",
           "shard_batches", "collate", "pad_sequences"]


# --------------------------------------------------------------------------- reading text
@dataclasses.dataclass
class ParallelText:
    """Aligned sentence pairs of one split, after dropping empty pairs."""

    src: List[str]
    tgt: List[str]
    src_path: str
    tgt_path: str
    skipped_empty: int = 0
    skipped_lines: List[int] = dataclasses.field(default_factory=list)  # 1-based

    def __len__(self) -> int:
        return len(self.src)


def _read_lines(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"parallel data: missing file {path!r} (expected one sentence "
                                f"per line, named <split>.<lang>)")
    with open(path, "rb") as f:
        raw = f.read()
    parts = raw.split(b"\n")
    if parts and parts[-1] == b"":          # the usual final newline
        parts.pop()
    lines = []
    for i, b in enumerate(parts):
        try:
            lines.append(b.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise ValueError(f"parallel data: {path!r} line {i + 1} is not valid UTF-8 "
                             f"({e.reason} at byte {e.start})") from None
    return lines


def read_parallel(data_dir: str, split: str, src_lang: str, tgt_lang: str, *,
                  empty: str = "skip") -> ParallelText:
    """Read ``{data_dir}/{split}.{src_lang}`` and ``.{tgt_lang}`` (see the module docstring).

    ``empty``: "skip" (drop pairs with a blank side, counted) or "error"."""
    if empty not in ("skip", "error"):
        raise ValueError(f"empty: expected 'skip' or 'error', got {empty!r}")
    sp = os.path.join(data_dir, f"{split}.{src_lang}")
    tp = os.path.join(data_dir, f"{split}.{tgt_lang}")
    src, tgt = _read_lines(sp), _read_lines(tp)
    if len(src) != len(tgt):
        raise ValueError(f"parallel data: {sp!r} has {len(src)} lines but {tp!r} has "
                         f"{len(tgt)}; the files must be line-aligned")
    keep_s, keep_t, skipped = [], [], []
    for i, (s, t) in enumerate(zip(src, tgt)):
        s, t = s.strip(), t.strip()
        if not s or not t:
            if empty == "error":
                side = tp if s else sp
                raise ValueError(f"parallel data: empty line {i + 1} in {side!r} "
                                 f"(pass empty='skip' to drop such pairs)")
            skipped.append(i + 1)
            continue
        keep_s.append(s)
        keep_t.append(t)
    if not keep_s:
        raise ValueError(f"parallel data: no non-empty sentence pairs in {sp!r} / {tp!r}")
    return ParallelText(keep_s, keep_t, sp, tp, len(skipped), skipped)


# ------------------------------------------------------------------------------ vocabulary
class SubwordVocab:
    """A sentencepiece model with the fairseq special ids (BOS=0 PAD=1 EOS=2 UNK=3)."""

    def __init__(self, model_proto: bytes, *, source: str = "sentencepiece model"):
        """``source`` names the model in error messages (e.g. its file)."""
        import sentencepiece as spm
        self.proto = bytes(model_proto)
        if not self.proto:
            raise ValueError(f"{source}: empty (0 bytes), not a sentencepiece model")
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        except RuntimeError as e:           # sentencepiece's "INTERNAL: ... ParseFromArray"
            raise ValueError(f"{source}: not a sentencepiece model ({len(self.proto)} bytes "
                             f"that do not parse: {str(e).strip()})") from None
        got = (self.sp.bos_id(), self.sp.pad_id(), self.sp.eos_id(), self.sp.unk_id())
        if got != (BOS, PAD, EOS, UNK):
            raise ValueError(f"{source}: special ids (bos, pad, eos, unk) = {got}, "
                             f"expected {(BOS, PAD, EOS, UNK)}; train it with "
                             f"SubwordVocab.train or --bos_id=0 --pad_id=1 --eos_id=2 --unk_id=3")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, *, model_type: str = "bpe",
              character_coverage: float = 1.0) -> "SubwordVocab":
        """Train on ``texts`` (pass source and target sentences together for a joined
        vocabulary). ``vocab_size`` is an upper bound: small corpora get fewer pieces.
        Deterministic: input order kept, one thread."""
        import sentencepiece as spm
        if vocab_size < 8:
            raise ValueError(f"vocab_size: expected at least 8, got {vocab_size}")
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            bos_id=BOS, pad_id=PAD, eos_id=EOS, unk_id=UNK, hard_vocab_limit=False,
            shuffle_input_sentence=False, num_threads=1, minloglevel=2)
        return cls(buf.getvalue())

    @classmethod
    def load(cls, path: str) -> "SubwordVocab":
        """A model file written by :meth:`save` or ``spm_train``; errors name the file."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"sentencepiece model {path!r} does not exist")
        with open(path, "rb") as f:
            return cls(f.read(), source=f"sentencepiece model {path!r}")

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.proto)

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> List[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return self.sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenised text; special ids (BOS/PAD/EOS) are dropped."""
        return self.sp.decode([int(i) for i in ids if int(i) not in (BOS, PAD, EOS)])


# ---------------------------------------------------------------------------------- dataset
class ParallelDataset:
    """Token ids of a split (without BOS/EOS), after dropping pairs that do not fit.

    A pair is dropped (counted in ``dropped_long``) when either side with BOS/EOS exceeds
    ``max_positions`` or ``max_tokens`` (a batch must hold at least one sentence)."""

    def __init__(self, text: ParallelText, vocab: SubwordVocab, *, max_positions: int,
                 max_tokens: Optional[int] = None):
        src, tgt = vocab.encode_batch(text.src), vocab.encode_batch(text.tgt)
        limit = max_positions if max_tokens is None else min(max_positions, max_tokens)
        self.src: List[List[int]] = []
        self.tgt: List[List[int]] = []
        self.text_src: List[str] = []
        self.text_tgt: List[str] = []
        self.dropped_long = 0
        for s, t, ss, ts in zip(src, tgt, text.src, text.tgt):
            if max(len(s), len(t)) + 2 > limit:
                self.dropped_long += 1
                continue
            self.src.append(s)
            self.tgt.append(t)
            self.text_src.append(ss)
            self.text_tgt.append(ts)
        if not self.src:
            raise ValueError(f"dataset {text.src_path!r}: every pair is longer than "
                             f"{limit} tokens (max_positions / max_tokens)")
        self.skipped_empty = text.skipped_empty
        self.src_lens = torch.tensor([len(s) + 2 for s in self.src])
        self.tgt_lens = torch.tensor([len(t) + 2 for t in self.tgt])

    def __len__(self) -> int:
        return len(self.src)

    def num_tokens(self) -> torch.Tensor:
        """Padded cost of each pair: max(source, target) length with BOS/EOS."""
        return torch.maximum(self.src_lens, self.tgt_lens)


def make_batches(src_lens: torch.Tensor, tgt_lens: torch.Tensor, max_tokens: int, *,
                 seed: int = 0, epoch: int = 0, shuffle: bool = True,
                 max_sentences: Optional[int] = None) -> List[List[int]]:
    """Token-budget batches of sentence indices (see the module docstring). With
    ``shuffle=False``: sorted order, no random tie-break (for evaluation)."""
    n = src_lens.shape[0]
    if max_tokens < 1:
        raise ValueError(f"max_tokens: expected >= 1, got {max_tokens}")
    cost = torch.maximum(src_lens, tgt_lens)
    if n and int(cost.max()) > max_tokens:
        raise ValueError(f"max_tokens: {max_tokens} is smaller than the longest sentence "
                         f"({int(cost.max())} tokens)")
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))
        order = torch.randperm(n, generator=g)
    else:
        g, order = None, torch.arange(n)
    # stable sorts: by source length, then by target length -> (tgt, src, random) order
    order = order[torch.sort(src_lens[order], stable=True).indices]
    order = order[torch.sort(tgt_lens[order], stable=True).indices]
    batches: List[List[int]] = []
    cur: List[int] = []
    width = 0
    for i, c in zip(order.tolist(), cost[order].tolist()):
        w = max(width, c)
        if cur and (w * (len(cur) + 1) > max_tokens or
                    (max_sentences is not None and len(cur) >= max_sentences)):
            batches.append(cur)
            cur, w = [], c
        cur.append(i)
        width = w
    if cur:
        batches.append(cur)
    if shuffle:
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[p] for p in perm]
    return batches


def shard_batches(batches: List[List[int]], rank: int, world: int) -> List[List[int]]:
    """Rank ``rank``'s share: every ``world``-th batch, after dropping the tail so that all
    ranks get the same count (data parallel steps must pair up)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} / world {world}: expected 0 <= rank < world")
    usable = len(batches) - len(batches) % world
    if usable == 0:
        raise ValueError(f"shard_batches: {len(batches)} batches can not feed {world} ranks; "
                         f"lower max_tokens or add data")
    return batches[rank:usable:world]


def pad_sequences(seqs: Sequence[Sequence[int]], *, frame: bool = True) -> torch.Tensor:
    """(B, W) long: ``[BOS, ids.., EOS]`` (if ``frame``) right-padded with PAD."""
    rows = [([BOS] + list(s) + [EOS]) if frame else list(s) for s in seqs]
    W = max([len(r) for r in rows] + [1])
    out = torch.full((len(rows), W), PAD, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate(ds: ParallelDataset, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(src, tgt) padded batches for the pairs ``indices``."""
    return (pad_sequences([ds.src[i] for i in indices]),
            pad_sequences([ds.tgt[i] for i in indices]))
