#!/usr/bin/env python3
"""Writes the committed test fixtures in tests/data/ (re-run only to regenerate them):

  tokenizer.json        byte-level BPE (GPT-2 split), 512 ids, trained on Python standard library source
  tok.txt, tok_ids.txt  a few KB of Python source (not in the training files) and HF tokenizers' encoding of it
  v3/, v2/              tiny random DeepseekV3ForCausalLM / DeepseekV2ForCausalLM checkpoints (bf16 safetensors,
                        tokenizer.json), with ids.txt (48 token ids) and logits.f32: HF's logits for those ids,
                        computed in float64 from the bf16 weights, stored float32 little-endian, shape [48, 512]
  moe/                  the same for a V3-style model with many experts (64 routed of 32, top-6 of 4 of 8 groups,
                        2 shared): a decode step or a short prefill leaves most experts without a token. Its
                        router is made decisive (decisive_router), so that the GPU's bf16 rounding never flips
                        an expert choice
  v2lite/               DeepSeek-V2-Lite's small twin, for the README's V2-Lite commands: its config but for the
                        sizes (hidden 8, 2 layers, 16 experts of which 6 routed and 2 shared, untied lm_head),
                        with DeepSeek-V2's real tokenizer (links to tests/data/tok/deepseek_v2*.json, which
                        make_tok_fixture.py writes): 102400 ids, so hidden 8 keeps embed and lm_head at 1.6 MB
                        each. generate.txt: the README's prompt, its ids as transformers 4 gives them (BOS first:
                        tokenizer_config.json's add_bos_token), and HF's greedy continuation (float64, 32 tokens)

Needs torch, transformers 5, tokenizers; runs on a CPU in a few seconds. Seeds are fixed, but the tokenizer
depends on the local Python's standard library, so other machines may write a different (equally good) set.
`make_fixtures.py NAME..` rewrites only the named models (v3, v2, moe) with the committed tokenizer.
"""
import os, shutil, sys, sysconfig

import numpy as np
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
VOCAB, SEQ = 512, 48
TRAIN_BYTES, TOK_BYTES = 300_000, 4000
SNIPPET = ('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n'
           '    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n'
           'print([fibonacci(i) for i in range(10)])\n')


# ----------------------------------------------------------------------------
# tokenizer

def stdlib_files():
    """Every .py file of the standard library, in a fixed order, without tests and site-packages."""
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    out = []
    for d, dirs, files in os.walk(sysconfig.get_paths()["stdlib"]):
        dirs[:] = sorted(x for x in dirs if x not in skip)
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith(".py")]
    return out


def make_tokenizer():
    files, texts, size = stdlib_files(), [], 0
    while size < TRAIN_BYTES:
        with open(files.pop(0), encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
        size += len(texts[-1].encode())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # the GPT-2 split regex
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    tok.save(os.path.join(DATA, "tokenizer.json"))
    print(f"tokenizer.json: {VOCAB} ids, trained on {len(texts)} stdlib files ({size} bytes)")

    # tok.txt: the first whole lines (about TOK_BYTES) of the next plain-ASCII file
    for path in files:
        text = open(path, "rb").read()
        if len(text) >= 2 * TOK_BYTES and text.isascii():
            text = text.decode()
            text = text[: text.index("\n", TOK_BYTES) + 1]
            break
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text, "decode(encode(text)) != text"
    open(os.path.join(DATA, "tok.txt"), "w").write(text)
    open(os.path.join(DATA, "tok_ids.txt"), "w").write(" ".join(map(str, ids)) + "\n")
    print(f"tok.txt: {len(text)} bytes of {os.path.basename(path)}, {len(ids)} tokens in tok_ids.txt")
    return tok


# ----------------------------------------------------------------------------
# models

COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
              num_key_value_heads=4, kv_lora_rank=64, qk_nope_head_dim=16, qk_rope_head_dim=16, intermediate_size=96,
              moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, rms_norm_eps=1e-6,
              bos_token_id=0, eos_token_id=0)

V3 = DeepseekV3Config(**COMMON, q_lora_rank=32, v_head_dim=24, n_shared_experts=1, n_group=4, topk_group=2,
                      norm_topk_prob=True, routed_scaling_factor=2.5, topk_method="noaux_tc", max_position_embeddings=256,
                      rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64,
                                           beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0))

