"""The descriptor contract (janus_kernels.mask_checks): every out-of-contract descriptor,
hand-built or from a factory, raises a ValueError/TypeError naming the field and the sample
before any kernel sees it; values beyond int32 raise instead of wrapping; GPU-side tables
are never read unless checking is switched on."""
import pytest
import torch

import janus_kernels as jk
from janus_kernels import _ext, masks
from janus_kernels.masks import Field, Kind, MaskDescriptor

L30 = 1 << 30


def _table(**fields) -> torch.Tensor:
    """A valid one-sample causal table for q_len = kv_len = 4, with fields overridden."""
    base = dict(KV_LEN=4, PREFIX=0, ROWS0=4, OFF0=1, HMIN0=0, WIDTH0=L30,
                ROWS1=0, OFF1=0, HMIN1=0, WIDTH1=0, KEY_START=0)
    base.update(fields)
    return torch.tensor([[base[f.name] for f in Field]], dtype=torch.int32)


@pytest.mark.parametrize("field,value", [
    ("KV_LEN", 5), ("KV_LEN", -1), ("PREFIX", -1), ("PREFIX", 5), ("ROWS0", 5), ("ROWS0", -1),
    ("ROWS1", 1), ("WIDTH0", -1), ("WIDTH1", -3), ("WIDTH0", L30 + 1), ("OFF0", L30 + 1),
    ("OFF1", -L30 - 1), ("HMIN0", 2 ** 31 - 1), ("HMIN1", -2 ** 31),
    ("KEY_START", -1), ("KEY_START", 5), ("KEY_START", 2 ** 31 - 1),
])
def test_hand_built_out_of_contract_raises_naming_field(field, value):
    with pytest.raises(ValueError, match=rf"Field\.{field}\] = {value} \(sample 0\)"):
        MaskDescriptor(_table(**{field: value}), 4, 4, 4)


@pytest.mark.parametrize("field,value", [
    ("KV_LEN", 0), ("KV_LEN", 4), ("PREFIX", 4), ("ROWS0", 0), ("OFF0", -L30), ("OFF0", L30),
    ("HMIN0", L30), ("HMIN0", -L30), ("WIDTH0", 0), ("WIDTH0", L30), ("KEY_START", 4),
    ("KEY_START", 2),
])
def test_boundary_values_are_accepted_and_match_the_predicate(field, value):
    d = MaskDescriptor(_table(**{field: value}), 4, 4, 4)
    assert d.materialize().shape == (1, 4, 4)


def test_bad_sample_is_named_in_a_batch():
    p = torch.cat([_table(), _table(), _table(KV_LEN=9)])
    with pytest.raises(ValueError, match=r"params\[2, Field\.KV_LEN\] = 9 \(sample 2\)"):
        MaskDescriptor(p, 4, 4, 4)


def test_two_stream_rows_bounded_by_each_stream():
    p = _table(ROWS0=3, ROWS1=2, OFF1=1, WIDTH1=L30)
    MaskDescriptor(p, 5, 4, 3)             # streams of 3 and 2 rows: fits
    with pytest.raises(ValueError, match=r"ROWS1\] = 2.*q_len - q_split=1"):
        MaskDescriptor(p, 4, 4, 3)
    with pytest.raises(ValueError, match=r"ROWS0\] = 3.*q_split=2"):
        MaskDescriptor(p, 5, 4, 2)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(q_len=4.0), TypeError, "q_len: expected an integer"),
    (dict(kv_len=True), TypeError, "kv_len: expected an integer"),
    (dict(q_split=5), ValueError, "q_split"),
    (dict(q_split=-1), ValueError, "q_split"),
    (dict(q_len=L30 + 1, q_split=0), ValueError, "q_len"),
    (dict(kind=3), ValueError, "kind"),
    (dict(kind=Kind.DOCUMENTS), ValueError, r"DOCUMENTS kind needs int32 \(1, 8\)"),
    (dict(kind=True), ValueError, "kind"),
    (dict(kind=Kind.PERMUTATION), ValueError, "rank"),
    (dict(rank=torch.zeros(1, 4, dtype=torch.int32)), ValueError, "only the PERMUTATION"),
])
def test_hand_built_bad_structure(kwargs, exc, match):
    args = dict(params=_table(), q_len=4, kv_len=4, q_split=4)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        MaskDescriptor(**args)


