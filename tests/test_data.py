"""Parallel data: reading and its errors, the joined subword vocabulary, token-budget
batching, sharding, collation."""
import io
import os

import pytest
import torch

from janus_model.data import (ParallelDataset, SubwordVocab, collate, make_batches,
                              pad_sequences, read_parallel, shard_batches)
from janus_model.layout import BOS, EOS, PAD, UNK

DATA = os.path.join(os.path.dirname(__file__), "..", "janus_model", "data", "ddtp_small")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def _write(d, name, data: bytes):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


@pytest.fixture(scope="module")
def vocab():
    text = read_parallel(DATA, "train", "de", "en")
    return SubwordVocab.train(text.src[:400] + text.tgt[:400], 300)


def test_bundled_corpus():
    """The bundled cut: 4000/300/300 aligned pairs, none empty, <= 40 words per side."""
    for split, n in (("train", 4000), ("valid", 300), ("test", 300)):
        t = read_parallel(DATA, split, "de", "en", empty="error")
        assert len(t) == n and t.skipped_empty == 0
        assert max(len(s.split()) for s in t.src + t.tgt) <= 40
    assert os.path.isfile(os.path.join(DATA, "README.md"))


def test_read_parallel_line_handling(tmp_path):
    d = str(tmp_path)
    # CRLF, no final newline, a U+2028 inside a sentence (must not split it)
    _write(d, "train.de", "eins\r\nzwei\u2028halb\r\ndrei".encode())
    _write(d, "train.en", b"one\ntwo\nthree\n")
    t = read_parallel(d, "train", "de", "en")
    assert t.src == ["eins", "zwei\u2028halb", "drei"] and t.tgt == ["one", "two", "three"]


def test_read_parallel_errors(tmp_path):
    d = str(tmp_path)
    _write(d, "train.de", b"a\nb\nc\n")
    with pytest.raises(FileNotFoundError, match=r"train\.en"):
        read_parallel(d, "train", "de", "en")
    _write(d, "train.en", b"x\ny\n")
    with pytest.raises(ValueError, match=r"has 3 lines but .*train\.en.* has 2"):
        read_parallel(d, "train", "de", "en")
    _write(d, "train.en", b"x\n\xff\xfey\nz\n")
    with pytest.raises(ValueError, match=r"train\.en.* line 2 is not valid UTF-8"):
        read_parallel(d, "train", "de", "en")
    with pytest.raises(ValueError, match="empty"):
        read_parallel(d, "train", "de", "en", empty="ignore")


def test_empty_lines_skipped_with_count_or_error(tmp_path):
    d = str(tmp_path)
    _write(d, "train.de", b"a\n\nc\nd\n  \n")
    _write(d, "train.en", b"x\ny\n\nw\nv\n")
    t = read_parallel(d, "train", "de", "en")
    assert t.src == ["a", "d"] and t.tgt == ["x", "w"]
    assert t.skipped_empty == 3 and t.skipped_lines == [2, 3, 5]
    with pytest.raises(ValueError, match=r"empty line 2 in .*train\.de"):
        read_parallel(d, "train", "de", "en", empty="error")
    _write(d, "train.de", b"\n \n")
    _write(d, "train.en", b"x\ny\n")
    with pytest.raises(ValueError, match="no non-empty sentence pairs"):
        read_parallel(d, "train", "de", "en")


def test_vocab_special_ids_roundtrip_and_joined(vocab, tmp_path):
    sp = vocab.sp
    assert (sp.bos_id(), sp.pad_id(), sp.eos_id(), sp.unk_id()) == (BOS, PAD, EOS, UNK)
    assert len(vocab) <= 300
    for s in ("Dieses Paket enthält die Dokumentation.", "This package contains tools."):
        ids = vocab.encode(s)
        assert ids and min(ids) > UNK                   # no specials, no unknowns
        assert vocab.decode(ids) == s
        assert vocab.decode([BOS] + ids + [EOS, PAD]) == s
    # joined: the pieces cover characters of both languages
    pieces = {sp.id_to_piece(i) for i in range(len(vocab))}
    assert "ä" in "".join(pieces) and "w" in "".join(pieces)
    vocab.save(str(tmp_path / "spm.model"))
    again = SubwordVocab.load(str(tmp_path / "spm.model"))
    assert again.proto == vocab.proto and again.encode("Paket") == vocab.encode("Paket")


