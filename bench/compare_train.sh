#!/usr/bin/env bash
# Training throughput of ropelens against PyTorch (sdpa and eager) at the quickstart base,
# quickstart fine-tune and 5M shapes, measured alternately (one process per measurement, the
# three implementations in turn, ROUNDS rounds), printing every JSON line; bench/median.py
# turns them into medians. The README's training table comes from this.
#
#     bench/compare_train.sh PIPE PYTHON [ROUNDS] > runs.jsonl
#
# PIPE: the ropelens binary (target/release/pipe); PYTHON: an interpreter with torch and
# transformers. Two threads each (RAYON_NUM_THREADS, OMP_NUM_THREADS) unless set.
set -euo pipefail
pipe=$1
python=$2
rounds=${3:-5}
here=$(dirname "$0")
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
shapes=(
    "--hidden 128 --vocab 2048 --seq-len 64 --batch 32"
    "--hidden 128 --vocab 2048 --seq-len 256 --batch 8"
    "--hidden 256 --vocab 4096 --seq-len 256 --batch 8"
)
for _ in $(seq "$rounds"); do
    for shape in "${shapes[@]}"; do
        # shellcheck disable=SC2086
        "$pipe" bench train $shape --steps 5
        # shellcheck disable=SC2086
        "$python" "$here/torch_train_shapes.py" $shape --steps 5 --attn sdpa
        # shellcheck disable=SC2086
        "$python" "$here/torch_train_shapes.py" $shape --steps 5 --attn eager
    done
done
