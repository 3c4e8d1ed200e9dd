"""Training-step benchmark: one optimizer step (zero_grad, forward, loss, backward, Adam) of the
same model on the same batch in each objective and execution mode, via ``janus_model``.

Modes:

    AR                      mode "ar": the AR two-stream pass only, CE_eps
    CMLM                    mode "cmlm": the V|M rows, bidirectional, CE_eps + 0.1 length CE
    CMLM-dense              CMLM with dense attention masks, every row projected, eager loss
    JANUS-fused             mode "janus" with every efficiency switch on: one encoder pass,
                            only the rows a loss reads projected, descriptor attention, and
                            the fused loss ops with the output projection fused in
                            (``ExecOptions(loss="fused_linear")``: no rows x vocab logits)
                            when available
    JANUS-dense-reference   mode "janus" as the authors run it: two encoder passes, every row
                            projected, per-sample dense 3D masks + eager attention, eager loss

AR and CMLM run with the same switches as JANUS-fused (the fused loss, the pruning of the
rows nobody reads and the packing of the live rows included); CMLM-dense runs like the
authors (no pruning, no packing).

The ratios JANUS / CMLM (the paper reports ~4-5x in training time) are given for both JANUS
modes, each against CMLM run with the same execution options, next to the ratio of the step's
matmul FLOPs computed from the shapes (``step_gflop``: linear layers on the rows each mode
actually runs -- padded, or the live rows only when packed; the last decoder layer on the
output rows only when pruned --,
attention on the visible score entries only, projection on the projected rows; backward = 2x
forward). Every row carries both ratios against its CMLM (``vs_cmlm``: time,
``flops_vs_cmlm``: FLOPs), and the ratio table gives the FLOPs the pruning saves per mode.

Ablation: starting from the authors' configuration, the switches are turned on one at a time
(cumulative), and from the fused configuration each one is turned off alone (leave-one-out;
not in --quick).

Model setups: the suite's mode picks one ("quick", "standard", "full"); ``iwslt`` is the
authors' IWSLT14 configuration with fairseq's 4096-token batches. Any setup runs alone with
``python -m benchmarks.train_step --setup iwslt`` (``--flops-only``: the analytic FLOP table
without running the model).

Skipped with a "not available" line when ``janus_model`` (or a part of it) cannot be imported.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .common import (Settings, SuiteResult, error_line, first_call, markdown_table,
                     optional_import, time_rows, write_json)

__all__ = ["ModelSetup", "SETUPS", "StepConfig", "configs", "step_gflop", "run", "main"]


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """Model size and batch per benchmark mode."""

    vocab: int
    dim: int
    heads: int
    ffn: int
    layers: int        # encoder and decoder layers each
    B: int
    Nmax: int          # target and source lengths uniform in [Nmin, Nmax]
    Nmin: Optional[int] = None   # default Nmax // 2

    @property
    def min_len(self) -> int:
        return max(self.Nmax // 2, 1) if self.Nmin is None else self.Nmin

    @classmethod
    def token_batch(cls, max_tokens: int, Nmin: int, Nmax: int, **arch: int) -> "ModelSetup":
        """fairseq ``--max-tokens``: as many sentences as fit ``max_tokens`` padded tokens
        (BOS and EOS counted), lengths bucketed in [Nmin, Nmax] as its length-sorted batches."""
        return cls(B=max_tokens // (Nmax + 2), Nmax=Nmax, Nmin=Nmin, **arch)


_IWSLT_ARCH = dict(vocab=10000, dim=512, heads=4, ffn=1024, layers=6)
SETUPS = {
    "quick": ModelSetup(vocab=256, dim=64, heads=4, ffn=128, layers=1, B=4, Nmax=12),
    "standard": ModelSetup(vocab=10000, dim=256, heads=4, ffn=1024, layers=3, B=32, Nmax=30),
    # the authors' IWSLT14 architecture (transformer_iwslt_de_en) on an IWSLT-like batch
    "full": ModelSetup(B=64, Nmax=30, **_IWSLT_ARCH),
    # ... and on their batch size: --max-tokens 4096 (spec §7.1), sentences of 20-24 tokens
    # (B = 157, the spec §4.2 example's scale)
    "iwslt": ModelSetup.token_batch(4096, 20, 24, **_IWSLT_ARCH),
}


@dataclasses.dataclass(frozen=True)
class StepConfig:
    name: str
    mode: str                    # "janus", "cmlm", "ar"
    encoder_passes: int = 1
    project: str = "used"
    attention: str = "fused"
    fused_loss: bool = False
    prune: bool = False          # the last layer on the output rows only, no dead G row
    pack: bool = False           # the decoder's row-wise work on the live rows only
    group: str = "modes"         # "modes", "ablation (cumulative)", "ablation (leave-one-out)"

    @property
    def loss(self) -> str:
        """The model's ExecOptions.loss: the fused loss ops take the projection in too
        ("fused_linear": no rows x vocab logits) where only the used rows are projected."""
        if not self.fused_loss:
            return "eager"
        return "fused_linear" if self.project == "used" else "fused"

    @property
    def switches(self) -> str:
        return (f"enc={self.encoder_passes} proj={self.project} attn={self.attention} "
                f"loss={self.loss} "
                f"prune={'on' if self.prune else 'off'} pack={'on' if self.pack else 'off'}")


AUTHORS = dict(encoder_passes=2, project="all", attention="dense", fused_loss=False,
               prune=False, pack=False)
FUSED = dict(encoder_passes=1, project="used", attention="fused", fused_loss=True, prune=True,
             pack=True)


def configs(settings: Settings, fused_loss: bool = True) -> List[StepConfig]:
    """The modes, then the ablations. AR, CMLM and JANUS-fused use every efficiency switch
    (fused attention, only the used rows projected, the fused loss ops); CMLM-dense and
    JANUS-dense-reference use none. Without the fused loss (janus_kernels.losses missing) the
    fused configurations run with the eager loss and the "eager loss" ablation is dropped."""
    fused = dict(FUSED, fused_loss=fused_loss)
    out = [
        StepConfig("AR", "ar", fused_loss=fused_loss, prune=True, pack=True),
        StepConfig("CMLM", "cmlm", fused_loss=fused_loss, prune=True, pack=True),
        StepConfig("CMLM-dense", "cmlm", project="all", attention="dense"),
        StepConfig("JANUS-fused", "janus", **fused),
        StepConfig("JANUS-dense-reference", "janus", **AUTHORS),
    ]
    cum = dict(AUTHORS)
    for key, val, label in (("encoder_passes", 1, "+ one encoder pass"),
                            ("project", "used", "+ project used rows only"),
                            ("attention", "fused", "+ fused attention"),
                            ("prune", True, "+ prune unread rows"),
                            ("pack", True, "+ pack live rows")):
        cum[key] = val
        out.append(StepConfig(f"authors {label}", "janus", group="ablation (cumulative)", **cum))
    if settings.mode != "quick":
        for key, val, label in (("encoder_passes", 2, "two encoder passes"),
                                ("project", "all", "project all rows"),
                                ("attention", "dense", "dense attention"),
                                ("fused_loss", False, "eager loss"),
                                ("prune", False, "no pruning"),
                                ("pack", False, "no packing")):
            if key == "fused_loss" and not fused_loss:
                continue
            loo = dict(fused)
            loo[key] = val
            out.append(StepConfig(f"fused, but {label}", "janus",
                                  group="ablation (leave-one-out)", **loo))
    return out


# ================================================================================ data
def _make_batch(setup: ModelSetup, gen: torch.Generator, layout, masking, device: str):
    """Random source/target token batch, right-padded, on ``device``; masked set by the
    model's span masking. Tokens 0..3 are BOS, PAD, EOS, UNK."""
    B, Nmax, V = setup.B, setup.Nmax, setup.vocab
    PAD, BOS, EOS = layout.PAD, layout.BOS, layout.EOS
    n_src = torch.randint(setup.min_len, Nmax + 1, (B,), generator=gen)
    n_tgt = torch.randint(setup.min_len, Nmax + 1, (B,), generator=gen)
    S, W = int(n_src.max()), int(n_tgt.max()) + 2
    src = torch.full((B, S), PAD, dtype=torch.long)
    tgt = torch.full((B, W), PAD, dtype=torch.long)
    for b in range(B):
        src[b, :n_src[b]] = torch.randint(4, V, (int(n_src[b]),), generator=gen)
        n = int(n_tgt[b])
        tgt[b, 0] = BOS
        tgt[b, 1:n + 1] = torch.randint(4, V, (n,), generator=gen)
        tgt[b, n + 1] = EOS
    src, tgt = src.to(device), tgt.to(device)
    masked = masking.span_mask(tgt, generator=gen)
    return src, tgt, layout.build_batch(tgt, masked)


