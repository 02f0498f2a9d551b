#!/usr/bin/env python3
"""train_tiny.py: train the small DeepSeek-V3-style model that tpla uses as its default checkpoint.

What it does, top to bottom:
  1. Corpus: the .py files of this Python's standard library (sysconfig.get_paths()["stdlib"]), sorted by
     path. Skipped directories: site-packages, dist-packages, test, tests, idlelib, lib2to3, __pycache__,
     encodings (code-page tables, not code) and pydoc_data (one generated 750 KB string).
     File i (sorted order) is held out for evaluation if i % 20 == 0, for PCA calibration if i % 40 == 10;
     everything else (~92%) is training data. eval.txt / calib.txt hold whole held-out files, each after a
     line "# file: relative/path.py", until ~200 KB / ~100 KB; held-out files past that are used nowhere.
  2. Tokenizer: byte-level BPE (vocab 4096) trained on the training files; "<|endoftext|>" is id 0 and
     separates documents (it is BOS, EOS and pad).
  3. Model: DeepseekV3ForCausalLM: MLA with q LoRA (dc 256, dn = dr = dv = 32, 8 heads, interleaved default
     RoPE), layer 0 dense, layers 1-5 MoE (8 routed experts top-2 with sigmoid scores, 1 shared), ~9.3M
     parameters, untied lm_head. The routers' e_score_correction_bias is updated as in DeepSeek-V3
     (aux-loss-free balancing: +u for under-used experts, -u for over-used ones), so it is not zero.
  4. Training: 512-token windows of the joined training stream, AdamW, gradient clipping, warmup + cosine
     decay, bf16 autocast on GPU. It stops at --epochs passes over the training tokens or when --minutes of
     wall clock (counted from the start, data preparation included) are up, whichever comes first; the
     learning-rate schedule follows whichever of the two is further along.
     Why batch 8: the corpus (~2M tokens) is the limit, not the GPU. On one H100 this job is launch-bound at
     ~14 steps/s for any batch from 8 to 64 (64 x 512 = 450K tok/s does 4 epochs in 20 s), and at a fixed
     4 epochs more, smaller steps generalise better: held-out loss 4.39 at batch 64 (lr 2e-3), 3.72 at 16,
     3.44-3.47 at 8 (lr 1e-3; ~2.5 minutes; train/held-out gap 0.83). --epochs 8 reaches 3.17 (gap 1.41).
  5. Output (--out DIR): config.json, model.safetensors (bf16), tokenizer.json, eval.txt, calib.txt and
     train_log.txt (this log). The checkpoint is reloaded with from_pretrained, its held-out loss printed,
     and greedy samples from a few prompts show what it learned.

Run:  python3 tools/train_tiny.py --out /tmp/tiny                                       (one GPU, < 10 min)
      python3 tools/train_tiny.py --out /tmp/tiny_cpu --device cpu --minutes 1 --tiny   (CPU smoke test)
Needs torch, transformers >= 5.17, tokenizers, safetensors; no network.
"""
import argparse, math, os, random, sys, sysconfig, time

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

EOT = "<|endoftext|>"  # id 0
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__",
             "encodings", "pydoc_data"}

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--out", required=True, help="output directory")
p.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget, counted from the start")
p.add_argument("--epochs", type=float, default=4.0, help="stop after this many passes over the training tokens")
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
p.add_argument("--batch", type=int, default=8, help="sequences per step (see the note above)")
p.add_argument("--seq", type=int, default=512)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--vocab", type=int, default=4096)
p.add_argument("--seed", type=int, default=1234)
p.add_argument("--tiny", action="store_true", help="smoke test: 1.5 MB of training text, batch 8 x 256")
args = p.parse_args()
if args.tiny:
    args.batch, args.seq = 8, 256
t_start = time.time()
deadline = t_start + 60 * args.minutes
os.makedirs(args.out, exist_ok=True)
log_lines = []

def log(msg=""):
    print(msg, flush=True)
    log_lines.append(msg)

random.seed(args.seed); np.random.seed(args.seed); torch.manual_seed(args.seed)
dev = torch.device(args.device)
use_bf16 = dev.type == "cuda"
if use_bf16:
    torch.set_float32_matmul_precision("high")
log(f"train_tiny: python {sys.version.split()[0]}, torch {torch.__version__}, "
    f"transformers {__import__('transformers').__version__}, device {dev}"
    + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))

# ---------------------------------------------------------------- corpus
root = sysconfig.get_paths()["stdlib"]
paths = []
for d, dirs, files in os.walk(root):
    dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
    paths += [os.path.join(d, f) for f in files if f.endswith(".py")]
paths.sort()

def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()

train_docs, eval_files, calib_files = [], [], []
for i, path in enumerate(paths):
    (eval_files if i % 20 == 0 else calib_files if i % 40 == 10 else train_docs).append(path)
train_docs = [read(x) for x in train_docs]
if args.tiny:  # keep the first 1.5 MB of training text
    n = np.searchsorted(np.cumsum([len(d) for d in train_docs]), 1_500_000) + 1
    train_docs = train_docs[:n]

