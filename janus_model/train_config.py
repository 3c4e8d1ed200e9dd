"""The trainer's configuration (:class:`TrainConfig`): every setting of a run, checked when
it is built, and the loss weights it selects.

Loss weights: a preset (``weights``: "released" = the authors' code, CE 1 / 0.5 / 0.5 and
symmetric KL 1 / 3 / 1 (AR-NAR / AR-AUX / NAR-AUX), length 0.1; "paper" = Eq. 5, unit CEs and
the four one-way KLs, i.e. symmetric KL 0 / 2 / 2), then one override per term, ``w_<term>``,
named after :class:`janus_kernels.losses.JanusLossWeights`' fields (:data:`LOSS_TERMS`). The
paper's ablations (Table 6) are weight settings: see ``docs/ablations.md``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Tuple

from .model import LOSS_MODES, MODES, JanusConfig
from .objectives import LossWeights

__all__ = ["TrainConfig", "LOSS_TERMS", "MODE_TERMS", "WEIGHT_PRESETS", "ARCH_FIELDS"]

ARCH_FIELDS = ("dim", "heads", "ffn_dim", "encoder_layers", "decoder_layers", "dropout",
               "attention_dropout", "activation_dropout", "pre_ln", "max_positions")

#: Loss terms: name (a field of janus_kernels.losses.JanusLossWeights; the config field is
#: ``w_<name>``, the flag ``--w-<name>``) -> the objectives.LossWeights field, which is also
#: the term's key in log.jsonl and in the trainer's step records.
LOSS_TERMS: Dict[str, str] = {"ar_ce": "ar", "nar_ce": "nar", "aux_ce": "aux",
                              "kl_ar_nar": "kl_ar_nar", "kl_ar_aux": "kl_ar_aux",
                              "kl_nar_aux": "kl_nar_aux", "length": "length"}
#: The terms each training mode computes (the authors' janus_loss / cmlm_loss / ar_loss).
MODE_TERMS: Dict[str, Tuple[str, ...]] = {"janus": tuple(LOSS_TERMS),
                                          "cmlm": ("nar_ce", "length"), "ar": ("ar_ce",)}
WEIGHT_PRESETS = ("released", "paper")

# Range checks of TrainConfig: field -> (lowest allowed, exclusive?); upper bounds below.
_LOWER_BOUNDS: Dict[str, Tuple[float, bool]] = {
    **{f: (1, False) for f in ("dim", "heads", "ffn_dim", "encoder_layers", "decoder_layers",
                               "warmup_updates", "update_freq", "valid_beam",
                               "valid_length_beam")},
    **{f: (0, False) for f in ("max_updates", "max_epochs", "max_minutes", "log_every",
                               "valid_every", "save_every", "keep_last", "valid_bleu_sentences",
                               "valid_iterations", "threads", "warmup_init_lr", "weight_decay",
                               "clip_norm", "dropout", "attention_dropout",
                               "activation_dropout", "label_smoothing")},
    "lr": (0, True), "adam_eps": (0, True), "vocab_size": (8, False),
    "max_positions": (3, False), "max_tokens": (8, False)}
_BELOW_ONE = ("dropout", "attention_dropout", "activation_dropout", "label_smoothing")


def _check_number(name: str, v, lowest: float, exclusive: bool, integer: bool) -> None:
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not math.isfinite(v) or v < lowest or \
            (exclusive and v == lowest):
        what = "an integer" if integer else "a finite number"
        raise ValueError(f"{name}: expected {what} {'>' if exclusive else '>='} {lowest}, "
                         f"got {v!r}")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Architecture defaults: the authors' IWSLT14 model
    (spec §7.1), except ``max_positions`` (256: longer pairs are dropped)."""

    data: str                                   # directory with {split}.{lang} files
    out: str                                    # checkpoints, vocabulary, log
    src_lang: str = "de"
    tgt_lang: str = "en"
    mode: str = "janus"                         # janus | cmlm | ar
    # vocabulary
    vocab_size: int = 8000
    spm_model: Optional[str] = None             # an existing sentencepiece model instead
    empty_lines: str = "skip"                   # skip | error
    # architecture
    dim: int = 512
    heads: int = 4
    ffn_dim: int = 1024
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.3
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    pre_ln: bool = False
    max_positions: int = 256
    # optimisation
    lr: float = 5e-4
    warmup_updates: int = 10000
    warmup_init_lr: float = 1e-7
    adam_betas: Tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-8
    weight_decay: float = 1e-4
    clip_norm: float = 0.0                      # 0: no clipping (the authors' setting)
    label_smoothing: float = 0.1
    max_tokens: int = 4096                      # padded tokens per micro-batch and rank
    update_freq: int = 1                        # gradient accumulation
    max_updates: int = 0                        # 0: unlimited
    max_epochs: int = 0                         # 0: unlimited
    max_minutes: float = 0.0                    # wall-clock budget of this invocation; 0: none
    bf16: bool = False
    seed: int = 1
    # evaluation, checkpoints, logging
    log_every: int = 50
    valid_every: int = 1000                     # updates; 0: only at the end
    save_every: int = 1000                      # updates; 0: only at the end
    keep_last: int = 5
    valid_bleu_sentences: int = 200             # 0: no BLEU during training
    valid_beam: int = 1                         # AR beam during validation (1 = greedy)
    valid_iterations: int = 4                   # mask-predict T during validation
    valid_length_beam: int = 3
    progress: bool = True
    threads: int = 0                            # torch intra-op threads; 0: default
    device: str = "auto"                        # auto | cpu | cuda
    backend: Optional[str] = None               # janus_kernels attention backend
    # fused_linear (janus_kernels loss ops with the output projection fused in) | fused (the
    # loss ops on materialized logits) | eager (plain torch)
    loss: str = "fused_linear"
    # loss weights (ablations): a preset, then per-term overrides (None: the preset's)
    weights: str = "released"                   # released (authors' code) | paper (Eq. 5)
    w_ar_ce: Optional[float] = None
    w_nar_ce: Optional[float] = None
    w_aux_ce: Optional[float] = None
    w_kl_ar_nar: Optional[float] = None
    w_kl_ar_aux: Optional[float] = None
    w_kl_nar_aux: Optional[float] = None
    w_length: Optional[float] = None

    def __post_init__(self) -> None:
        for name, choices in (("mode", MODES), ("loss", LOSS_MODES),
                              ("device", ("auto", "cpu", "cuda")),
                              ("empty_lines", ("skip", "error")), ("weights", WEIGHT_PRESETS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got "
                                 f"{getattr(self, name)!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, (lowest, exclusive) in _LOWER_BOUNDS.items():
            _check_number(name, getattr(self, name), lowest, exclusive,
                          integer=isinstance(defaults[name], int))
        for name in _BELOW_ONE:
            if getattr(self, name) >= 1:
                raise ValueError(f"{name}: expected a probability < 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"heads: dim {self.dim} is not divisible by {self.heads} heads")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas: expected two numbers in [0, 1), got "
                             f"{self.adam_betas!r}")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        self._check_weights()

    def _check_weights(self) -> None:
        for term in LOSS_TERMS:
            v = getattr(self, f"w_{term}")
            if v is None:
                continue
            _check_number(f"w_{term}", v, 0, False, integer=False)
            if term not in MODE_TERMS[self.mode]:
                raise ValueError(f"w_{term}: mode {self.mode!r} has no {term} term (its terms: "
                                 f"{', '.join(MODE_TERMS[self.mode])})")
        w = self.loss_weights()
        if not any(getattr(w, LOSS_TERMS[t]) for t in MODE_TERMS[self.mode]):
            raise ValueError(f"loss weights: every term of mode {self.mode!r} has weight 0 "
                             f"({', '.join(MODE_TERMS[self.mode])}); nothing would be trained")

    def check_stop_condition(self) -> None:
        """Training needs an end: max_updates, max_epochs or max_minutes (a ValueError)."""
        if not (self.max_updates or self.max_epochs or self.max_minutes):
            raise ValueError("train: set max_updates, max_epochs or max_minutes (all are 0, "
                             "which means no limit)")

    def loss_weights(self) -> LossWeights:
        """The ``weights`` preset for this mode ("released": the authors' janus_loss /
        cmlm_loss / ar_loss; "paper": Eq. 5 for janus), then the ``w_<term>`` overrides."""
        base = LossWeights.paper() if self.weights == "paper" and self.mode == "janus" \
            else LossWeights.for_mode(self.mode)
        over = {LOSS_TERMS[t]: float(getattr(self, f"w_{t}")) for t in LOSS_TERMS
                if getattr(self, f"w_{t}") is not None}
        return dataclasses.replace(base, label_smoothing=self.label_smoothing, **over)

    def model_config(self, vocab_size: int) -> JanusConfig:
        return JanusConfig(vocab_size=vocab_size,
                           **{f: getattr(self, f) for f in ARCH_FIELDS})
