"""Trainer checkpoint files: crash-safe writes, the resume search with its fallback, the
numbered-checkpoint listing, parameter averaging, and the run log's cut-back on resume.

Crash safety. A checkpoint is written to ``<name>.tmp<PID>``, flushed to disk and renamed
over ``<name>`` (``os.replace`` is atomic), so a process killed at any moment leaves either
the old or the new file, never a mixture. What a kill can leave behind:

* the temporary file itself: :func:`remove_stale_temporaries` deletes those whose process
  is gone when the next run starts;
* a 0-byte or truncated ``checkpoint_last.pt`` (a full disk, a crash of the machine before
  the data reached the disk, a copy cut short): :func:`find_resume_checkpoint` then falls
  back to the newest numbered checkpoint that loads.

The run log (``log.jsonl``) must describe one history: after a resume from update U the
records of the discarded segment (update > U), and a line cut short by a kill, are removed
(:func:`truncate_log`). Every record of update U is written before any checkpoint of update
U (the trainer logs and validates, then saves), so the records kept are exactly those of the
resumed state's past.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["CHECKPOINT_FORMAT", "atomic_save", "remove_stale_temporaries", "load_checkpoint",
           "find_resume_checkpoint", "numbered_checkpoints", "last_checkpoints",
           "average_checkpoints", "truncate_log"]

CHECKPOINT_FORMAT = "janus-model-checkpoint-1"
_NUMBERED = re.compile(r"checkpoint_(\d+)\.pt")
_TEMPORARY = re.compile(r".+\.(?:pt|jsonl)\.tmp(\d+)")


# ----------------------------------------------------------------------------- writing
def atomic_save(obj, path: str) -> None:
    """``torch.save`` to ``path`` through a flushed temporary file and an atomic rename; the
    temporary file is removed if the save fails."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())            # the rename must never publish unwritten data
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _process_alive(pid: int) -> bool:
    if pid <= 0:                            # 0 / negative would address process groups
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:                 # exists, owned by another user
        return True
    return True


def remove_stale_temporaries(out_dir: str) -> List[str]:
    """Delete the ``*.pt.tmp<PID>`` (and ``log.jsonl.tmp<PID>``) files that a process killed
    mid-write left in ``out_dir``
    (those of a still-running process other than this one are left alone); returns them."""
    removed = []
    for p in glob.glob(os.path.join(glob.escape(out_dir), "*.tmp*")):
        m = _TEMPORARY.fullmatch(os.path.basename(p))
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _process_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
            removed.append(p)
    return removed


