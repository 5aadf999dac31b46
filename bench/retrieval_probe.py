"""Does a corpus teach retrieval, and did a checkpoint learn it? An independent check in PyTorch.

Reads a prepared data directory of ropelens (`<cache>/<data_prep key>/`: `{train,valid}.tokens`
u16 or u32, `.offsets` u64, `.marks` u8) and reports, for windows of L tokens starting at
documents, the teacher-forced accuracy and NLL of the tokens of each mark kind (0 ordinary,
1 key-value recall, 2 pass key answer, 3 section close):

- for each checkpoint directory given (a ropelens train output loads in transformers as is);
- with `--steps N`, for a LlamaForCausalLM trained here from scratch on the same token files
  (AdamW, warmup 5%, cosine to 10%, clip 1.0: ropelens's defaults), every 100 steps.

This is how the quickstart's retrieval problem was diagnosed (docs/data.md, "Teaching a tiny
model retrieval"): both frameworks failed on the old corpus, so the corpus was at fault.

    python bench/retrieval_probe.py .pipe/cache/<data key> .pipe/cache/<train key> --steps 1000
"""

import argparse
import json
import math
import time

import numpy as np
import torch
from transformers import LlamaForCausalLM

from llama_shapes import llama_config

MARKS = {0: "ordinary", 1: "kv recall", 2: "passkey answer", 3: "section close"}


def load_split(data, name, dtype):
    tokens = np.fromfile(f"{data}/{name}.tokens", dtype=dtype).astype(np.int64)
    offsets = np.fromfile(f"{data}/{name}.offsets", dtype=np.uint64).astype(np.int64)
    marks = np.fromfile(f"{data}/{name}.marks", dtype=np.uint8)
    return tokens, offsets, marks


def document_windows(tokens, offsets, marks, length, limit):
    """Windows of length + 1 tokens starting at each document (running into the next one)."""
    xs, ms = [], []
    for start in offsets[:-1]:
        if start + length + 1 <= len(tokens):
            xs.append(tokens[start : start + length + 1])
            ms.append(marks[start : start + length + 1])
        if len(xs) == limit:
            break
    return torch.tensor(np.stack(xs)), torch.tensor(np.stack(ms).astype(np.int64))


@torch.no_grad()
def score(model, x, m):
    model.eval()
    logits = model(x[:, :-1]).logits
    target, mark = x[:, 1:], m[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
    ).reshape(target.shape)
    right = logits.argmax(-1) == target
    out = {}
    for k, name in MARKS.items():
        sel = mark == k
        if sel.any():
            out[name] = {
                "accuracy": round(right[sel].float().mean().item(), 3),
                "nll": round(nll[sel].mean().item(), 3),
                "n": int(sel.sum()),
            }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", help="a data_prep output directory")
    ap.add_argument("checkpoints", nargs="*", help="checkpoint directories to score")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--windows", type=int, default=400)
    ap.add_argument("--steps", type=int, default=0, help="train a fresh model this many steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    meta = json.load(open(f"{a.data}/data.json"))
    dtype = np.uint16 if meta["token_dtype"] == "u16" else np.uint32
    train = load_split(a.data, "train", dtype)
    valid = load_split(a.data, "valid", dtype)
    xv, mv = document_windows(*valid, a.length, a.windows)
    print(f"{len(train[0])} training tokens, {len(xv)} validation windows of {a.length}")

    for c in a.checkpoints:
        model = LlamaForCausalLM.from_pretrained(c, torch_dtype=torch.float32)
        print(json.dumps({"checkpoint": c, "valid": score(model, xv, mv)}))

    if a.steps == 0:
        return
    config = llama_config(
        vocab=meta["vocab_size"],
        hidden=a.hidden,
        ffn=int(8 * a.hidden / 3 / 32 + 0.999) * 32,
        layers=a.layers,
        heads=a.heads,
        max_pos=a.length,
        attn=None,
        rope_theta=10000.0,
        bos_token_id=meta["special"]["bos_id"],
        eos_token_id=meta["special"]["eos_id"],
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, a.steps // 20)

    def lr_at(s):
        if s < warm:
            return (s + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, a.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    tokens, offsets, _ = train
    rng = np.random.default_rng(a.seed)
    t0 = time.time()
    for step in range(a.steps):
        model.train()
        starts = np.minimum(offsets[rng.integers(0, len(offsets) - 1, a.batch)], len(tokens) - a.length - 1)
        x = torch.tensor(np.stack([tokens[s : s + a.length + 1] for s in starts]))
        logits = model(x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == a.steps:
            print(json.dumps({"step": step + 1, "loss": round(loss.item(), 3), "seconds": round(time.time() - t0, 1), "valid": score(model, xv, mv)}), flush=True)


if __name__ == "__main__":
    main()