# ======================================================================= FLOP estimate
def step_gflop(setup: ModelSetup, src: torch.Tensor, batch, cfg: StepConfig, pad: int
               ) -> float:
    """Matmul GFLOP of one training step (see the module docstring): forward counted from the
    shapes, backward = 2x forward. The decoder rows, their masks and (pruned) output rows are
    the model's own (``batch.*.decoder_rows()``); visible score entries are counted on the
    materialized masks (small: B x rows x keys booleans)."""
    from janus_model.packing import plan_for   # the batch came from janus_model

    D, Fd, V, Lyr = setup.dim, setup.ffn, setup.vocab, setup.layers
    B, S = src.shape
    s_len = (src != pad).sum(1).double().cpu()
    mm = 0.0                                                  # multiply-adds

    def encoder() -> float:   # packed: the real source rows only (packing.SourceRows)
        rows = float(s_len.sum()) if cfg.pack else B * S
        return (Lyr * rows * (4 * D * D + 2 * D * Fd)       # self-attn projections + FFN
                + Lyr * 2 * D * float((s_len ** 2).sum())     # QK^T + PV, visible entries
                + Lyr * rows * 2 * D * D)                     # decoder's encoder K/V

    def layer(n_rows: float, n_content: float, allowed: torch.Tensor,
              enc_rows: torch.Tensor) -> float:
        return (n_rows * (4 * D * D + 2 * D * Fd)           # q,o self + q,o enc + FFN
                + n_content * 2 * D * D                       # k,v of the content rows
                + 2 * D * float(allowed.sum())                # self attention
                + 2 * D * float((enc_rows * s_len).sum()))    # encoder attention

    def decoder(rows) -> float:
        allowed, out_allowed = rows.mask.materialize(), rows.out_mask.materialize()
        if cfg.pack:   # the live rows (packing.py): computed, and the encoder attention's rows
            plan = plan_for(rows, cfg.prune)   # the model's own plan of these rows
            full = layer(plan.live_flat.numel(), plan.kv_src.numel(), allowed,
                         plan.body.enc_rows.double())
            last = (None if plan.last is None else
                    layer(plan.last.q_flat.numel(), plan.kv_src.numel(), out_allowed,
                          plan.last.enc_rows.double()))
        else:          # every padded row; the encoder attention on the rows that see a key
            full = layer(B * rows.num_rows, B * rows.n_content, allowed,
                         allowed.any(-1).double().sum(1))
            last = (layer(B * rows.num_out, B * rows.n_content, out_allowed,
                          out_allowed.any(-1).double().sum(1)) if cfg.prune else None)
        return Lyr * full if last is None else (Lyr - 1) * full + last

    def projected(n_used: float, computed: int) -> float:
        return n_used if cfg.project == "used" else B * computed

    ar, nar = batch.ar, batch.nar
    n_enc = cfg.encoder_passes if cfg.mode == "janus" else 1
    mm += n_enc * encoder()
    proj_rows = 0.0
    if cfg.mode in ("ar", "janus"):
        rows = ar.decoder_rows()
        mm += decoder(rows)
        proj_rows += projected(float(ar.lengths.sum()), rows.num_out)  # the queries
    if cfg.mode == "janus":
        rows = nar.decoder_rows(drop_dead=cfg.prune)
        mm += decoder(rows)
        proj_rows += projected(2 * float(nar.M.sum()),
                               rows.num_out if cfg.prune else rows.num_rows)
    if cfg.mode == "cmlm":
        rows = nar.cmlm_rows()
        mm += decoder(rows)
        proj_rows += projected(float(nar.M.sum()),
                               rows.num_out if cfg.prune else rows.num_rows)
    mm += proj_rows * D * V
    return 3 * 2 * mm / 1e9