def test_bad_rank_dtype_shape_device():
    p = _table(OFF0=0, WIDTH0=0)
    for rank in (torch.zeros(1, 4), torch.zeros(1, 3, dtype=torch.int32),
                 torch.zeros(2, 4, dtype=torch.int32), torch.zeros(1, 4, dtype=torch.int32,
                                                                 device="meta")):
        with pytest.raises(ValueError, match="MaskDescriptor.rank"):
            MaskDescriptor(p, 4, 4, 4, Kind.PERMUTATION, rank)


def test_key_start_above_kv_len_is_named():
    with pytest.raises(ValueError, match=r"KEY_START\] = 3 \(sample 0\).*KEY_START <= KV_LEN = 2"):
        MaskDescriptor(_table(KV_LEN=2, KEY_START=3), 4, 4, 4)


@pytest.mark.parametrize("docs,match", [
    ([[0, 1, 1, 2, 0, 0, 1, 2]], None),                          # two nondecreasing runs
    ([[0, 1, 0, 2, 0, 0, 1, 2]], r"rank\[0, 2\] = 0 \(sample 0, row 2\)"),
    ([[0, 1, 1, 2, 0, 1, 0, 2]], r"rank\[0, 6\] = 0 \(sample 0, key 2\)"),
    ([[0, 1, 1, 2, 0, 0, 1, L30]], r"rank\[0, 7\] = 1073741824.*\[-2\^30, 2\^30\)"),
])
def test_document_table_contract(docs, match):
    p = _table()
    docs = torch.tensor(docs, dtype=torch.int32)
    if match is None:
        d = MaskDescriptor(p, 4, 4, 4, Kind.DOCUMENTS, docs)
        assert d.materialize()[0, 3].tolist() == [False, False, False, True]
        return
    with pytest.raises(ValueError, match=match):
        MaskDescriptor(p, 4, 4, 4, Kind.DOCUMENTS, docs)
    d = MaskDescriptor(p, 4, 4, 4, Kind.DOCUMENTS, torch.zeros(1, 8, dtype=torch.int32))
    d.rank.copy_(docs)                                    # an in-place edit after building
    with pytest.raises(ValueError, match=match):
        d.check(1, 4, 4, torch.device("cpu"))


def test_permutation_rows_bounded_by_rank_length():
    """The permutation predicate reads rank[r] for row r: ROWS beyond kv_len would read
    outside the rank tensor."""
    p = _table(KV_LEN=3, ROWS0=4, OFF0=0, WIDTH0=0)
    with pytest.raises(ValueError, match=r"ROWS0\] = 4.*rank entries"):
        MaskDescriptor(p, 4, 3, 4, Kind.PERMUTATION, torch.zeros(1, 3, dtype=torch.int32))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: jk.janus_nar_mask([2 ** 31], [1]), ValueError, "content_len"),
    (lambda: jk.janus_nar_mask([2 ** 31], [1], 10, 2), ValueError, r"U \+ 2M"),
    (lambda: jk.janus_nar_mask([2 ** 32 + 3], [0], 4, 0), ValueError, r"U \+ 2M"),
    (lambda: jk.causal_mask([2 ** 31 + 1], 3), ValueError, "exceed seq_len"),
    (lambda: jk.permutation_mask(torch.tensor([[0, 2 ** 31]])), ValueError, r"rank\[0, 1\]"),
    (lambda: jk.permutation_mask(torch.tensor([[0, 1, 2 ** 32]])), ValueError, r"rank\[0, 2\]"),
    (lambda: jk.causal_mask([3], window=1.5), TypeError, "window"),
    (lambda: jk.sliding_window_mask([3], 2.0), TypeError, "window"),
    (lambda: jk.causal_mask([3], 3.5), TypeError, "seq_len"),
    (lambda: jk.causal_mask([3], True), TypeError, "seq_len"),
    (lambda: jk.causal_mask(3.7), TypeError, "lengths"),
    (lambda: jk.full_mask(2, 3.5, 4), TypeError, "q_len"),
    (lambda: jk.full_mask(2.0, 3, 4), TypeError, "batch_size"),
    (lambda: jk.key_padding_mask([2], 3, kv_len=2.5), TypeError, "kv_len"),
    (lambda: jk.janus_nar_mask([2], [1], 4.0, 1), TypeError, "content_len"),
    (lambda: jk.janus_ar_mask([2], 2.5), TypeError, "seq_len"),
    (lambda: jk.permutation_mask(torch.zeros(1, 3, dtype=torch.long), two_stream=1), TypeError,
     "two_stream"),
    (lambda: jk.permutation_mask(torch.zeros(1, 3, dtype=torch.bool)), ValueError, "rank"),
    (lambda: jk.full_mask(1, L30 + 1, 4), ValueError, "q_len"),
])
def test_factories_reject_instead_of_truncating_or_wrapping(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_permutation_padding_ranks_are_not_read():
    """Ranks beyond a sample's length are never read, so any placeholder is fine there."""
    rank = torch.tensor([[1, 0, -(2 ** 40)]])
    d = jk.permutation_mask(rank, [2])
    assert d.materialize()[0, :2, :2].tolist() == [[True, True], [False, True]]


def test_in_place_edit_is_caught_at_call_time():
    d = jk.causal_mask([4, 2], 4)
    d.check(2, 4, 4, torch.device("cpu"))
    d.params[1, Field.KV_LEN] = 7
    with pytest.raises(ValueError, match=r"\[1, Field\.KV_LEN\] = 7"):
        d.check(2, 4, 4, torch.device("cpu"))


@pytest.mark.skipif(not _ext.available(), reason="compiled extension missing")
@pytest.mark.parametrize("field,value", [("KV_LEN", 6), ("KV_LEN", -1), ("PREFIX", -2),
                                         ("KEY_START", -1), ("KEY_START", 5)])
def test_attention_rejects_before_the_kernel(field, value):
    """Today's main: KV_LEN > kv_len gives garbage (backward segfaults), KV_LEN < 0 aborts,
    PREFIX < 0 disagrees with materialize(). The descriptor now never reaches the kernel."""
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match=field):
        d = MaskDescriptor(_table(**{field: value}), 4, 4, 4)
        jk.attention(q, q, q, d)


