"""JANUS / CMLM / AR training objectives (spec §6.1), in plain PyTorch.

With p = softmax(z) (float32, temperature 1) and ε = 0.1:

    CE_ε(z, y) = mean_rows[ (1-ε)(-log p_y) + ε · mean_v(-log p_v) ]     (ε over the whole vocab)
    KLs(z1, z2) = mean_rows ½[KL(p1‖p2) + KL(p2‖p1)] = mean_rows ½ Σ_v (p1-p2)(log p1 - log p2)

(no detach: gradient reaches both sides; no smoothing in the KLs), and the released recipe

    L = CE_ε(AR) + 1·KLs(AR_kl, NAR) + 3·KLs(AR_kl, AUX) + 0.5·CE_ε(NAR) + 0.5·CE_ε(AUX)
        + 0.1·CE(length) + 1·KLs(NAR, AUX)

where AR_kl are the AR rows whose target is a masked token (aligned with the NAR/AUX rows).
``LossWeights.paper()`` gives Eq. 5 of the paper instead (unit CE weights; the four one-way
KLs with weight 1, i.e. 2·KLs(AR, AUX) + 2·KLs(NAR, AUX), no direct AR–NAR term), still as
per-row means, with the 0.1 length term kept (the NAR decoder needs a length).

Every term is a mean over its own rows; a term with no rows (M = 0 everywhere) is an exact 0
that keeps the graph (no NaN). ``loss_terms`` is the single boundary where the fused
``janus_kernels`` loss ops plug in: it receives the logits of exactly the rows each term reads.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .layout import JanusBatch
from .model import ExecOptions, JanusTransformer, Outputs

__all__ = ["LossWeights", "label_smoothed_ce", "symmetric_kl", "loss_terms", "fused_loss_terms",
           "combine", "compute_loss"]

Tensor = torch.Tensor


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of each term. Default: the authors' released NMT recipe (spec §6.1)."""

    ar: float = 1.0
    nar: float = 0.5
    aux: float = 0.5
    kl_ar_nar: float = 1.0
    kl_ar_aux: float = 3.0
    kl_nar_aux: float = 1.0
    length: float = 0.1
    label_smoothing: float = 0.1

    @classmethod
    def released(cls) -> "LossWeights":
        return cls()

    @classmethod
    def for_mode(cls, mode: str) -> "LossWeights":
        """Defaults per mode: janus = released; cmlm = CE_ε(NAR) + 0.1·length (the authors'
        ``cmlm_loss``); ar = CE_ε(AR) (``ar_loss``)."""
        if mode == "cmlm":
            return cls(nar=1.0)
        return cls()

    @classmethod
    def paper(cls) -> "LossWeights":
        """Paper Eq. 5 (spec §8.1): L_AR + L_NAR + L_AUX + four one-directional KLs."""
        return cls(ar=1.0, nar=1.0, aux=1.0, kl_ar_nar=0.0, kl_ar_aux=2.0, kl_nar_aux=2.0)


def _empty(z: Tensor) -> Tensor:
    """A zero loss that still depends on z (so backward works and gives zero grads)."""
    return z.sum() * 0.0


def label_smoothed_ce(logits: Tensor, target: Tensor, eps: float = 0.1) -> Tensor:
    """CE_ε (mean over rows); ε spread uniformly over the whole vocabulary, target included
    (torch's ``label_smoothing`` semantics, as the authors' criterion)."""
    if logits.shape[0] == 0:
        return _empty(logits)
    return F.cross_entropy(logits.float(), target, label_smoothing=eps)


def symmetric_kl(z1: Tensor, z2: Tensor) -> Tensor:
    """KLs(z1, z2): mean over rows of ½[KL(p1‖p2) + KL(p2‖p1)], float32 softmaxes."""
    if z1.shape != z2.shape:
        raise ValueError(f"symmetric_kl: z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} differ")
    if z1.shape[0] == 0:
        return _empty(z1) + _empty(z2)
    l1, l2 = F.log_softmax(z1.float(), -1), F.log_softmax(z2.float(), -1)
    return 0.5 * ((l1.exp() - l2.exp()) * (l1 - l2)).sum(-1).mean()


def loss_terms(out: Outputs, eps: float = 0.1, *, fused: bool = False) -> Dict[str, Tensor]:
    """Unweighted terms for whatever ``out`` holds (a janus, cmlm or ar forward).

    fused: compute the CE and KL terms with janus_kernels' fused ops (one pass over each
    logit row, per-row statistics saved instead of softmaxes) instead of plain torch."""
    if fused:
        from janus_kernels import losses as jl

        def ce(z, y, e):
            return jl.cross_entropy(z, y, label_smoothing=e)
        kl = jl.symmetric_kl
    else:
        ce, kl = label_smoothed_ce, symmetric_kl
    t: Dict[str, Tensor] = {}
    if out.weight is not None:
        raise ValueError("loss_terms needs logits; these outputs hold states (ExecOptions.loss "
                         "'fused_linear', which compute_loss handles): use loss 'fused' or "
                         "'eager' with a terms_fn")
    if fused and out.aux_logits is not None and out.ar_logits is not None:
        # the whole JANUS row criterion in one fused op: each logit row read once per pass
        _, jt = jl.janus_loss(out.ar_logits, out.nar_logits, out.aux_logits, out.ar_target,
                              out.masked_target, out.kl_ar_rows, label_smoothing=eps)
        t.update(ar=jt["ar_ce"], nar=jt["nar_ce"], aux=jt["aux_ce"],
                 kl_ar_aux=jt["kl_ar_aux"], kl_nar_aux=jt["kl_nar_aux"],
                 kl_ar_nar=jt["kl_ar_nar"])
        if out.length_logits is not None:
            t["length"] = F.cross_entropy(out.length_logits.float(), out.length_target)
        return t
    if out.ar_logits is not None:
        t["ar"] = ce(out.ar_logits, out.ar_target, eps)
    if out.nar_logits is not None:
        t["nar"] = ce(out.nar_logits, out.masked_target, eps)
    if out.aux_logits is not None:
        t["aux"] = ce(out.aux_logits, out.masked_target, eps)
        t["kl_ar_aux"] = kl(out.kl_ar_logits, out.aux_logits)
        t["kl_nar_aux"] = kl(out.nar_logits, out.aux_logits)
        t["kl_ar_nar"] = kl(out.kl_ar_logits, out.nar_logits)
    if out.length_logits is not None:
        t["length"] = F.cross_entropy(out.length_logits.float(), out.length_target)
    return t


