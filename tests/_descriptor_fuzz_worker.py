"""Worker for tests/test_descriptor_fuzz.py, run as a long-lived subprocess so that a
crashing kernel (segfault, abort) is caught instead of taking pytest down.

Reads cases (one JSON object per line) on stdin; for every case and every backend named in
it, prints ``{"event": "start", ...}`` before the call and ``{"event": "done", "status": ...}``
after it, then ``{"event": "case_end"}``, each line flushed, so the parent knows which call a
dead worker was in. Statuses:

* ``ok``       -- the output (and the gradients asked for) match ``materialize()`` + the dense
                  float64 reference within the tolerance rule of tests/attention_utils.py;
* ``rejected`` -- building the descriptor raised (the case lists the exception);
* ``error``    -- the call raised (type and message reported, judged by the parent);
* ``mismatch`` -- it returned something wrong (message says what).

Case fields: id, family (a factory family of test_masks._random_descriptor, "hand_built" or
"mutated"), seed, B (hand_built), H, Hkv, d, dtype, layouts (q, k, v), grads (q, k, v),
scale, backends, raw (call the custom op ``janus::attention_fwd``/``attention_bwd``
directly: no Python validation), hand (hand_built: params, q_len, kv_len, q_split, kind,
rank), mutation (mutated: sample, field, value).
"""
import json
import os
import sys
import traceback

import torch

import janus_kernels as jk
from janus_kernels.masks import NUM_FIELDS, MaskDescriptor
from attention_utils import assert_close_to_reference
from test_masks import _random_descriptor

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def build_descriptor(case) -> MaskDescriptor:
    fam = case["family"]
    if fam == "__abort__":                  # the runner's own test: die like a kernel would
        os.abort()
    if fam == "hand_built":
        h = case["hand"]
        rank = None if h["rank"] is None else torch.tensor(h["rank"], dtype=torch.int32)
        return MaskDescriptor(torch.tensor(h["params"], dtype=torch.int32).reshape(-1, NUM_FIELDS),
                              h["q_len"], h["kv_len"], h["q_split"], h["kind"], rank)
    g = torch.Generator().manual_seed(case["seed"])
    base_family = case.get("base_family", fam)
    d = _random_descriptor(base_family, case.get("B", 2), g)
    if fam != "mutated":
        return d
    m = case["mutation"]
    params = d.params.clone()
    params[m["sample"] % max(d.batch_size, 1), m["field"]] = m["value"]
    return MaskDescriptor(params, d.q_len, d.kv_len, d.q_split, d.kind, d.rank)


def raw_tables(case):
    """(params, rank, q_len, kv_len, q_split, kind) without any validation."""
    h = case["hand"]
    rank = None if h["rank"] is None else torch.tensor(h["rank"], dtype=torch.int32)
    return (torch.tensor(h["params"], dtype=torch.int32).reshape(-1, NUM_FIELDS), rank, h["q_len"],
            h["kv_len"], h["q_split"], h["kind"])


def make_view(shape, layout, dtype, g, requires_grad):
    """A (B, H, L, d) tensor in one of the layouts models produce."""
    B, H, L, d = shape
    if layout == "transposed":              # (B, L, H, d).transpose(1, 2)
        base = torch.randn(B, L, H, d, generator=g)
        make = lambda t: t.transpose(1, 2)  # noqa: E731
    elif layout == "expanded":              # one batch entry broadcast (stride 0)
        base = torch.randn(1, H, L, d, generator=g)
        make = lambda t: t.expand(B, H, L, d)  # noqa: E731
    elif layout == "sliced":                # a slice of a wider tensor along d
        base = torch.randn(B, H, L, d + 3, generator=g)
        make = lambda t: t[..., 1:d + 1]    # noqa: E731
    elif layout == "strided":               # every other element of the last dim
        base = torch.randn(B, H, L, 2 * d, generator=g)
        make = lambda t: t[..., ::2]        # noqa: E731
    else:
        base = torch.randn(B, H, L, d, generator=g)
        make = lambda t: t                  # noqa: E731
    base = base.to(dtype).requires_grad_(requires_grad)
    return make(base)