def prune_savings(setup: ModelSetup, src: torch.Tensor, batch, pad: int) -> Dict[str, float]:
    """Per mode, the step FLOPs with pruning / without (fused execution otherwise)."""
    out = {}
    for name, mode in (("AR", "ar"), ("CMLM", "cmlm"), ("JANUS-fused", "janus")):
        on = StepConfig(name, mode, **FUSED)
        off = dataclasses.replace(on, prune=False)
        out[f"{name} pruned / unpruned FLOPs"] = (step_gflop(setup, src, batch, on, pad)
                                                  / step_gflop(setup, src, batch, off, pad))
    return out


# ================================================================================= run
def _loss_fn(cfg: StepConfig, model, src, batch, mods: Dict[str, Any]
             ) -> Callable[[], torch.Tensor]:
    opts = mods["model"].ExecOptions(encoder_passes=cfg.encoder_passes, project=cfg.project,
                                     attention=cfg.attention,
                                     loss=cfg.loss,
                                     prune=cfg.prune, pack=cfg.pack)
    return lambda: mods["objectives"].compute_loss(model, src, batch, cfg.mode, opts=opts)[0]


def _make_step(cfg: StepConfig, model, opt, src, batch, mods: Dict[str, Any]
               ) -> Callable[[], None]:
    loss_fn = _loss_fn(cfg, model, src, batch, mods)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
    return step


