"""Command line: ``janus-train``, ``janus-generate`` and ``python -m janus_model
{train,generate,evaluate,average,compare}``.

Examples::

    janus-train --data janus_model/data/ddtp_small --out runs/ddtp --arch small \\
        --max-minutes 30 --max-tokens 2048
    janus-train ... --weights paper --w-kl-ar-aux 0     # an ablation (docs/ablations.md)
    torchrun --nproc-per-node 2 -m janus_model train --data DATA --out runs/x ...   # DDP
    janus-generate --checkpoint runs/ddtp/checkpoint_best.pt --decoder nar --iterations 4 \\
        < input.de > output.en
    janus-generate --checkpoint runs/ddtp/checkpoint_best.pt --report --plot bleu.png
    python -m janus_model average --dir runs/ddtp --last 5 --output runs/ddtp/avg5.pt
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Dict, List, Optional

__all__ = ["train_main", "generate_main", "evaluate_main", "average_main", "main",
           "ARCH_PRESETS"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, except None / False: there the help text says what happens."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


#: Architecture presets; explicit flags override them.
ARCH_PRESETS: Dict[str, Dict] = {
    # the authors' janus_transformer_iwslt_de_en (spec §7.1)
    "iwslt": dict(dim=512, heads=4, ffn_dim=1024, encoder_layers=6, decoder_layers=6,
                  dropout=0.3),
    # a CPU-sized model (hours on a laptop-class CPU for a usable DDTP model)
    "small": dict(dim=256, heads=4, ffn_dim=1024, encoder_layers=3, decoder_layers=3,
                  dropout=0.1),
    # the demo / smoke-test size
    "tiny": dict(dim=128, heads=4, ffn_dim=512, encoder_layers=2, decoder_layers=2,
                 dropout=0.1),
}

_ARCH_PRESET_FIELDS = frozenset(k for v in ARCH_PRESETS.values() for k in v)
_CHOICES = {"mode": ("janus", "cmlm", "ar"), "empty_lines": ("skip", "error"),
            "device": ("auto", "cpu", "cuda")}   # + "loss": model.LOSS_MODES

_TRAIN_HELP = {
    "data": "directory with {train,valid}.{src,tgt} plain-text files (one sentence per line)",
    "out": "output directory (checkpoints, spm.model, log.jsonl); an existing "
           "checkpoint_last.pt there is resumed unless --no-resume",
    "src_lang": "source file suffix", "tgt_lang": "target file suffix",
    "mode": "training objective: janus (AR+NAR+AUX+KL), cmlm (NAR only) or ar",
    "vocab_size": "joined sentencepiece vocabulary size (upper bound)",
    "spm_model": "use this sentencepiece model instead of training one",
    "empty_lines": "pairs with an empty side: skip (counted) or error",
    "dim": "model dimension", "heads": "attention heads", "ffn_dim": "FFN hidden size",
    "encoder_layers": "encoder layers", "decoder_layers": "decoder layers",
    "dropout": "dropout", "attention_dropout": "attention dropout",
    "activation_dropout": "dropout after the FFN activation",
    "pre_ln": "pre-LayerNorm blocks (default post-LN as the authors)",
    "max_positions": "longest sequence (tokens incl. BOS/EOS); longer pairs are dropped",
    "lr": "peak learning rate", "warmup_updates": "linear warm-up updates",
    "warmup_init_lr": "learning rate at update 0", "adam_betas": "Adam betas",
    "adam_eps": "Adam epsilon", "weight_decay": "decoupled weight decay",
    "clip_norm": "clip the gradient L2 norm to this (0: off)",
    "label_smoothing": "label smoothing of the CE terms",
    "max_tokens": "padded tokens per micro-batch and process",
    "update_freq": "gradient accumulation: micro-batches per update",
    "max_updates": "stop after this many updates (0: no limit)",
    "max_epochs": "stop after this many epochs (0: no limit)",
    "max_minutes": "stop after this many minutes of this invocation (0: no limit)",
    "bf16": "bf16 autocast (CPU or GPU)", "seed": "random seed",
    "log_every": "log every N updates", "valid_every": "validate every N updates (0: at the end)",
    "save_every": "checkpoint every N updates (0: at the end)",
    "keep_last": "numbered checkpoints to keep",
    "valid_bleu_sentences": "valid sentences decoded for BLEU at each validation (0: none)",
    "valid_beam": "AR beam size for validation BLEU (1: greedy)",
    "valid_iterations": "mask-predict iterations for validation BLEU",
    "valid_length_beam": "NAR length candidates for validation BLEU",
    "progress": "tqdm progress bar", "threads": "torch threads per process (0: default)",
    "device": "auto, cpu or cuda", "backend": "janus_kernels attention backend (default: "
    "automatic; `python -m janus_kernels` lists them)",
    "loss": "loss terms: fused_linear (janus_kernels ops, output projection fused in), fused "
            "(the ops on materialized logits) or eager (plain torch)",
    "weights": "loss-weight preset: released (the authors' code) or paper (Eq. 5: unit CE "
               "weights, the four one-way KLs, no AR-NAR KL)",
}

#: what each loss term is, for the --w-<term> help (the weights come from the presets)
_TERM_HELP = {
    "ar_ce": "AR cross-entropy (query stream, every target token)",
    "nar_ce": "NAR cross-entropy (content stream, masked tokens)",
    "aux_ce": "AUX cross-entropy (query stream in masked order, masked tokens)",
    "kl_ar_nar": "symmetric KL AR<->NAR on the masked rows (released code only)",
    "kl_ar_aux": "symmetric KL AR<->AUX on the masked rows",
    "kl_nar_aux": "symmetric KL NAR<->AUX",
    "length": "target-length cross-entropy",
}


def _preset_default(name: str) -> str:
    """The ``(default ...)`` text of a flag whose default depends on --arch."""
    per = ", ".join(f"{a} {ARCH_PRESETS[a][name]}" for a in sorted(ARCH_PRESETS))
    return f"(default by --arch: {per})"


def _weight_default(term: str) -> str:
    from .objectives import LossWeights
    from .train import LOSS_TERMS
    field = LOSS_TERMS[term]
    return (f"(default from --weights: released {getattr(LossWeights.released(), field):g}, "
            f"paper {getattr(LossWeights.paper(), field):g})")


# ----------------------------------------------------------------------------------- train
def build_train_parser(prog: str = "janus-train") -> argparse.ArgumentParser:
    from .model import LOSS_MODES
    from .train import LOSS_TERMS, WEIGHT_PRESETS, TrainConfig
    choices = dict(_CHOICES, loss=LOSS_MODES)
    p = argparse.ArgumentParser(prog=prog, description="Train a JANUS / CMLM / AR model on "
                                "plain-text parallel data.",
                                formatter_class=_HelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCH_PRESETS), default="iwslt",
                   help="architecture preset; the flags below override it")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--no-resume", action="store_true", default=False,
                       help="start fresh even if OUT/checkpoint_last.pt exists (the run's "
                       "log.jsonl is restarted too)")
    start.add_argument("--resume-from", default=None, metavar="CHECKPOINT",
                       help="resume from this checkpoint (default: OUT/checkpoint_last.pt, or "
                       "the newest readable OUT/checkpoint_<update>.pt when that one is missing "
                       "or unreadable)")
    weights = p.add_argument_group(
        "loss weights (ablations, docs/ablations.md)",
        "a preset, then one override per term; a weight of 0 removes the term from the loss "
        "(it is still computed and logged). The defaults shown are --mode janus's; cmlm "
        "trains NAR CE 1 + length 0.1 and ar the AR CE, and only their own terms can be set")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        hlp = _TRAIN_HELP.get(f.name, "")
        if f.name.startswith("w_") and f.name[2:] in LOSS_TERMS:
            term = f.name[2:]
            weights.add_argument(flag, dest=f.name, type=float, default=argparse.SUPPRESS,
                                 metavar="W", help=f"weight of the {_TERM_HELP[term]} term "
                                 f"{_weight_default(term)}")
        elif f.name == "weights":
            weights.add_argument(flag, dest=f.name, choices=WEIGHT_PRESETS,
                                 default=argparse.SUPPRESS, help=f"{hlp} (default {default})")
        elif f.name in _ARCH_PRESET_FIELDS:
            typ = type(default)
            p.add_argument(flag, dest=f.name, type=typ, default=argparse.SUPPRESS,
                           help=f"{hlp} {_preset_default(f.name)}")
        elif f.name in ("data", "out"):
            p.add_argument(flag, required=True, default=argparse.SUPPRESS, help=hlp)
        elif f.name == "progress":
            p.add_argument("--no-progress", dest="progress", action="store_false",
                           default=argparse.SUPPRESS, help="disable the progress bar")
        elif isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action="store_true", default=argparse.SUPPRESS,
                           help=hlp)
        elif isinstance(default, tuple):
            p.add_argument(flag, dest=f.name, type=float, nargs=len(default),
                           default=argparse.SUPPRESS, help=f"{hlp} (default {default})")
        else:
            typ = str if default is None else type(default)
            p.add_argument(flag, dest=f.name, type=typ, default=argparse.SUPPRESS,
                           choices=choices.get(f.name), help=f"{hlp} (default {default})")
    return p


def config_from_args(args: argparse.Namespace):
    """TrainConfig = defaults, then the --arch preset, then the flags given."""
    from .train import TrainConfig
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if hasattr(args, f.name)}
    return TrainConfig(**{**ARCH_PRESETS[args.arch], **given})


def _fail(prog: str, err: BaseException) -> int:
    """Bad settings or data: the message says what is wrong (no traceback); exit status 2."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


