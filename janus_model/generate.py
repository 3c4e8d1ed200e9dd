"""Translation with a trained checkpoint, BLEU, latency, and the paper's analysis tables.

* :func:`translate`: batched AR (greedy / beam) or NAR (mask-predict) decoding of raw
  sentences; sentences are sorted by length into batches and returned in input order.
* :func:`measure_latency`: milliseconds per sentence at batch size 1 (encoder + decoding,
  without tokenisation), after a short warm-up.
* :func:`bleu`: sacreBLEU corpus BLEU on detokenised text (default 13a tokenisation).
* :func:`repetition_ratio`: the share of output tokens equal to the token right before them
  (consecutive repeats, the usual symptom of NAR decoding), over the hypotheses' subword
  tokens (BOS/PAD/EOS that mask-predict may emit inside a hypothesis are removed first,
  as they are from the text).
* :func:`analysis_report` / :func:`format_report` / :func:`plot_report`: the paper's §6.2
  analysis for one checkpoint: BLEU per mask-predict iteration count T (T = 0 is a single
  pass; spec §5.4) next to AR beam search, repetition at T = 1/4/10, and latency at batch
  size 1 of AR beam 5 vs NAR with the speedup factor, plus a BLEU-per-iteration plot
  (the paper's Figure 4: BLEU solid, speed dotted).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .checkpoints import load_checkpoint
from .data import SubwordVocab, pad_sequences
from .decode import ar_beam_search, ar_greedy, mask_predict
from .layout import BOS, EOS, PAD
from .model import ExecOptions, JanusConfig, JanusTransformer

_SPECIAL = frozenset((BOS, PAD, EOS))

__all__ = ["resolve_device", "load_model", "translate", "Translations", "measure_latency",
           "bleu", "repetition_ratio", "analysis_report", "format_report", "plot_report"]


def resolve_device(device: str) -> torch.device:
    """"auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; a CUDA device that this torch
    can not use is a ValueError (not torch's AttributeError / AssertionError later on)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} was requested but torch {torch.__version__} "
                             f"sees no CUDA device (CPU-only build or no GPU); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r}, but only {torch.cuda.device_count()} CUDA "
                             f"device(s) are visible")
    return dev


def load_model(path: str, device: str = "cpu") -> Tuple[JanusTransformer, SubwordVocab, dict]:
    """(model in eval mode, vocabulary, checkpoint dict) from a trainer checkpoint."""
    dev = resolve_device(device)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    ck = load_checkpoint(path)
    if "model" not in ck or "model_config" not in ck or "spm" not in ck:
        raise ValueError(f"checkpoint {path!r}: not a janus_model trainer checkpoint "
                         f"(needs model, model_config and spm entries)")
    model = JanusTransformer(JanusConfig(**ck["model_config"]))
    model.load_state_dict(ck["model"])
    return model.to(dev).eval(), SubwordVocab(ck["spm"], source=f"checkpoint {path!r}"), ck


@dataclasses.dataclass
class Translations:
    hyps: List[str]               # detokenised, in input order
    tokens: List[List[int]]       # subword ids of each hypothesis (no BOS/PAD/EOS)
    seconds: float                # model time (encode + decode), tokenisation excluded

    @property
    def ms_per_sentence(self) -> float:
        return 1e3 * self.seconds / max(len(self.hyps), 1)


def _decode_batch(model: JanusTransformer, src: torch.Tensor, decoder: str, *, beam: int,
                  iterations: int, length_beam: int, max_len_a: float, max_len_b: int,
                  opts: Optional[ExecOptions]) -> List[List[int]]:
    if decoder == "ar":
        if beam == 1:
            r = ar_greedy(model, src, max_len_a=max_len_a, max_len_b=max_len_b, opts=opts)
        else:
            r = ar_beam_search(model, src, beam=beam, max_len_a=max_len_a,
                               max_len_b=max_len_b, opts=opts)
    elif decoder == "nar":
        r = mask_predict(model, src, iterations=iterations, length_beam=length_beam, opts=opts)
    else:
        raise ValueError(f"decoder: expected 'ar' or 'nar', got {decoder!r}")
    toks, lens = r.tokens.cpu().tolist(), r.lengths.cpu().tolist()
    # mask-predict may write BOS/PAD/EOS inside a hypothesis (argmax over the whole
    # vocabulary, as fairseq's CMLM); they are not part of the visible output
    return [[i for i in t[:n] if i not in _SPECIAL] for t, n in zip(toks, lens)]


