"""attn_implementation="janus" in Hugging Face transformers (janus_kernels.integrations.transformers)
on tiny random-init models (no download): logits and every parameter gradient against eager fp64,
within 2x of the fp32 error of transformers' own implementations (sdpa, eager); greedy
generate() with a KV cache identical to sdpa; the mask function against HF's sdpa masks; the
fallback warns once and is exact; T5, Gemma-2's softcap and a left-padded Llama run on the
kernel (no fallback); one model under torch.compile(fullgraph=True)."""
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

transformers = pytest.importorskip("transformers")

from transformers import masking_utils as mu  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402

import janus_kernels.integrations.transformers as jk_hf  # noqa: E402
from janus_kernels.integrations._hf_masks import Fallback  # noqa: E402
from tests.attention_utils import assert_within_rule, max_err  # noqa: E402

jk_hf.register()
V, B, L = 128, 3, 10
LENGTHS = (10, 7, 4)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=V, max_position_embeddings=64)


def _config(name: str):
    t = transformers
    if name == "gpt2":
        return t.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=V, n_positions=64,
                            attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    if name == "llama":
        return t.LlamaConfig(**TINY)
    if name == "mistral":
        return t.MistralConfig(**TINY, sliding_window=4)
    if name == "gemma2":
        return t.Gemma2Config(**TINY, head_dim=16, sliding_window=4, attn_logit_softcapping=50.0,
                              query_pre_attn_scalar=16)
    if name == "bert":
        return t.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, vocab_size=V, max_position_embeddings=64,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if name == "bart":
        return t.BartConfig(d_model=64, encoder_layers=2, decoder_layers=2,
                            encoder_attention_heads=4, decoder_attention_heads=4,
                            encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=V,
                            max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
    if name == "t5":
        return t.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                          num_heads=4, vocab_size=V, relative_attention_num_buckets=8,
                          relative_attention_max_distance=16, dropout_rate=0.0,
                          decoder_start_token_id=0)
    raise KeyError(name)


_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
            "mistral": "MistralForCausalLM", "gemma2": "Gemma2ForCausalLM",
            "bert": "BertForMaskedLM", "bart": "BartForConditionalGeneration",
            "t5": "T5ForConditionalGeneration"}
SEQ2SEQ = ("bart", "t5")
MODELS = tuple(_CLASSES)


def build(name: str, impl: str, dtype=torch.float32):
    """The same random weights (seed 0) under attention implementation ``impl``."""
    torch.manual_seed(0)
    model = getattr(transformers, _CLASSES[name])._from_config(_config(name),
                                                               attn_implementation=impl)
    return model.to(dtype).eval()


def padding_mask(side: str) -> torch.Tensor:
    m = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        if side == "right":
            m[b, :n] = 1
        else:
            m[b, L - n:] = 1
    return m


def inputs(name: str, side: str) -> dict:
    g = torch.Generator().manual_seed(1)
    mask = padding_mask(side)
    ids = torch.randint(3, V, (B, L), generator=g) * mask
    kw = dict(input_ids=ids, attention_mask=mask)
    if name in SEQ2SEQ:
        dec = torch.randint(3, V, (B, L), generator=g)
        kw.update(decoder_input_ids=dec * mask.flip(0), decoder_attention_mask=mask.flip(0))
    return kw


def run(model, kw: dict, weights: torch.Tensor):
    """Logits at the real positions and every parameter gradient of a weighted sum of them
    (padded positions excluded: implementations disagree there by design)."""
    model.zero_grad(set_to_none=True)
    logits = model(**kw).logits
    rows = (kw.get("decoder_attention_mask", kw["attention_mask"]) > 0)
    loss = (logits * weights.to(logits.dtype) * rows[..., None]).sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach()[rows], grads


def _impls(name: str):
    # Gemma-2 declares no sdpa support (sdpa has no softcap): eager is its fp32 reference
    return ("eager",) if name == "gemma2" else ("sdpa", "eager")


