"""The CPU's attainable fp32 matrix-product rate: the ceiling any trainer on it runs under.

docs/study.md ("Why 45 minutes cannot be had") sets a training step's FLOPs against it. Large
square products reach the BLAS's best; the threads follow OPENBLAS_NUM_THREADS / OMP_NUM_THREADS
(unset: every core).

    python -m venv /tmp/np && /tmp/np/bin/pip install numpy
    /tmp/np/bin/python bench/gemm_peak.py            # 2026-12-01, 2 cores: 158-172 GFLOP/s at 4096
"""

import json
import time

import numpy as np


def best_seconds(a, b, rounds=5):
    a @ b  # warm-up: allocation, thread pool
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def main():
    rng = np.random.default_rng(0)
    for n in (1024, 2048, 4096):
        a = rng.random((n, n), dtype=np.float32)
        b = rng.random((n, n), dtype=np.float32)
        seconds = best_seconds(a, b)
        print(json.dumps({"n": n, "seconds": round(seconds, 5), "gflop_per_s": round(2 * n**3 / seconds / 1e9, 1), "numpy": np.__version__}))


if __name__ == "__main__":
    main()