def test_vocab_rejects_foreign_special_ids():
    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e f g"] * 20),
                                   model_writer=buf, vocab_size=12, hard_vocab_limit=False,
                                   minloglevel=2)                 # default ids: unk=0 bos=1
    with pytest.raises(ValueError, match="special ids"):
        SubwordVocab(buf.getvalue())
    with pytest.raises(ValueError, match="vocab_size"):
        SubwordVocab.train(["a"], 4)


def test_dataset_drops_too_long_and_collates(vocab):
    text = read_parallel(DATA, "valid", "de", "en")
    full = ParallelDataset(text, vocab, max_positions=1024)
    cut = ParallelDataset(text, vocab, max_positions=40)
    longest = full.num_tokens()
    assert cut.dropped_long == int((longest > 40).sum()) > 0
    assert len(cut) + cut.dropped_long == len(full) and int(cut.num_tokens().max()) <= 40
    src, tgt = collate(cut, [0, 3])
    for t, seqs in ((src, [cut.src[0], cut.src[3]]), (tgt, [cut.tgt[0], cut.tgt[3]])):
        for row, s in zip(t.tolist(), seqs):
            n = len(s)
            assert row[:n + 2] == [BOS] + s + [EOS] and set(row[n + 2:]) <= {PAD}
    with pytest.raises(ValueError, match="longer than"):
        ParallelDataset(text, vocab, max_positions=3)
    assert pad_sequences([[5], []]).tolist() == [[BOS, 5, EOS], [BOS, EOS, PAD]]


def test_token_budget_batches():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, 40, (300,), generator=g)
    tgt = torch.randint(3, 40, (300,), generator=g)
    b = make_batches(src, tgt, 200, seed=3, epoch=1)
    flat = sorted(i for x in b for i in x)
    assert flat == list(range(300))                       # every sentence exactly once
    cost = torch.maximum(src, tgt)
    for x in b:
        assert len(x) * int(cost[x].max()) <= 200          # padded size within the budget
    # greedy packing: adding the next sentence of the sorted order would overflow
    assert len(b) <= 1.25 * int(cost.sum()) / 200 + 5
    assert b == make_batches(src, tgt, 200, seed=3, epoch=1)      # pure function of seed/epoch
    assert b != make_batches(src, tgt, 200, seed=3, epoch=2)
    # batches are length-homogeneous: sorted by target length
    spread = sum(int(tgt[x].max() - tgt[x].min()) for x in b) / len(b)
    assert spread <= 3
    ev = make_batches(src, tgt, 200, shuffle=False)
    assert [int(tgt[x].max()) for x in ev] == sorted(int(tgt[x].max()) for x in ev)
    assert max(len(x) for x in make_batches(src, tgt, 10 ** 6, max_sentences=7)) == 7
    with pytest.raises(ValueError, match="smaller than the longest"):
        make_batches(src, tgt, 20)


def test_shard_batches():
    b = [[i] for i in range(7)]
    s0, s1 = shard_batches(b, 0, 2), shard_batches(b, 1, 2)
    assert len(s0) == len(s1) == 3 and not set(map(tuple, s0)) & set(map(tuple, s1))
    assert shard_batches(b, 0, 1) == b
    with pytest.raises(ValueError, match="can not feed"):
        shard_batches(b[:1], 0, 2)
    with pytest.raises(ValueError, match="rank"):
        shard_batches(b, 2, 2)


@pytest.mark.parametrize("content,match", [(None, "does not exist"),
                                           (b"", "empty"),
                                           (b"\x00garbage\xff" * 3, "not a sentencepiece model")])
def test_vocab_load_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "spm.model"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=match) as e:
        SubwordVocab.load(str(path))
    assert str(path) in str(e.value)