MOE = DeepseekV3Config(**{**COMMON, "n_routed_experts": 64, "num_experts_per_tok": 6}, q_lora_rank=32, v_head_dim=16,
                       n_shared_experts=2, n_group=8, topk_group=4, norm_topk_prob=True, routed_scaling_factor=2.5,
                       topk_method="noaux_tc", max_position_embeddings=256,
                       rope_parameters=dict(rope_type="default", rope_theta=10000.0))

V2 = DeepseekV2Config(**COMMON, q_lora_rank=None, v_head_dim=16, n_shared_experts=2, topk_method="greedy", n_group=None,
                      topk_group=None, routed_scaling_factor=1.0, max_position_embeddings=256, tie_word_embeddings=True,
                      rope_parameters=dict(rope_type="default", rope_theta=10000.0))


V2LITE = DeepseekV2Config(vocab_size=102400, hidden_size=8, num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=2,
                          num_key_value_heads=2, q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
                          v_head_dim=8, intermediate_size=32, moe_intermediate_size=8, n_routed_experts=16, num_experts_per_tok=6,
                          n_shared_experts=2, topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0,
                          norm_topk_prob=False, rms_norm_eps=1e-6, max_position_embeddings=163840, tie_word_embeddings=False,
                          bos_token_id=100000, eos_token_id=100001,
                          rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096,
                                               beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=0.707))
PROMPT, STEPS = "The capital of France is", 32


def make_twin(seed=5):
    """v2lite/: random weights (lm_head larger than the rest, so that the greedy choice is never a near tie), the
    real V2 tokenizer, and HF's greedy continuation of PROMPT, with its smallest margin between the top two logits."""
    out = os.path.join(DATA, "v2lite")
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(seed)
    model = DeepseekV2ForCausalLM(V2LITE).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn(p.shape) if n.endswith("norm.weight") else (1.0 if n == "lm_head.weight" else 0.1) * torch.randn(p.shape))
    model.to(torch.bfloat16).save_pretrained(out)
    for f, link in [("tokenizer.json", "deepseek_v2.json"), ("tokenizer_config.json", "deepseek_v2_config.json")]:
        os.symlink(os.path.join("..", "tok", link), os.path.join(out, f))
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    ids = [V2LITE.bos_token_id] + tok.encode(PROMPT, add_special_tokens=False).ids  # transformers 4's LlamaTokenizerFast
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16, attn_implementation="eager", experts_implementation="eager",
                                                       output_loading_info=True)
    assert not any(info.values()), info
    model = model.to(torch.float64).eval()
    check_loaded(model, os.path.join(out, "model.safetensors"))
    gen, margin = [], float("inf")
    with torch.no_grad():
        for _ in range(STEPS):
            top = model(torch.tensor([ids + gen]), use_cache=False).logits[0, -1].topk(2)
            gen.append(int(top.indices[0]))
            margin = min(margin, float(top.values[0] - top.values[1]))
    assert V2LITE.eos_token_id not in gen
    open(os.path.join(out, "generate.txt"), "w").write(f"{PROMPT}\n{' '.join(map(str, ids))}\n{' '.join(map(str, gen))}\n")
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if not os.path.islink(os.path.join(out, f)))
    print(f"v2lite/: {sum(t.numel() for t in model.parameters())} parameters, {size} bytes; {len(ids)} prompt ids, {STEPS} greedy "
          f"tokens, smallest top-two logit margin {margin:.4f}; {tok.decode(gen)!r}")


