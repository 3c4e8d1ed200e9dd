"""``make demo`` (``python -m janus_model.demo``): train a tiny JANUS model on the bundled
German-English corpus for a few minutes of CPU time, then translate the bundled test set
with AR beam search and NAR mask-predict and print BLEU and latency.

What it does:

1. trains a joined sentencepiece vocabulary on ``janus_model/data/ddtp_small`` (4,000 pairs
   of Debian package descriptions, see its README) and a tiny JANUS Transformer
   (D=128, 2+2 layers, FFN 512, post-LN, 2,000 subwords, 1.25M parameters) with the full
   JANUS objective (AR + NAR + AUX CE, the three symmetric KLs, length CE; spec §6.1),
   bounded by ``--minutes`` of training (default 3.5; one thread by default);
2. prints the paper's analysis on the 300 test pairs: BLEU of mask-predict at T = 0..10
   and of AR beam 5, NAR token repetition, latency at batch size 1 (AR beam 5 vs NAR) with
   speedups, and writes ``bleu_per_iteration.png``, all under ``--out`` (default
   ``runs/demo``; the checkpoint there can be reused with ``python -m janus_model
   evaluate --checkpoint runs/demo/checkpoint_last.pt``).

A few CPU minutes give a model that is far from converged: expect BLEU around 2 (AR beam 5
and NAR alike) with heavily repetitive output. It depends on how many updates the machine
manages in the budget (about 1,050-1,100 updates, 6.5 epochs of the corpus, on one core of
the development machine). In our runs the coupled JANUS objective also left the unigram
plateau later than an AR-only model with the same settings did (pre-LN, lr 1e-3: AR valid
CE 6.1 vs 5.4 after 600 updates). The point is the whole pipeline end to end on real data;
a larger ``--minutes`` trains further.

Training on real data
---------------------
The full DDTP corpus (about 30k pairs), or IWSLT14 De-En prepared with fairseq's
``examples/translation/prepare-iwslt14.sh`` (its ``iwslt14.tokenized.de-en`` folder holds
``train/valid/test.{de,en}``; the BPE there is ignored: remove the ``@@ `` joiners with
``sed -r 's/(@@ )|(@@ ?$)//g'`` first, since the trainer builds its own sentencepiece
vocabulary; that text is Moses-tokenised and lower-cased, so its sacreBLEU is not the
paper's tokenised BLEU: compare runs with each other), trains with::

    janus-train --data DATA_DIR --out runs/iwslt --src-lang de --tgt-lang en \\
        --arch iwslt --vocab-size 10000 --max-tokens 4096 --lr 5e-4 \\
        --warmup-updates 10000 --max-updates 200000 --valid-every 2000 --save-every 2000
    # two processes (gloo on CPU, NCCL on GPUs):
    torchrun --nproc-per-node 2 -m janus_model train --data DATA_DIR --out runs/iwslt ...
    python -m janus_model average --dir runs/iwslt --last 5 --output runs/iwslt/avg5.pt
    janus-generate --checkpoint runs/iwslt/avg5.pt --report --split test

(``--arch iwslt`` is the authors' 6+6-layer D=512 model, spec §7.1; ``--mode cmlm`` and
``--mode ar`` train the baselines.)
"""
from __future__ import annotations

import argparse
import os
import time
from typing import List, Optional

import torch

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ddtp_small")


def demo_config(out: str, minutes: float, threads: int):
    from .train import TrainConfig
    return TrainConfig(
        data=DATA, out=out, src_lang="de", tgt_lang="en", mode="janus",
        vocab_size=2000, dim=128, heads=4, ffn_dim=512, encoder_layers=2, decoder_layers=2,
        dropout=0.0, pre_ln=False, max_positions=128,
        lr=2e-3, warmup_updates=100, warmup_init_lr=1e-6, weight_decay=1e-4, clip_norm=1.0,
        max_tokens=1024, max_minutes=minutes, log_every=100, valid_every=0, save_every=0,
        keep_last=0, valid_bleu_sentences=0, seed=1, threads=threads, device="cpu")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m janus_model.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.5, help="training time budget")
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="output directory")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (the tiny model gains little from more, and on a "
                        "shared machine extra threads mostly wait at barriers)")
    p.add_argument("--latency-sentences", type=int, default=50)
    args = p.parse_args(argv)

    from .generate import analysis_report, format_report, plot_report
    from .train import Trainer

    t0 = time.perf_counter()
    threads = max(1, args.threads)
    torch.set_num_threads(threads)
    cfg = demo_config(args.out, args.minutes, threads)
    print(f"JANUS demo: {DATA}\n  torch {torch.__version__}, {threads} thread(s); "
          f"training for {args.minutes:g} min, then evaluating on the test set",
          flush=True)
    log = os.path.join(args.out, "log.jsonl")
    if os.path.isfile(log):             # a fresh run: don't append to an earlier demo's log
        os.remove(log)
    trainer = Trainer(cfg, resume=False)
    n_par = sum(p.numel() for p in trainer.model.parameters())
    print(f"  model: D={cfg.dim}, {cfg.encoder_layers}+{cfg.decoder_layers} layers, vocabulary "
          f"{len(trainer.vocab)}, {n_par / 1e6:.2f}M parameters", flush=True)
    summary = trainer.train()
    t_train = time.perf_counter() - t0

    test_src = open(os.path.join(DATA, "test.de"), encoding="utf-8").read().splitlines()
    test_ref = open(os.path.join(DATA, "test.en"), encoding="utf-8").read().splitlines()
    print(f"\nTest set: {len(test_src)} pairs; {summary['update']} updates "
          f"({summary['epoch']:.2f} epochs) in {summary['elapsed_s']:.0f} s of training\n",
          flush=True)
    t1 = time.perf_counter()
    rep = analysis_report(trainer.model, trainer.vocab, test_src, test_ref, mode="janus",
                          bleu_iterations=(0, 1, 2, 3, 4, 6, 8, 10),
                          latency_sentences=args.latency_sentences)
    print(format_report(rep), end="")
    plot = os.path.join(args.out, "bleu_per_iteration.png")
    plot_report(rep, plot)
    lat = rep["latency_ms"]
    print(f"\nSummary: AR beam 5 BLEU {rep['bleu_ar']:.2f} ({lat['ar']:.0f} ms/sentence); "
          f"NAR T=4 BLEU {rep['bleu_nar'][4]:.2f} ({lat[4]:.0f} ms/sentence, "
          f"{lat['ar'] / lat[4]:.1f}x faster); NAR T=10 BLEU {rep['bleu_nar'][10]:.2f}")
    print(f"plot: {plot}; checkpoint: {os.path.join(args.out, 'checkpoint_last.pt')}")
    print(f"demo took {time.perf_counter() - t0:.0f} s (training {t_train:.0f} s, "
          f"evaluation {time.perf_counter() - t1:.0f} s)")


if __name__ == "__main__":
    main()
