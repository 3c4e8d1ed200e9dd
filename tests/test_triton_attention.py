"""Triton backend under TRITON_INTERPRET=1 (conftest): the @jit mask helpers against
masks.py, the Philox keep-mask against dropout.py, and attention fwd/bwd against the dense
reference with the tolerance rule (kernel error vs an fp64 reference <= 2x (grads: 3x) the
error of the same-precision dense reference, plus a tiny absolute floor), for every case of the
one attention table (_attention_cases.py) the suite can afford.

Shapes are small on purpose: the interpreter costs milliseconds per tile iteration, so it takes
the table's SMALL cases; compiled on a GPU the suite takes the MEDIUM and REAL ones too."""
import math

import pytest
import torch

import janus_kernels as jk
from janus_kernels import masks
from janus_kernels.dropout import drop_threshold, dropout_keep_mask
from janus_kernels.reference import reference_attention

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from janus_kernels.triton import attention as tri  # noqa: E402
from attention_utils import assert_within_rule  # noqa: E402
from janus_kernels.triton import mask as jm  # noqa: E402

from _device_sizes import INTERPRET as _INTERPRET, REAL_SIZES, TRITON_DEVICE  # noqa: E402
from _attention_cases import (CASES, CPU_SIZES, DROPOUT_SEED, SLOW_SIZES, AttnCase,  # noqa: E402
                              Size, params)
from _cuda_attention_cases import MOD_CASES, run_mods_case  # noqa: E402

pytestmark = pytest.mark.skipif(not _INTERPRET and not torch.cuda.is_available(),
                                reason="needs TRITON_INTERPRET=1 or a GPU")
# conftest sets TRITON_INTERPRET=1 only without a GPU: on a GPU these tests run compiled kernels
DEV = TRITON_DEVICE


# ============================================================================ mask zoo
#: the table's size classes this suite takes: the interpreter only affords the SMALL cases
SIZES = SLOW_SIZES if _INTERPRET else CPU_SIZES
ZOO = {c.name: c.mask().to(DEV) for c in CASES.values() if c.size in SIZES}


