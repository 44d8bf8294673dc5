#!/usr/bin/env bash
# Rebuilds assets/pretrained_crypto_cnn.pt: the default federated run (5 IID workers, 10 rounds, seed 0),
# so the Draw and Encrypted Test pages work before anybody has trained.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m fed_core train --seed 0 --save-model assets/pretrained_crypto_cnn.pt
