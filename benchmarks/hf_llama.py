"""Hugging Face benchmark: one training step's forward + backward of a Llama-style model from
transformers with ``attn_implementation`` "janus" (janus_kernels.integrations.transformers),
"sdpa" and "eager", same weights, same padded batch.

Model (default setup "standard"): 4 layers, D = 512, 8 heads of 64 (``--kv-heads`` for
grouped-query attention, default 8 = multi-head), SwiGLU FFN 1408, vocabulary 8192, fp32;
batch B = 8 of length L = 512 with real lengths uniform in [L/2, L] (``--padding`` right or
left). The step is ``model(input_ids, attention_mask, labels).loss.backward()`` (CE over the
real tokens, gradients set to None before each call). The contenders are timed interleaved
(benchmarks/common.py) after a check that their losses agree and that janus ran on the
kernel (no fallback warning).

    python -m benchmarks.hf_llama [--setup quick|standard] [--timing quick|standard|full]
                                  [--padding right|left] [--kv-heads N] [--json PATH]

``--quick`` (= ``--setup quick --timing quick``) is a seconds-long smoke run on a tiny model.
Skipped with a "not available" line when transformers is not installed.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch

from .common import (Settings, error_line, markdown_table, optional_import, peak_memory_mb,
                     time_interleaved, write_json)

IMPLS = ("janus", "sdpa", "eager")


@dataclasses.dataclass(frozen=True)
class Setup:
    layers: int
    dim: int
    heads: int
    ffn: int
    vocab: int
    B: int
    L: int


SETUPS = {
    "quick": Setup(layers=2, dim=64, heads=4, ffn=128, vocab=256, B=2, L=64),
    "standard": Setup(layers=4, dim=512, heads=8, ffn=1408, vocab=8192, B=8, L=512),
}


def make_batch(s: Setup, padding: str, seed: int) -> Dict[str, torch.Tensor]:
    """Random tokens, real lengths uniform in [L/2, L], padded on ``padding``'s side; labels
    are the tokens at real positions, -100 at padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(s.L // 2, s.L + 1, (s.B,), generator=g)
    pos = torch.arange(s.L)[None, :]
    real = pos < lengths[:, None] if padding == "right" else pos >= s.L - lengths[:, None]
    ids = torch.randint(1, s.vocab, (s.B, s.L), generator=g) * real
    labels = torch.where(real, ids, torch.full_like(ids, -100))
    return dict(input_ids=ids, attention_mask=real.long(), labels=labels)


def build_models(transformers, s: Setup, kv_heads: Optional[int], seed: int, device: str):
    cfg = transformers.LlamaConfig(hidden_size=s.dim, intermediate_size=s.ffn,
                                   num_hidden_layers=s.layers, num_attention_heads=s.heads,
                                   num_key_value_heads=kv_heads or s.heads,
                                   vocab_size=s.vocab, max_position_embeddings=s.L)
    models = {}
    state = None
    for impl in IMPLS:
        torch.manual_seed(seed)
        # a config per model: from_config records the implementation in the config object
        m = transformers.LlamaForCausalLM._from_config(copy.deepcopy(cfg),
                                                       attn_implementation=impl)
        assert m.config._attn_implementation == impl
        if state is None:
            state = m.state_dict()
        m.load_state_dict(state)
        models[impl] = m.to(device).train()
    return models


def step_fn(model, batch):
    def step():
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        return loss
    return step


def run(settings: Settings, setup: str = "standard", padding: str = "right",
        kv_heads: Optional[int] = None) -> Dict[str, Any]:
    transformers, why = optional_import("transformers")
    if transformers is None:
        return {"rows": [], "notes": [f"not available: transformers ({why})"]}
    from janus_kernels.integrations import transformers as jk_hf
    jk_hf.register()
    s = SETUPS[setup]
    device = settings.device
    batch = {k: v.to(device) for k, v in make_batch(s, padding, settings.seed).items()}
    models = build_models(transformers, s, kv_heads, settings.seed, device)
    fns = {impl: step_fn(models[impl], batch) for impl in IMPLS}
    rows: Dict[str, Dict[str, Any]] = {
        impl: {"impl": impl, "status": "ok"} for impl in IMPLS}
    with warnings.catch_warnings():
        warnings.simplefilter("error", jk_hf.JanusFallbackWarning)   # janus must not fall back
        losses = {}
        for impl, fn in list(fns.items()):
            try:
                losses[impl] = float(fn().detach())
            except Exception as e:  # noqa: BLE001 - a failing contender is a table entry
                rows[impl].update(status="failed", note=f"failed: {error_line(e)}")
                del fns[impl]
        timings = time_interleaved(fns, settings)
    for impl, t in timings.items():
        rows[impl].update(t.as_dict(), loss=losses[impl])
        try:
            rows[impl]["peak_mb"] = peak_memory_mb(fns[impl], device)
        except Exception:  # noqa: BLE001 - the timing stands without the memory
            rows[impl]["peak_mb"] = None
    for base in ("sdpa", "eager"):
        if "ms" in rows[base]:
            for r in rows.values():
                if "ms" in r:
                    r[f"x_{base}"] = rows[base]["ms"] / r["ms"]     # > 1: faster than base
    ref = losses.get("sdpa")
    notes = [f"Llama {s.layers} layers, D={s.dim}, {s.heads} heads / {kv_heads or s.heads} "
             f"kv heads, FFN {s.ffn}, vocab {s.vocab}; B={s.B}, L={s.L}, {padding} padding "
             f"(lengths uniform in [{s.L // 2}, {s.L}]); fp32 fwd+bwd on {device}, "
             f"{torch.get_num_threads()} threads"]
    if ref is not None:
        notes.append("loss - sdpa loss: " + ", ".join(
            f"{k} {v - ref:+.2e}" for k, v in losses.items()))
    return {"rows": [rows[i] for i in IMPLS], "notes": notes}


COLUMNS = [("impl", "attn_implementation"), ("ms", "fwd+bwd ms"), ("ms_min", "min"),
           ("ms_max", "max"), ("x_sdpa", "speed-up vs sdpa"), ("x_eager", "speed-up vs eager"),
           ("peak_mb", "peak MB"), ("cpu_util", "cpu util"), ("note", "note")]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.hf_llama", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, quick timing (smoke)")
    ap.add_argument("--setup", default="standard", choices=sorted(SETUPS))
    ap.add_argument("--timing", default="standard", choices=("quick", "standard", "full"))
    ap.add_argument("--padding", default="right", choices=("right", "left"))
    ap.add_argument("--kv-heads", type=int, default=None,
                    help="key/value heads (grouped-query attention); default: the heads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    setup, timing = ("quick", "quick") if args.quick else (args.setup, args.timing)
    # no per-call time-box: every contender is a whole model step (seconds each), all timed
    settings = Settings.for_mode(timing, device=args.device, threads=args.threads,
                                 seed=args.seed, call_budget_s=0.0)
    settings.apply()
    res = run(settings, setup, args.padding, args.kv_heads)
    print("\n".join(f"* {n}" for n in res["notes"]))
    rows: List[Dict[str, Any]] = res["rows"]
    if rows:
        print(markdown_table(rows, COLUMNS, {"impl": str, "note": lambda x: x or ""}))
    if args.json:
        write_json(args.json, res)
    return 1 if any(r.get("status") == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