# ----------------------------------------------------------------------------- reading
def load_checkpoint(path: str) -> Dict:
    """``torch.load`` on the CPU; an unreadable file (0 bytes, truncated, not a torch file)
    raises a ValueError naming it instead of the bare ``EOFError`` / zip error."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:                  # EOFError, RuntimeError (zip), UnpicklingError...
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        raise ValueError(f"checkpoint {path!r} ({size} bytes) is unreadable, probably "
                         f"truncated: {type(e).__name__}: {e}") from None
    if not isinstance(ck, dict):
        raise ValueError(f"checkpoint {path!r}: expected a dict, got {type(ck).__name__}")
    return ck


def _check_trainer_checkpoint(ck: Dict, path: str) -> None:
    if ck.get("format") != CHECKPOINT_FORMAT or "optimizer" not in ck:
        raise ValueError(f"resume: {path!r} is not a full trainer checkpoint "
                         f"(averaged or foreign checkpoints can not resume training)")


def numbered_checkpoints(out_dir: str) -> List[Tuple[int, str]]:
    """(update, path) of every ``checkpoint_<update>.pt`` in ``out_dir``, oldest first."""
    found = []
    for p in glob.glob(os.path.join(glob.escape(out_dir), "checkpoint_*.pt")):
        m = _NUMBERED.fullmatch(os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume_checkpoint(out_dir: str, resume, log: Callable[[str], None]
                           ) -> Optional[Tuple[str, Dict]]:
    """(path, checkpoint) to resume from, or None for a fresh start.

    ``resume``: False/None = fresh; a path = exactly that checkpoint (an unreadable one is an
    error); True = ``out_dir/checkpoint_last.pt``, or, when that file is unreadable or
    missing, the newest numbered checkpoint that loads (with a warning). True and no
    checkpoint at all: None."""
    if resume is False or resume is None:
        return None
    if resume is not True:
        if not os.path.isfile(resume):
            raise FileNotFoundError(f"resume: checkpoint {resume!r} does not exist")
        ck = load_checkpoint(resume)
        _check_trainer_checkpoint(ck, resume)
        return resume, ck
    last = os.path.join(out_dir, "checkpoint_last.pt")
    candidates = ([last] if os.path.isfile(last) else []) + \
        [p for _, p in reversed(numbered_checkpoints(out_dir))]
    if not candidates:
        return None
    if candidates[0] != last:
        log(f"warning: {last} is missing; resuming from the newest numbered checkpoint "
            f"(pass --no-resume to start afresh)")
    broken = []
    for path in candidates:
        try:
            ck = load_checkpoint(path)
        except ValueError as e:
            log(f"warning: {e}; trying an older checkpoint")
            broken.append(path)
            continue
        _check_trainer_checkpoint(ck, path)
        if broken:
            log(f"warning: resuming from {path} instead of the unreadable "
                f"{', '.join(os.path.basename(b) for b in broken)}")
        return path, ck
    raise ValueError(f"resume: no readable checkpoint in {out_dir!r} (tried "
                     f"{', '.join(os.path.basename(b) for b in broken)}); pass --no-resume "
                     f"(resume=False) to start afresh or --resume-from a good checkpoint")


# --------------------------------------------------------------------------- averaging
def last_checkpoints(out_dir: str, n: int) -> List[str]:
    """The ``n`` most recent ``checkpoint_<update>.pt`` files of a run, oldest first."""
    found = numbered_checkpoints(out_dir)
    if n < 1 or len(found) < n:
        raise ValueError(f"last_checkpoints: asked for {n}, found {len(found)} numbered "
                         f"checkpoints in {out_dir!r}")
    return [p for _, p in found[-n:]]


def average_checkpoints(paths: Sequence[str]) -> Dict:
    """Parameter average of trainer checkpoints (the paper averages the last 5).

    Floating tensors: sum in float64, divide by n, cast back to the stored dtype; other
    tensors must be identical. Returns the last checkpoint's dict with ``model`` replaced and
    the training state (optimizer, RNG, data position) removed: it is for inference."""
    if not paths:
        raise ValueError("average_checkpoints: no paths")
    acc: Optional[Dict[str, torch.Tensor]] = None
    dtypes: Dict[str, torch.dtype] = {}
    last: Dict = {}
    for p in paths:
        ck = load_checkpoint(p)
        sd = ck.get("model")
        if not isinstance(sd, dict):
            raise ValueError(f"average_checkpoints: {p!r} has no 'model' state")
        if acc is None:
            acc = {k: (v.double().clone() if v.is_floating_point() else v.clone())
                   for k, v in sd.items()}
            dtypes = {k: v.dtype for k, v in sd.items()}
        else:
            if set(sd) != set(acc):
                raise ValueError(f"average_checkpoints: {p!r} has different parameters "
                                 f"(differs in {sorted(set(sd) ^ set(acc))[:5]})")
            for k, v in sd.items():
                if v.shape != acc[k].shape:
                    raise ValueError(f"average_checkpoints: {p!r}: {k} has shape "
                                     f"{tuple(v.shape)}, expected {tuple(acc[k].shape)}")
                if v.is_floating_point():
                    acc[k] += v.double()
                elif not torch.equal(v, acc[k]):
                    raise ValueError(f"average_checkpoints: non-float tensor {k} differs in "
                                     f"{p!r}")
        last = ck
    avg = {k: (v / len(paths)).to(dtypes[k]) if dtypes[k].is_floating_point else v
           for k, v in acc.items()}
    out = {k: v for k, v in last.items()
           if k not in ("optimizer", "schedule", "rng", "epoch", "batch_in_epoch")}
    out["model"] = avg
    out["averaged_from"] = [os.path.abspath(p) for p in paths]
    return out


# --------------------------------------------------------------------------------- log
def truncate_log(path: str, update: int) -> int:
    """Keep the records of ``path`` (JSON lines) with ``update`` <= ``update``, dropping the
    later ones and any line a kill cut short; rewrites the file atomically. Returns the
    number of lines dropped (0: the file is untouched)."""
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
            at = int(rec.get("update", 0)) if isinstance(rec, dict) else None
        except (ValueError, TypeError):
            continue
        if at is not None and at <= update:
            keep.append(line)
    dropped = len(lines) - len(keep)
    if dropped:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
    return dropped
