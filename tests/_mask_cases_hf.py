"""Descriptors that exercise Field.KEY_START and Kind.DOCUMENTS (issue 14), shared by the
attention suites of every backend (CPU at each ISA level, Triton interpreter, CUDA emulation)
and by the mask algebra tests: left padding, decode (Lq = 1 at an offset), chunked prefill,
packed documents (causal and bidirectional), varlen, sliding window, chunked attention,
awkward sizes (1, 7, 113), and hand-built tables that reach the kernels' per-element path
(a prefix above KEY_START) and the permutation kind with KEY_START."""
from typing import Callable, Dict, Sequence

import torch

import janus_kernels as jk
from janus_kernels.masks import Field, MaskDescriptor


def padding_mask(runs: Sequence[tuple], kv_len: int) -> torch.Tensor:
    """(B, kv_len) HF 2-D padding mask with real keys [s, e) per sample."""
    m = torch.zeros(len(runs), kv_len, dtype=torch.long)
    for b, (s, e) in enumerate(runs):
        m[b, s:e] = 1
    return m


def docs_from_lengths(lengths: Sequence[Sequence[int]], L: int, lead: Sequence[int] = ()):
    """(B, L) document ids: per sample `lead[b]` padding tokens (-1), then documents of the
    given lengths, then trailing padding (-1)."""
    out = torch.full((len(lengths), L), -1, dtype=torch.long)
    for b, lens in enumerate(lengths):
        pos = lead[b] if lead else 0
        for d, n in enumerate(lens):
            out[b, pos:pos + n] = d
            pos += n
    return out


def with_fields(desc: MaskDescriptor, **fields) -> MaskDescriptor:
    """A copy of desc with some fields of every sample replaced (hand-built tables)."""
    p = desc.params.clone()
    for name, val in fields.items():
        p[:, int(Field[name])] = torch.as_tensor(val, dtype=torch.int32)
    return MaskDescriptor(p, desc.q_len, desc.kv_len, desc.q_split, desc.kind, desc.rank)


def _perm_key_start() -> MaskDescriptor:
    g = torch.Generator().manual_seed(3)
    rank = torch.stack([torch.randperm(37, generator=g) for _ in range(2)])
    return with_fields(jk.permutation_mask(rank, [37, 20]), KEY_START=[5, 3])


HF_CASES: Dict[str, Callable[[], MaskDescriptor]] = {
    # left padding (and one right-padded sample), prefill Lq = Lk
    "hf_left_pad": lambda: jk.hf_mask(padding_mask([(0, 7), (5, 7), (6, 7)], 7), 7, 7),
    "hf_left_pad_113": lambda: jk.hf_mask(padding_mask([(40, 113), (0, 113), (0, 90)], 113),
                                          113, 113),
    # decode with a KV cache: one query row at position Lk - 1
    "hf_decode": lambda: jk.hf_mask(padding_mask([(9, 70), (0, 70), (69, 70)], 70), 1, 70),
    # chunked prefill: 7 new rows at offset Lk - 7, per-sample offsets
    "hf_chunked_prefill": lambda: jk.hf_mask(padding_mask([(3, 50), (0, 50)], 50), 7, 50,
                                             q_offset=torch.tensor([43, 20])),
    "hf_sliding": lambda: jk.hf_mask(padding_mask([(10, 113), (0, 100)], 113), 113, 113,
                                     sliding_window=9),
    "hf_chunked_attention": lambda: jk.hf_mask(padding_mask([(5, 113), (0, 113)], 113), 113,
                                               113, chunk_size=16),
    "hf_bidirectional": lambda: jk.hf_mask(padding_mask([(0, 33), (4, 33), (0, 1)], 33), 33,
                                           33, causal=False),
    "documents_causal": lambda: jk.document_mask(
        docs_from_lengths([[7, 50, 1, 40], [113], [30, 30]], 113, lead=[3, 0, 10]), causal=True),
    "documents_bidirectional": lambda: jk.document_mask(
        docs_from_lengths([[7, 50, 1, 40], [60, 53], [1]], 113, lead=[0, 0, 4])),
    "varlen_causal": lambda: jk.varlen_mask(torch.tensor([0, 7, 8, 120, 233]), causal=True),
    # hand-built: a prefix above KEY_START (the kernels' per-element path), permutation
    "key_start_prefix": lambda: with_fields(jk.prefix_lm_mask([20, 50], [60, 113], 113),
                                            KEY_START=[6, 0], PREFIX=[20, 60]),
    "documents_prefix": lambda: with_fields(jk.document_mask(
        docs_from_lengths([[40, 73], [7, 7, 99]], 113), causal=True), PREFIX=[50, 9]),
    "permutation_key_start": _perm_key_start,
}
