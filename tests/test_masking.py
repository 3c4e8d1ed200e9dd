"""Span masking (spec §5.1): statistics vs the spec table, vs a slow per-sample reference of
the procedure, invariants, and M = 0 batches."""
import math
import random

import pytest
import torch

from janus_model.layout import BOS, EOS, PAD, UNK, build_batch
from janus_model.masking import poisson_span_table, span_mask


def _targets(N, B, W=None):
    W = W or N + 2
    t = torch.full((B, W), PAD)
    t[:, 1:N + 1] = 7
    t[:, 0], t[:, N + 1] = BOS, EOS
    return t


def test_poisson_table():
    p = poisson_span_table(2.0)
    assert len(p) == 15                      # {0..14}: stops at the first pmf < 1e-7
    assert abs(float(p.sum()) - 1) < 1e-12
    raw = [math.exp(-2) * 2 ** k / math.factorial(k) for k in range(15)]
    assert torch.allclose(p, torch.tensor(raw, dtype=torch.float64) / sum(raw))
    with pytest.raises(ValueError, match="lam"):
        poisson_span_table(0.0)


SPEC_MEAN = {4: 0.66, 6: 0.61, 10: 0.60, 18: 0.56, 28: 0.56, 48: 0.55, 98: 0.55}


def test_mean_ratio_matches_spec_table():
    g = torch.Generator().manual_seed(1)
    # one mixed-length batch (exercises padding): 1500 rows per length
    Ns = list(SPEC_MEAN)
    W = max(Ns) + 2
    tgt = torch.cat([_targets(N, 1500, W) for N in Ns])
    m = span_mask(tgt, generator=g)
    for i, N in enumerate(Ns):
        got = m[i * 1500:(i + 1) * 1500].sum(1).float().mean().item() / N
        assert abs(got - SPEC_MEAN[N]) < 0.025, (N, got)


def test_short_target_probabilities():
    g = torch.Generator().manual_seed(2)
    for N, p0 in ((1, 0.22), (2, 0.14), (3, 0.05)):
        M = span_mask(_targets(N, 4000), generator=g).sum(1)
        assert abs((M == 0).float().mean().item() - p0) < 0.025, N
        if N == 1:
            assert abs((M == 1).float().mean().item() - 0.78) < 0.025


def _slow_span_mask(L, rng, ratio=0.7, lam=2.0):
    """One sample, written directly from the spec's five steps with Python's random."""
    table = poisson_span_table(lam).tolist()
    n = math.ceil(ratio * L)
    spans, total = [], 0
    while total < n:
        s = rng.choices(range(len(table)), weights=table)[0]
        spans.append(min(s, n - total))
        total += spans[-1]
    spans = [s for s in spans[:L] if s > 0]           # at most L spans, zero-length included
    starts = rng.sample(range(L), len(spans))
    covered = set()
    for st, ln in zip(starts, spans):
        if st + ln > L:
            ln = 1
        covered.update(range(st, st + ln))
    covered -= {0, L - 1}
    return len(covered)


@pytest.mark.parametrize("N", [3, 10])
def test_distribution_matches_slow_reference(N):
    rng = random.Random(3)
    ref = [_slow_span_mask(N + 2, rng) for _ in range(3000)]
    got = span_mask(_targets(N, 3000), generator=torch.Generator().manual_seed(3)).sum(1)
    tv = 0.5 * sum(abs(ref.count(k) / 3000 - (got == k).float().mean().item())
                   for k in range(N + 1))
    assert tv < 0.06, tv


@pytest.mark.parametrize("N", [1, 4])
def test_span_count_capped_at_length(N):
    """Spec §5.1: at most L spans (zero-length draws count). With a tiny Poisson rate almost
    every draw is 0, so the budget needs far more than L draws: the cap leaves most rows
    with nothing masked (P(M > 0) <= 1 - P(0)^L, about 0.14 / 0.26 here), whereas spending
    the whole budget n = ceil(0.7 L) on length-1 spans would always mask something."""
    lam = 0.05
    p_zero = float(poisson_span_table(lam)[0])
    M = span_mask(_targets(N, 4000), lam=lam, generator=torch.Generator().manual_seed(5)).sum(1)
    frac = (M > 0).float().mean().item()
    assert frac < 1 - p_zero ** (N + 2) + 0.03, frac
    rng = random.Random(5)
    ref = sum(_slow_span_mask(N + 2, rng, lam=lam) > 0 for _ in range(600)) / 600
    assert abs(frac - ref) < 0.05, (frac, ref)


def test_invariants_and_determinism():
    g = torch.Generator().manual_seed(4)
    N = torch.randint(0, 20, (64,), generator=g)
    N[5] = 6
    W = int(N.max()) + 2
    tgt = torch.full((64, W), PAD)
    for b, n in enumerate(N.tolist()):
        tgt[b, :n + 2] = torch.tensor([BOS] + [9] * n + [EOS])
    tgt[5, 1:3] = UNK
    t0 = tgt.clone()
    m1 = span_mask(tgt, generator=torch.Generator().manual_seed(9))
    m2 = span_mask(tgt, generator=torch.Generator().manual_seed(9))
    assert torch.equal(m1, m2) and torch.equal(tgt, t0)
    k = torch.arange(W)[None, :]
    assert not (m1 & ((k == 0) | (k >= (N + 1)[:, None]))).any()   # never BOS/EOS/PAD
    assert m1[5, 1:3].all()                      # genuine UNK counts as masked
    assert not span_mask(tgt, unk_is_masked=False, ratio=0.0)[5].any()
    build_batch(tgt, m1)                         # a valid layout input


def test_all_unmasked_batch():
    tgt = _targets(0, 5)                         # N = 0: nothing can be masked
    m = span_mask(tgt)
    assert not m.any()
    b = build_batch(tgt, m)
    assert b.nar.num_masked == 0 and b.nar.query_len == 0


def test_bad_input():
    with pytest.raises(ValueError, match="target"):
        span_mask(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="ratio"):
        span_mask(_targets(3, 2), ratio=1.5)