def test_gpu_tables_are_not_read_unless_asked(monkeypatch):
    """Meta tensors stand in for GPU ones: any value read on them raises, so building with
    explicit sizes proves the factories and the descriptor never sync."""
    monkeypatch.delenv("JANUS_CHECK_DESCRIPTORS", raising=False)
    meta = dict(device="meta", dtype=torch.long)
    d = jk.janus_nar_mask(torch.zeros(3, **meta), torch.zeros(3, **meta), 8, 4)
    assert d.params.device.type == "meta" and d.q_len == 12
    jk.causal_mask(torch.zeros(3, **meta), 5, kv_lengths=torch.zeros(3, **meta), kv_len=6,
                   window=2)
    jk.key_padding_mask(torch.zeros(3, **meta), 4, 5)
    jk.prefix_lm_mask(torch.zeros(3, **meta), torch.zeros(3, **meta), 5)
    jk.janus_ar_mask(torch.zeros(3, **meta), 5)
    jk.permutation_mask(torch.zeros(3, 5, **meta))
    jk.hf_mask(torch.ones(3, 5, **meta), 2, 5, sliding_window=2, chunk_size=3)
    jk.document_mask(torch.zeros(3, 5, **meta), causal=True)
    d.check(3, 12, 8, torch.device("meta"))


@pytest.mark.parametrize("env,override,expect", [
    ("", None, False), ("0", None, False), ("1", None, True), ("1", False, False),
    ("", True, True),
])
def test_checking_mode_switch(monkeypatch, env, override, expect):
    from janus_kernels import mask_checks
    monkeypatch.setenv("JANUS_CHECK_DESCRIPTORS", env)
    masks.set_descriptor_checks(override)
    try:
        assert mask_checks.descriptor_checks_enabled() is expect
    finally:
        masks.set_descriptor_checks(None)
    with pytest.raises(TypeError):
        masks.set_descriptor_checks("yes")


def test_checking_mode_uses_the_device_path(monkeypatch):
    """The non-CPU branch of check_table (torch ops, one sync) names the bad sample too;
    exercised on CPU by hiding the numpy fast path."""
    from janus_kernels import mask_checks
    p = torch.cat([_table(), _table(WIDTH0=-4)]).long()
    monkeypatch.setattr(mask_checks, "_is_cpu", lambda t: False)
    with pytest.raises(ValueError, match=r"\[1, Field\.WIDTH0\] = -4 \(sample 1\)"):
        mask_checks.check_table(p, 4, 4, 4, Kind.WINDOW)
    mask_checks.check_table(p[:1], 4, 4, 4, Kind.WINDOW)
