#!/usr/bin/env python3
"""Developer checks for ./convert (not part of the test suite): builds it, converts the fixtures in tests/data,
and checks the result against the safetensors and HF's own config semantics, then tries FP8, sharded and fused
checkpoints, the old rope_scaling spelling, and broken inputs that must fail cleanly.

  python3 tools/check_convert.py        # from the repository root; needs torch, transformers 5, safetensors, regex
"""
import json, math, os, random, shutil, struct, subprocess, sys, tempfile

import numpy as np
import regex
import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "tests", "data")
FIELDS = ("dim n_layers n_heads vocab q_lora dc dn dr dv inter moe_inter n_experts n_shared topk n_group topk_group "
          "first_dense routing norm_topk rope_type rope_interleave yarn_orig_max yarn_truncate max_seq bos eos tok_bytes "
          "eps routed_scale rope_theta yarn_factor yarn_beta_fast yarn_beta_slow rope_attn softmax_scale").split()
(T_EMBED, T_ATTN_NORM, T_WQ_A, T_Q_NORM, T_WQ_B, T_WQ, T_WKV_A, T_KV_NORM, T_WKV_B, T_WO, T_FFN_NORM, T_W1, T_W2, T_W3,
 T_GATE, T_BIAS, T_EW1, T_EW2, T_EW3, T_SW1, T_SW2, T_SW3, T_NORM, T_LM_HEAD) = range(24)
failures = 0


def check(name, ok, detail=""):
    global failures
    failures += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'  ' + detail if detail else ''}")


# ----------------------------------------------------------------------------
# reading a .bin

def read_bin(path):
    raw = open(path, "rb").read()
    magic, version = struct.unpack_from("<Ii", raw, 0)
    assert magic == 0x414C5054 and version == 2, (hex(magic), version)
    c = dict(zip(FIELDS, struct.unpack_from("<27i8f", raw, 8)))
    assert raw[8 + 35 * 4:512] == bytes(512 - 8 - 35 * 4), "header padding is not zero"
    return raw, c


def layout(c):  # tensor_layout() of tpla.h: (kind, layer, f32, shape, offset), and the total size
    out, off = [], 0
    D, H, E, I = c["dim"], c["n_heads"], c["n_experts"], c["moe_inter"]

    def add(k, l, f32, *shape):
        nonlocal off
        out.append((k, l, f32, shape, off))
        off += (int(np.prod(shape)) * (4 if f32 else 2) + 63) & ~63
    add(T_EMBED, -1, 0, c["vocab"], D)
    for l in range(c["n_layers"]):
        add(T_ATTN_NORM, l, 1, D)
        if c["q_lora"]:
            add(T_WQ_A, l, 0, c["q_lora"], D); add(T_Q_NORM, l, 1, c["q_lora"]); add(T_WQ_B, l, 0, H * (c["dn"] + c["dr"]), c["q_lora"])
        else:
            add(T_WQ, l, 0, H * (c["dn"] + c["dr"]), D)
        add(T_WKV_A, l, 0, c["dc"] + c["dr"], D); add(T_KV_NORM, l, 1, c["dc"])
        add(T_WKV_B, l, 0, H, c["dn"] + c["dv"], c["dc"]); add(T_WO, l, 0, D, H * c["dv"]); add(T_FFN_NORM, l, 1, D)
        if not (E > 0 and l >= c["first_dense"]):
            add(T_W1, l, 0, c["inter"], D); add(T_W2, l, 0, D, c["inter"]); add(T_W3, l, 0, c["inter"], D)
        else:
            add(T_GATE, l, 1, E, D); add(T_BIAS, l, 1, E)
            add(T_EW1, l, 0, E, I, D); add(T_EW2, l, 0, E, D, I); add(T_EW3, l, 0, E, I, D)
            if c["n_shared"]:
                S = c["n_shared"] * I
                add(T_SW1, l, 0, S, D); add(T_SW2, l, 0, D, S); add(T_SW3, l, 0, S, D)
    add(T_NORM, -1, 1, D); add(T_LM_HEAD, -1, 0, c["vocab"], D)
    return out, off


