#!/usr/bin/env python3
"""PyTorch reference for `pipe bench train`: the same shapes (flags of the same names and
defaults: the ~5M-parameter shape), with transformers' default attention (`sdpa`) or `eager`.
One step = forward, cross-entropy, backward, global-norm clipping at 1.0, AdamW (betas 0.9,
0.95, weight decay 0.1), as the train stage's step. Prints one JSON line per shape: the median
wall and CPU seconds per step, tokens/s and the process's peak resident memory.

Run only where torch and transformers are installed (never a ropelens dependency), each
measurement in its own process (the peak is process-wide), alternating with the Rust side:
    OMP_NUM_THREADS=2 python bench/torch_train_shapes.py --hidden 128 --seq-len 64 --batch 32 [--attn eager]
    pipe bench train --hidden 128 --seq-len 64 --batch 32
`--shape all` measures the three shapes docs/train.md reports (quickstart base, quickstart
fine-tune, 5M) one after the other.
"""

import argparse
import json
import os
import resource
import statistics
import time

import torch
from transformers import LlamaForCausalLM

from llama_shapes import llama_config, swiglu_width

# The shapes of `ropelens::train::bench::TrainBench::{quickstart, quickstart_extend, five_m}`:
# (vocab, hidden, layers, heads, batch, seq_len).
SHAPES = {
    "quickstart": (2048, 128, 4, 4, 32, 64),
    "quickstart-extend": (2048, 128, 4, 4, 8, 256),
    "5M": (4096, 256, 4, 4, 8, 256),
}


def bench(args):
    ffn = args.ffn or swiglu_width(args.hidden)
    torch.manual_seed(7)
    cfg = llama_config(
        vocab=args.vocab,
        hidden=args.hidden,
        ffn=ffn,
        layers=args.layers,
        heads=args.heads,
        max_pos=max(args.seq_len, 2048),
        attn=args.attn,
    )
    model = LlamaForCausalLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    vocab, batch, seq = args.vocab, args.batch, args.seq_len

    def step():
        ids = torch.randint(0, vocab, (batch, seq + 1))
        t, c = time.perf_counter(), time.process_time()
        out = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t, time.process_time() - c

    step()
    runs = [step() for _ in range(args.steps)]
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    print(
        json.dumps(
            {
                "impl": f"pytorch-{args.attn}",
                "params": sum(p.numel() for p in model.parameters()),
                "hidden": args.hidden,
                "layers": args.layers,
                "heads": args.heads,
                "ffn": ffn,
                "vocab": vocab,
                "batch": batch,
                "seq_len": seq,
                "threads": torch.get_num_threads(),
                "steps": args.steps,
                "step_s": round(wall, 4),
                "step_cpu_s": round(cpu, 4),
                "tokens_per_s": round(batch * seq / wall),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
                "torch": torch.__version__,
            }
        ),
        flush=True,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=None, help="default: 8/3 x hidden rounded up to 32")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps after one untimed step")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--shape", choices=["all"], help="`all`: the three named shapes, ignoring the shape flags")
    args = p.parse_args()
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.shape == "all":
        for vocab, hidden, layers, heads, batch, seq in SHAPES.values():
            args.vocab, args.hidden, args.layers, args.heads = vocab, hidden, layers, heads
            args.batch, args.seq_len, args.ffn = batch, seq, None
            bench(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
