#!/usr/bin/env bash
# The networks table of the README: metaclf against the PyTorch (torch.func, direct formulation)
# and JAX references on the same architectures, in one run per row, 2 threads:
#   the paper's CNN at 1×28×28 and 2×64×64, fashion-resnet at 1×28×28 and 3×32×32 (batch 256),
#   deeploc at 2×64×64 (batch 64; its per-sample gradients would need batch × 9.0 M × 4 bytes
#   = 2.3 GB stacked in torch.func).
# Usage: bench/networks.sh [PYTHON]   (PYTHON with torch and jax installed; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
BIN=target/release/metaclf
cargo build --release -q
refs=(--reference bench/reference_torch.py --reference bench/reference_jax.py --python "$PY")
run() { echo "== $*"; "$BIN" bench --only grad,mc,train --seconds 3 "$@" "${refs[@]}" --json; }
run --shape 1,28,28
run --shape 2,64,64
run --config configs/fashion-resnet.toml
run --config configs/fashion-resnet.toml --shape 3,32,32
run --config configs/deeploc.toml --batch 64
