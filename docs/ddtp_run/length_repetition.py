"""The analysis behind docs/ddtp_results.md, "NAR length and repetition" and the AR
copy rate of the ablation table.

    python docs/ddtp_run/length_repetition.py --data janus_model/data/ddtp_small --split valid \\
        --nar janus=runs/abl/janus/checkpoint_last.pt cmlm=runs/abl/cmlm/checkpoint_last.pt \\
        --ar ar=runs/abl/ar/checkpoint_last.pt janus=runs/abl/janus/checkpoint_last.pt

--nar models: the length head's prediction (argmax, as mask-predict's centre candidate) against
the reference length in subword tokens, then mask-predict (length beam 1) once with the
predicted length and once with the reference length forced, and the repetition rate
(consecutive identical subword tokens / tokens, janus_model.generate.repetition_ratio) and
sacreBLEU of each. If the NAR decoder repeats because it is asked for too many tokens, the
repetition drops with the reference length; if not, it is the model's.

--ar models: repetition rate (the "copy the previous token" rate) and BLEU of greedy AR
decoding.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Dict, Iterator, List, Sequence

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from janus_model.data import pad_sequences, read_parallel  # noqa: E402
from janus_model.decode import mask_predict  # noqa: E402
from janus_model.generate import bleu, load_model, repetition_ratio, translate  # noqa: E402
from janus_model.layout import BOS, EOS, PAD  # noqa: E402

_SPECIAL = (BOS, PAD, EOS)


@contextlib.contextmanager
def forced_length(model, lengths: torch.Tensor) -> Iterator[None]:
    """Make the length head predict ``lengths`` (L, BOS/EOS included) for the next batch:
    mask_predict has no length argument, and its length candidates come from
    ``model.length_logits``; an instance attribute shadows the method for the duration."""
    def logits(enc):
        out = torch.full((lengths.shape[0], model.cfg.length_classes), -1e9)
        return out.scatter(1, lengths[:, None], 0.0)
    model.length_logits = logits
    try:
        yield
    finally:
        del model.length_logits


def nar_analysis(model, vocab, src: Sequence[str], ref: Sequence[str], iterations: int,
                 batch: int = 64) -> Dict[str, float]:
    cap = model.cfg.max_positions - 2
    s_ids = [i[:cap] for i in vocab.encode_batch(list(src))]
    r_len = torch.tensor([min(len(i), cap) for i in vocab.encode_batch(list(ref))])
    pred: List[int] = []
    hyps: Dict[str, List[List[int]]] = {"predicted": [], "reference": []}
    with torch.no_grad():
        for s in range(0, len(s_ids), batch):
            x = pad_sequences(s_ids[s:s + batch])
            L_hat = model.length_logits(model.encode(x)).argmax(-1).clamp(  # as mask_predict
                min=2, max=model.cfg.max_positions)
            pred += (L_hat - 2).tolist()
            for key, L in (("predicted", None), ("reference", r_len[s:s + batch] + 2)):
                ctx = forced_length(model, L) if L is not None else contextlib.nullcontext()
                with ctx:
                    r = mask_predict(model, x, iterations=iterations, length_beam=1)
                for t, n in zip(r.tokens.tolist(), r.lengths.tolist()):
                    hyps[key].append([i for i in t[:n] if i not in _SPECIAL])
    p = torch.tensor(pred, dtype=torch.float)
    r = r_len.float()
    out = {"ref_len_mean": float(r.mean()), "pred_len_mean": float(p.mean()),
           "len_abs_err": float((p - r).abs().mean()), "len_exact": float((p == r).float().mean()),
           "len_too_long": float((p > r).float().mean()),
           "len_too_short": float((p < r).float().mean())}
    for key, h in hyps.items():
        out[f"rep_{key}"] = repetition_ratio(h)
        out[f"bleu_{key}"] = bleu([vocab.decode(t) for t in h], ref)
    return out


def ar_analysis(model, vocab, src: Sequence[str], ref: Sequence[str]) -> Dict[str, float]:
    tr = translate(model, vocab, src, decoder="ar", beam=1)
    return {"rep_ar_greedy": repetition_ratio(tr.tokens), "bleu_ar_greedy": bleu(tr.hyps, ref)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--nar", nargs="*", default=[], metavar="NAME=CHECKPOINT")
    ap.add_argument("--ar", nargs="*", default=[], metavar="NAME=CHECKPOINT")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    text = read_parallel(args.data, args.split, "de", "en")
    res: Dict[str, Dict] = {"nar": {}, "ar": {}}
    for kind, items in (("nar", args.nar), ("ar", args.ar)):
        for item in items:
            name, _, path = item.partition("=")
            if not path:
                ap.error(f"--{kind}: expected NAME=CHECKPOINT, got {item!r}")
            model, vocab, _ = load_model(path)
            res[kind][name] = (nar_analysis(model, vocab, text.src, text.tgt, args.iterations)
                               if kind == "nar" else ar_analysis(model, vocab, text.src,
                                                                 text.tgt))
            print(kind, name, json.dumps({k: round(v, 4) for k, v in res[kind][name].items()}),
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