def _import_model() -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    mods: Dict[str, Any] = {}
    for key, name in (("model", "janus_model.model"), ("layout", "janus_model.layout"),
                      ("masking", "janus_model.masking"),
                      ("objectives", "janus_model.objectives")):
        mod, why = optional_import(name)
        if mod is None:
            return None, f"{name}: {why}"
        mods[key] = mod
    mods["losses"], mods["losses_why"] = optional_import("janus_kernels.losses")
    return mods, None


def run(settings: Settings, machine: Dict[str, Any],
        log: Callable[[str], None] = print, setup: Optional[str] = None,
        flops_only: bool = False, modes_only: bool = False) -> SuiteResult:
    """The suite on ``SETUPS[setup]`` (default: the one named like the settings' mode).
    flops_only: the configurations' analytic FLOPs only; the model is not run.
    modes_only: the modes without the ablations."""
    name = setup or settings.mode
    if name not in SETUPS:
        raise ValueError(f"setup: expected one of {sorted(SETUPS)}, got {name!r}")
    res = SuiteResult("train_step")
    t_suite = time.perf_counter()
    mods, why = _import_model()
    if mods is None:
        res.skip("train_step (all modes)", f"janus_model not available ({why})")
        log(f"  train_step skipped: janus_model not available ({why})")
        res.seconds = time.perf_counter() - t_suite
        return res
    setup_ = SETUPS[name]
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    dev = settings.device
    src, tgt, batch = _make_batch(setup_, gen, mods["layout"], mods["masking"], dev)
    pad = mods["layout"].PAD
    res.extra["setup"] = dict(dataclasses.asdict(setup_), name=name)
    res.extra["batch"] = {"B": setup_.B, "src_len": src.shape[1],
                          "target_len": tgt.shape[1], "masked_tokens": int(batch.nar.M.sum()),
                          "target_tokens": int(batch.ar.lengths.sum())}
    if mods["losses"] is None:
        res.skip("fused loss (janus_kernels.losses)",
                 f"not available ({mods['losses_why']}); JANUS-fused runs with the eager loss")
    cfgs = configs(settings, fused_loss=mods["losses"] is not None)
    if modes_only:
        cfgs = [c for c in cfgs if c.group == "modes"]
    for cfg in cfgs:
        row: Dict[str, Any] = {"config": cfg.name, "group": cfg.group, "mode": cfg.mode,
                               "switches": cfg.switches,
                               "status": "not run" if flops_only else "ok"}
        res.rows.append(row)
        try:
            row["step_gflop"] = step_gflop(setup_, src.cpu(), batch, cfg, pad)
        except Exception as e:  # noqa: BLE001
            row["step_gflop"] = None
            res.notes.append(f"FLOP estimate failed for {cfg.name}: {error_line(e)}")
    if not flops_only:
        _measure(res, cfgs, setup_, src, batch, mods, settings, log)
    _ratios(res)
    try:
        res.extra["ratios"].update(prune_savings(setup_, src.cpu(), batch, pad))
    except Exception as e:  # noqa: BLE001
        res.notes.append(f"pruning FLOP savings failed: {error_line(e)}")
    res.notes.append("Model: " + ", ".join(f"{k}={v}" for k, v in res.extra["setup"].items())
                     + "; dropout 0.3 (the authors' IWSLT setting); Adam.")
    res.notes.append("step_gflop: matmul FLOPs from the shapes (linear layers on the rows each "
                     "mode runs: padded, or the live rows only when packed; the last decoder "
                     "layer on the output rows only when pruned, attention on visible "
                     "entries, projected rows; backward = 2x forward); gflops = step_gflop "
                     "/ step time.")
    res.notes.append("loss = the loss in eval mode (no dropout) before timing; it differs "
                     "between modes (different objectives) and must agree within a mode.")
    res.seconds = time.perf_counter() - t_suite
    return res


