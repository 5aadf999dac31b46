#!/usr/bin/env python3
"""Medians of benchmark JSON lines: training lines (`pipe bench train` and
bench/torch_train_shapes.py, e.g. bench/compare_train.sh's output) give one row per
implementation and shape, with the number of runs, median tokens/s, wall and CPU seconds per
step, and peak RSS; evaluation lines (`pipe bench eval` and bench/torch_eval.py run) one row per
implementation and length, with median forward seconds, CPU seconds, tokens/s and peak RSS.

    python bench/median.py runs.jsonl
"""

import json
import statistics
import sys
from collections import defaultdict


def main():
    groups = defaultdict(list)
    evals = defaultdict(list)
    for line in open(sys.argv[1]):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "tokens_per_s" not in r:
            continue
        if "hidden" not in r:
            # An evaluation line: ropelens says `seconds`, the PyTorch script `forward_s`.
            r["forward"] = r.get("seconds", r.get("forward_s"))
            evals[(r["length"], r["impl"])].append(r)
            continue
        key = (r["hidden"], r["seq_len"], r["batch"], r["impl"])
        groups[key].append(r)
    for (length, impl), rs in sorted(evals.items()):
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(
            f"length {length} {impl:15} n={len(rs)} forward {med('forward'):.2f} s  "
            f"CPU {med('cpu_s'):.2f} s  tokens/s {med('tokens_per_s'):.1f}  "
            f"peak {med('peak_rss_mib'):.0f} MiB  "
            f"(forward s {sorted(round(r['forward'], 2) for r in rs)})"
        )
    for (hidden, seq, batch, impl), rs in sorted(groups.items()):
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(
            f"hidden {hidden} batch {batch} x {seq} {impl:15} n={len(rs)} "
            f"tokens/s {med('tokens_per_s'):8.0f}  step {med('step_s'):.4f} s  "
            f"CPU {med('step_cpu_s'):.4f} s  peak {med('peak_rss_mib'):.0f} MiB  "
            f"(tokens/s {sorted(round(r['tokens_per_s']) for r in rs)})"
        )


if __name__ == "__main__":
    main()