def bin_tensors(raw, c):
    wo = (512 + c["tok_bytes"] + 63) & ~63
    ts, total = layout(c)
    assert len(raw) == wo + total, (len(raw), wo + total)
    out = []
    for k, l, f32, shape, off in ts:
        n = int(np.prod(shape))
        if f32:
            a = np.frombuffer(raw, "<f4", n, wo + off)
        else:
            a = (np.frombuffer(raw, "<u2", n, wo + off).astype(np.uint32) << 16).view(np.float32)
        out.append((k, l, a.reshape(shape)))
    return out


def hf_tensors(d):
    """name -> float32 numpy, over every safetensors file of a checkpoint."""
    files = [f for f in os.listdir(d) if f.endswith(".safetensors")]
    out = {}
    for f in files:
        with safe_open(os.path.join(d, f), "pt") as s:
            for k in s.keys():
                out[k] = s.get_tensor(k).float().numpy()
    return out


def expected(k, l, hf, cfg):
    """What the .bin should hold for tensor (kind, layer), from HF tensors (float32); None: zeros."""
    p = f"model.layers.{l}."
    E = cfg["n_experts"]
    names = {T_EMBED: "model.embed_tokens.weight", T_ATTN_NORM: p + "input_layernorm.weight",
             T_WQ_A: p + "self_attn.q_a_proj.weight", T_Q_NORM: p + "self_attn.q_a_layernorm.weight",
             T_WQ_B: p + "self_attn.q_b_proj.weight", T_WQ: p + "self_attn.q_proj.weight",
             T_WKV_A: p + "self_attn.kv_a_proj_with_mqa.weight", T_KV_NORM: p + "self_attn.kv_a_layernorm.weight",
             T_WKV_B: p + "self_attn.kv_b_proj.weight", T_WO: p + "self_attn.o_proj.weight",
             T_FFN_NORM: p + "post_attention_layernorm.weight", T_W1: p + "mlp.gate_proj.weight",
             T_W2: p + "mlp.down_proj.weight", T_W3: p + "mlp.up_proj.weight", T_GATE: p + "mlp.gate.weight",
             T_BIAS: p + "mlp.gate.e_score_correction_bias", T_SW1: p + "mlp.shared_experts.gate_proj.weight",
             T_SW2: p + "mlp.shared_experts.down_proj.weight", T_SW3: p + "mlp.shared_experts.up_proj.weight",
             T_NORM: "model.norm.weight", T_LM_HEAD: "lm_head.weight"}
    if k in (T_EW1, T_EW2, T_EW3):
        part = {T_EW1: "gate_proj", T_EW2: "down_proj", T_EW3: "up_proj"}[k]
        return np.stack([hf[f"{p}mlp.experts.{e}.{part}.weight"] for e in range(E)])
    if k == T_BIAS and names[k] not in hf:
        return None
    if k == T_LM_HEAD and names[k] not in hf:
        return hf["model.embed_tokens.weight"]
    return hf[names[k]]


def compare(binpath, hf, label):
    raw, c = read_bin(binpath)
    bad = []
    for k, l, a in bin_tensors(raw, c):
        want = expected(k, l, hf, c)
        want = np.zeros_like(a) if want is None else want.reshape(a.shape)
        if not np.array_equal(a, want):
            bad.append((k, l))
    check(f"{label}: every tensor equals the safetensors", not bad, f"mismatched (kind, layer): {bad[:5]}" if bad else "")
    return c


def bf16(a):  # round float32 to bf16 (nearest even), back to float32, as convert does
    return torch.from_numpy(a).bfloat16().float().numpy()


# ----------------------------------------------------------------------------
# running convert

