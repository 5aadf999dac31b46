#!/usr/bin/env python3
"""PyTorch eager reference for the train stage's throughput benchmark: the same shapes as
`ropelens::train::bench::TrainBench::{quickstart, quickstart_extend, five_m}` (run on the Rust
side with `cargo test --release --test tests train::throughput -- --ignored --nocapture`).
One step = forward, cross-entropy, backward, global-norm clipping at 1.0, AdamW. Prints one
JSON line per shape with the median wall and CPU seconds per step and tokens/s.

Run only where torch and transformers are installed (never a ropelens dependency):
    OMP_NUM_THREADS=1 python bench/torch_train_shapes.py [ITERS]
and compare with `RAYON_NUM_THREADS=1` on the Rust side.
"""

import json
import os
import statistics
import sys
import time

import torch
from transformers import LlamaForCausalLM

from llama_shapes import llama_config

# name: (vocab, hidden, layers, heads, ffn, batch, seq_len); ffn as LlamaConfig::new rounds it.
SHAPES = {
    "quickstart": (2048, 128, 4, 4, 352, 32, 64),
    "quickstart extend": (2048, 128, 4, 4, 352, 8, 256),
    "5M": (4096, 256, 4, 4, 704, 8, 256),
}


def bench(name, vocab, hidden, layers, heads, ffn, batch, seq, iters):
    torch.manual_seed(7)
    cfg = llama_config(
        vocab=vocab, hidden=hidden, ffn=ffn, layers=layers, heads=heads, max_pos=max(seq, 2048), attn="eager"
    )
    model = LlamaForCausalLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

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
    runs = [step() for _ in range(iters)]
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    print(json.dumps({
        "shape": name,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "seq_len": seq,
        "step_s": round(wall, 4),
        "step_cpu_s": round(cpu, 4),
        "tokens_per_s": round(batch * seq / wall),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


def main():
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for name, shape in SHAPES.items():
        bench(name, *shape, iters)


if __name__ == "__main__":
    main()
