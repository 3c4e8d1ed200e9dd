"""JANUS / CMLM / AR trainer (spec §6.1, §7.1) with exact resume and data parallelism.

Optimisation (fairseq's recipe): Adam β = (0.9, 0.98) with decoupled weight decay
(torch's AdamW), the inverse-square-root schedule of :mod:`janus_model.train_control`,
label smoothing ε = 0.1 inside the objectives, optional gradient clipping (global L2 norm),
optional bf16 autocast (CPU or GPU), gradient accumulation over ``update_freq`` micro-batches
(the loss of each is divided by ``update_freq``; every term is a per-batch mean as in the
authors' criterion, so gradients are averaged over micro-batches and, through DDP, over ranks).

Exact resume: a checkpoint taken at an update boundary holds the model, the optimiser (Adam
moments and step counts), the schedule position, the data position (epoch, micro-batches
consumed in it; each epoch's batch list is a pure function of (seed, epoch)) and every RNG
state of every rank (torch CPU/CUDA for dropout and attention-dropout seeds, the span-masking
generator, Python's and NumPy's). Resuming from it reproduces the uninterrupted run bitwise
(same world size, thread count and hardware). SIGINT/SIGTERM stop training at the next update
boundary and write ``checkpoint_last.pt``.

Data parallel: launch with ``torchrun --nproc-per-node N -m janus_model train ...``; the
process group is gloo on CPU and NCCL on GPU; every rank reads the same data, builds the same
vocabulary (rank 0 trains it and broadcasts it), gets every N-th batch of the epoch, and DDP
averages gradients.

Outputs in ``out``: ``spm.model``, ``checkpoint_last.pt``, ``checkpoint_<update>.pt`` (the last
``keep_last``), ``checkpoint_best.pt`` (lowest validation loss), ``log.jsonl`` (one JSON record
per log interval and per validation). Checkpoint files are crash-safe (see
:mod:`janus_model.checkpoints`): a run killed at any moment, even mid-save, resumes exactly;
an unreadable ``checkpoint_last.pt`` falls back to the newest good numbered checkpoint; the
log keeps only the records of the resumed history. The end of a run validates (unless it
just did) and then saves, so ``checkpoint_last.pt`` always carries the best validation loss
so far and a resumed run never replaces ``checkpoint_best.pt`` by a worse model.

Loss weights (ablations, ``docs/ablations.md``): a preset (``weights``: "released", the
authors' code, or "paper", Eq. 5), then per-term overrides ``w_<term>`` named after
:class:`janus_kernels.losses.JanusLossWeights`' fields (:data:`LOSS_TERMS`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .checkpoints import (CHECKPOINT_FORMAT, atomic_save, average_checkpoints,
                          find_resume_checkpoint, last_checkpoints, numbered_checkpoints,
                          remove_stale_temporaries, truncate_log)
from .data import (ParallelDataset, SubwordVocab, collate, make_batches, read_parallel,
                   shard_batches)
from .generate import resolve_device
from .layout import build_batch
from .masking import span_mask
from .memory import keep_freed_memory
from .model import ExecOptions, JanusConfig, JanusTransformer
from .objectives import LossWeights, compute_loss
from .train_control import InverseSqrtSchedule, StopSignal
from .train_config import LOSS_TERMS, MODE_TERMS, WEIGHT_PRESETS, TrainConfig

__all__ = ["TrainConfig", "InverseSqrtSchedule", "Trainer", "average_checkpoints",
           "last_checkpoints", "CHECKPOINT_FORMAT", "LOSS_TERMS", "MODE_TERMS",
           "WEIGHT_PRESETS", "DROPPED_WARN_FRACTION"]

#: Warn when more than this fraction of a split's pairs is dropped as too long.
DROPPED_WARN_FRACTION = 0.03


# -------------------------------------------------------------------------------- trainer
class Trainer:
    """Build everything from a :class:`TrainConfig`, optionally resuming, then :meth:`train`.

    ``resume``: True = continue from ``out/checkpoint_last.pt`` if it exists; False = start
    fresh; a path = that checkpoint. When resuming, the architecture and vocabulary come from
    the checkpoint; the optimisation/stopping settings from ``cfg``. ``terms_fn`` computes the
    unweighted loss terms (default: ``compute_loss``'s choice from ``cfg.loss``: the fused
    janus_kernels ops, or plain torch for "eager")."""

    def __init__(self, cfg: TrainConfig, *, resume=True,
                 terms_fn: Optional[Callable] = None, weights: Optional[LossWeights] = None,
                 log: Optional[Callable[[str], None]] = None):
        self.cfg = cfg
        self.terms_fn = terms_fn
        self.weights = weights or cfg.loss_weights()
        self._init_distributed()
        self._log = log if log is not None else (print if self.rank == 0 else (lambda s: None))
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        if self.rank == 0:
            os.makedirs(cfg.out, exist_ok=True)
            for p in remove_stale_temporaries(cfg.out):
                self._log(f"removed {p} (left by a process killed while writing it)")

        found = find_resume_checkpoint(cfg.out, resume, self._log)
        ck = found[1] if found else None
        if found:
            self._log(f"resuming from {found[0]} (update {ck['update']})")
        elif self.rank == 0 and numbered_checkpoints(cfg.out):
            self._log(f"warning: starting a fresh run in {cfg.out}, which holds checkpoints "
                      f"of an earlier run (they are overwritten only where names collide)")
        self.vocab = self._build_vocab(ck)
        self.train_data = self._dataset("train", cfg.max_tokens)
        self.valid_data = self._dataset("valid", None, required=False)

        if self.device.type == "cpu":
            keep_freed_memory()   # each step reuses the last one's memory (janus_model.memory)
        torch.manual_seed(cfg.seed)                 # identical initial weights on every rank
        mcfg = JanusConfig(**ck["model_config"]) if ck else cfg.model_config(len(self.vocab))
        if mcfg.vocab_size != len(self.vocab):
            raise ValueError(f"checkpoint: model vocab_size {mcfg.vocab_size} but the "
                             f"vocabulary has {len(self.vocab)} pieces")
        self.model = JanusTransformer(mcfg, ExecOptions(backend=cfg.backend, loss=cfg.loss)
                                      ).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                           betas=cfg.adam_betas, eps=cfg.adam_eps,
                                           weight_decay=cfg.weight_decay)
        self.schedule = InverseSqrtSchedule(self.optimizer, cfg.lr, cfg.warmup_updates,
                                            cfg.warmup_init_lr)
        # per-rank random streams (dropout, span masks), seeded after the shared init
        torch.manual_seed(cfg.seed * 7919 + 1 + self.rank)
        self.mask_gen = torch.Generator().manual_seed(cfg.seed * 104729 + 17 + self.rank)
        random.seed(cfg.seed + self.rank)
        np.random.seed((cfg.seed + self.rank) % 2 ** 32)

        self.update = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_valid_loss = float("inf")
        self.validated_update = -1                  # update of the last validation
        self.last_valid: Dict[str, float] = {}      # its results
        self.elapsed_total = 0.0
        self._epoch_cache: Tuple[int, List[List[int]]] = (-1, [])
        if ck:
            self._load_state(ck)
        if self.rank == 0:
            dropped = truncate_log(os.path.join(cfg.out, "log.jsonl"), self.update)
            if dropped:
                self._log(f"log.jsonl: dropped {dropped} records after update {self.update} "
                          f"(from a discarded run segment)")
        self._epoch_batches(self.epoch)             # batching errors now, not mid-run
        self._log("loss weights: " + ", ".join(
            f"{t} {getattr(self.weights, LOSS_TERMS[t]):g}" for t in MODE_TERMS[cfg.mode]))
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                else None, find_unused_parameters=cfg.mode == "ar")

    # ------------------------------------------------------------------------- set-up
    def _init_distributed(self) -> None:
        cfg = self.cfg
        want = resolve_device(cfg.device).type      # a clear error if CUDA is unusable
        env_world = int(os.environ.get("WORLD_SIZE", "1"))
        if env_world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if want == "cuda" else "gloo")
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        if want == "cuda":
            local = int(os.environ.get("LOCAL_RANK", self.rank % max(torch.cuda.device_count(),
                                                                     1)))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
            if self.world > 1 and cfg.threads <= 0:
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world))

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _build_vocab(self, ck: Optional[Dict]) -> SubwordVocab:
        cfg = self.cfg
        if ck:
            vocab = SubwordVocab(ck["spm"])
        elif cfg.spm_model:
            vocab = SubwordVocab.load(cfg.spm_model)
        else:
            proto = None
            if self.rank == 0:
                text = read_parallel(cfg.data, "train", cfg.src_lang, cfg.tgt_lang,
                                     empty=cfg.empty_lines)
                proto = SubwordVocab.train(text.src + text.tgt, cfg.vocab_size).proto
            vocab = SubwordVocab(self._broadcast(proto))
        if self.rank == 0:
            vocab.save(os.path.join(cfg.out, "spm.model"))
        return vocab

    def _dataset(self, split: str, max_tokens: Optional[int],
                 required: bool = True) -> Optional[ParallelDataset]:
        cfg = self.cfg
        try:
            text = read_parallel(cfg.data, split, cfg.src_lang, cfg.tgt_lang,
                                 empty=cfg.empty_lines)
        except FileNotFoundError:
            if required:
                raise
            self._log(f"no {split} split in {cfg.data}: validation disabled")
            return None
        ds = ParallelDataset(text, self.vocab, max_positions=cfg.max_positions,
                             max_tokens=max_tokens)
        self._log(f"{split}: {len(ds)} pairs ({ds.skipped_empty} empty skipped, "
                  f"{ds.dropped_long} too long dropped)")
        total = len(ds) + ds.dropped_long
        if ds.dropped_long > DROPPED_WARN_FRACTION * total:
            limits = f"max_positions {cfg.max_positions}" + (
                f", max_tokens {max_tokens}" if max_tokens is not None else "")
            self._log(f"warning: {split}: {ds.dropped_long} of {total} pairs "
                      f"({100 * ds.dropped_long / total:.0f}%) are dropped because a side is "
                      f"longer than {min(cfg.max_positions, max_tokens or cfg.max_positions)} "
                      f"tokens with BOS/EOS ({limits}); raise these limits to keep them")
        return ds

    @property
    def raw_model(self) -> JanusTransformer:
        return self.model

    # ---------------------------------------------------------------------- state
    def _rng_state(self) -> Dict:
        s = {"torch": torch.get_rng_state(), "mask": self.mask_gen.get_state(),
             "python": random.getstate(), "numpy": np.random.get_state()}
        if self.device.type == "cuda":
            s["cuda"] = torch.cuda.get_rng_state(self.device)
        return s

    def _set_rng_state(self, s: Dict) -> None:
        torch.set_rng_state(s["torch"])
        self.mask_gen.set_state(s["mask"])
        random.setstate(s["python"])
        np.random.set_state(s["numpy"])
        if self.device.type == "cuda" and "cuda" in s:
            torch.cuda.set_rng_state(s["cuda"], self.device)

    def _data_fingerprint(self) -> List[int]:
        d = self.train_data
        return [len(d), int(d.src_lens.sum()), int(d.tgt_lens.sum())]

    def state_dict(self) -> Dict:
        """The full training state; collective under DDP (gathers every rank's RNG)."""
        rng = self._rng_state()
        if self.world > 1:
            allr: List = [None] * self.world
            dist.all_gather_object(allr, rng)
        else:
            allr = [rng]
        return {"format": CHECKPOINT_FORMAT, "model_config": dataclasses.asdict(self.model.cfg),
                "train_config": dataclasses.asdict(self.cfg), "mode": self.cfg.mode,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "update": self.update,
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rng": allr,
                "world_size": self.world, "data": self._data_fingerprint(),
                "batching": [self.cfg.max_tokens, self.cfg.seed],
                "spm": self.vocab.proto, "best_valid_loss": self.best_valid_loss,
                "valid_update": self.validated_update, "last_valid": self.last_valid,
                "elapsed_s": self.elapsed_total, "torch_version": torch.__version__}

    def _load_state(self, ck: Dict) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.schedule.load_state_dict(ck["schedule"])
        self.update = int(ck["update"])
        self.best_valid_loss = float(ck.get("best_valid_loss", float("inf")))
        self.validated_update = int(ck.get("valid_update", -1))
        self.last_valid = dict(ck.get("last_valid", {}))
        self.elapsed_total = float(ck.get("elapsed_s", 0.0))
        same = (ck["world_size"] == self.world and ck["data"] == self._data_fingerprint()
                and ck["batching"] == [self.cfg.max_tokens, self.cfg.seed])
        if same:
            self.epoch, self.batch_in_epoch = int(ck["epoch"]), int(ck["batch_in_epoch"])
            self._set_rng_state(ck["rng"][self.rank])
        else:
            # the saved data position / RNG streams do not apply: continue from a fresh epoch
            self.epoch, self.batch_in_epoch = int(ck["epoch"]) + 1, 0
            self._log("resume: world size, data or batching changed; continuing from the "
                      "start of the next epoch (not an exact resume)")

    def save(self, name: Optional[str] = None, *, numbered: bool = True) -> Optional[str]:
        """Write checkpoint_last.pt (+ checkpoint_<update>.pt, or ``name``); collective."""
        state = self.state_dict()
        path = None
        if self.rank == 0:
            out = self.cfg.out
            if name is not None:
                path = os.path.join(out, name)
                atomic_save(state, path)
            else:
                path = os.path.join(out, "checkpoint_last.pt")
                atomic_save(state, path)
                if numbered and self.cfg.keep_last > 0:
                    atomic_save(state, os.path.join(out, f"checkpoint_{self.update}.pt"))
                    self._prune()
        self._barrier()
        return path

    def _prune(self) -> None:
        numbered = numbered_checkpoints(self.cfg.out)
        for _, p in numbered[:max(len(numbered) - self.cfg.keep_last, 0)]:
            os.remove(p)

    # ------------------------------------------------------------------------ data
    def _epoch_batches(self, epoch: int) -> List[List[int]]:
        if self._epoch_cache[0] != epoch:
            d = self.train_data
            b = make_batches(d.src_lens, d.tgt_lens, self.cfg.max_tokens, seed=self.cfg.seed,
                             epoch=epoch)
            self._epoch_cache = (epoch, shard_batches(b, self.rank, self.world))
        return self._epoch_cache[1]

    def _next_batch(self) -> List[int]:
        batches = self._epoch_batches(self.epoch)
        if self.batch_in_epoch >= len(batches):
            self.epoch += 1
            self.batch_in_epoch = 0
            batches = self._epoch_batches(self.epoch)
        self.batch_in_epoch += 1
        return batches[self.batch_in_epoch - 1]

    def epochs_done(self) -> float:
        n = len(self._epoch_batches(self.epoch))
        return self.epoch + self.batch_in_epoch / n

    # --------------------------------------------------------------------- training
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def _forward_backward(self, idx: List[int], scale: float) -> Tuple[float, Dict, int]:
        src, tgt = collate(self.train_data, idx)
        masked = span_mask(tgt, generator=self.mask_gen)
        batch = build_batch(tgt.to(self.device), masked.to(self.device))
        model = self.ddp if self.ddp is not None else self.model
        with self._autocast():
            loss, terms = compute_loss(model, src.to(self.device), batch, self.cfg.mode,
                                       self.weights, opts=self.model.exec,
                                       terms_fn=self.terms_fn)
        (loss * scale).backward()
        ntok = int((tgt != 1).sum()) - len(idx)            # target tokens incl. EOS
        return float(loss.detach()), {k: float(v.detach()) for k, v in terms.items()}, ntok

    def train_step(self) -> Dict:
        """One optimiser update over ``update_freq`` micro-batches."""
        cfg = self.cfg
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, terms_sum, ntok = 0.0, {}, 0
        for k in range(cfg.update_freq):
            idx = self._next_batch()
            sync = self.ddp is None or k == cfg.update_freq - 1
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()
            with ctx:
                loss, terms, n = self._forward_backward(idx, 1.0 / cfg.update_freq)
            loss_sum += loss / cfg.update_freq
            for t, v in terms.items():
                terms_sum[t] = terms_sum.get(t, 0.0) + v / cfg.update_freq
            ntok += n
        lr = self.schedule.apply()
        max_norm = cfg.clip_norm if cfg.clip_norm > 0 else float("inf")
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(gnorm):
            raise FloatingPointError(f"update {self.update + 1}: gradient norm is {gnorm} "
                                     f"(loss {loss_sum}); lower lr or disable bf16")
        self.optimizer.step()
        self.update += 1
        self.schedule.num_updates = self.update
        return {"loss": loss_sum, **terms_sum, "lr": lr, "gnorm": gnorm, "ntok": ntok}

    def _should_stop(self, t_start: float, stop: StopSignal) -> Tuple[bool, str]:
        cfg = self.cfg
        timed = cfg.max_minutes > 0 and time.perf_counter() - t_start >= 60 * cfg.max_minutes
        flag = torch.tensor([float(stop.requested), float(timed)])
        if self.world > 1:                           # every rank must stop at the same update
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag[0] > 0:
            return True, "interrupted"
        if flag[1] > 0:
            return True, "time budget"
        if cfg.max_updates and self.update >= cfg.max_updates:
            return True, "max_updates"
        if cfg.max_epochs and self.epochs_done() >= cfg.max_epochs:
            return True, "max_epochs"
        return False, ""

    def train(self) -> Dict:
        """Train until a stop condition; returns a summary (last validation included)."""
        from tqdm import tqdm
        cfg = self.cfg
        cfg.check_stop_condition()
        t_start = time.perf_counter()
        elapsed0 = self.elapsed_total
        window: Dict[str, float] = {}
        n_win, tok_win, t_win = 0, 0, time.perf_counter()
        bar = tqdm(total=cfg.max_updates or None, initial=self.update, unit="upd",
                   disable=not (cfg.progress and self.rank == 0), dynamic_ncols=True,
                   leave=False)
        saved_at = -1
        reason = ""
        with StopSignal() as stop:
            while True:
                stopping, reason = self._should_stop(t_start, stop)
                if stopping:
                    break
                rec = self.train_step()
                self.elapsed_total = elapsed0 + time.perf_counter() - t_start
                for k, v in rec.items():
                    if k not in ("lr", "ntok"):
                        window[k] = window.get(k, 0.0) + v
                n_win += 1
                tok_win += rec["ntok"]
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}",
                                ep=f"{self.epochs_done():.2f}")
                if cfg.log_every and self.update % cfg.log_every == 0:
                    dt = time.perf_counter() - t_win
                    self._record({"update": self.update, "epoch": round(self.epochs_done(), 3),
                                  "lr": rec["lr"], **{k: v / n_win for k, v in window.items()},
                                  "tgt_tok_per_s": tok_win * self.world / max(dt, 1e-9),
                                  "elapsed_s": round(self.elapsed_total, 1)})
                    window, n_win, tok_win, t_win = {}, 0, 0, time.perf_counter()
                if cfg.valid_every and self.update % cfg.valid_every == 0:
                    self.validate()
                    tok_win, t_win = 0, time.perf_counter()   # throughput excludes validation
                if cfg.save_every and self.update % cfg.save_every == 0:
                    self.save()
                    saved_at = self.update
        bar.close()
        self.elapsed_total = elapsed0 + time.perf_counter() - t_start
        # validate first, then save: checkpoint_last must hold the best loss (and the fact
        # that this update is validated), or a resumed run would re-validate and could
        # replace checkpoint_best.pt by a worse model
        final_valid = self.update > 0 and self.validated_update != self.update
        if final_valid:
            self.validate()
        if saved_at != self.update or final_valid:
            self.save()
        self._log(f"stopped at update {self.update} (epoch {self.epochs_done():.2f}): "
                  f"{reason}; {self.elapsed_total:.0f} s of training in total")
        return {"update": self.update, "epoch": self.epochs_done(), "reason": reason,
                "elapsed_s": self.elapsed_total, **self.last_valid}

    def _record(self, rec: Dict) -> None:
        if self.rank != 0:
            return
        with open(os.path.join(self.cfg.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        if not self.cfg.progress or "valid_loss" in rec:
            keys = [k for k in ("update", "epoch", "loss", "valid_loss", "bleu_ar", "bleu_nar",
                                "tgt_tok_per_s") if k in rec]
            self._log(" | ".join(f"{k} {rec[k]:.4g}" if isinstance(rec[k], float)
                                 else f"{k} {rec[k]}" for k in keys))

    # ------------------------------------------------------------------- validation
    @torch.no_grad()
    def valid_loss(self) -> Dict[str, float]:
        """Sentence-weighted mean of the per-batch losses on the valid split, with span
        masks from a fixed generator (the same masks at every validation)."""
        d = self.valid_data
        model = self.raw_model
        was = model.training
        model.eval()
        g = torch.Generator().manual_seed(self.cfg.seed + 99991)
        sums: Dict[str, float] = {}
        n = 0
        budget = max(self.cfg.max_tokens, int(d.num_tokens().max()))
        for idx in make_batches(d.src_lens, d.tgt_lens, budget, shuffle=False):
            src, tgt = collate(d, idx)
            batch = build_batch(tgt.to(self.device), span_mask(tgt, generator=g).to(self.device))
            with self._autocast():
                loss, terms = compute_loss(model, src.to(self.device), batch, self.cfg.mode,
                                           self.weights, opts=model.exec,
                                           terms_fn=self.terms_fn)
            for k, v in [("valid_loss", loss)] + [(f"valid_{t}", x) for t, x in terms.items()]:
                sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
            n += len(idx)
        model.train(was)
        return {k: v / n for k, v in sums.items()}

    def valid_bleu(self) -> Dict[str, float]:
        """BLEU of AR (greedy or beam ``valid_beam``) and NAR (mask-predict with
        ``valid_iterations``) decoding on the first ``valid_bleu_sentences`` valid pairs."""
        from .generate import bleu, translate
        cfg, d = self.cfg, self.valid_data
        n = min(cfg.valid_bleu_sentences, len(d))
        if n == 0:
            return {}
        src, refs = d.text_src[:n], d.text_tgt[:n]
        out = {}
        if cfg.mode != "cmlm":
            hyp = translate(self.raw_model, self.vocab, src, decoder="ar", beam=cfg.valid_beam)
            out["bleu_ar"] = bleu(hyp.hyps, refs)
        if cfg.mode != "ar":
            hyp = translate(self.raw_model, self.vocab, src, decoder="nar",
                            iterations=cfg.valid_iterations, length_beam=cfg.valid_length_beam)
            out["bleu_nar"] = bleu(hyp.hyps, refs)
        return out

    def validate(self) -> Dict[str, float]:
        """Validation on rank 0 (others wait), under a forked RNG so that training's random
        streams are untouched; saves checkpoint_best.pt when the loss improves."""
        res: Dict[str, float] = {}
        if self.rank == 0 and self.valid_data is not None:
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                res = self.valid_loss()
                res.update(self.valid_bleu())
            self._record({"update": self.update, "epoch": round(self.epochs_done(), 3),
                          **res, "elapsed_s": round(self.elapsed_total, 1)})
        res = self._broadcast(res)
        self.validated_update, self.last_valid = self.update, res
        if res and res["valid_loss"] < self.best_valid_loss:
            self.best_valid_loss = res["valid_loss"]
            self.save("checkpoint_best.pt")
        return res