def _finite_fill_eager_mask(*args, dtype=torch.float32, **kwargs):
    """HF's eager mask with float32's lowest value as the fill even for fp64 models: with
    float64's own lowest value, a fully padded row (left padding) overflows to -inf and its NaN
    poisons every gradient through 0 * NaN."""
    m = mu.eager_mask(*args, dtype=torch.float32, **kwargs)
    return None if m is None else m.to(dtype)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", MODELS)
def test_logits_and_gradients_match(name, side, monkeypatch):
    monkeypatch.setitem(mu.AttentionMaskInterface._global_mapping, "eager", _finite_fill_eager_mask)
    kw = inputs(name, side)
    weights = torch.randn(B, L, V, generator=torch.Generator().manual_seed(2))
    exact = run(build(name, "eager", torch.float64), kw, weights)
    refs = [run(build(name, impl), kw, weights) for impl in _impls(name)]
    got = run(build(name, "janus"), kw, weights)
    keys = sorted(exact[1])
    assert sorted(got[1]) == keys, "janus left some parameters without a gradient"
    for label, g, e, rs in [("logits", got[0], exact[0], [r[0] for r in refs])] + \
            [(k, got[1][k], exact[1][k], [r[1][k] for r in refs]) for k in keys]:
        same = max(rs, key=lambda r: max_err(r, e))     # the larger fp32 reference error
        floor = 4 * torch.finfo(torch.float32).eps * max(e.abs().max().item(), 1.0)
        assert_within_rule(f"{name}/{side}/{label}", g, e, same, grad=False, floor=floor)


@pytest.mark.parametrize("name,cache", [("gpt2", "dynamic"), ("llama", "dynamic"),
                                        ("mistral", "dynamic"), ("bart", "dynamic"),
                                        ("t5", "dynamic"), ("llama", "static"),
                                        ("mistral", "static")])
