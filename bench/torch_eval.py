#!/usr/bin/env python3
"""PyTorch reference for `pipe bench eval`: the perplexity forward of a Hugging Face checkpoint
at given lengths, as a transformers user computes it (`model(ids, labels=ids)` under
`torch.no_grad()`, batch 1, random tokens), with transformers' default attention (`sdpa`) or
`eager`. Prints one JSON line per length: median wall seconds, tokens/s, and the process's peak
resident memory. Run each attention implementation in its own process (the peak is
process-wide).

    python bench/torch_eval.py make-model DIR     # random SmolLM2-135M-shaped checkpoint
    OMP_NUM_THREADS=2 python bench/torch_eval.py run DIR --lengths 4096 16384 [--attn eager] [--iters 3]
    OMP_NUM_THREADS=2 python bench/torch_eval.py generate DIR --lengths 4096 [--new-tokens 16]

`make-model` writes a LlamaForCausalLM with SmolLM2-135M's shapes (30 layers, hidden 576,
9 heads / 3 KV heads, head_dim 64, ffn 1536, vocab 49152, tied embeddings, rope_theta 1e5) and
random weights: for timing it is the same work as the real model. Never a ropelens dependency.
"""

import argparse
import json
import os
import resource
import statistics
import time

import torch
from transformers import LlamaForCausalLM

from llama_shapes import llama_config


def make_model(out):
    torch.manual_seed(7)
    cfg = llama_config(
        vocab=49152,
        hidden=576,
        ffn=1536,
        layers=30,
        heads=9,
        kv_heads=3,
        max_pos=8192,
        eps=1e-5,
        tie=True,
        attn=None,
        rope_theta=100000.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    print(json.dumps({"saved": out, "params": sum(p.numel() for p in model.parameters())}))


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(args):
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    t0 = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(
        args.dir, torch_dtype=torch.float32, attn_implementation=args.attn
    )
    model.eval()
    load_s = time.perf_counter() - t0
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(7)
    for length in args.lengths:
        times, cpu = [], []
        for _ in range(args.iters):
            ids = torch.randint(0, vocab, (1, length), generator=gen)
            t, c = time.perf_counter(), time.process_time()
            with torch.no_grad():
                out = model(ids, labels=ids)
            float(out.loss)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            del out
        med = statistics.median(times)
        print(
            json.dumps(
                {
                    "impl": f"pytorch-{args.attn}",
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "length": length,
                    "load_s": round(load_s, 3),
                    "forward_s": round(med, 3),
                    "cpu_s": round(statistics.median(cpu), 3),
                    "all_s": [round(x, 3) for x in times],
                    "tokens_per_s": round(length / med, 1),
                    "peak_rss_mib": round(peak_rss_mib(), 1),
                }
            ),
            flush=True,
        )


def generate(args):
    """Greedy generation as the needle task does it: prefill + first token, then per-token
    decode with the KV cache (`generate`, greedy, no early stop)."""
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model = LlamaForCausalLM.from_pretrained(
        args.dir, torch_dtype=torch.float32, attn_implementation=args.attn
    )
    model.eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(7)
    for length in args.lengths:
        ids = torch.randint(0, vocab, (1, length), generator=gen)

        def run(new):
            t = time.perf_counter()
            with torch.no_grad():
                model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    pad_token_id=0,
                )
            return time.perf_counter() - t

        first = statistics.median(run(1) for _ in range(args.iters))
        full = statistics.median(run(1 + args.new_tokens) for _ in range(args.iters))
        print(
            json.dumps(
                {
                    "impl": f"pytorch-{args.attn}",
                    "work": "generate",
                    "threads": torch.get_num_threads(),
                    "prompt": length,
                    "prefill_s": round(first, 3),
                    "decode_token_s": round((full - first) / args.new_tokens, 4),
                    "peak_rss_mib": round(peak_rss_mib(), 1),
                }
            ),
            flush=True,
        )


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("dir")
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("--lengths", type=int, nargs="+", required=True)
    r.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    r.add_argument("--iters", type=int, default=1)
    g = sub.add_parser("generate")
    g.add_argument("dir")
    g.add_argument("--lengths", type=int, nargs="+", required=True)
    g.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    g.add_argument("--iters", type=int, default=1)
    g.add_argument("--new-tokens", type=int, default=16)
    args = p.parse_args()
    if args.cmd == "make-model":
        make_model(args.dir)
    elif args.cmd == "generate":
        generate(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
