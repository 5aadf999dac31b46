#!/usr/bin/env python3
"""PyTorch eager reference for ropelens's model benchmark (same shapes as
`ropelens::model::bench::BenchOptions::default()`): a ~5M-parameter LlamaForCausalLM
(hidden 256, 4 layers, 4 heads, ffn 704, vocab 4096), one AdamW training step at batch 8 x 256
tokens, and one evaluation forward of 2048 tokens. Prints JSON with median seconds.

Run only where torch and transformers are installed (never a ropelens dependency):
    python bench/torch_reference.py [ITERS] [--sdpa]
Set OMP_NUM_THREADS / torch threads to compare with `RAYON_NUM_THREADS` of the Rust side.
"""

import json
import statistics
import sys
import time

import torch
from transformers import LlamaForCausalLM

from llama_shapes import llama_config


def main():
    if "OMP_NUM_THREADS" in __import__("os").environ:
        torch.set_num_threads(int(__import__("os").environ["OMP_NUM_THREADS"]))
    iters = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 5
    attn = "sdpa" if "--sdpa" in sys.argv else "eager"
    torch.manual_seed(7)
    cfg = llama_config(vocab=4096, hidden=256, ffn=704, layers=4, heads=4, max_pos=2048, attn=attn)
    model = LlamaForCausalLM(cfg)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        ids = torch.randint(0, 4096, (8, 256))
        t, c = time.perf_counter(), time.process_time()
        out = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 4096), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t, time.process_time() - c

    model.train()
    step()
    runs = [step() for _ in range(iters)]
    train = statistics.median(r[0] for r in runs)
    train_cpu = statistics.median(r[1] for r in runs)

    model.eval()

    def fwd():
        ids = torch.randint(0, 4096, (1, 2048))
        t, c = time.perf_counter(), time.process_time()
        with torch.no_grad():
            model(ids)
        return time.perf_counter() - t, time.process_time() - c

    fwd()
    runs = [fwd() for _ in range(iters)]
    evalf = statistics.median(r[0] for r in runs)
    eval_cpu = statistics.median(r[1] for r in runs)
    print(json.dumps({
        "impl": f"pytorch-{attn}",
        "torch": torch.__version__,
        "params": params,
        "train_step_s": round(train, 4),
        "eval_forward_s": round(evalf, 4),
        "train_step_cpu_s": round(train_cpu, 4),
        "eval_forward_cpu_s": round(eval_cpu, 4),
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