def held_out_text(files, limit):  # whole files, in order, while they fit under `limit` bytes
    parts, size = [], 0
    for path in files:
        part = f"# file: {os.path.relpath(path, root)}\n{read(path)}"
        part += "" if part.endswith("\n") else "\n"
        if size + len(part.encode()) <= limit:
            parts.append(part); size += len(part.encode())
    return "".join(parts), len(parts)

eval_text, n_eval = held_out_text(eval_files, 200_000)
calib_text, n_calib = held_out_text(calib_files, 100_000)
for name, text in (("eval.txt", eval_text), ("calib.txt", calib_text)):
    with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
        f.write(text)
log(f"corpus: {root}: {len(paths)} files (skipped dirs: {', '.join(sorted(SKIP_DIRS))})")
log(f"  train {len(train_docs)} files {sum(map(len, train_docs)) / 1e6:.2f} MB; "
    f"eval.txt {n_eval}/{len(eval_files)} held-out files {len(eval_text.encode()) / 1e3:.0f} KB; "
    f"calib.txt {n_calib}/{len(calib_files)} files {len(calib_text.encode()) / 1e3:.0f} KB")

# ---------------------------------------------------------------- tokenizer
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(train_docs, trainers.BpeTrainer(
    vocab_size=args.vocab, min_frequency=2, special_tokens=[EOT], show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
assert tok.token_to_id(EOT) == 0 and tok.get_vocab_size() <= args.vocab
tok.save(os.path.join(args.out, "tokenizer.json"))

def stream(docs):  # <eot> doc <eot> doc ... <eot>
    ids = [0]
    for enc in tok.encode_batch(docs):
        ids += enc.ids + [0]
    return torch.tensor(ids, dtype=torch.long)

train_ids = stream(train_docs).to(dev)
eval_ids = stream([eval_text])
n_train = len(train_ids)
log(f"tokenizer: byte-level BPE, {tok.get_vocab_size()} tokens; train stream {n_train} tokens "
    f"({sum(map(len, train_docs)) / n_train:.2f} chars/token), eval stream {len(eval_ids)} tokens "
    f"[{time.time() - t_start:.1f} s]")
T = args.seq
n_ev = (len(eval_ids) - 1) // T  # fixed eval set: consecutive windows of the held-out stream
if args.tiny:
    n_ev = min(n_ev, 8)
eval_x = eval_ids[: n_ev * T + 1].unfold(0, T + 1, T).to(dev)  # (n_ev, T+1)

# ---------------------------------------------------------------- model
config = DeepseekV3Config(
    vocab_size=args.vocab, hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
    num_key_value_heads=8, q_lora_rank=128, kv_lora_rank=256, qk_nope_head_dim=32, qk_rope_head_dim=32,
    v_head_dim=32, intermediate_size=768, moe_intermediate_size=128, n_routed_experts=8,
    num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1,
    norm_topk_prob=True, routed_scaling_factor=1.0, rope_interleave=True,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, max_position_embeddings=2048,
    rms_norm_eps=1e-6, initializer_range=0.02, tie_word_embeddings=False, attention_bias=False,
    bos_token_id=0, eos_token_id=0, pad_token_id=0, num_nextn_predict_layers=0, use_cache=True)
model = DeepseekV3ForCausalLM(config).to(dev)
n_params = sum(p.numel() for p in model.parameters())
log(f"model: DeepseekV3ForCausalLM, {n_params:,} parameters ({2 * n_params / 1e6:.1f} MB in bf16; "
    f"{n_params - 2 * config.vocab_size * config.hidden_size:,} without embedding and lm_head; "
    f"attention {model.config._attn_implementation}, experts {getattr(model.config, '_experts_implementation', '?')})")

# DeepSeek-V3's aux-loss-free balancing: count each router's choices during training (recomputed from its
# input, so it does not depend on what the router module returns) and nudge e_score_correction_bias.
gates = [layer.mlp.gate for layer in model.model.layers[config.first_k_dense_replace:]]
loads = torch.zeros(len(gates), config.n_routed_experts, device=dev)

def count_hook(idx):
    def hook(gate, inputs, output):
        if gate.training:
            with torch.no_grad():
                x = inputs[0].reshape(-1, config.hidden_size).float()
                s = torch.sigmoid(x @ gate.weight.float().t()) + gate.e_score_correction_bias
                top = s.topk(config.num_experts_per_tok, dim=-1).indices.flatten()
                loads[idx].index_add_(0, top, torch.ones_like(top, dtype=loads.dtype))
    return hook

for i, g in enumerate(gates):
    g.register_forward_hook(count_hook(i))

decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "gate.weight" not in n]
no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "gate.weight" not in n)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=dev.type == "cuda")

