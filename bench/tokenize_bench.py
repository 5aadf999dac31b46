"""Python side of `pipe bench tokenize`: the same corpus file, the same tokenizer.json, the
same documents (split on blank lines), encoded in one parallel batch without special tokens.

Prints one JSON line: {"seconds": best wall time of the encode call, "tokens": ..., ...}.
"""

import argparse
import json
import os
import time

from tokenizers import Tokenizer
import tokenizers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    docs = [d for d in text.split("\n\n") if d.strip()]
    tok = Tokenizer.from_file(args.tokenizer)
    encode = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    best = float("inf")
    out = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = encode(docs, add_special_tokens=False)
        best = min(best, time.perf_counter() - t0)
    tokens = sum(len(e.ids) for e in out)
    print(json.dumps({
        "seconds": best,
        "tokens": tokens,
        "documents": len(docs),
        "bytes": len(text.encode("utf-8")),
        "method": encode.__name__,
        "tokenizers_version": tokenizers.__version__,
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