def run_case(case, emit) -> None:
    try:
        desc = None if case.get("raw") else build_descriptor(case)
    except Exception as e:                  # noqa: BLE001 -- reported, judged by the parent
        for be in case["backends"]:
            emit(case, be, "rejected", exc=e)
        return
    if desc is not None:
        B, Lq, Lk = desc.batch_size, desc.q_len, desc.kv_len
    else:
        params, rank, Lq, Lk, q_split, kind = raw_tables(case)
        B = params.shape[0]
    dtype = DTYPES[case["dtype"]]
    g = torch.Generator().manual_seed(case["seed"] + 1)
    H, Hkv, d = case["H"], case["Hkv"], case["d"]
    shapes = ((B, H, Lq, d), (B, Hkv, Lk, d), (B, Hkv, Lk, d))
    q, k, v = (make_view(s, lay, dtype, g, rg)
               for s, lay, rg in zip(shapes, case["layouts"], case["grads"]))
    do = torch.randn(B, H, Lq, d, generator=g).to(dtype)
    before = [t.detach().clone() for t in (q, k, v)]
    for be in case["backends"]:
        emit(case, be, "start")
        try:
            if desc is None:
                status, msg = _raw_call(q, k, v, do, params, rank, q_split, kind, case, be)
            else:
                status, msg = _api_call(q, k, v, do, desc, case, be)
        except Exception as e:              # noqa: BLE001
            emit(case, be, "error", exc=e)
            continue
        if status == "ok" and not all(torch.equal(a, b.detach()) for a, b in
                                      zip(before, (q, k, v))):
            status, msg = "mismatch", "an input tensor was modified"
        emit(case, be, status, msg=msg)


def _api_call(q, k, v, do, desc, case, be):
    out = jk.attention(q, k, v, desc, scale=case["scale"], backend=be)
    want = [i for i, t in enumerate((q, k, v)) if t.requires_grad]
    grads = torch.autograd.grad(out, [(q, k, v)[i] for i in want], do) if want else ()
    ours = [out] + [None, None, None]
    for i, gr in zip(want, grads):
        ours[i + 1] = gr
    # compare only what was computed: fill the rest with the exact values (always pass)
    from attention_utils import ref_outputs
    exact = ref_outputs(q.detach().double(), k.detach().double(), v.detach().double(),
                        do.double(), desc.materialize(), upcast=True, scale=case["scale"])
    ours = [e.to(q.dtype) if o is None else o for o, e in zip(ours, exact)]
    # The rounding floor of assert_close_to_reference (8 eps max|exact|), widened by how much
    # larger than the default the scale is: with a large scale the softmax saturates, the
    # same-precision reference can be exact (error 0) while dq = scale dS K still carries
    # the kernel's rounding of terms that cancel.
    mag = max([e.abs().max().item() for e in exact if e.numel()] + [1.0])
    widen = max(1.0, (case["scale"] or 0.0) * q.shape[-1] ** 0.5)
    eps = torch.finfo(q.dtype).eps
    floor = 8 * eps * mag * widen
    try:
        assert_close_to_reference(ours, q.detach(), k.detach(), v.detach(), do,
                                  desc.materialize(), scale=case["scale"], floor=floor)
    except AssertionError as e:
        return "mismatch", str(e)[:500]
    return "ok", ""


def _raw_call(q, k, v, do, params, rank, q_split, kind, case, be):
    scale = case["scale"] if case["scale"] is not None else q.shape[-1] ** -0.5
    out, lse = torch.ops.janus.attention_fwd(q.detach(), k.detach(), v.detach(), params, rank,
                                             q_split, kind, scale, 0.0, None, be)
    torch.ops.janus.attention_bwd(do, q.detach(), k.detach(), v.detach(), out, lse, params,
                                  rank, q_split, kind, scale, 0.0, None, be)
    return "ok", ""


def _emitter(stream):
    def emit(case, backend, status, exc=None, msg=""):
        rec = {"id": case["id"], "backend": backend,
               "event": "start" if status == "start" else "done", "status": status}
        if exc is not None:
            rec["exc"] = type(exc).__name__
            rec["msg"] = str(exc)[:500]
            rec["where"] = traceback.format_exc(limit=-3)[-800:]
        elif msg:
            rec["msg"] = msg
        stream.write(json.dumps(rec) + "\n")
        stream.flush()
    return emit


def main() -> None:
    torch.set_num_threads(1)
    from _triton_interp_fix import apply       # the interpreter fixes conftest applies
    apply()
    emit = _emitter(sys.stdout)
    for line in sys.stdin:
        if line.strip():
            case = json.loads(line)
            run_case(case, emit)
            sys.stdout.write(json.dumps({"id": case["id"], "event": "case_end"}) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