def _fused_linear_loss(out: Outputs, weights: LossWeights) -> Tuple[Tensor, Dict[str, Tensor]]:
    """(total, terms) from the output rows' states (``ExecOptions.loss == "fused_linear"``):
    the tied projection is applied inside janus_kernels' fused-linear losses, chunk by chunk.
    Those compute their gradients in the forward for the weighted total, so only the total is
    differentiable here; the terms are detached values (for logging)."""
    from janus_kernels import losses as jl
    eps = weights.label_smoothing
    if out.aux_states is not None:
        jw = jl.JanusLossWeights(weights.ar, weights.nar, weights.aux, weights.kl_ar_nar,
                                 weights.kl_ar_aux, weights.kl_nar_aux, weights.length)
        total, jt = jl.fused_linear_janus_loss(
            out.ar_states, out.nar_states, out.aux_states, out.weight, out.ar_target,
            out.masked_target, out.kl_ar_rows, weights=jw, label_smoothing=eps,
            length_logits=out.length_logits, length_targets=out.length_target)
        names = dict(ar_ce="ar", nar_ce="nar", aux_ce="aux", kl_ar_nar="kl_ar_nar",
                     kl_ar_aux="kl_ar_aux", kl_nar_aux="kl_nar_aux", length="length")
        return total, {names[k]: v.detach() for k, v in jt.items()}
    t: Dict[str, Tensor] = {}
    if out.ar_states is not None:
        t["ar"] = jl.fused_linear_cross_entropy(out.ar_states, out.weight, out.ar_target,
                                                label_smoothing=eps)
    if out.nar_states is not None:
        t["nar"] = jl.fused_linear_cross_entropy(out.nar_states, out.weight,
                                                 out.masked_target, label_smoothing=eps)
    if out.length_logits is not None:
        t["length"] = F.cross_entropy(out.length_logits.float(), out.length_target)
    return combine(t, weights), t


def fused_loss_terms(out: Outputs, eps: float = 0.1) -> Dict[str, Tensor]:
    """``loss_terms`` through the fused janus_kernels loss ops."""
    return loss_terms(out, eps, fused=True)


def combine(terms: Dict[str, Tensor], weights: LossWeights) -> Tensor:
    """Weighted sum of the terms present (terms with weight 0 are skipped)."""
    total: Optional[Tensor] = None
    for name, value in terms.items():
        w = getattr(weights, name)
        if w:
            total = w * value if total is None else total + w * value
    if total is None:
        raise ValueError("combine: no term with a nonzero weight")
    return total


def compute_loss(model: JanusTransformer, src: Tensor, batch: JanusBatch, mode: str = "janus",
                 weights: Optional[LossWeights] = None, opts: Optional[ExecOptions] = None,
                 terms_fn: Optional[Callable[[Outputs, float], Dict[str, Tensor]]] = None
                 ) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Forward + loss for ``mode`` in {"janus", "cmlm", "ar"}: returns (total, terms).

    janus: the released weights (or ``weights``); cmlm: CE_ε(NAR) + 0.1·length; ar: CE_ε(AR).
    ``terms_fn`` computes the unweighted terms from the logits (default: the fused ops, or
    the plain-torch ``loss_terms`` when ``opts.loss == "eager"``, as in
    ``ExecOptions.authors()``). With ``opts.loss == "fused_linear"`` the forward returns
    states and the fused-linear losses give the total (its terms are detached values).
    """
    weights = weights or LossWeights.for_mode(mode)
    if opts is None:   # the model's own options (through a DDP wrapper too)
        opts = getattr(model, "module", model).exec
    loss_mode = opts.loss
    if terms_fn is not None and loss_mode == "fused_linear":
        raise ValueError("compute_loss: a terms_fn reads logits; ExecOptions.loss "
                         "'fused_linear' never materializes them (use 'fused' or 'eager')")
    if terms_fn is None:
        terms_fn = loss_terms if loss_mode == "eager" else fused_loss_terms
    out = model(src, batch, mode, opts)
    if loss_mode == "fused_linear":
        return _fused_linear_loss(out, weights)
    terms = terms_fn(out, weights.label_smoothing)
    return combine(terms, weights), terms