def loss_of(m, xy):  # mean next-token cross-entropy of a (B, T+1) batch
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
        logits = m(input_ids=xy[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xy[:, 1:].reshape(-1))

@torch.no_grad()
def evaluate(m):
    was = m.training
    m.eval()
    tot = sum(loss_of(m, eval_x[i:i + args.batch]).item() * len(eval_x[i:i + args.batch])
              for i in range(0, n_ev, args.batch))
    m.train(was)
    return tot / n_ev

def batches():  # endless; each epoch: a random shift, then non-overlapping windows in random order
    while True:
        off = random.randrange(T)
        starts = off + torch.randperm((n_train - 1 - off) // T) * T
        for i in range(0, len(starts) - args.batch + 1, args.batch):
            yield train_ids[(starts[i:i + args.batch, None] + torch.arange(T + 1)).to(dev)]

# ---------------------------------------------------------------- training
tokens_per_step = args.batch * T
max_steps = max(1, int(args.epochs * n_train / tokens_per_step))
warmup = min(100, max(10, max_steps // 20))
t_train = time.time()
log(f"train: batch {args.batch} x {T} = {tokens_per_step} tokens/step, {n_train / tokens_per_step:.1f} "
    f"steps/epoch, at most {max_steps} steps ({args.epochs:g} epochs) or until "
    f"{args.minutes:g} min; lr {args.lr:g}, warmup {warmup} [{t_train - t_start:.1f} s]")
log(f"step {0:5d}  held-out loss {evaluate(model):.4f}")
model.train()
step, acc, acc_n, t_log, data = 0, 0.0, 0, time.time(), batches()
eval_every = max(10, max_steps // 10)
while True:
    progress = max((time.time() - t_train) / max(1e-9, deadline - t_train), step / max_steps)
    if progress >= 1.0:
        break
    lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    for g in opt.param_groups:
        g["lr"] = lr
    loss = loss_of(model, next(data))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():  # balancing: bias += 1e-3 * sign(mean load - load), kept zero-mean
        for i, g in enumerate(gates):
            g.e_score_correction_bias += 1e-3 * torch.sign(loads[i].mean() - loads[i])
            g.e_score_correction_bias -= g.e_score_correction_bias.mean()  # only differences matter
        loads.zero_()
    step += 1
    acc += loss.detach(); acc_n += 1  # no .item() here: it would wait for the GPU every step
    if step % 10 == 0:
        now = time.time()
        log(f"step {step:5d}  loss {acc.item() / acc_n:.4f}  lr {lr:.2e}  gnorm {gnorm.item():.2f}  "
            f"epoch {step * tokens_per_step / n_train:.2f}  {acc_n / (now - t_log):.2f} steps/s  "
            f"{acc_n * tokens_per_step / (now - t_log):,.0f} tok/s  [{now - t_start:.0f} s]")
        if step == 20:  # first timing past the warm-up: what the budget allows
            left = (deadline - now) * acc_n / (now - t_log)
            log(f"  budget allows about {step + left:.0f} steps ({(step + left) * tokens_per_step / n_train:.1f}"
                f" epochs); the epoch cap is {max_steps} steps")
        acc, acc_n, t_log = 0.0, 0, time.time()
    if step % eval_every == 0:
        log(f"step {step:5d}  held-out loss {evaluate(model):.4f}")

# ---------------------------------------------------------------- results
train_time = time.time() - t_train
log(f"done: {step} steps, {step * tokens_per_step:,} tokens, {step * tokens_per_step / n_train:.2f} epochs, "
    f"{step / train_time:.2f} steps/s over {train_time:.0f} s")
gen = torch.Generator(device="cpu").manual_seed(args.seed + 1)  # fixed train windows, same count as eval
tr_starts = torch.randint(0, n_train - T - 1, (n_ev,), generator=gen).to(dev)
train_x = train_ids[tr_starts[:, None] + torch.arange(T + 1, device=dev)]
model.eval()
with torch.no_grad():
    tr = sum(loss_of(model, train_x[i:i + args.batch]).item() * len(train_x[i:i + args.batch])
             for i in range(0, n_ev, args.batch)) / n_ev
ev = evaluate(model)
log(f"final: train loss {tr:.4f}, held-out loss {ev:.4f} (ppl {math.exp(ev):.2f}), gap {ev - tr:+.4f}")
bias = torch.stack([g.e_score_correction_bias for g in gates])
log(f"router bias per MoE layer (min..max): " + ", ".join(f"{b.min():+.3f}..{b.max():+.3f}" for b in bias))

model.to(torch.bfloat16).save_pretrained(args.out)
ckpt = os.path.join(args.out, "model.safetensors")
log(f"saved {args.out}: model.safetensors {os.path.getsize(ckpt) / 1e6:.2f} MB, {n_params:,} parameters")

model = DeepseekV3ForCausalLM.from_pretrained(args.out, dtype=torch.float32).to(dev).eval()
log(f"reloaded (bf16 weights, run in float32{' + bf16 autocast' if use_bf16 else ''}): "
    f"held-out loss {evaluate(model):.4f}")
for prompt in ["def", "import os\n", "def __init__(self"]:  # no trailing space: BPE puts it on the next word
    ids = torch.tensor([[0] + tok.encode(prompt).ids], device=dev)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=60, do_sample=False)
    log(f"--- sample, greedy, prompt {prompt!r}:\n{tok.decode(out[0, 1:].tolist())}")
log(f"total {time.time() - t_start:.0f} s")
with open(os.path.join(args.out, "train_log.txt"), "w") as f:
    f.write("\n".join(log_lines) + "\n")