def decisive_router(model, config, seed):
    """Routing that bf16 rounding cannot flip. With random weights, the scores of 64 experts crowd
    together, and at some positions the sixth and seventh choices differ by less than the GPU's bf16
    rounding moves them: the GPU then takes another expert there, and its logits leave the CPU's by far
    more than rounding. Here the router reads a code: half of the hidden space carries it, in E/2
    orthonormal directions u_i; expert 2i's router row is A u_i and expert 2i+1's is -A u_i, and token t's
    embedding adds B (+-u_i) for six experts of t (one in each of topk_group random groups, then two more
    there; never both of a pair), so every token's six experts score far above the rest. lm_head reads
    only the other half, so the logits still come from what attention and the experts compute."""
    E, D, G, K = config.n_routed_experts, config.hidden_size, config.n_group, config.num_experts_per_tok
    A, B = 1.0, 10.0
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(D, D, generator=g))[0].T   # orthonormal rows
    code, rest = q[: E // 2], q[E // 2 :]
    u = torch.stack([code[e // 2] * (1 - 2 * (e % 2)) for e in range(E)])
    emb = model.model.embed_tokens.weight
    for t in range(emb.shape[0]):
        groups = torch.randperm(G, generator=g)[: config.topk_group].tolist()
        chosen = [k * (E // G) + int(torch.randint(E // G, (1,), generator=g)) for k in groups]
        while len(chosen) < K:
            free = [e for k in groups for e in range(k * (E // G), (k + 1) * (E // G)) if e not in chosen and e ^ 1 not in chosen]
            chosen.append(free[int(torch.randint(len(free), (1,), generator=g))])
        emb[t] += B * u[chosen].sum(0)
    for layer in model.model.layers[config.first_k_dense_replace:]:
        layer.mlp.gate.weight.copy_(A * u)
    model.lm_head.weight.copy_(model.lm_head.weight @ (rest.T @ rest))


def make_model(name, cls, config, ids, seed, decisive=False):
    out = os.path.join(DATA, name)
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # larger than HF's init, so that logits and routing are decisive
        for n, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn(p.shape) if n.endswith("norm.weight") else 0.1 * torch.randn(p.shape))
        if decisive:
            decisive_router(model, config, seed)
        model.to(torch.bfloat16)
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):  # float32, as the DeepSeek-V3 release ships it
                b.data = 0.05 * torch.randn(b.shape, dtype=torch.float32)
    model.save_pretrained(out)
    shutil.copy(os.path.join(DATA, "tokenizer.json"), out)

    # HF's logits: the saved bf16 weights, upcast to float64
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16, attn_implementation="eager", experts_implementation="eager",
                                                       output_loading_info=True)
    assert not any(info.values()), info
    model = model.to(torch.float64).eval()
    check_loaded(model, os.path.join(out, "model.safetensors"))
    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0]
    assert logits.shape == (SEQ, VOCAB)
    logits.numpy().astype("<f4").tofile(os.path.join(out, "logits.f32"))
    open(os.path.join(out, "ids.txt"), "w").write(" ".join(map(str, ids)) + "\n")
    p = torch.softmax(logits, -1)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}/: {type(model).__name__}, {sum(t.numel() for t in model.parameters())} parameters, {size} bytes; "
          f"logits std {logits.std():.3f}, mean top-1 probability {p.max(-1).values.mean():.3f}")


def check_loaded(model, path):
    """Every tensor of the file, as the loaded model holds it (experts fused as transformers 5 does in memory)."""
    sd = {k: v for k, v in model.state_dict().items()}
    with safe_open(path, "pt") as f:
        names = list(f.keys())
        assert any(".experts.0.gate_proj.weight" in n for n in names), "expected per-expert tensor names in the file"
        for n in names:
            t = f.get_tensor(n).to(torch.float64)
            if ".experts." in n:
                pre, e, part = n.rsplit(".", 3)[0], int(n.split(".")[-3]), n.split(".")[-2]
                I = model.config.moe_intermediate_size
                m = sd[pre + (".down_proj" if part == "down_proj" else ".gate_up_proj")][e]
                m = m if part == "down_proj" else m[:I] if part == "gate_proj" else m[I:]
            else:
                m = sd[n]
            assert torch.equal(m, t), n
    return True


MODELS = {"v3": (DeepseekV3ForCausalLM, V3, 3, False), "v2": (DeepseekV2ForCausalLM, V2, 2, False),
          "moe": (DeepseekV3ForCausalLM, MOE, 4, True)}


def main():
    os.makedirs(DATA, exist_ok=True)
    names = sys.argv[1:] or list(MODELS) + ["v2lite"]
    if any(n not in MODELS and n != "v2lite" for n in names):
        sys.exit(f"usage: make_fixtures.py [{' | '.join(MODELS)} | v2lite].. (none: the tokenizer and every model)")
    tok = Tokenizer.from_file(os.path.join(DATA, "tokenizer.json")) if sys.argv[1:] else make_tokenizer()
    ids = tok.encode(SNIPPET).ids
    ids = (ids * (SEQ // len(ids) + 1))[:SEQ]
    for n in names:
        if n == "v2lite":
            make_twin()
            continue
        cls, config, seed, decisive = MODELS[n]
        make_model(n, cls, config, ids, seed, decisive)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(DATA) for f in fs)
    print(f"tests/data: {total} bytes in all")


if __name__ == "__main__":
    main()
