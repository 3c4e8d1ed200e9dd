"""A compact JANUS Transformer encoder-decoder (spec §1, §5.3, §7.1).

* Shared token embedding for encoder input, decoder input and the tied output projection;
  embeddings scaled by sqrt(D); learned positions (one table per side) with id = index + 2
  and padding_idx = 1; post-LN by default (the authors' IWSLT config), pre-LN optional (with
  final encoder/decoder LayerNorms); BERT init N(0, 0.02).
* Length head (spec §5.3): mean-pool the encoder over non-pad source positions, multiply by a
  (256, D) table -> 256 logits; target L = N + 2 clamped to 255.
* Two-stream decoder: every layer runs ONE self-attention call over the rows
  [content ; query] against the content keys (``janus_kernels.attention`` with the JANUS
  descriptor), then encoder attention and FFN on the same concatenated rows.

Every pass states the role of each of its rows (``layout.DecoderRows``): content rows are the
keys/values, the *output rows* feed the output projection. With ``ExecOptions.prune`` (the
default) the last decoder layer computes only the output rows -- their keys/values still come
from every content row of that layer's input -- and the NAR pass leaves out the dead last G
row of each sample; the losses and gradients are those of the unpruned network (tests).

Modes of :meth:`JanusTransformer.forward`:

* ``janus``: an AR pass (causal two-stream, spec §1.1) and a NAR/AUX pass (reordered V|M|G
  content + M queries, spec §1.2). By default the source is encoded once per step and its
  encoder-attention keys/values are shared by both passes.
* ``cmlm``: NAR only: the U+M content rows (V|M) with a bidirectional key-padding mask; no
  query stream, no G block.
* ``ar``: the AR pass only.

:class:`ExecOptions` switches the efficiency choices one by one so benchmarks can measure
each: ``encoder_passes`` (1 or the authors' 2), ``project`` ("used": only the rows a loss
reads, in one matmul; "all": every content/query row as the authors do), ``attention``
("fused": mask descriptors; "dense": per-sample dense 3D masks from the authors' builder and
the eager reference attention, one call per stream), ``loss`` ("fused": the janus_kernels
loss ops on the logits; "fused_linear": the output projection inside those ops, so the
forward returns the output rows' states and no (rows x vocab) logits are materialized;
"eager": plain torch), ``prune`` (skip the rows nobody reads, above; the authors compute every
row), ``pack`` (the encoder's and decoder's projections, LayerNorms, FFN and dropout on the
live rows only, packed; attention scatters them into its padded layout:
``janus_model.packing``; a live-row count is data-dependent, so under torch.compile the
padded rows run unless ``JanusBatch.plan_packing(src=src)`` planned the batch and its
source before).
``ExecOptions.authors()`` is the faithful dense reference of the authors' design.

Sources must be right-padded with PAD (the key-padding descriptors assume real keys first).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import janus_kernels as jk
from janus_kernels.reference import authors_janus_masks

from .layers import (KV, AttnCore, DecoderLayer, EncoderLayer, decoder_layer_packed,
                     encoder_layer_packed, dense_core,
                     dropout, fused_core, gather_rows)
from .layout import PAD, ARLayout, DecoderRows, JanusBatch, NARLayout, positions_for
from .packing import LayerRows, PackedPass, SourceRows, plan_for, scatter_rows, source_rows
from .states import DecoderStates, Encoded, Outputs

__all__ = ["JanusConfig", "ExecOptions", "Encoded", "DecoderStates", "Outputs",
           "JanusTransformer"]

Tensor = torch.Tensor
MODES = ("janus", "cmlm", "ar")


@dataclasses.dataclass
class JanusConfig:
    """Architecture. Defaults: the authors' ``janus_transformer_iwslt_de_en`` (spec §7.1)."""

    vocab_size: int
    dim: int = 512
    heads: int = 4
    ffn_dim: int = 1024
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.3
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    pre_ln: bool = False
    max_positions: int = 1024
    length_classes: int = 256
    init_std: float = 0.02
    scale_embedding: bool = True

    def __post_init__(self) -> None:
        if self.vocab_size < 4:
            raise ValueError(f"vocab_size: need at least the 4 special tokens, got "
                             f"{self.vocab_size}")
        if self.dim % self.heads:
            raise ValueError(f"heads: dim {self.dim} is not divisible by {self.heads}")