def train_main(argv: Optional[List[str]] = None) -> int:
    from .train import Trainer
    args = build_train_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        cfg.check_stop_condition()
        trainer = Trainer(cfg, resume=args.resume_from or (not args.no_resume))
    except (ValueError, FileNotFoundError) as e:
        return _fail("janus-train", e)
    summary = trainer.train()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in summary.items()}))
    return 0


# -------------------------------------------------------------------------------- generate
def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="trainer checkpoint (.pt)")
    p.add_argument("--beam", type=int, default=5, help="AR beam size (1: greedy)")
    p.add_argument("--iterations", type=int, default=10,
                   help="NAR mask-predict refinement iterations T (0: one pass)")
    p.add_argument("--length-beam", type=int, default=3, help="NAR length candidates")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    p.add_argument("--max-len-a", type=float, default=1.2,
                   help="AR output length limit a*src_len + b: the a (source tokens with "
                   "BOS/EOS)")
    p.add_argument("--max-len-b", type=int, default=10,
                   help="AR output length limit a*src_len + b: the b (tokens)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def build_generate_parser(prog: str = "janus-generate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=_HelpFormatter,
        description="Translate with a trained checkpoint (AR beam search or NAR "
                    "mask-predict), or with --report print the paper's analysis tables.")
    _add_decode_args(p)
    p.add_argument("--decoder", choices=("ar", "nar"), default="ar",
                   help="ar: autoregressive beam search (--beam; 1 = greedy); nar: "
                   "non-autoregressive mask-predict (--iterations, --length-beam)")
    p.add_argument("--input", default="-", help="source sentences, one per line (- = stdin)")
    p.add_argument("--output", default="-", help="translations (- = stdout)")
    p.add_argument("--reference", default=None, help="reference file: also print BLEU")
    _add_report_args(p, flag=True)
    return p