def test_generate_matches_sdpa(name, cache):
    """Greedy decoding with a KV cache on a left-padded batch (decoder-only: every step is
    Lq = 1 against a cache; Mistral's window 4 makes its cache keep a suffix). A static cache
    makes generate() build the masks ahead and pass them back into the forward."""
    kw = inputs(name, "left" if name not in SEQ2SEQ else "right")
    kw = {k: v for k, v in kw.items() if not k.startswith("decoder_")}
    gen = dict(max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    if cache == "static":
        gen["cache_implementation"] = "static"
    with torch.no_grad():
        want = build(name, "sdpa").generate(**kw, **gen)
        got = build(name, "janus").generate(**kw, **gen)
    assert torch.equal(got, want)


class _Spy:
    """Counts janus kernel calls made by the integration."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = jk_hf.attention

        def spy(*a, **k):
            self.calls += 1
            return real(*a, **k)
        monkeypatch.setattr(jk_hf, "attention", spy)


@pytest.mark.parametrize("name,side,calls", [("t5", "right", 6), ("gemma2", "right", 2),
                                             ("llama", "left", 2), ("bart", "left", 6)])
def test_runs_on_the_kernel_without_fallback(name, side, calls, monkeypatch):
    spy = _Spy(monkeypatch)
    model = build(name, "janus")
    with warnings.catch_warnings():
        warnings.simplefilter("error", jk_hf.JanusFallbackWarning)
        with torch.no_grad():
            model(**inputs(name, side))
    assert spy.calls == calls   # every attention layer (seq2seq: 2 encoder + 2 x (self, cross))


def test_fallback_warns_once_and_is_exact(monkeypatch):
    """Padding in the middle of a sample is not one run of keys: HF's sdpa path serves it, with
    exactly one warning naming the reason, and gives sdpa's result bit for bit."""
    monkeypatch.setattr(jk_hf, "_WARNED", set())
    spy = _Spy(monkeypatch)
    kw = inputs("llama", "right")
    kw["attention_mask"][0, 3] = 0
    want = build("llama", "sdpa")(**kw).logits
    model = build("llama", "janus")
    with pytest.warns(jk_hf.JanusFallbackWarning, match="contiguous") as rec:
        got = [model(**kw).logits for _ in range(2)]
    assert len([w for w in rec if issubclass(w.category, jk_hf.JanusFallbackWarning)]) == 1
    assert spy.calls == 0
    for g in got:
        assert torch.equal(g, want)


def test_softcap_fallback_is_eager_exact(monkeypatch):
    """An explicit 4-D mask on Gemma-2 (softcap: sdpa cannot serve it) falls back to the dense
    eager formula, matching transformers' eager Gemma-2."""
    monkeypatch.setattr(jk_hf, "_WARNED", set())
    kw = inputs("gemma2", "right")
    am = kw.pop("attention_mask").bool()
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    mask4 = torch.where(causal & am[:, None, None, :], 0.0, torch.finfo(torch.float32).min)
    want = build("gemma2", "eager")(**kw, attention_mask=mask4).logits
    with pytest.warns(jk_hf.JanusFallbackWarning, match="4-D"):
        got = build("gemma2", "janus")(**kw, attention_mask=mask4).logits
    rows = am
    assert max_err(got[rows], want[rows]) < 1e-5


def _hf_mask_pair(creator, config, embeds, am, cache=None, **kw):
    out = {}
    for impl in ("janus", "sdpa"):
        config._attn_implementation = impl
        out[impl] = creator(config=config, inputs_embeds=embeds, attention_mask=am, cache=cache, **kw)
    return out["janus"], out["sdpa"]


_MASK_CASES = [(kind, past) for kind in ("causal", "sliding", "chunked") for past in (0, 5)] + \
    [("bidirectional", 0), ("bidirectional_sliding", 0)]   # bidirectional: built without cache


@pytest.mark.parametrize("side", ["right", "left", "none"])
@pytest.mark.parametrize("kind,past", _MASK_CASES)
def test_mask_function_matches_hf(kind, past, side):
    """The descriptor equals HF's own sdpa mask for every pattern, padding side and cache
    offset (past tokens in a DynamicCache; a window / chunk of 3 makes the cache keep a suffix:
    kv_offset > 0)."""
    config = transformers.MistralConfig(**TINY, sliding_window=3)
    config.attention_chunk_size = None
    if kind == "chunked":
        config.attention_chunk_size, config.sliding_window = 3, None
    q = 4 if past else L
    total = past + q
    am = None if side == "none" else padding_mask(side if side != "none" else "right")
    if am is not None:
        am = torch.cat([am, torch.ones(B, max(total - L, 0), dtype=am.dtype)], 1)[:, :total]
    cache = None
    if past:
        layer = {"sliding": "sliding_attention", "chunked": "chunked_attention"}
        config.layer_types = [layer.get(kind, "full_attention")] * 2   # local caches drop keys
        cache = DynamicCache(config=config)
        kv = torch.zeros(B, 2, past, 16)
        for i in range(2):
            cache.update(kv, kv, i)
    embeds = torch.zeros(B, q, 64)
    if kind == "causal":
        got, want = _hf_mask_pair(mu.create_causal_mask, config, embeds, am, cache,
                                  allow_is_causal_skip=False)
    elif kind == "sliding":
        got, want = _hf_mask_pair(mu.create_sliding_window_causal_mask, config, embeds, am,
                                  cache, allow_is_causal_skip=False)
    elif kind == "chunked":
        got, want = _hf_mask_pair(mu.create_chunked_causal_mask, config, embeds, am, cache,
                                  allow_is_causal_skip=False)
    else:
        creator = mu.create_bidirectional_mask if kind == "bidirectional" \
            else mu.create_bidirectional_sliding_window_mask
        got, want = _hf_mask_pair(creator, config, embeds, am, allow_is_bidirectional_skip=False)
    assert not isinstance(got, Fallback), got.reason
    assert torch.equal(got.materialize(), want[:, 0])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_mask_function_matches_sdpa_mask_property(data):
    """Random sizes, padding runs, cache offsets (q_offset, kv_offset) and patterns: the
    descriptor equals HF's sdpa_mask called with the same arguments the creators pass."""
    b = data.draw(st.integers(1, 3))
    q_len = data.draw(st.integers(1, 6))
    kv_offset = data.draw(st.integers(0, 4))
    kv_len = data.draw(st.integers(q_len, 9))
    q_offset = kv_offset + kv_len - q_len                   # HF: queries are the newest tokens
    total = kv_offset + kv_len
    am = torch.zeros(b, total, dtype=torch.bool)
    for i in range(b):
        lo = data.draw(st.integers(0, total))
        am[i, lo:data.draw(st.integers(lo, total))] = True
    size = data.draw(st.integers(1, 5))
    kind = data.draw(st.sampled_from(["causal", "sliding", "chunked", "bidirectional",
                                      "bidirectional_sliding"]))
    kw = dict(batch_size=b, q_length=q_len, kv_length=kv_len, q_offset=q_offset,
              kv_offset=kv_offset, attention_mask=am)
    if kind == "causal":
        kw.update(mask_function=mu.causal_mask_function)
    elif kind == "sliding":
        kw.update(mask_function=mu.sliding_window_causal_mask_function(size), local_size=size)
    elif kind == "chunked":
        lp = (am.cumsum(-1) == torch.zeros_like(am)).sum(-1)
        kw.update(mask_function=mu.chunked_causal_mask_function(size, lp), local_size=size)
    elif kind == "bidirectional":
        kw.update(mask_function=mu.bidirectional_mask_function, allow_is_bidirectional_skip=False)
    else:
        kw.update(mask_function=mu.sliding_window_bidirectional_mask_function(size),
                  local_size=size, allow_is_bidirectional_skip=False)
    got = jk_hf.janus_mask(**kw)
    want = mu.sdpa_mask(**dict(kw, allow_is_causal_skip=False, allow_is_bidirectional_skip=False))
    assert not isinstance(got, Fallback), got.reason
    assert torch.equal(got.materialize(), want[:, 0])


def test_custom_mask_function_falls_back():
    """A user and_mask_function is not a pattern the kernel knows: HF's own mask is returned."""
    config = transformers.LlamaConfig(**TINY)
    config._attn_implementation = "janus"
    got = mu.create_causal_mask(config=config, inputs_embeds=torch.zeros(B, L, 64),
                                attention_mask=padding_mask("right"), cache=None,
                                and_mask_function=lambda b, h, q, k: k != 2)
    assert isinstance(got, Fallback) and "custom" in got.reason
    assert got.mask.shape == (B, 1, L, L) and not got.mask[..., 2].any()


def test_compiled_fullgraph_matches_eager():
    """Left-padded Llama under torch.compile(fullgraph=True): the mask function builds the
    descriptor with tensor ops only (no graph break), same logits as eager janus."""
    model = build("llama", "janus")
    kw = inputs("llama", "left")
    with torch.no_grad():
        want = model(**kw).logits
        torch._dynamo.reset()
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(**kw).logits
    rows = kw["attention_mask"] > 0
    assert max_err(got[rows], want[rows]) < 1e-5


def test_compiled_fallback_is_exact_and_warns(monkeypatch):
    """Under torch.compile(fullgraph=True) a fallback (an explicit 4-D mask) traces without a
    graph break, gives sdpa's result, and its warning is issued while tracing."""
    monkeypatch.setattr(jk_hf, "_WARNED", set())
    kw = inputs("llama", "right")
    am = kw.pop("attention_mask").bool()
    mask4 = torch.ones(L, L, dtype=torch.bool).tril() & am[:, None, None, :]
    with torch.no_grad():
        want = build("llama", "sdpa")(**kw, attention_mask=mask4).logits
        torch._dynamo.reset()
        model = torch.compile(build("llama", "janus"), fullgraph=True, backend="aot_eager")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jk_hf.JanusFallbackWarning)
            got = model(**kw, attention_mask=mask4).logits
    assert jk_hf._WARNED == {"an explicit 4-D attention mask"}
    assert torch.equal(got, want)