LOSS_MODES = ("fused", "fused_linear", "eager")


@dataclasses.dataclass(frozen=True)
class ExecOptions:
    """How a forward is executed (the math is the same; see the module docstring)."""

    encoder_passes: int = 1
    project: str = "used"
    attention: str = "fused"
    backend: Optional[str] = None      # janus_kernels attention backend (None: automatic)
    # "fused": janus_kernels loss ops on logits; "fused_linear": the same with the output
    # projection fused in (Outputs then hold states, not logits); "eager": plain torch
    loss: str = "fused"
    prune: bool = True                 # skip the rows whose outputs nobody reads
    pack: bool = True                  # row-wise work on the live rows only (packing.py)

    def __post_init__(self) -> None:
        if self.encoder_passes not in (1, 2):
            raise ValueError(f"encoder_passes: expected 1 or 2, got {self.encoder_passes}")
        if self.project not in ("used", "all"):
            raise ValueError(f"project: expected 'used' or 'all', got {self.project!r}")
        if self.attention not in ("fused", "dense"):
            raise ValueError(f"attention: expected 'fused' or 'dense', got {self.attention!r}")
        if self.loss not in LOSS_MODES:
            raise ValueError(f"loss: expected one of {LOSS_MODES}, got {self.loss!r}")
        if self.loss == "fused_linear" and self.project != "used":
            raise ValueError("loss 'fused_linear' projects the used rows inside the loss; it "
                             "needs project='used'")
        for name in ("prune", "pack"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected a bool, got {getattr(self, name)!r}")

    @classmethod
    def authors(cls) -> "ExecOptions":
        """The authors' design: two encoder passes, dense per-sample 3D masks, every row
        computed and projected to the vocabulary, unfused losses."""
        return cls(encoder_passes=2, project="all", attention="dense", loss="eager",
                   prune=False, pack=False)


def _key_padding_allowed(kv_lengths: Tensor, n_rows: int, kv_len: int) -> Tensor:
    j = torch.arange(kv_len, device=kv_lengths.device)
    return (j[None, None, :] < kv_lengths[:, None, None]).expand(-1, n_rows, -1)


def _causal_allowed(lengths: Tensor, T: int) -> Tensor:
    """The authors' AR mask: 2-D causal plus key padding (padding rows see a causal
    prefix, never an empty row)."""
    i = torch.arange(T, device=lengths.device)
    return (i[None, None, :] <= i[None, :, None]) & (i[None, None, :] < lengths[:, None, None])


class JanusTransformer(nn.Module):
    def __init__(self, cfg: JanusConfig, exec_options: Optional[ExecOptions] = None):
        super().__init__()
        self.cfg = cfg
        self.exec = exec_options or ExecOptions()
        D = cfg.dim
        self.embed = nn.Embedding(cfg.vocab_size, D, padding_idx=PAD)
        self.enc_pos = nn.Embedding(cfg.max_positions + 2, D, padding_idx=PAD)
        self.dec_pos = nn.Embedding(cfg.max_positions + 2, D, padding_idx=PAD)
        kw = dict(pre_ln=cfg.pre_ln, dropout=cfg.dropout,
                  activation_dropout=cfg.activation_dropout)
        self.encoder = nn.ModuleList(EncoderLayer(D, cfg.heads, cfg.ffn_dim, **kw)
                                     for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(D, cfg.heads, cfg.ffn_dim, **kw)
                                     for _ in range(cfg.decoder_layers))
        self.enc_ln = nn.LayerNorm(D) if cfg.pre_ln else None
        self.dec_ln = nn.LayerNorm(D) if cfg.pre_ln else None
        self.embed_length = nn.Embedding(cfg.length_classes, D)
        self.embed_scale = math.sqrt(D) if cfg.scale_embedding else 1.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT init (fairseq ``--apply-bert-init``): Linear/Embedding ~ N(0, init_std),
        biases and the padding rows zero, LayerNorms (1, 0)."""
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ pieces
    def _check_positions(self, width: int) -> None:
        if width > self.cfg.max_positions:
            raise ValueError(f"sequence of {width} tokens exceeds max_positions="
                             f"{self.cfg.max_positions}")

    def _embed(self, tokens: Tensor, positions: Tensor, table: nn.Embedding) -> Tensor:
        x = self.embed_scale * self.embed(tokens) + table(positions)
        return dropout(x, self.cfg.dropout, self.training)

    def _attn_p(self) -> float:
        return self.cfg.attention_dropout if self.training else 0.0

    def padding_core(self, kv_lengths: Tensor, n_rows: int, kv_len: int,
                     opts: ExecOptions, q_lengths: Optional[Tensor] = None) -> AttnCore:
        """Key-padding attention core: rows see keys [0, kv_lengths[b]). Fused: rows
        >= q_lengths[b] (if given) output zeros; dense: every row sees the real keys (the
        authors' choice for padding rows; never read either way)."""
        if opts.attention == "fused":
            mask = jk.key_padding_mask(kv_lengths, n_rows, kv_len, q_lengths=q_lengths)
            return fused_core(mask, self._attn_p(), opts.backend)
        return dense_core([(n_rows, _key_padding_allowed(kv_lengths, n_rows, kv_len))],
                          self._attn_p())

    def encode(self, src: Tensor, opts: Optional[ExecOptions] = None,
               plan: Optional[SourceRows] = None) -> Encoded:
        """Encoder over a right-padded source (B, S)."""
        opts = opts or self.exec
        if src.dim() != 2:
            raise ValueError(f"src: expected (B, S) token ids, got shape {tuple(src.shape)}")
        self._check_positions(src.shape[1])
        lengths = (src != PAD).sum(1)
        S = src.shape[1]
        if opts.pack and plan is not None:   # planned before (JanusBatch.plan_packing(src=))
            plan.check(lengths, S)
            return self._encode_packed(src, lengths, opts, plan)
        if opts.pack and not torch.compiler.is_compiling():   # data-dependent row count
            return self._encode_packed(src, lengths, opts, source_rows(lengths, S))
        x = self._embed(src, positions_for(src), self.enc_pos)
        core = self.padding_core(lengths, S, S, opts)
        for layer in self.encoder:
            x = layer(x, core)
        if self.enc_ln is not None:
            x = self.enc_ln(x)
        return Encoded(x, lengths)

    def _encode_packed(self, src: Tensor, lengths: Tensor, opts: ExecOptions,
                       sr: SourceRows) -> Encoded:
        """``encode`` on the real source rows ``sr`` only (``ExecOptions.pack``); ``out`` comes
        back padded, zeros on the padding rows (no key and no loss reads them)."""
        x = self._embed(src.reshape(-1).index_select(0, sr.flat),
                        positions_for(src).reshape(-1).index_select(0, sr.flat), self.enc_pos)
        core = self.padding_core(lengths, sr.S, sr.S, opts, q_lengths=lengths)
        for layer in self.encoder:
            x = encoder_layer_packed(layer, x, core, sr.heads(layer.self_attn.heads), sr.B, sr.S)
        if self.enc_ln is not None:
            x = self.enc_ln(x)
        return Encoded(scatter_rows(x, sr.flat, sr.B, sr.S), lengths, x, sr)

    def length_logits(self, enc: Encoded) -> Tensor:
        """(B, length_classes): mean-pooled encoder states times the length table."""
        S = enc.out.shape[1]
        real = (torch.arange(S, device=enc.out.device)[None, :] < enc.lengths[:, None])
        pooled = (enc.out * real[..., None].to(enc.out.dtype)).sum(1)
        pooled = pooled / enc.lengths.clamp(min=1)[:, None].to(pooled.dtype)
        return F.linear(pooled, self.embed_length.weight)

    def encoder_kv(self, enc: Encoded) -> List[KV]:
        """Per decoder layer, the encoder-attention keys/values: computed once per encoder
        pass and shared by every decoder pass (and every decoding step) that uses it. From a
        packed encoder: projected from the real rows only (zeros on the padding keys)."""
        sr = enc.src_rows
        if enc.rows is None or sr is None:
            return [layer.enc_attn.kv(enc.out) for layer in self.decoder]
        return [layer.enc_attn.kv_rows(enc.rows, sr.heads(layer.enc_attn.heads), sr.B, sr.S)
                for layer in self.decoder]

    def decode_rows(self, tokens: Tensor, positions: Tensor, n_content: int,
                    self_core: AttnCore, enc: Encoded, enc_kv: List[KV],
                    opts: Optional[ExecOptions] = None,
                    caches: Optional[List[Dict[str, Tensor]]] = None,
                    last: Optional[Tuple[Tensor, AttnCore]] = None) -> Tensor:
        """Decoder over rows [content (n_content) ; query] -> final states (B, R, D).

        last: ``(out_rows (B, R_out), core)``: only these rows' final states are wanted, so
        the last layer computes only them (self-attention ``core`` for those rows, keys from
        every content row) -> (B, R_out, D)."""
        opts = opts or self.exec
        x = self._embed(tokens, positions, self.dec_pos)
        S = enc.out.shape[1]
        enc_core = self.padding_core(enc.lengths, tokens.shape[1], S, opts)
        n_layers = len(self.decoder)
        for i, layer in enumerate(self.decoder):
            cache = None if caches is None else caches[i]
            if last is not None and i == n_layers - 1:
                out_rows, last_core = last
                x = layer(x, n_content, last_core, enc_kv[i],
                          self.padding_core(enc.lengths, out_rows.shape[1], S, opts), cache,
                          rows=out_rows)
            else:
                x = layer(x, n_content, self_core, enc_kv[i], enc_core, cache)
        if last is not None and n_layers == 0:
            x = gather_rows(x, last[0])
        if self.dec_ln is not None:
            x = self.dec_ln(x)
        return x

    def run_rows(self, rows: DecoderRows, dense_allowed: Optional[List[Tuple[int, Tensor]]],
                 enc: Encoded, enc_kv: List[KV], opts: ExecOptions) -> DecoderStates:
        """One training pass over ``rows``. ``dense_allowed``: the dense path's per-stream
        [(n_rows, allowed (B, n_rows, n_content) bool)] (None with fused attention).
        Pruned (``opts.prune``): the last layer computes only the output rows."""
        if opts.attention == "fused":
            core = fused_core(rows.mask, self._attn_p(), opts.backend)
        else:
            core = dense_core(dense_allowed, self._attn_p())
        last_core = None
        if opts.prune and opts.attention == "fused":
            last_core = fused_core(rows.out_mask, self._attn_p(), opts.backend)
        elif opts.prune:   # the output rows' rows of the dense masks
            allowed = torch.cat([a for _, a in dense_allowed], 1)
            last_core = dense_core([(rows.num_out, gather_rows(allowed, rows.out_rows))],
                                   self._attn_p())
        # the live rows' count is data-dependent: inside torch.compile only a plan made before
        # (JanusBatch.plan_packing) is used, else the padded rows run
        prune = last_core is not None
        if opts.pack and (prune in rows.packing or not torch.compiler.is_compiling()):
            return self._run_packed(rows, plan_for(rows, prune), core, last_core, enc, enc_kv,
                                    opts)
        args = (rows.tokens, rows.positions, rows.n_content, core, enc, enc_kv, opts)
        if not opts.prune:
            return DecoderStates(self.decode_rows(*args), rows.out_rows)
        return DecoderStates(self.decode_rows(*args, last=(rows.out_rows, last_core)))

    def _run_packed(self, rows: DecoderRows, plan: PackedPass, core: AttnCore,
                    last_core: Optional[AttnCore], enc: Encoded, enc_kv: List[KV],
                    opts: ExecOptions) -> DecoderStates:
        """``run_rows`` on the live rows only (``ExecOptions.pack``, janus_model.packing):
        the final states come back padded, zeros on the padding rows (which no loss reads)."""
        x = self._embed(rows.tokens.reshape(-1).index_select(0, plan.live_flat),
                        rows.positions.reshape(-1).index_select(0, plan.live_flat), self.dec_pos)
        S = enc.out.shape[1]

        def enc_core(lr: LayerRows) -> AttnCore:
            return self.padding_core(enc.lengths, lr.enc_len, S, opts, q_lengths=lr.enc_rows)

        body_enc = enc_core(plan.body)
        n_layers = len(self.decoder)
        for i, layer in enumerate(self.decoder):
            last = plan.last is not None and i == n_layers - 1
            lr = plan.last if last else plan.body
            x = decoder_layer_packed(layer, x, plan.kv_src, plan.kv_heads(self.cfg.heads),
                                     rows.n_content, last_core if last else core, enc_kv[i],
                                     enc_core(lr) if last else body_enc, lr)
        if plan.last is not None and n_layers == 0:
            x = x.index_select(0, plan.last.take)
        if self.dec_ln is not None:
            x = self.dec_ln(x)
        out = plan.final_rows()
        states = scatter_rows(x, out.q_flat, out.B, out.q_len)
        return DecoderStates(states, None if plan.last is not None else rows.out_rows)

    def project(self, h: Tensor) -> Tensor:
        """Tied output projection to vocabulary logits."""
        return F.linear(h, self.embed.weight)

    # ------------------------------------------------------------ the passes
    def ar_pass(self, ar: ARLayout, enc: Encoded, enc_kv: List[KV],
                opts: Optional[ExecOptions] = None) -> Tensor:
        """AR two-stream pass (spec §1.1, §3.1) -> query-stream states (B, T, D)."""
        opts = opts or self.exec
        T = ar.seq_len
        self._check_positions(T + 1)
        dense = None
        if opts.attention == "dense":
            allowed = _causal_allowed(ar.lengths, T)
            dense = [(T, allowed), (T, allowed)]
        return self.run_rows(ar.decoder_rows(), dense, enc, enc_kv, opts).output()

    def nar_pass(self, nar: NARLayout, enc: Encoded, enc_kv: List[KV],
                 opts: Optional[ExecOptions] = None) -> Tuple[DecoderRows, DecoderStates]:
        """NAR/AUX two-stream pass (spec §1.2, §3.2) -> its rows and final states."""
        opts = opts or self.exec
        self._check_positions(nar.cmlm_len)            # max L: the largest index + 1
        rows = nar.decoder_rows(drop_dead=opts.prune)
        dense = None
        if opts.attention == "dense":
            Lc, Lq = rows.n_content, nar.query_len
            cm, qm = authors_janus_masks(nar.U, nar.M, nar.content_len, Lq)  # 1 = blocked
            # pruned: the dead G rows cut off at the padded end are seen by no kept row
            dense = [(Lc, cm[:, :Lc, :Lc] < 0.5)] + ([(Lq, qm[:, :, :Lc] < 0.5)] if Lq else [])
        return rows, self.run_rows(rows, dense, enc, enc_kv, opts)

    def cmlm_pass(self, nar: NARLayout, enc: Encoded, enc_kv: List[KV],
                  opts: Optional[ExecOptions] = None) -> Tuple[DecoderRows, DecoderStates]:
        """CMLM pass: the V|M rows only, bidirectional over each sample's U+M entries."""
        opts = opts or self.exec
        rows = nar.cmlm_rows()
        n = rows.n_content
        dense = None
        if opts.attention == "dense":
            dense = [(n, _key_padding_allowed(nar.U + nar.M, n, n))]
        return rows, self.run_rows(rows, dense, enc, enc_kv, opts)

    # ---------------------------------------------------------------- forward
    def forward(self, src: Tensor, batch: JanusBatch, mode: str = "janus",
                opts: Optional[ExecOptions] = None) -> Outputs:
        """One training forward; returns the logits of the rows the ``mode``'s loss reads."""
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        opts = opts or self.exec
        ar, nar = batch.ar, batch.nar
        enc = self.encode(src, opts, batch.source)
        enc_kv = self.encoder_kv(enc)
        out = Outputs(ar_target=ar.row_target, masked_target=nar.row_target,
                      length_target=batch.target_lengths.clamp(max=self.cfg.length_classes - 1))
        if mode == "ar":
            hq = self.ar_pass(ar, enc, enc_kv, opts)
            self._set_outputs(out, ("ar",), [(DecoderStates(hq), [ar.rows()])], opts)
            return out
        if mode == "cmlm":
            rows, st = self.cmlm_pass(nar, enc, enc_kv, opts)
            self._set_outputs(out, ("nar",), [(st, [rows.reads["nar"]])], opts)
            out.length_logits = self.length_logits(enc)
            return out

        hq_ar = self.ar_pass(ar, enc, enc_kv, opts)
        if opts.encoder_passes == 2:        # the authors re-encode for the NAR forward
            enc = self.encode(src, opts, batch.source)
            enc_kv = self.encoder_kv(enc)
        rows, st = self.nar_pass(nar, enc, enc_kv, opts)
        self._set_outputs(out, ("ar", "nar", "aux"), [
            (DecoderStates(hq_ar), [ar.rows()]),
            (st, [rows.reads["nar"], rows.reads["aux"]])], opts)
        # the KL rows are a subset of the real AR rows: index into the compact AR logits
        ar_off = ar.lengths.cumsum(0) - ar.lengths
        out.kl_ar_rows = ar_off[nar.row_sample] + nar.ar_col
        out.length_logits = self.length_logits(enc)
        return out

    def _set_outputs(self, out: Outputs, names: Tuple[str, ...],
                     parts: List[Tuple[DecoderStates, List[Tensor]]], opts: ExecOptions) -> None:
        """out.<name>_logits of the selected rows, or with loss "fused_linear" their states
        (out.<name>_states) and the projection weight, which the loss applies chunk by
        chunk."""
        if opts.loss == "fused_linear":
            for name, rows in zip(names, self._used_rows(parts)):
                setattr(out, f"{name}_states", rows)
            out.weight = self.embed.weight
            return
        for name, logits in zip(names, self._project_rows(parts, opts)):
            setattr(out, f"{name}_logits", logits)

    def _used_rows(self, parts: List[Tuple[DecoderStates, List[Tensor]]]) -> List[Tensor]:
        """The states of the selected output rows, one (rows, D) tensor per index."""
        D = self.cfg.dim
        return [st.states.reshape(-1, D).index_select(0, st.rows(i))
                for st, idxs in parts for i in idxs]

    def _project_rows(self, parts: List[Tuple[DecoderStates, List[Tensor]]],
                      opts: ExecOptions) -> List[Tensor]:
        """Logits of the selected output rows: for each (states, [flat output-row index,
        ...]) part, one logit tensor per index, in order.

        "used": gather the rows first and project them in ONE matmul; "all": project every
        computed row of every part (the authors' way) and gather afterwards."""
        if opts.project == "all":
            out = []
            for st, idxs in parts:
                logits = self.project(st.states).reshape(-1, self.cfg.vocab_size)
                out += [logits.index_select(0, st.rows(i)) for i in idxs]
            return out
        rows = self._used_rows(parts)
        logits = self.project(torch.cat(rows, 0)) if len(rows) > 1 else self.project(rows[0])
        return list(logits.split([r.shape[0] for r in rows], 0))