def _add_report_args(p: argparse.ArgumentParser, flag: bool) -> None:
    g = p.add_argument_group("analysis report")
    if flag:
        g.add_argument("--report", action="store_true",
                       help="print BLEU per NAR iteration + AR beam, NAR repetition ratio, "
                            "latency AR vs NAR (batch size 1) and write a BLEU plot")
    g.add_argument("--data", default=None,
                   help="data directory for the report (default: the checkpoint's)")
    g.add_argument("--split", default="test",
                   help="which split of the data directory: reads SPLIT.SRC_LANG and "
                   "SPLIT.TGT_LANG")
    g.add_argument("--src-lang", default=None,
                   help="source file suffix (default: the checkpoint's training setting)")
    g.add_argument("--tgt-lang", default=None,
                   help="target file suffix (default: the checkpoint's training setting)")
    g.add_argument("--limit", type=int, default=0, help="use the first N pairs (0: all)")
    g.add_argument("--latency-sentences", type=int, default=100,
                   help="sentences timed one at a time")
    g.add_argument("--plot", default=None,
                   help="PNG path of the BLEU-per-iteration plot (default next to the "
                        "checkpoint; 'none' to skip)")
    g.add_argument("--json", default=None, help="also write the report as JSON here")


def _setup(args):
    import torch
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from .generate import load_model
    return load_model(args.checkpoint, args.device)