def test_register_rejects_builtin_names():
    with pytest.raises(ValueError, match="own implementations"):
        jk_hf.register("sdpa")


def test_importing_janus_kernels_does_not_import_transformers():
    import subprocess
    import sys
    code = "import sys, janus_kernels; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("decoder,q_len,kv_len,past", [(False, 9, 9, 0), (True, 6, 6, 0),
                                                       (True, 1, 12, 11), (True, 3, 20, 17)])
def test_t5_position_bias_is_the_rel_bias_table(decoder, q_len, kv_len, past):
    """T5's position_bias depends on (head, j - i) only, so the two slices the integration
    takes are the whole (H, Lq + Lk - 1) table: spread back over (i, j) they give HF's
    position_bias bit for bit (with a cache offset too), and they equal score_mods.t5_bias
    built from the bucket embedding."""
    config = _config("t5")
    config.is_decoder = decoder
    module = transformers.models.t5.modeling_t5.T5Attention(
        config, has_relative_attention_bias=True, layer_idx=0)
    pb = module.compute_bias(q_len, kv_len, past_seen_tokens=past)
    query = torch.zeros(1, config.num_heads, q_len, config.d_kv)
    table, reason = jk_hf._t5_rel_bias(module, pb, query, kv_len)
    assert reason is None
    diag = torch.arange(kv_len)[None, :] - torch.arange(q_len)[:, None] + q_len - 1
    assert torch.equal(table[:, diag], pb[0].float())
    score_mods = pytest.importorskip("janus_kernels.score_mods")
    want = score_mods.t5_bias(module.relative_attention_bias.weight.t(), q_len, kv_len,
                              bidirectional=not decoder, num_buckets=8, max_distance=16,
                              q_offset=past)
    assert torch.equal(table, want)