def _source_ids(model: JanusTransformer, vocab: SubwordVocab,
                sentences: Sequence[str]) -> List[List[int]]:
    """Subword ids, cut to fit the position table (BOS/EOS added later)."""
    cap = model.cfg.max_positions - 2
    return [ids[:cap] for ids in vocab.encode_batch(list(sentences))]


@torch.no_grad()
def translate(model: JanusTransformer, vocab: SubwordVocab, sentences: Sequence[str], *,
              decoder: str = "ar", beam: int = 5, iterations: int = 10, length_beam: int = 3,
              batch_size: int = 64, max_len_a: float = 1.2, max_len_b: int = 10,
              opts: Optional[ExecOptions] = None) -> Translations:
    """Translate ``sentences`` (raw text). AR: beam search (``beam`` > 1) or greedy, output
    length at most ``max_len_a * src_len + max_len_b`` (fairseq's rule; 1.2/10 is the usual
    IWSLT setting, the spec's authors used 0/200). NAR: mask-predict with ``iterations``
    refinement passes after the first and a length beam of ``length_beam``."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    ids = _source_ids(model, vocab, sentences)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: List[List[int]] = [[] for _ in ids]
    dev = next(model.parameters()).device
    seconds = 0.0
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        src = pad_sequences([ids[i] for i in chunk]).to(dev)
        t0 = time.perf_counter()
        hyps = _decode_batch(model, src, decoder, beam=beam, iterations=iterations,
                             length_beam=length_beam, max_len_a=max_len_a,
                             max_len_b=max_len_b, opts=opts)
        seconds += time.perf_counter() - t0
        for i, h in zip(chunk, hyps):
            out[i] = h
    model.train(was_training)
    return Translations([vocab.decode(t) for t in out], out, seconds)


@torch.no_grad()
def measure_latency(model: JanusTransformer, vocab: SubwordVocab, sentences: Sequence[str],
                    *, warmup: int = 2, **decode_kw) -> float:
    """Mean milliseconds per sentence at batch size 1 (after ``warmup`` untimed ones)."""
    if not sentences:
        raise ValueError("measure_latency: no sentences")
    if warmup:
        translate(model, vocab, list(sentences[:warmup]), batch_size=1, **decode_kw)
    return translate(model, vocab, sentences, batch_size=1, **decode_kw).ms_per_sentence


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """sacreBLEU corpus BLEU (13a tokenisation, case-sensitive) of detokenised text."""
    import sacrebleu
    if len(hyps) != len(refs):
        raise ValueError(f"bleu: {len(hyps)} hypotheses but {len(refs)} references")
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def repetition_ratio(token_lists: Sequence[Sequence[int]]) -> float:
    """sum_s #{i >= 1: y_i == y_(i-1)} / sum_s |y| (0 for empty output)."""
    reps = sum(sum(1 for a, b in zip(t[1:], t[:-1]) if a == b) for t in token_lists)
    total = sum(len(t) for t in token_lists)
    return reps / total if total else 0.0


# ------------------------------------------------------------------------ analysis report
def analysis_report(model: JanusTransformer, vocab: SubwordVocab, sources: Sequence[str],
                    refs: Sequence[str], *, mode: str = "janus",
                    bleu_iterations: Sequence[int] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
                    repetition_iterations: Sequence[int] = (1, 4, 10),
                    latency_iterations: Sequence[int] = (0, 1, 4, 10), ar_beam: int = 5,
                    length_beam: int = 3, batch_size: int = 64, latency_sentences: int = 100,
                    max_len_a: float = 1.2, max_len_b: int = 10) -> Dict:
    """The analysis for one model on (sources, refs). ``mode`` is the training mode: "ar"
    models get no NAR rows, "cmlm" models no AR rows (their query stream is untrained)."""
    if len(sources) != len(refs) or not sources:
        raise ValueError(f"analysis_report: {len(sources)} sources, {len(refs)} references")
    do_ar, do_nar = mode != "cmlm", mode != "ar"
    ar_kw = dict(decoder="ar", beam=ar_beam, max_len_a=max_len_a, max_len_b=max_len_b)
    rep: Dict = {"n_sentences": len(sources), "ar_beam": ar_beam, "length_beam": length_beam,
                 "bleu_nar": {}, "repetition": {}, "latency_ms": {}, "examples": []}
    nar_out: Dict[int, Translations] = {}
    if do_nar:
        for T in sorted(set(bleu_iterations) | set(repetition_iterations)):
            nar_out[T] = translate(model, vocab, sources, decoder="nar", iterations=T,
                                   length_beam=length_beam, batch_size=batch_size)
            if T in bleu_iterations:
                rep["bleu_nar"][T] = bleu(nar_out[T].hyps, refs)
            if T in repetition_iterations:
                rep["repetition"][T] = repetition_ratio(nar_out[T].tokens)
    if do_ar:
        ar = translate(model, vocab, sources, batch_size=batch_size, **ar_kw)
        rep["bleu_ar"] = bleu(ar.hyps, refs)
        rep["repetition_ar"] = repetition_ratio(ar.tokens)
    lat_src = list(sources[:latency_sentences])
    rep["latency_sentences"] = len(lat_src)
    if do_ar:
        rep["latency_ms"]["ar"] = measure_latency(model, vocab, lat_src, **ar_kw)
    if do_nar:
        for T in latency_iterations:
            rep["latency_ms"][T] = measure_latency(model, vocab, lat_src, decoder="nar",
                                                   iterations=T, length_beam=length_beam)
    for i in range(min(3, len(sources))):
        ex = {"source": sources[i], "reference": refs[i]}
        if do_ar:
            ex["ar"] = ar.hyps[i]
        if nar_out:
            ex[f"nar_T{max(nar_out)}"] = nar_out[max(nar_out)].hyps[i]
        rep["examples"].append(ex)
    return rep