def _measure(res: SuiteResult, cfgs: List[StepConfig], setup: ModelSetup, src, batch,
             mods: Dict[str, Any], settings: Settings, log: Callable[[str], None]) -> None:
    """Run and time every configuration on one model (fills in the result rows)."""
    dev = settings.device
    if dev == "cpu":   # as janus-train does: freed activations are reused, not remapped
        from janus_model.memory import keep_freed_memory
        res.extra["keep_freed_memory"] = keep_freed_memory()
    m = mods["model"]
    mcfg = m.JanusConfig(vocab_size=setup.vocab, dim=setup.dim, heads=setup.heads,
                         ffn_dim=setup.ffn, encoder_layers=setup.layers,
                         decoder_layers=setup.layers)
    model = m.JanusTransformer(mcfg).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    # 1. the loss of every configuration on the same weights, without dropout: the
    #    configurations of one mode must agree (the switches change the work, not the math)
    model.eval()
    for cfg, row in zip(cfgs, res.rows):
        try:
            with torch.no_grad():
                row["loss"] = float(_loss_fn(cfg, model, src, batch, mods)())
        except Exception as e:  # noqa: BLE001 - a failing configuration is a row
            row.update(status="failed", note=f"failed: {error_line(e)}")
            log(f"  {cfg.name}: failed {row['note']}")
    model.train()
    # 2. one untimed step of each (the first also creates Adam's state, so it comes before
    #    any memory measurement) with its peak memory
    steps: Dict[str, Callable[[], None]] = {}
    for cfg, row in zip(cfgs, res.rows):
        if row["status"] != "ok":
            continue
        try:
            step = _make_step(cfg, model, opt, src, batch, mods)
            if not steps:
                step()
            _, _, row["peak_mb"] = first_call(step, dev, measure_memory=True)
            steps[cfg.name] = step
        except Exception as e:  # noqa: BLE001
            row.update(status="failed", note=f"failed: {error_line(e)}")
            log(f"  {cfg.name}: failed {row['note']}")
    # 3. every configuration timed in the same rounds: load changes hit them alike
    time_rows({r["config"]: r for r in res.rows}, steps, settings)
    for row in res.rows:
        if row["status"] == "ok" and row.get("step_gflop"):
            row["gflops"] = row["step_gflop"] / (row["ms"] / 1e3)
        if row["status"] == "ok":
            log(f"  {row['config']}: {row['ms']:.1f} ms")
    del steps
    gc.collect()