def convert(src, out, expect_ok=True, want=None, label=None):
    r = subprocess.run([os.path.join(ROOT, "convert"), src, out], capture_output=True, text=True)
    msg = (r.stderr.strip().splitlines() or [""])[-1]
    if expect_ok:
        check(label or f"convert {os.path.basename(src)}", r.returncode == 0 and os.path.exists(out), msg if r.returncode else "")
    else:
        left = [p for p in (out, out + ".tmp") if os.path.exists(p)]
        ok = r.returncode != 0 and not left and (want is None or want in r.stderr)
        check(label, ok, f"-> {msg!r}" + (f" (left {left})" if left else ""))
    return r


DELETE = object()


def edit_config(d, **kv):  # set keys (None: null), or remove them (DELETE)
    p = os.path.join(d, "config.json")
    cfg = json.load(open(p))
    for k, v in kv.items():
        if v is DELETE:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    json.dump(cfg, open(p, "w"), indent=2)


def copy_fixture(name, tmp, new):
    d = os.path.join(tmp, new)
    shutil.copytree(os.path.join(DATA, name), d)
    return d


def rewrite_weights(d, fn):
    """Load model.safetensors of d, let fn edit the dict of torch tensors, save it back."""
    p = os.path.join(d, "model.safetensors")
    with safe_open(p, "pt") as s:
        ts = {k: s.get_tensor(k) for k in s.keys()}
    fn(ts)
    save_file(ts, p, metadata={"format": "pt"})


# ----------------------------------------------------------------------------
# the tokenizer block

def byte_decoder():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def read_tok_block(raw, c):
    p = 512
    n, nm, pretok, add_bos = struct.unpack_from("<4i", raw, p); p += 16
    toks, flags = [], []
    for _ in range(n):
        ln, fl = struct.unpack_from("<2i", raw, p); p += 8
        toks.append(raw[p:p + ln]); flags.append(fl); p += ln
    merges = [struct.unpack_from("<3i", raw, p + 12 * i) for i in range(nm)]
    assert p + 12 * nm == 512 + c["tok_bytes"], "tokenizer block size"
    return n, pretok, add_bos, toks, flags, merges


def check_tokenizer(raw, c):
    n, pretok, add_bos, toks, flags, merges = read_tok_block(raw, c)
    tj = json.load(open(os.path.join(DATA, "tokenizer.json")))
    dec = byte_decoder()
    want = [b""] * c["vocab"]
    for t, i in tj["model"]["vocab"].items():
        want[i] = bytes(dec[ch] for ch in t)
    want_fl = [0] * c["vocab"]  # 1 special, 2 added token, 4 added token matched after normalization
    for a in tj["added_tokens"]:
        want[a["id"]], want_fl[a["id"]] = a["content"].encode(), int(a["special"]) | (4 if a["normalized"] else 2)
    vocab = tj["model"]["vocab"]
    want_m = [(vocab[a], vocab[b], vocab[a + b]) for a, b in (m.split(" ") if isinstance(m, str) else m for m in tj["model"]["merges"])]
    check("tokenizer block: tokens, flags and merges", n == c["vocab"] and pretok == 0 and add_bos == 0 and toks == want
          and flags == want_fl and merges == want_m, f"{n} tokens, {len(merges)} merges, pretok {pretok}, add_bos {add_bos}")

    # the block alone reproduces HF's encoding of tok.txt (GPT-2 split, then merges by rank)
    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    byte_id = {t[0]: i for i, t in enumerate(toks) if len(t) == 1 and not flags[i]}
    rank = {(l, r): (k, m) for k, (l, r, m) in enumerate(merges)}
    ids = []
    for piece in pat.findall(open(os.path.join(DATA, "tok.txt")).read()):
        w = [byte_id[b] for b in piece.encode()]
        while len(w) > 1:
            best = min(range(len(w) - 1), key=lambda i: rank.get((w[i], w[i + 1]), (1 << 30,))[0])
            if (w[best], w[best + 1]) not in rank:
                break
            w[best:best + 2] = [rank[(w[best], w[best + 1])][1]]
        ids += w
    want_ids = [int(x) for x in open(os.path.join(DATA, "tok_ids.txt")).read().split()]
    check("tokenizer block: a plain BPE over it reproduces tok_ids.txt", ids == want_ids, f"{len(ids)} tokens")