def format_report(rep: Dict) -> str:
    """The report as plain-text tables."""
    lines = [f"BLEU (sacreBLEU, detokenised; {rep['n_sentences']} sentences)",
             f"  {'decoder':<28}{'BLEU':>8}"]
    for T, b in sorted(rep["bleu_nar"].items()):
        lines.append(f"  {f'NAR mask-predict, T={T}':<28}{b:8.2f}")
    if "bleu_ar" in rep:
        lines.append(f"  {'AR beam ' + str(rep['ar_beam']):<28}{rep['bleu_ar']:8.2f}")
    if rep["repetition"]:
        lines += ["", "Token repetition ratio (consecutive identical subword tokens / tokens)",
                  f"  {'decoder':<28}{'ratio':>8}"]
        for T, r in sorted(rep["repetition"].items()):
            lines.append(f"  {f'NAR mask-predict, T={T}':<28}{100 * r:7.2f}%")
        if "repetition_ar" in rep:
            ar_name = f"AR beam {rep['ar_beam']}"
            lines.append(f"  {ar_name:<28}{100 * rep['repetition_ar']:7.2f}%")
    lat = rep["latency_ms"]
    if lat:
        base = lat.get("ar")
        lines += ["", f"Latency at batch size 1 ({rep['latency_sentences']} sentences)",
                  f"  {'decoder':<28}{'ms/sample':>10}{'speedup':>10}"]
        rows = ([(f"AR beam {rep['ar_beam']}", lat["ar"])] if base else []) + \
            [(f"NAR mask-predict, T={T}", v) for T, v in lat.items() if T != "ar"]
        for name, v in rows:
            sp = f"{base / v:9.2f}x" if base else "       n/a"
            lines.append(f"  {name:<28}{v:10.1f}{sp}")
    if rep.get("examples"):
        lines += ["", "Examples"]
        for ex in rep["examples"]:
            for k, v in ex.items():
                lines.append(f"  {k:>10}: {v}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot_report(rep: Dict, path: str, title: str = "JANUS: BLEU per mask-predict iteration"
                ) -> None:
    """PNG: NAR BLEU vs T (solid), AR beam BLEU (dashed), NAR latency (dotted, right axis)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if rep["bleu_nar"]:
        Ts = sorted(rep["bleu_nar"])
        ax.plot(Ts, [rep["bleu_nar"][t] for t in Ts], "o-", color="C0", label="NAR BLEU")
    if "bleu_ar" in rep:
        ax.axhline(rep["bleu_ar"], color="C1", ls="--", label=f"AR beam {rep['ar_beam']} BLEU")
    ax.set_xlabel("mask-predict iterations T (0 = single pass)")
    ax.set_ylabel("BLEU")
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    lat = {k: v for k, v in rep["latency_ms"].items() if k != "ar"}
    if lat:
        ax2 = ax.twinx()
        Ts = sorted(lat)
        ax2.plot(Ts, [1e3 / lat[t] for t in Ts], "s:", color="C2", label="NAR sentences/s")
        if "ar" in rep["latency_ms"]:
            ax2.axhline(1e3 / rep["latency_ms"]["ar"], color="C3", ls=":",
                        label="AR sentences/s")
        ax2.set_ylabel("sentences / s (batch size 1)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
