"""Inference (spec §1.4, §5.4, §5.5): AR greedy / beam search from the query stream with a
content-only KV cache, and NAR mask-predict with a length beam. Batched, with padding.

AR step t (0-based) feeds two rows per hypothesis: the newest content token (BOS at t = 0)
and an UNK query, both with position id t + 2. In every layer the content row's key/value is
appended to that layer's cache, and both rows attend to all t + 1 cached content keys, so the
query row reproduces training's AR query row t exactly. Each key is cached ONCE: the authors'
incremental path appends the current content key twice (spec §5.5); that quirk is not
reproduced. Encoder-attention keys/values are computed once per source.

Mask-predict (fairseq CMLM / the authors' generator): candidates L̂ + {-⌊ℓ/2⌋ .. ℓ-1-⌊ℓ/2⌋}
(clamped to >= 2) around the length head's argmax; input [BOS, UNK*(L-2), EOS]; pass s = 0..T
writes argmax token and log-prob at every UNK position, then (if s < T) re-masks the
n_s = floor((L-2)(1 - (s+1)/(T+1))) lowest-scoring positions (computed in float32 as the
original); BOS/EOS keep score 0. The candidate with the best mean log-prob over its L
entries (BOS/EOS included) wins. T = 0 is a single pass.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

import janus_kernels as jk

from .layers import fused_core, reorder_cache
from .layout import BOS, EOS, PAD, UNK, positions_for
from .model import Encoded, ExecOptions, JanusTransformer

__all__ = ["DecodeResult", "ARDecoder", "ar_greedy", "ar_beam_search", "mask_predict"]

Tensor = torch.Tensor


@dataclasses.dataclass
class DecodeResult:
    tokens: Tensor      # (B, W) hypothesis y1..yN (no BOS/EOS), PAD-padded
    lengths: Tensor     # (B,) N of each hypothesis
    scores: Tensor      # (B,) AR: length-normalised log-prob; NAR: mean log-prob over L


def _pack(hyps: List[List[int]], scores: List[float], device) -> DecodeResult:
    W = max([len(h) for h in hyps] + [1])
    t = torch.full((len(hyps), W), PAD, dtype=torch.long)
    for b, h in enumerate(hyps):
        t[b, :len(h)] = torch.tensor(h, dtype=torch.long)
    return DecodeResult(t.to(device), torch.tensor([len(h) for h in hyps], device=device),
                        torch.tensor(scores, dtype=torch.float32, device=device))


def _expand(enc: Encoded, kv, n: int):
    """Repeat every source n times (beam / length candidates), keeping sample-major order."""
    enc = Encoded(enc.out.repeat_interleave(n, 0), enc.lengths.repeat_interleave(n, 0))
    return enc, [(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in kv]


class ARDecoder:
    """Incremental AR decoding state for a batch of hypotheses (one per row)."""

    def __init__(self, model: JanusTransformer, enc: Encoded, enc_kv, opts: ExecOptions):
        self.model, self.enc, self.enc_kv, self.opts = model, enc, enc_kv, opts
        self.caches: List[Dict[str, Tensor]] = [{} for _ in model.decoder]
        self.step = 0

    def logprobs(self, tokens: Tensor) -> Tensor:
        """Feed content token ``tokens`` (n,) at the current step; return the query
        stream's next-token log-probs (n, V) in float32."""
        n, t = tokens.shape[0], self.step
        self.model._check_positions(t + 1)
        rows = torch.stack([tokens, torch.full_like(tokens, UNK)], 1)
        pos = torch.full_like(rows, t + 2)
        core = fused_core(jk.full_mask(n, 2, t + 1, device=tokens.device),
                          backend=self.opts.backend)
        h = self.model.decode_rows(rows, pos, 1, core, self.enc, self.enc_kv, self.opts,
                                   caches=self.caches)
        self.step += 1
        return F.log_softmax(self.model.project(h[:, 1]).float(), -1)

    def reorder(self, order: Tensor) -> None:
        reorder_cache(self.caches, order)
        self.enc = Encoded(self.enc.out.index_select(0, order),
                           self.enc.lengths.index_select(0, order))
        self.enc_kv = [(k.index_select(0, order), v.index_select(0, order))
                       for k, v in self.enc_kv]