def test_position_bias_of_other_modules_falls_back(monkeypatch):
    monkeypatch.setattr(jk_hf, "_WARNED", set())
    q = torch.randn(1, 2, 4, 8)
    bias = torch.randn(1, 2, 4, 4)
    module = torch.nn.Module()
    module.is_causal = False
    with pytest.warns(jk_hf.JanusFallbackWarning, match="position_bias from Module"):
        out, _ = jk_hf.janus_attention_forward(module, q, q, q, None, position_bias=bias)
    want = torch.softmax(q @ q.transpose(-1, -2) / 8 ** 0.5 + bias, -1) @ q
    assert max_err(out, want.transpose(1, 2)) < 1e-6


def test_attention_sinks_fall_back_to_the_eager_formula(monkeypatch):
    """gpt-oss attention sinks (s_aux) are outside the kernel: the dense fallback matches
    transformers' own gpt-oss eager attention, weights included."""
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward
    monkeypatch.setattr(jk_hf, "_WARNED", set())
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, s, 5, 8, generator=g) for s in (4, 2, 2))
    module = torch.nn.Module().eval()
    module.sinks, module.num_key_value_groups = torch.randn(4, generator=g), 2
    am = padding_mask("left")[:2, -5:]
    desc = jk_hf.janus_mask(2, 5, 5, attention_mask=am.bool())
    dense = torch.where(desc.materialize()[:, None], 0.0, torch.finfo(torch.float32).min)
    want = eager_attention_forward(module, q, k, v, dense, scaling=0.3)
    with pytest.warns(jk_hf.JanusFallbackWarning, match="sinks"):
        got = jk_hf.janus_attention_forward(module, q, k, v, desc, scaling=0.3, s_aux=module.sinks)
    assert max_err(got[0], want[0]) < 1e-6 and max_err(got[1], want[1]) < 1e-6


def test_benchmark_quick_runs(tmp_path):
    """benchmarks/hf_llama.py --quick: every implementation timed, janus without fallback."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "hf.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.hf_llama", "--quick", "--threads", "1",
                        "--json", str(out)], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["impl"] for row in rows] == ["janus", "sdpa", "eager"]
    assert all(row["status"] == "ok" and row["ms"] > 0 for row in rows)
