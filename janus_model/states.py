"""What the model's passes return: the encoder's states (``Encoded``), a decoder pass's final
states (``DecoderStates``) and the rows the losses read (``Outputs``). Re-exported by
``janus_model.model``."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .layers import gather_rows
from .packing import SourceRows

__all__ = ["Encoded", "DecoderStates", "Outputs"]

Tensor = torch.Tensor


@dataclasses.dataclass
class Encoded:
    out: Tensor          # (B, S, D)
    lengths: Tensor      # (B,) real source tokens
    rows: Optional[Tensor] = None           # packed encoder: the real rows' states (N, D)
    src_rows: Optional[SourceRows] = None   # ... and where they sit in ``out``


@dataclasses.dataclass
class DecoderStates:
    """Final states of one decoder pass: ``states`` (B, R_h, D) are the rows its last layer
    computed -- the output rows when pruned (``out_rows`` None), else every row, the output
    row ``o`` of sample ``b`` being ``states[b, out_rows[b, o]]``."""

    states: Tensor
    out_rows: Optional[Tensor] = None

    def rows(self, idx: Tensor) -> Tensor:
        """Flat index into ``states.reshape(-1, D)`` of the flat output rows ``idx``."""
        if self.out_rows is None or idx.numel() == 0:
            return idx
        n_out = self.out_rows.shape[1]
        return (idx // n_out) * self.states.shape[1] + self.out_rows.reshape(-1)[idx]

    def output(self) -> Tensor:
        """(B, R_out, D): the output rows' states."""
        return self.states if self.out_rows is None else gather_rows(self.states, self.out_rows)


@dataclasses.dataclass
class Outputs:
    """Logits of exactly the rows the losses read (flat, batch-major), plus targets.

    ar: every real AR query row; kl_ar_rows: the index of the AR row predicting each masked
    token (aligned with nar/aux; ``kl_ar_logits`` gathers them); nar: the M-block content
    rows; aux: the real query rows. With ``ExecOptions.loss == "fused_linear"`` the
    ``*_states`` fields hold those rows' final states instead (the logits fields are None)
    and ``weight`` the tied (vocab, D) projection the loss applies."""

    ar_logits: Optional[Tensor] = None
    ar_states: Optional[Tensor] = None
    nar_states: Optional[Tensor] = None
    aux_states: Optional[Tensor] = None
    weight: Optional[Tensor] = None
    ar_target: Optional[Tensor] = None
    kl_ar_rows: Optional[Tensor] = None
    nar_logits: Optional[Tensor] = None
    aux_logits: Optional[Tensor] = None
    masked_target: Optional[Tensor] = None
    length_logits: Optional[Tensor] = None
    length_target: Optional[Tensor] = None

    @property
    def kl_ar_logits(self) -> Optional[Tensor]:
        """AR logits of the KL rows (a gathered copy; the fused loss reads them in place)."""
        if self.kl_ar_rows is None or self.ar_logits is None:
            return None
        return self.ar_logits.index_select(0, self.kl_ar_rows)