def _max_len(model: JanusTransformer, src: Tensor, max_len_a: float, max_len_b: int) -> int:
    """fairseq's max_len = a * src_len + b, capped by the position table."""
    src_len = int((src != PAD).sum(1).max())
    return max(1, min(int(max_len_a * src_len + max_len_b), model.cfg.max_positions - 1))


def _block(lp: Tensor, t: int, max_len: int) -> Tensor:
    """Never predict PAD or BOS; at the last allowed step force EOS."""
    lp[:, PAD] = float("-inf")
    lp[:, BOS] = float("-inf")
    if t >= max_len:
        eos = lp[:, EOS].clone()
        lp.fill_(float("-inf"))
        lp[:, EOS] = eos
    return lp


@torch.no_grad()
def ar_greedy(model: JanusTransformer, src: Tensor, *, max_len_a: float = 0.0,
              max_len_b: int = 200, opts: Optional[ExecOptions] = None) -> DecodeResult:
    """Greedy AR decoding from the query stream (at most max_len tokens + EOS)."""
    opts = opts or model.exec
    enc = model.encode(src, opts)
    dec = ARDecoder(model, enc, model.encoder_kv(enc), opts)
    max_len = _max_len(model, src, max_len_a, max_len_b)
    B = src.shape[0]
    tok = torch.full((B,), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    score = torch.zeros(B, device=src.device)
    out = []
    for t in range(max_len + 1):
        lp = _block(dec.logprobs(tok), t, max_len)
        s, nxt = lp.max(-1)
        nxt = torch.where(done, PAD, nxt)
        score = score + torch.where(done, 0.0, s)
        out.append(nxt)
        done = done | (nxt == EOS)
        tok = nxt
        if bool(done.all()):
            break
    seq = torch.stack(out, 1)
    n = (seq != PAD).sum(1) - 1                          # tokens before EOS
    toks = torch.where(seq == EOS, PAD, seq)
    return DecodeResult(toks[:, :max(int(n.max()), 1)], n, score / (n + 1).float())


@torch.no_grad()
def ar_beam_search(model: JanusTransformer, src: Tensor, *, beam: int = 5,
                   len_penalty: float = 1.0, max_len_a: float = 0.0, max_len_b: int = 200,
                   opts: Optional[ExecOptions] = None) -> DecodeResult:
    """Beam search as fairseq's: per step the top 2*beam candidates; an EOS among the top
    ``beam`` finalises a hypothesis with score sum_logprob / (len+1)**len_penalty (len+1
    counts the EOS); the best ``beam`` non-EOS candidates continue. A sentence is done with
    ``beam`` finalised hypotheses; the best normalised one is returned."""
    if beam < 1:
        raise ValueError(f"beam: expected >= 1, got {beam}")
    if model.cfg.vocab_size - 2 < 2 * beam:
        raise ValueError(f"beam: {beam} is too large for a vocabulary of {model.cfg.vocab_size}")
    opts = opts or model.exec
    dev = src.device
    B, K, V = src.shape[0], beam, model.cfg.vocab_size
    enc = model.encode(src, opts)
    enc, kv = _expand(enc, model.encoder_kv(enc), K)
    dec = ARDecoder(model, enc, kv, opts)
    max_len = _max_len(model, src, max_len_a, max_len_b)
    scores = torch.full((B, K), float("-inf"), device=dev)
    scores[:, 0] = 0.0                                   # all beams start identical: keep one
    hist = torch.zeros(B * K, 0, dtype=torch.long, device=dev)
    tok = torch.full((B * K,), BOS, dtype=torch.long, device=dev)
    final: List[List[tuple]] = [[] for _ in range(B)]
    base = (torch.arange(B, device=dev) * K)[:, None]
    for t in range(max_len + 1):
        lp = _block(dec.logprobs(tok), t, max_len).view(B, K, V)
        cand = (scores[:, :, None] + lp).view(B, K * V)
        c_score, c_idx = cand.topk(2 * K, dim=1)
        c_beam, c_tok = c_idx // V, c_idx % V
        is_eos = (c_tok == EOS) & torch.isfinite(c_score)
        # finalise EOS candidates ranked within the top K (host loop over a few entries)
        fin = (is_eos[:, :K]).nonzero().tolist()
        for b, r in fin:
            if len(final[b]) < K:
                h = hist[b * K + int(c_beam[b, r])].tolist()
                final[b].append((float(c_score[b, r]) / (t + 1) ** len_penalty, h))
        if all(len(f) >= K for f in final):
            break
        # continue with the best K non-EOS candidates
        key = is_eos.long() * (2 * K) + torch.arange(2 * K, device=dev)[None, :]
        pick = key.argsort(1)[:, :K]
        scores = c_score.gather(1, pick)
        scores = torch.where(is_eos.gather(1, pick), float("-inf"), scores)
        order = (base + c_beam.gather(1, pick)).view(-1)
        new_tok = c_tok.gather(1, pick).view(-1)
        hist = torch.cat([hist.index_select(0, order), new_tok[:, None]], 1)
        dec.reorder(order)
        tok = new_tok
    best = [max(f, key=lambda x: x[0]) if f else (float("-inf"), []) for f in final]
    return _pack([h for _, h in best], [s for s, _ in best], dev)


@torch.no_grad()
def mask_predict(model: JanusTransformer, src: Tensor, *, iterations: int = 10,
                 length_beam: int = 3, max_len: Optional[int] = None,
                 opts: Optional[ExecOptions] = None,
                 history: Optional[list] = None) -> DecodeResult:
    """NAR mask-predict (spec §5.4). Candidate lengths L (BOS/EOS included) are clamped to
    [2, min(max_len, max_positions)]. ``history``, if a list, receives the (B*ℓ, W) bool
    mask of the positions re-masked at each step (for tests and analysis)."""
    if iterations < 0 or length_beam < 1:
        raise ValueError(f"iterations must be >= 0 and length_beam >= 1, got {iterations}, "
                         f"{length_beam}")
    opts = opts or model.exec
    dev = src.device
    B, l = src.shape[0], length_beam
    enc = model.encode(src, opts)
    L_hat = model.length_logits(enc).argmax(-1).clamp(min=2)
    offs = torch.arange(l, device=dev) - l // 2
    cap = model.cfg.max_positions if max_len is None else min(max_len, model.cfg.max_positions)
    L = (L_hat[:, None] + offs[None, :]).clamp(min=2, max=max(cap, 2)).view(-1)
    enc, kv = _expand(enc, model.encoder_kv(enc), l)
    W = int(L.max())
    j = torch.arange(W, device=dev)[None, :]
    real = j < L[:, None]
    tokens = torch.where(real, UNK, PAD)
    tokens[:, 0] = BOS
    tokens.scatter_(1, (L - 1)[:, None], EOS)
    scores = torch.zeros(B * l, W, device=dev)
    pos = positions_for(tokens)
    core = model.padding_core(L, W, W, opts, q_lengths=L)
    for s in range(iterations + 1):
        h = model.decode_rows(tokens, pos, W, core, enc, kv, opts)
        sc, tk = F.log_softmax(model.project(h).float(), -1).max(-1)
        m = tokens == UNK
        tokens = torch.where(m, tk, tokens)
        scores = torch.where(m, sc, scores)
        if s < iterations:
            p = 1.0 - (s + 1) / (iterations + 1)
            n = ((L - 2).float() * p).long()            # float32 then truncate, as fairseq
            key = scores.masked_fill(~real, float("inf"))
            order = key.argsort(dim=1, stable=True)
            remask = torch.zeros_like(real).scatter(1, order, j.expand_as(order) < n[:, None])
            tokens = torch.where(remask, UNK, tokens)
            scores = torch.where(remask, 0.0, scores)
            if history is not None:
                history.append(remask.clone())
    mean = (scores * real).sum(1) / L.float()
    best = mean.view(B, l).argmax(1)
    pick = torch.arange(B, device=dev) * l + best
    tok, Lb = tokens.index_select(0, pick), L.index_select(0, pick)
    n = Lb - 2
    inner = tok[:, 1:max(int(n.max()), 1) + 1]
    inner = torch.where(j[:, :inner.shape[1]] < n[:, None], inner, PAD)
    return DecodeResult(inner, n, mean.index_select(0, pick))