def _ratios(res: SuiteResult) -> None:
    """JANUS / CMLM step-time and FLOP ratios, each JANUS mode against the CMLM that runs
    with the same attention/projection options; per row, both ratios against its CMLM."""
    by = {r["config"]: r for r in res.rows}
    timed = lambda r: r["status"] == "ok" and "ms" in r  # noqa: E731
    ratios: Dict[str, Any] = {}
    for janus, cmlm in (("JANUS-fused", "CMLM"), ("JANUS-dense-reference", "CMLM-dense"),
                        ("JANUS-dense-reference", "CMLM")):
        j, c = by.get(janus), by.get(cmlm)
        if not j or not c:
            continue
        key = f"{janus} / {cmlm}"
        if timed(j) and timed(c):
            ratios[key + " time"] = j["ms"] / c["ms"]
        if j.get("step_gflop") and c.get("step_gflop"):
            ratios[key + " FLOPs"] = j["step_gflop"] / c["step_gflop"]
    for r in res.rows:
        base = by.get("CMLM-dense" if "attn=dense" in r.get("switches", "") else "CMLM")
        if not base:
            continue
        if timed(r) and timed(base):
            r["vs_cmlm"] = r["ms"] / base["ms"]
        if r.get("step_gflop") and base.get("step_gflop"):
            r["flops_vs_cmlm"] = r["step_gflop"] / base["step_gflop"]
    res.extra["ratios"] = ratios


# ================================================================================= CLI
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m benchmarks.train_step [--setup iwslt] [--flops-only] [--json PATH]``: this
    suite alone, on any model setup; prints the table and the ratios."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.train_step",
                                 description=main.__doc__)
    ap.add_argument("--setup", default="iwslt", choices=sorted(SETUPS),
                    help="model and batch (default: iwslt, the authors' IWSLT14 config)")
    ap.add_argument("--timing", default="standard", choices=("quick", "standard", "full"),
                    help="warm-up/repeats as the suite's modes (quick also drops the "
                         "leave-one-out ablation)")
    ap.add_argument("--flops-only", action="store_true",
                    help="only the analytic FLOPs and ratios; do not run the model")
    ap.add_argument("--rounds", type=int, default=None,
                    help="time every configuration this many times, in interleaved rounds "
                         "(medians; no time budget, no time-boxing). The timing modes stop "
                         "after one call of a multi-second step, which moves by ~10%%")
    ap.add_argument("--modes-only", action="store_true",
                    help="only the modes (AR, CMLM, CMLM-dense, JANUS-fused, "
                         "JANUS-dense-reference), no ablations")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.rounds is not None and args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    rounds = {} if args.rounds is None else dict(repeats=args.rounds, min_repeats=args.rounds,
                                                 budget_s=1e9, call_budget_s=0.0)
    settings = Settings.for_mode(args.timing, device=device, threads=args.threads,
                                 seed=args.seed, **rounds)
    settings.apply()
    res = run(settings, {}, setup=args.setup, flops_only=args.flops_only,
              modes_only=args.modes_only)
    cols = [("config", "configuration"), ("switches", "switches"), ("loss", "loss (eval)"),
            ("ms", "step ms"), ("vs_cmlm", "time x CMLM"), ("step_gflop", "step GFLOP"),
            ("flops_vs_cmlm", "FLOPs x CMLM"), ("peak_mb", "peak MB")]
    print("\n".join(f"* {n}" for n in res.notes + res.skipped))
    print(markdown_table(res.rows, cols, {"config": str, "switches": str}))
    print(markdown_table([{"k": k, "v": v} for k, v in res.extra.get("ratios", {}).items()],
                         [("k", "ratio"), ("v", "value")], {"k": str}))
    if args.json:
        write_json(args.json, res.as_dict())
    return 1 if any(r["status"] == "failed" for r in res.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