# ============================================================== @jit helpers vs masks.py
@triton.jit
def _allowed_kernel(out, params, rank, rank_stride, q_split, Lq, Lk,
                    KIND: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    b = tl.program_id(2)
    i = tl.program_id(0) * BM + tl.arange(0, BM)[:, None]
    j = tl.program_id(1) * BN + tl.arange(0, BN)[None, :]
    ok = jm.mask_allowed(params, rank, rank_stride, b, i, j, q_split, Lq, Lk, KIND)
    tl.store(out + b * Lq * Lk + i * Lk + j, ok.to(tl.int8), mask=(i < Lq) & (j < Lk))


@triton.jit
def _tiles_kernel(cls_out, rng_out, params, rank, rank_stride, q_split, Lq, Lk, n_kt,
                  KIND: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Per (stream row tile, key tile): the class the kernels compute; per row tile the key
    range (pre, lo, hi); per (stream, key tile) the query row range (ra, rb)."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    s, r0, seg_start, seg_len = tri._row_tile(pid, q_split, Lq, BM)
    kv, pre, rows, off, hmin, width = jm.load_stream(params, b, s)
    kv = tl.minimum(kv, Lk)
    rows = tl.minimum(rows, seg_len)
    r1 = tl.minimum(r0 + BM, seg_len) - 1
    offs_r = r0 + tl.arange(0, BM)
    rank_b = rank + b * rank_stride
    ks = jm.load_key_start(params, b)
    row_ok = offs_r < rows
    if KIND == jm.KIND_DOCUMENTS:
        row_val = jm.load_row_docs(rank_b, seg_start + offs_r, Lq, row_ok)
    else:
        row_val = jm.load_rank(rank_b, offs_r, Lk, row_ok)
    row_min, row_max = jm.rank_extrema(row_val, row_ok)
    base = (b * tl.num_programs(0) + pid) * n_kt
    for n in range(0, n_kt):
        j0 = n * BN
        j1 = tl.minimum(j0 + BN, Lk) - 1
        offs_j = j0 + tl.arange(0, BN)
        key_ok = (offs_j < kv) & (offs_j >= ks)
        if KIND != jm.KIND_PERMUTATION:
            c = jm.window_tile_class(r0, r1, j0, j1, kv, pre, rows, off, hmin, width, ks)
            if KIND == jm.KIND_DOCUMENTS:
                kmin, kmax = jm.rank_extrema(jm.load_key_docs(rank_b, offs_j, Lq, Lk, key_ok),
                                             key_ok)
                c = jm.doc_tile_class(c, row_min, row_max, kmin, kmax)
        else:
            kmin, kmax = jm.rank_extrema(jm.load_rank(rank_b, offs_j, Lk, key_ok), key_ok)
            c = jm.perm_tile_class(r0, r1, j0, j1, kv, rows, off, row_min, row_max, kmin, kmax,
                                   ks)
        tl.store(cls_out + base + n, c)
        ra, rb = jm.window_query_range(j0, j1, kv, pre, rows, off, hmin, width, ks)
        tl.store(rng_out + ((b * tl.num_programs(0) + pid) * n_kt + n) * 5 + 3, ra)
        tl.store(rng_out + ((b * tl.num_programs(0) + pid) * n_kt + n) * 5 + 4, rb)
    pe, lo, hi = jm.window_key_range(r0, r1, kv, pre, rows, off, hmin, width, ks)
    tl.store(rng_out + base * 5 + 0, pe)
    tl.store(rng_out + base * 5 + 1, lo)
    tl.store(rng_out + base * 5 + 2, hi)


def _rank_args(m):
    return (m.rank, m.rank.stride(0)) if m.rank is not None else (m.params, 0)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_mask_allowed_matches_materialize(name):
    m = ZOO[name]
    out = torch.zeros(m.batch_size, m.q_len, m.kv_len, dtype=torch.int8, device=DEV)
    rank, rs = _rank_args(m)
    grid = (triton.cdiv(m.q_len, 16), triton.cdiv(m.kv_len, 16), m.batch_size)
    _allowed_kernel[grid](out, m.params, rank, rs, m.q_split, m.q_len, m.kv_len,
                          KIND=int(m.kind), BM=16, BN=16)
    assert torch.equal(out.bool().cpu(), m.materialize().cpu())


def _stream_tiles(m, bm):
    """[(stream, first global row, rows in tile)] in the kernels' program order."""
    tiles = []
    for s, (start, length) in enumerate(((0, m.q_split), (m.q_split, m.q_len - m.q_split))):
        for r0 in range(0, length, bm):
            tiles.append((s, start, r0, min(bm, length - r0)))
    return tiles


@pytest.mark.parametrize("name", ["janus_nar_small", "janus_nar_M0_mixed", "janus_ar_small",
                                  "causal_kv", "sliding", "prefix_lm_37",
                                  "key_padding_q_lengths", "permutation_13",
                                  "hf_left_pad", "hf_decode", "hf_chunked_attention",
                                  "documents_causal", "key_start_prefix",
                                  "permutation_key_start"])
@pytest.mark.parametrize("bm,bn", [(16, 16), (4, 8)])
def test_tile_class_and_ranges_match_dense(name, bm, bn):
    """Classes are exact (SKIP iff no visible entry, FULL iff all visible; documents:
    exact or PARTIAL), the key range of a row tile covers every visible key, and a key
    tile's query range holds the rows that see one of its keys (exactly: window kind)."""
    m = ZOO[name]
    if m.kv_len == 0 or m.q_len == 0:
        pytest.skip("empty")
    allowed = m.materialize().cpu()
    tiles = _stream_tiles(m, bm)
    n_kt = triton.cdiv(m.kv_len, bn)
    B = m.batch_size
    cls = torch.full((B, len(tiles), n_kt), -1, dtype=torch.int32, device=DEV)
    rng = torch.full((B, len(tiles), n_kt, 5), -1, dtype=torch.int32, device=DEV)
    rank, rs = _rank_args(m)
    _tiles_kernel[(len(tiles), B)](cls, rng, m.params, rank, rs, m.q_split, m.q_len,
                                   m.kv_len, n_kt, KIND=int(m.kind), BM=bm, BN=bn)
    cls, rng = cls.cpu(), rng.cpu()
    for b in range(B):
        for t, (s, start, r0, nr) in enumerate(tiles):
            rows = allowed[b, start + r0:start + r0 + nr]
            pe, lo, hi = rng[b, t, 0, :3].tolist()
            vis_keys = rows.any(0).nonzero().flatten().tolist()
            if m.kind != masks.Kind.PERMUTATION:
                assert all(j < pe or lo <= j < hi for j in vis_keys), (b, t, pe, lo, hi)
            for n in range(n_kt):
                tile = rows[:, n * bn:(n + 1) * bn]
                want = 0 if not tile.any() else (2 if tile.all() else 1)
                got = cls[b, t, n].item()
                conservative = m.kind == masks.Kind.DOCUMENTS and got == 1
                assert got == want or conservative, (b, t, n, got, want)
        if m.kind == masks.Kind.PERMUTATION:
            continue
        for s, (start, length) in enumerate(((0, m.q_split), (m.q_split, m.q_len - m.q_split))):
            t = next((i for i, tl_ in enumerate(tiles) if tl_[0] == s), None)
            if t is None:
                continue
            seg = allowed[b, start:start + length]
            for n in range(n_kt):
                ra, rb = rng[b, t, n, 3:].tolist()
                sees = seg[:, n * bn:(n + 1) * bn].any(1).nonzero().flatten().tolist()
                assert all(ra <= r < rb for r in sees), (b, s, n, ra, rb, sees)
                # tight: a row of the range that sees nothing is only allowed via the prefix
                # (where every real row counts); otherwise the range is exact
                pre = int(m.params[b, masks.Field.PREFIX])
                if n * bn >= pre and m.kind == masks.Kind.WINDOW:
                    want = (sees[0], sees[-1] + 1) if sees else None
                    assert (ra, rb) == want or (not sees and rb <= ra), (b, s, n, ra, rb, sees)


# ===================================================================== Philox keep-mask
@triton.jit
def _keep_kernel(out, seed_lo, seed_hi, thr, Lq, Lk, BM: tl.constexpr, BN: tl.constexpr):
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    bh = tl.program_id(2)
    offs_i = pm * BM + tl.arange(0, BM)
    offs_j = pn * BN + tl.arange(0, BN)
    keep = jm.dropout_keep(seed_lo, seed_hi, bh, offs_i, pn * BN, thr, BM, BN)
    tl.store(out + bh * Lq * Lk + offs_i[:, None] * Lk + offs_j[None, :], keep.to(tl.int8),
             mask=(offs_i[:, None] < Lq) & (offs_j[None, :] < Lk))


@pytest.mark.parametrize("seed,p", [(0, 0.5), (12345, 0.1), ((1 << 62) + 987654321, 0.3),
                                    (2 ** 64 - 1, 0.9)])
def test_philox_keep_matches_dropout_py(seed, p):
    B, H, Lq, Lk = 2, 3, 21, 37
    out = torch.zeros(B * H, Lq, Lk, dtype=torch.int8, device=DEV)
    _keep_kernel[(triton.cdiv(Lq, 16), triton.cdiv(Lk, 32), B * H)](
        out, tri._i32(seed), tri._i32(seed >> 32), tri._i32(drop_threshold(p)), Lq, Lk,
        BM=16, BN=32)
    ref = dropout_keep_mask(seed, B, H, Lq, Lk, p).view(B * H, Lq, Lk)
    assert torch.equal(out.bool().cpu(), ref)
    assert abs(ref.float().mean().item() - (1 - p)) < 0.05


# ========================================================================= attention
def _inputs(m, B, H, Hkv, d, dtype, layout="contiguous"):
    Lq, Lk = m.q_len, m.kv_len
    if layout == "contiguous":
        q = torch.randn(B, H, Lq, d)
        k = torch.randn(B, Hkv, Lk, d)
        v = torch.randn(B, Hkv, Lk, d)
    elif layout == "bshd":    # (B, L, H, d) storage seen as (B, H, L, d)
        q = torch.randn(B, Lq, H, d).transpose(1, 2)
        k = torch.randn(B, Lk, Hkv, d).transpose(1, 2)
        v = torch.randn(B, Lk, Hkv, d).transpose(1, 2)
    else:  # (B, L, H, d) storage seen as (B, H, L, d); v with a non-unit d stride
        q = torch.randn(B, Lq, H, d).transpose(1, 2)
        k = torch.randn(B, Lk, Hkv, d + 3).transpose(1, 2)[..., 1:d + 1]
        v = torch.randn(B, Hkv, Lk, 2 * d)[..., ::2]
    return tuple(t.to(dtype=dtype, device=DEV) for t in (q, k, v))


def _raw(m, q, k, v, do, scale, p=0.0, seed=None, backend=tri):
    args = (m.params.to(q.device), None if m.rank is None else m.rank.to(q.device),
            m.q_split, int(m.kind), scale, p, seed)
    o, lse = backend.attention_fwd(q, k, v, *args)
    dq, dk, dv, _ = backend.attention_bwd(do, q, k, v, o, lse, *args)
    return o, lse, dq, dk, dv


def _dense(q, k, v, do, allowed, scale, upcast, keep=None, p=0.0):
    """Dense reference outputs + grads; upcast=True runs in float64 (the accurate one)."""
    ct = torch.float64 if upcast else q.dtype
    qc, kc, vc = (t.detach().cpu().to(ct).requires_grad_() for t in (q, k, v))
    o, lse = reference_attention(qc, kc, vc, allowed, scale=scale, upcast=upcast, keep=keep,
                                 dropout_p=p, return_lse=True)
    grads = torch.autograd.grad(o, (qc, kc, vc), do.cpu().to(ct))
    return (o.detach(), lse.detach()) + tuple(g.detach() for g in grads)


def _max_err(x, ref):
    x, ref = x.detach().cpu().double(), ref.double()
    fin = torch.isfinite(ref)
    if not bool(fin.any()):
        return 0.0
    return (x[fin] - ref[fin]).abs().max().item()


def _check_tolerance(kernel, accurate, same, dtype):
    """The project's 2x / 3x rule (attention_utils.assert_within_rule) on out, lse and grads."""
    floor = 1e-5 if dtype == torch.float32 else 1e-6
    for name, x, a, s in zip(("out", "lse", "dq", "dk", "dv"), kernel, accurate, same):
        assert_within_rule(name, x, a, s, grad=name.startswith("d"), floor=floor)


def _run_case(m, dtype=torch.float32, B=None, H=2, Hkv=None, d=16, layout="contiguous",
              scale=None, dropout=0.0):
    B = m.batch_size if B is None else B
    Hkv = H if Hkv is None else Hkv
    q, k, v = _inputs(m, B, H, Hkv, d, dtype, layout)
    do = torch.randn(q.shape, dtype=dtype, device=DEV)
    scale = d ** -0.5 if scale is None else scale
    seed, keep = None, None
    if dropout:
        seed = torch.tensor([DROPOUT_SEED], dtype=torch.int64)
        keep = dropout_keep_mask(DROPOUT_SEED, B, H, m.q_len, m.kv_len, dropout)
    snapshot = [t.clone() for t in (q, k, v, do)]
    kern = _raw(m, q, k, v, do, scale, dropout, seed)
    for before, after in zip(snapshot, (q, k, v, do)):
        assert torch.equal(before, after), "inputs modified"
    allowed = m.materialize().cpu()
    acc = _dense(q, k, v, do, allowed, scale, upcast=True, keep=keep, p=dropout)
    same = _dense(q, k, v, do, allowed, scale, upcast=False, keep=keep, p=dropout)
    _check_tolerance(kern, acc, same, dtype)
    # rows that see no key: zero output and zero dq
    dead = ~allowed.any(-1)
    if bool(dead.any()):
        dead = dead[:, None, :].expand(B, H, -1).to(kern[0].device)
        assert (kern[0][dead] == 0).all() and (kern[2][dead] == 0).all()
    return kern


def _run_table_case(case: AttnCase, dtype: torch.dtype):
    """A case of the one table at its shape (heads, head dim, dropout, scale, layout)."""
    return _run_case(case.mask().to(DEV), dtype=dtype, H=case.H, Hkv=case.kv_heads, d=case.d,
                     layout="bshd" if case.bshd else "contiguous", scale=case.scale,
                     dropout=case.dropout)


@pytest.mark.parametrize("case", params("triton", SIZES))
def test_fwd_bwd_fp32_all_families(case):
    _run_table_case(case, case.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", params("triton", SIZES, half=True))
def test_fwd_bwd_half(case, dtype):
    _run_table_case(case, dtype)


@pytest.mark.parametrize("name,H,Hkv", [("janus_nar_small", 4, 2), ("causal_kv", 3, 1),
                                        ("permutation_13", 4, 1), ("hf_decode", 4, 2),
                                        ("hf_chunked_attention", 2, 1)])
def test_gqa(name, H, Hkv):
    _run_case(ZOO[name], H=H, Hkv=Hkv)


@pytest.mark.parametrize("d", [1, 8, 40])
def test_head_dims_padded(d):
    _run_case(ZOO["janus_ar_small"], d=d, H=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_inputs(dtype):
    _run_case(ZOO["janus_nar_small"], dtype=dtype, H=3, d=16, layout="strided", scale=0.3)


@pytest.mark.parametrize("blocks", [(32, 16), (16, 32)])
@pytest.mark.parametrize("name", ["janus_nar_small", "sliding", "permutation_13"])
def test_unequal_blocks(monkeypatch, blocks, name):
    monkeypatch.setattr(tri, "INTERPRETER_BLOCKS", blocks)
    _run_case(ZOO[name], H=1)


def test_length_one_and_empty():
    _run_case(masks.causal_mask([1, 1], device=DEV), H=1)
    m = masks.key_padding_mask([0, 3], 4, 3, device=DEV)            # sample 0 sees no key at all
    o, lse, dq, dk, dv = _run_case(m, H=1)
    assert torch.isinf(lse[0]).all() and (o[0] == 0).all() and (dk[0] == 0).all()
    m = masks.key_padding_mask([0, 0], 3, 0, device=DEV)           # no keys in the tensor at all
    q, k, v = _inputs(m, 2, 2, 1, 16, torch.float32)
    o, lse, dq, dk, dv = _raw(m, q, k, v, torch.randn_like(q), 0.25)
    assert (o == 0).all() and torch.isneginf(lse).all() and (dq == 0).all() and dk.numel() == 0


# ========================================================================== dropout
@pytest.mark.parametrize("name,H,Hkv", [("janus_nar_small", 2, 1), ("permutation_13", 2, 2),
                                        ("causal_37", 1, 1)])
def test_dropout_matches_reference_backend(name, H, Hkv):
    """Same seed -> the Triton kernels drop exactly the entries of dropout_keep_mask: fwd and
    all grads equal the dense reference backend (which applies that dense mask)."""
    from janus_kernels.backends import get
    m = ZOO[name]
    q, k, v = _inputs(m, m.batch_size, H, Hkv, 16, torch.float32)
    do = torch.randn_like(q)
    seed = torch.tensor([(1 << 40) + 12345], dtype=torch.int64)
    p = 0.3

    Ref = get("reference")  # the reference backend's raw functions, same signature
    kern = _raw(m, q, k, v, do, 0.25, p, seed)
    ref = _raw(m, q, k, v, do, 0.25, p, seed, backend=Ref)
    for name_, x, r in zip(("out", "lse", "dq", "dk", "dv"), kern, ref):
        fin = torch.isfinite(r)
        assert torch.equal(torch.isfinite(x), fin), name_
        assert torch.allclose(x[fin], r[fin], atol=2e-5, rtol=1e-4), \
            (name_, (x[fin] - r[fin]).abs().max().item())
    # and dropout did something: differs from p = 0
    o0 = tri.attention_fwd(q, k, v, m.params, m.rank, m.q_split, int(m.kind), 0.25, 0.0, None)[0]
    assert not torch.allclose(o0, kern[0])


# =================================================================== score modifiers
def _on_dev(*ts):
    return [None if t is None else t.to(DEV) for t in ts]


def _tri_fwd_mods(q, k, v, m, scale, p, seed, rel, cap):
    m = m.to(DEV)
    seed_t = torch.tensor([seed], dtype=torch.int64) if p else None
    q, k, v, rel = _on_dev(q, k, v, rel)
    out, lse = tri.attention_fwd(q, k, v, m.params, m.rank, m.q_split, int(m.kind), scale, p,
                                 seed_t, rel, cap)
    return out.cpu(), lse.cpu()


def _tri_bwd_mods(do, q, k, v, o, lse, m, scale, p, seed, rel, cap):
    m = m.to(DEV)
    seed_t = torch.tensor([seed], dtype=torch.int64) if p else None
    grads = tri.attention_bwd(*_on_dev(do, q, k, v, o, lse), m.params, m.rank, m.q_split,
                              int(m.kind), scale, p, seed_t, *_on_dev(rel), cap)
    return tuple(g.cpu() for g in grads)


@pytest.mark.parametrize("case,dtype", [
    (c, torch.float16 if n % 2 == 0 else torch.bfloat16) for n, c in enumerate(MOD_CASES)],
    ids=[f"{c.name}-{'f16' if n % 2 == 0 else 'bf16'}" for n, c in enumerate(MOD_CASES)])
def test_score_mods_half_gqa_dropout(case, dtype):
    """softcap / rel_bias in half precision with GQA, dropout, padding rows, permutation and
    non-contiguous inputs: the CUDA suite's modifier cases (_cuda_attention_cases.MOD_CASES)
    through the Triton raw functions, interpreted or compiled (tests/test_score_mods.py covers
    fp32 per mask family)."""
    run_mods_case(_tri_fwd_mods, _tri_bwd_mods, case, dtype)


def test_score_mods_bad_arguments_named():
    m = ZOO["causal_37"]
    q, k, v = _inputs(m, m.batch_size, 2, 2, 16, torch.float32)
    args = (q, k, v, m.params, m.rank, m.q_split, int(m.kind), 0.25, 0.0, None)
    with pytest.raises(ValueError, match="softcap must be a finite float >= 0"):
        tri.attention_fwd(*args, None, -1.0)
    with pytest.raises(ValueError, match=r"rel_bias must be float32 \(H, Lq \+ Lk - 1\)"):
        tri.attention_fwd(*args, torch.zeros(2, 72), 0.0)
    with pytest.raises(ValueError, match="rel_bias must be float32"):
        tri.attention_fwd(*args, torch.zeros(2, 73, dtype=torch.float64), 0.0)
    # Lq + Lk - 1 past int32: refused before anything is allocated (stride-0 inputs)
    big = torch.zeros(1, device=DEV).expand(1, 1, 2 ** 30 + 1, 16)
    with pytest.raises(ValueError, match="beyond the kernels' int32 index"):
        tri.attention_fwd(big, big, big, m.params[:1], None, 0, 0, 0.25, 0.0, None,
                          torch.zeros(1, 1), 0.0)


def test_rel_grad_alerts_under_deterministic_algorithms():
    """d_rel_bias comes from GPU atomics: torch.use_deterministic_algorithms makes it an error
    (a warning with warn_only), as for torch's own atomic kernels."""
    import types
    import warnings
    on_gpu = types.SimpleNamespace(device=torch.device("cuda"))   # no CUDA needed to check
    tri._alert_nondeterministic_rel_grad(on_gpu)                  # default: no alert
    try:
        torch.use_deterministic_algorithms(True)
        with pytest.raises(RuntimeError, match="d_rel_bias .* not deterministic"):
            tri._alert_nondeterministic_rel_grad(on_gpu)
        tri._alert_nondeterministic_rel_grad(types.SimpleNamespace(device=torch.device("cpu")))
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="not deterministic"):
            tri._alert_nondeterministic_rel_grad(on_gpu)
    finally:
        torch.use_deterministic_algorithms(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tri._alert_nondeterministic_rel_grad(on_gpu)


# ======================================================================== public API
@pytest.mark.parametrize("name,dtype", [("janus_nar_small", torch.float32),
                                        ("prefix_lm_37", torch.bfloat16),
                                        ("permutation_13", torch.float32)])
def test_public_api_autograd(name, dtype):
    m = ZOO[name]
    q, k, v = (t.requires_grad_() for t in _inputs(m, m.batch_size, 2, 1, 16, dtype))
    o, lse = jk.attention(q, k, v, m, backend="triton", return_lse=True)
    do = torch.randn_like(o)
    g = torch.autograd.grad(o, (q, k, v), do)
    allowed = m.materialize().cpu()
    acc = _dense(q, k, v, do, allowed, 16 ** -0.5, upcast=True)
    same = _dense(q, k, v, do, allowed, 16 ** -0.5, upcast=False)
    _check_tolerance((o, lse) + g, acc, same, dtype)


def test_float64_is_refused_not_silently_rounded():
    """Part of the Triton kernels' arithmetic runs in float32 (the descriptor fuzz test found
    1.4e-7 errors in fp64 dV), so the backend does not serve float64 attention: asking for it
    is a clear error and the default moves to the reference."""
    m = masks.janus_nar_mask([2], [2], 6, 3)
    q = torch.randn(1, 2, m.q_len, 3, dtype=torch.float64)
    k = torch.randn(1, 1, m.kv_len, 3, dtype=torch.float64)
    with pytest.raises(jk.BackendError, match="triton.*float64"):
        jk.attention(q, k, k, m, backend="triton")
    assert jk.default_backend("attention", "cuda", torch.float64, 3) != "triton"


# ====================================================================== bad input
def _args(m):
    return (m.params, m.rank, m.q_split, int(m.kind), 0.25, 0.0, None)


def test_bad_inputs_raise_clear_errors(monkeypatch):
    m = ZOO["janus_nar_small"]
    q, k, v = _inputs(m, 2, 2, 2, 16, torch.float32)
    with pytest.raises(TypeError, match="share a dtype"):
        tri.attention_fwd(q, k.half(), v, *_args(m))
    with pytest.raises(ValueError, match="params"):
        tri.attention_fwd(q, k, v, m.params.long(), *_args(m)[1:])
    with pytest.raises(ValueError, match="multiple of k/v heads"):
        tri.attention_fwd(q, k[:, :0], v[:, :0], *_args(m))
    with pytest.raises(ValueError, match="rank"):
        tri.attention_fwd(q, k, v, m.params, None, m.q_split, 1, 0.25, 0.0, None)
    with pytest.raises(ValueError, match="q_split"):
        tri.attention_fwd(q, k, v, m.params, None, m.q_len + 1, 0, 0.25, 0.0, None)
    with pytest.raises(ValueError, match="seed"):
        tri.attention_fwd(q, k, v, m.params, None, m.q_split, 0, 0.25, 0.5, None)
    o, lse = tri.attention_fwd(q, k, v, *_args(m))
    with pytest.raises(ValueError, match="lse"):
        tri.attention_bwd(o, q, k, v, o, lse[..., :-1], *_args(m))
    with pytest.raises(ValueError, match="dout"):
        tri.attention_bwd(o[:, :1], q, k, v, o, lse, *_args(m))
    monkeypatch.setattr(tri, "_interpreting", lambda: False)
    if q.device.type == "cpu":
        with pytest.raises(RuntimeError, match="q is on cpu.*CUDA"):
            tri.attention_fwd(q, k, v, *_args(m))
    assert math.isfinite(float(o.abs().sum()))


# ================================================================ real sizes (GPU only)
@pytest.mark.skipif(not REAL_SIZES, reason="real sizes: compiled Triton kernels on a GPU")
@pytest.mark.parametrize("case", params("triton", (Size.REAL,)))
def test_real_sizes_compiled(case):
    _run_table_case(case, case.dtype)