def _read_input(path: str) -> List[str]:
    if path == "-":
        return [line.rstrip("\n") for line in sys.stdin]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _run_report(args) -> int:
    from .data import read_parallel
    from .generate import analysis_report, format_report, plot_report
    model, vocab, ck = _setup(args)
    tc = ck.get("train_config", {})
    data = args.data or tc.get("data")
    src_lang = args.src_lang or tc.get("src_lang", "de")
    tgt_lang = args.tgt_lang or tc.get("tgt_lang", "en")
    if not data:
        raise ValueError("report: --data is required (the checkpoint names no data directory)")
    text = read_parallel(data, args.split, src_lang, tgt_lang)
    src, refs = text.src, text.tgt
    if args.limit:
        src, refs = src[:args.limit], refs[:args.limit]
    mode = ck.get("mode", "janus")
    print(f"checkpoint {args.checkpoint}: mode {mode}, update {ck.get('update', '?')}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
          f"{data}/{args.split}.{src_lang}->{tgt_lang}", flush=True)
    rep = analysis_report(model, vocab, src, refs, mode=mode, ar_beam=args.beam,
                          length_beam=args.length_beam, batch_size=args.batch_size,
                          latency_sentences=args.latency_sentences,
                          max_len_a=args.max_len_a, max_len_b=args.max_len_b)
    print(format_report(rep), end="")
    plot = args.plot or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                     "bleu_per_iteration.png")
    if plot.lower() != "none":
        plot_report(rep, plot)
        print(f"plot: {plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1, default=str)
    return 0


def generate_main(argv: Optional[List[str]] = None) -> int:
    args = build_generate_parser().parse_args(argv)
    try:
        return _run_report(args) if args.report else _translate(args)
    except (ValueError, FileNotFoundError) as e:
        return _fail("janus-generate", e)


def _translate(args) -> int:
    from .generate import bleu, translate
    model, vocab, _ = _setup(args)
    sents = _read_input(args.input)
    tr = translate(model, vocab, sents, decoder=args.decoder, beam=args.beam,
                   iterations=args.iterations, length_beam=args.length_beam,
                   batch_size=args.batch_size, max_len_a=args.max_len_a,
                   max_len_b=args.max_len_b)
    text = "".join(h + "\n" for h in tr.hyps)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    what = (f"AR beam {args.beam}" if args.decoder == "ar"
            else f"NAR mask-predict T={args.iterations}, length beam {args.length_beam}")
    print(f"{what}: {len(sents)} sentences in {tr.seconds:.2f} s = "
          f"{tr.ms_per_sentence:.1f} ms/sample at batch size {args.batch_size}",
          file=sys.stderr)
    if args.reference:
        with open(args.reference, encoding="utf-8") as f:
            refs = [line.rstrip("\n") for line in f]
        print(f"BLEU = {bleu(tr.hyps, refs):.2f}", file=sys.stderr)
    return 0


def evaluate_main(argv: Optional[List[str]] = None) -> int:
    """``python -m janus_model evaluate`` = ``janus-generate --report``."""
    p = argparse.ArgumentParser(prog="python -m janus_model evaluate",
                                formatter_class=_HelpFormatter,
                                description="The paper's analysis tables for a checkpoint: "
                                "BLEU per NAR iteration and AR beam, NAR token repetition, "
                                "latency AR vs NAR at batch size 1, BLEU plot.")
    _add_decode_args(p)
    _add_report_args(p, flag=False)
    args = p.parse_args(argv)
    try:
        return _run_report(args)
    except (ValueError, FileNotFoundError) as e:
        return _fail("python -m janus_model evaluate", e)


def average_main(argv: Optional[List[str]] = None) -> int:
    import torch
    from .checkpoints import average_checkpoints, last_checkpoints
    p = argparse.ArgumentParser(prog="python -m janus_model average",
                                description="Average the parameters of several checkpoints.")
    p.add_argument("--inputs", nargs="+", default=None, help="checkpoints to average")
    p.add_argument("--dir", default=None, help="run directory (with --last)")
    p.add_argument("--last", type=int, default=5, help="average the last N numbered ones")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    if bool(args.inputs) == bool(args.dir):
        p.error("give either --inputs or --dir")
    try:
        paths = args.inputs or last_checkpoints(args.dir, args.last)
        averaged = average_checkpoints(paths)
    except (ValueError, FileNotFoundError) as e:
        return _fail("python -m janus_model average", e)
    torch.save(averaged, args.output)
    print(f"averaged {len(paths)} checkpoints -> {args.output}")
    return 0


def compare_main(argv: Optional[List[str]] = None) -> int:
    """``python -m janus_model compare``: several ``evaluate --json`` reports side by side."""
    from .compare import format_comparison, load_report, plot_comparison
    p = argparse.ArgumentParser(prog="python -m janus_model compare",
                                description="The analysis tables of several models side by "
                                "side (e.g. JANUS vs CMLM vs AR) from `evaluate --json` "
                                "reports, and one BLEU-per-iteration plot.")
    p.add_argument("reports", nargs="+", metavar="LABEL=REPORT.json",
                   help="a column label and the JSON report of `evaluate --json`")
    p.add_argument("--plot", default=None, help="write the combined BLEU plot (PNG) here")
    args = p.parse_args(argv)
    reports = {}
    for item in args.reports:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            p.error(f"expected LABEL=REPORT.json, got {item!r}")
        if not os.path.isfile(path):
            p.error(f"report {path!r} does not exist")
        reports[label] = load_report(path)
    print(format_comparison(reports), end="")
    if args.plot:
        plot_comparison(reports, args.plot)
        print(f"plot -> {args.plot}")
    return 0


COMMANDS = {"train": train_main, "generate": generate_main, "evaluate": evaluate_main,
            "average": average_main, "compare": compare_main}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        ok = not argv or argv[0] in ("-h", "--help")
        usage = ("usage: python -m janus_model {train,generate,evaluate,average,compare} "
                 "[--help] ...\n\n"
                 "  train     train a model (= janus-train)\n"
                 "  generate  translate with a checkpoint (= janus-generate)\n"
                 "  evaluate  analysis tables: BLEU per NAR iteration, repetition, latency\n"
                 "  average   average checkpoints\n"
                 "  compare   several evaluate --json reports side by side")
        if not ok:
            usage = f"unknown command {argv[0]!r}\n" + usage
        print(usage, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 2
    cmd = argv.pop(0)
    return COMMANDS[cmd](argv)