# ----------------------------------------------------------------------------
# the checks

def inv_freq(c):
    """RoPE frequencies from the header alone, as an engine computes them (HF's _compute_yarn_parameters)."""
    dim, base = c["dr"], c["rope_theta"]
    pos = base ** (np.arange(0, dim, 2) / dim)
    if c["rope_type"] == 0:
        return 1 / pos
    corr = lambda rot: dim * math.log(c["yarn_orig_max"] / (rot * 2 * math.pi)) / (2 * math.log(base))
    lo, hi = corr(c["yarn_beta_fast"]), corr(c["yarn_beta_slow"])
    if c["yarn_truncate"]:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    extra = 1 - np.clip((np.arange(dim // 2) - lo) / ((hi + 0.001 if lo == hi else hi) - lo), 0, 1)
    return 1 / (c["yarn_factor"] * pos) * (1 - extra) + 1 / pos * extra


def check_header(c, d, want, label=None):
    """Header fields against `want`, and softmax scale, cos/sin factor and RoPE frequencies against HF's own."""
    import importlib
    from transformers import AutoConfig
    hc = AutoConfig.from_pretrained(d)
    mod = importlib.import_module(f"transformers.models.{hc.model_type}.modeling_{hc.model_type}")
    attn = getattr(mod, hc.architectures[0].replace("ForCausalLM", "Attention"))(hc, 0)
    rope = getattr(mod, hc.architectures[0].replace("ForCausalLM", "RotaryEmbedding"))(hc)
    bad = {k: (c[k], v) for k, v in want.items() if (abs(c[k] - v) > 1e-6 * abs(v) if isinstance(v, float) else c[k] != v)}
    bad.update({k: (c[k], v) for k, v in (("softmax_scale", attn.scaling), ("rope_attn", rope.attention_scaling)) if abs(c[k] - v) > 1e-6 * v})
    err = np.abs(inv_freq(c) / rope.inv_freq.numpy() - 1).max()
    if err > 1e-5:
        bad["inv_freq"] = err
    check(f"{label or os.path.basename(d)}: header fields; softmax scale, rope factor and frequencies as HF's", not bad,
          str(bad) if bad else f"scale {c['softmax_scale']:.6f}, rope_attn {c['rope_attn']:.6f}")


def main():
    global failures
    r = subprocess.run("gcc -O2 -Wall -Wextra -std=gnu99 convert.c -o convert -lm", shell=True, cwd=ROOT,
                       capture_output=True, text=True)
    check("convert.c compiles without warnings", r.returncode == 0 and not r.stderr.strip(), r.stderr.strip()[:300])
    tmp = tempfile.mkdtemp(prefix="tpla_check_")
    B = lambda name: os.path.join(tmp, name + ".bin")
    try:
        # --- the fixtures as they are
        common = dict(dim=64, n_layers=3, n_heads=4, vocab=512, dc=64, dn=16, dr=16, inter=96, moe_inter=32, n_experts=8,
                      topk=2, first_dense=1, rope_interleave=1, max_seq=256, bos=0, eos=0, eps=1e-6)
        for name, want in (("v3", dict(common, q_lora=32, dv=24, n_shared=1, n_group=4, topk_group=2, routing=2, norm_topk=1,
                                       rope_type=1, yarn_orig_max=64, yarn_truncate=1, routed_scale=2.5, rope_theta=10000.0,
                                       yarn_factor=4.0, yarn_beta_fast=32.0, yarn_beta_slow=1.0)),
                           ("v2", dict(common, q_lora=0, dv=16, n_shared=2, routing=0, norm_topk=0, rope_type=0,
                                       routed_scale=1.0, rope_theta=10000.0))):
            convert(os.path.join(DATA, name), B(name))
            hf = hf_tensors(os.path.join(DATA, name))
            c = compare(B(name), hf, name)
            check_header(c, os.path.join(DATA, name), want)
        raw, c = read_bin(B("v3"))
        check_tokenizer(raw, c)
        ref = open(B("v3"), "rb").read()

        def same_as_v3(d, label):
            convert(d, B("x"), label=f"convert {label}")
            check(f"{label}: the same .bin as the fixture", os.path.exists(B("x")) and open(B("x"), "rb").read() == ref)

        # --- sharded (save_pretrained with a small max_shard_size)
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained(os.path.join(DATA, "v3"), dtype=torch.bfloat16)
        d = os.path.join(tmp, "sharded")
        m.save_pretrained(d, max_shard_size="100KB")
        shutil.copy(os.path.join(DATA, "tokenizer.json"), d)
        n = len([f for f in os.listdir(d) if f.endswith(".safetensors")])
        check("sharded checkpoint written", n > 1 and os.path.exists(os.path.join(d, "model.safetensors.index.json")), f"{n} shards")
        same_as_v3(d, "sharded v3")

        # --- the old spelling: top-level rope_theta + rope_scaling {type: yarn, ...}
        d = copy_fixture("v3", tmp, "old_rope")
        rp = json.load(open(os.path.join(d, "config.json")))["rope_parameters"]
        old = {k: v for k, v in rp.items() if k not in ("rope_type", "rope_theta")}
        edit_config(d, rope_parameters=DELETE, rope_theta=rp["rope_theta"], rope_scaling=dict(old, type="yarn"))
        same_as_v3(d, "rope_scaling spelling")

        # --- experts fused as transformers 5 holds them in memory: gate_up_proj (E, 2I, D), down_proj (E, D, I)
        def fuse(ts):
            for l in (1, 2):
                p = f"model.layers.{l}.mlp.experts."
                g = [ts.pop(f"{p}{e}.gate_proj.weight") for e in range(8)]
                u = [ts.pop(f"{p}{e}.up_proj.weight") for e in range(8)]
                dn = [ts.pop(f"{p}{e}.down_proj.weight") for e in range(8)]
                ts[p + "gate_up_proj"] = torch.stack([torch.cat([a, b]) for a, b in zip(g, u)])
                ts[p + "down_proj"] = torch.stack(dn)
        d = copy_fixture("v3", tmp, "fused")
        rewrite_weights(d, fuse)
        same_as_v3(d, "fused experts")

        # --- a multi-token-prediction layer (layer 3 of 3) and unknown tensors are never looked at
        def mtp(ts):
            ts["model.layers.3.self_attn.q_a_proj.weight"] = torch.zeros(7, 5, dtype=torch.bfloat16)
            ts["model.layers.3.mlp.experts.0.gate_proj.weight"] = torch.zeros(3, dtype=torch.bfloat16)
            ts["model.layers.3.eh_proj.weight"] = torch.zeros(64, 128, dtype=torch.bfloat16)
            ts["some.other.tensor"] = torch.zeros(2, dtype=torch.int32)
        d = copy_fixture("v3", tmp, "mtp")
        rewrite_weights(d, mtp)
        same_as_v3(d, "extra MTP layer and unknown tensors")

        # --- FP8 E4M3 with 128x128 block scales (weight_scale_inv), dequantised to the right values
        d = copy_fixture("v3", tmp, "fp8")
        edit_config(d, quantization_config=dict(quant_method="fp8", fmt="e4m3", activation_scheme="dynamic", weight_block_size=[128, 128]))
        g = torch.Generator().manual_seed(0)
        deq = {}

        def quantise(ts):
            for k in list(ts):
                w = ts[k].float()
                if w.dim() != 2 or "norm" in k or "mlp.gate." in k:
                    continue
                R, C = w.shape
                nb = ((R + 127) // 128, (C + 127) // 128)
                amax = torch.stack([torch.stack([w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128].abs().max() for j in range(nb[1])])
                                    for i in range(nb[0])])
                scale = amax / 448 * (1 + 2 * torch.rand(nb, generator=g))  # non-trivial, and every value in range
                full = scale.repeat_interleave(128, 0)[:R].repeat_interleave(128, 1)[:, :C]
                w8 = (w / full).to(torch.float8_e4m3fn)
                ts[k], ts[k + "_scale_inv"] = w8, scale.float()
                deq[k] = (w8.float() * full).bfloat16().float().numpy()
        rewrite_weights(d, quantise)
        big = [k for k in deq if max(deq[k].shape) > 128]
        convert(d, B("fp8"), label="convert FP8 checkpoint")
        hf = dict(hf_tensors(os.path.join(DATA, "v3")), **deq)
        compare(B("fp8"), hf, f"FP8 ({len(deq)} matrices, {len(big)} larger than 128, e.g. {big[:2]})")
        w = deq["model.layers.0.self_attn.kv_b_proj.weight"]
        check("FP8: the dequantised values differ from the bf16 originals (the test means something)",
              not np.array_equal(w, hf_tensors(os.path.join(DATA, "v3"))["model.layers.0.self_attn.kv_b_proj.weight"]))

        # --- small variations that must convert
        d = copy_fixture("v2", tmp, "v2_group")
        edit_config(d, topk_method="group_limited_greedy", n_group=4, topk_group=2, eos_token_id=[7, 8], bos_token_id=None)
        convert(d, B("v2g"))
        c = read_bin(B("v2g"))[1]
        check("v2 group_limited_greedy, eos list, bos null", (c["routing"], c["n_group"], c["topk_group"], c["eos"], c["bos"]) == (1, 4, 2, 7, -1), str(c["routing"]))
        d = copy_fixture("v3", tmp, "no_tok")
        os.remove(os.path.join(d, "tokenizer.json"))
        convert(d, B("no_tok"))
        c = read_bin(B("no_tok"))[1]
        compare(B("no_tok"), hf_tensors(d), "v3 without tokenizer.json (tok_bytes 0)")
        check("v3 without tokenizer.json: tok_bytes 0", c["tok_bytes"] == 0)
        d = copy_fixture("v3", tmp, "wordpiece")
        tj = json.load(open(os.path.join(d, "tokenizer.json")))
        tj["model"]["type"] = "WordPiece"
        json.dump(tj, open(os.path.join(d, "tokenizer.json"), "w"))
        r = convert(d, B("wp"))
        check("non-BPE tokenizer: a warning and no tokenizer", read_bin(B("wp"))[1]["tok_bytes"] == 0 and "warning" in r.stderr)

        # --- yarn variants, each against HF's own numbers
        variants = {
            "yarn with mscale != mscale_all_dim, beta_fast 0, truncate false, top-level original_max":
                dict(rope_parameters=dict(rope_type="yarn", rope_theta=50000.0, factor=8.0, original_max_position_embeddings=64,
                                          beta_fast=0, beta_slow=2, mscale=0.707, mscale_all_dim=1.0, truncate=False),
                     original_max_position_embeddings=32),
            "yarn with attention_factor": dict(rope_parameters=dict(rope_type="yarn", factor=4.0, attention_factor=1.3,
                                                                    original_max_position_embeddings=64, mscale_all_dim=0.5)),
            "yarn with factor null": dict(rope_parameters=dict(rope_type="yarn", factor=None, original_max_position_embeddings=32)),
            "default rope, rope_interleave false": dict(rope_parameters=dict(rope_type="default", rope_theta=20000.0), rope_interleave=False),
        }
        for i, (label, kv) in enumerate(variants.items()):
            d = copy_fixture("v3", tmp, f"rope{i}")
            edit_config(d, **kv)
            convert(d, B("r"), label=f"convert {label}")
            c = read_bin(B("r"))[1]
            check_header(c, d, dict(rope_interleave=0) if "interleave" in label else {}, label)

        # --- tokenizer.json variants: legacy "a b" merges, escapes and a surrogate pair, ids past the vocab; a Sequence
        d = copy_fixture("v3", tmp, "tok")
        tj = json.load(open(os.path.join(d, "tokenizer.json")))
        tj["model"]["merges"] = [" ".join(m) for m in tj["model"]["merges"]]
        odd = "\U0001F600\t\"x\"/\\\u00e9\u4e2d"   # becomes token 300, in added_tokens and model.vocab alike
        tj["model"]["vocab"] = {odd if i == 300 else t: i for t, i in tj["model"]["vocab"].items()}
        tj["added_tokens"] += [dict(id=300, content=odd, special=False, single_word=False, lstrip=False, rstrip=False,
                                    normalized=False), dict(id=600, content="<|past the vocab|>", special=True)]
        open(os.path.join(d, "tokenizer.json"), "w").write(json.dumps(tj, ensure_ascii=True))
        r = convert(d, B("t"), label="convert tokenizer variants")
        raw, c = read_bin(B("t"))
        n, pretok, add_bos, toks, flags, merges = read_tok_block(raw, c)
        ref_merges = [m for m in read_tok_block(*read_bin(B("v3")))[5] if 300 not in m]   # token 300's text changed
        check("tokenizer variants: \\uXXXX, surrogate pair, escapes; legacy merges; notes",
              toks[300] == odd.encode() and flags[300] == 2 and merges == ref_merges and pretok == 0
              and "ignored" in r.stderr and "skipped" in r.stderr, repr(toks[300]))
        tj["pre_tokenizer"] = dict(type="Sequence", pretokenizers=[dict(type="Split", pattern=dict(Regex="\\d{1,3}"), behavior="Isolated",
                                   invert=False), dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=False)])
        open(os.path.join(d, "tokenizer.json"), "w").write(json.dumps(tj, ensure_ascii=True))
        convert(d, B("t2"), expect_ok=False, want="pre_tokenizer Sequence [Split, ByteLevel]",
                label="a pre_tokenizer run would not reproduce is refused, naming it")

        # --- fuzz: mangled config.json, tokenizer.json and safetensors must never crash convert (exit 0 or 1)
        rng = random.Random(1)
        crashes = []
        for i in range(300):
            d = os.path.join(tmp, "fuzz")
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(os.path.join(DATA, "v3"), d)
            f = os.path.join(d, rng.choice(["config.json", "tokenizer.json", "model.safetensors"]))
            data = bytearray(open(f, "rb").read())
            end = 10000 if f.endswith("safetensors") else len(data)  # mostly the header
            for _ in range(rng.randint(1, 4)):
                k = rng.randrange(min(end, len(data)))
                op = rng.randrange(3)
                if op == 0:
                    data[k] = rng.randrange(256)
                elif op == 1:
                    data[k] = ord(rng.choice('{}[]",:\\0-e.9 '))
                else:
                    del data[k:k + rng.randint(1, 50)]
            open(f, "wb").write(bytes(data))
            r = subprocess.run([os.path.join(ROOT, "convert"), d, B("f")], capture_output=True)
            if r.returncode not in (0, 1):
                crashes.append((os.path.basename(f), r.returncode))
        check("fuzz: 300 mangled inputs, no crash", not crashes, str(crashes[:5]))

        # --- broken inputs: non-zero exit, a message that names the problem, no output file
        convert(os.path.join(tmp, "nowhere"), B("e"), False, "no such directory", "missing directory")
        d = copy_fixture("v3", tmp, "no_config"); os.remove(os.path.join(d, "config.json"))
        convert(d, B("e"), False, "config.json", "missing config.json")
        d = copy_fixture("v3", tmp, "bad_json"); open(os.path.join(d, "config.json"), "a").write("}")
        convert(d, B("e"), False, "bad JSON", "config.json with a syntax error")
        d = copy_fixture("v3", tmp, "arch"); edit_config(d, architectures=["LlamaForCausalLM"])
        convert(d, B("e"), False, "LlamaForCausalLM", "unknown architecture")
        d = copy_fixture("v3", tmp, "rope"); edit_config(d, rope_parameters=dict(rope_type="dynamic", rope_theta=1e4, factor=2.0))
        convert(d, B("e"), False, "dynamic", "unsupported rope type")
        d = copy_fixture("v3", tmp, "bias"); edit_config(d, attention_bias=True)
        convert(d, B("e"), False, "attention_bias", "attention_bias true")
        d = copy_fixture("v3", tmp, "act"); edit_config(d, hidden_act="gelu")
        convert(d, B("e"), False, "gelu", "hidden_act gelu")
        d = copy_fixture("v3", tmp, "nokv"); edit_config(d, kv_lora_rank=DELETE)
        convert(d, B("e"), False, "kv_lora_rank", "kv_lora_rank missing")
        d = copy_fixture("v3", tmp, "dim"); edit_config(d, hidden_size=48)
        convert(d, B("e"), False, "(512, 64), but config.json says (512, 48)", "hidden_size that does not match the tensors")
        d = copy_fixture("v3", tmp, "missing")
        rewrite_weights(d, lambda ts: ts.pop("model.layers.2.self_attn.kv_b_proj.weight"))
        convert(d, B("e"), False, "model.layers.2.self_attn.kv_b_proj.weight is missing", "a missing tensor")
        d = copy_fixture("v3", tmp, "nobias")
        rewrite_weights(d, lambda ts: ts.pop("model.layers.1.mlp.gate.e_score_correction_bias"))
        convert(d, B("e"), False, "e_score_correction_bias is missing", "V3 without e_score_correction_bias")
        d = copy_fixture("v3", tmp, "shape")
        rewrite_weights(d, lambda ts: ts.update({"model.layers.1.mlp.experts.5.up_proj.weight": torch.zeros(32, 60, dtype=torch.bfloat16)}))
        convert(d, B("e"), False, "experts.5.up_proj.weight has shape (32, 60), but config.json says (32, 64)", "a wrong-shaped tensor")
        d = copy_fixture("v3", tmp, "noscale")
        rewrite_weights(d, lambda ts: ts.update({"model.layers.0.mlp.up_proj.weight": ts["model.layers.0.mlp.up_proj.weight"].to(torch.float8_e4m3fn)}))
        convert(d, B("e"), False, "up_proj.weight_scale_inv are missing", "FP8 without its scales")
        st = os.path.join(DATA, "v3", "model.safetensors")
        for cut, what, want in ((os.path.getsize(st) // 2, "in the data", "truncated: tensor"),
                                (100, "in the header", "truncated: the header"), (5, "to 5 bytes", "truncated")):
            d = copy_fixture("v3", tmp, f"trunc{cut}")
            os.truncate(os.path.join(d, "model.safetensors"), cut)
            convert(d, B("e"), False, want, f"safetensors truncated {what}")
        d = copy_fixture("v3", tmp, "noweights"); os.remove(os.path.join(d, "model.safetensors"))
        convert(d, B("e"), False, "no model.safetensors", "no weights at all")
        d = os.path.join(tmp, "sharded")
        os.remove(os.path.join(d, sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))[1]))
        convert(d, B("e"), False, "cannot open", "a shard missing")
    finally:
        shutil.rmtree(tmp)
    print(f"{failures} failed" if failures else "all passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
