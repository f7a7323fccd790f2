#!/usr/bin/env bash
# Download, here, the wheels bench/device/check.sh needs on a lent GPU machine (the `device`
# tool): its image has Python 3.12 with PyTorch, numpy, PyYAML, tqdm, scipy and packaging, and
# nothing can be fetched there. pydantic (the configuration; with typing_extensions at the
# version it needs) and nibabel (the inference bench's volumes) travel as wheels in .whl/
# (git-ignored), at the versions this project pins.
set -euo pipefail
cd "$(dirname "$0")/../.."
pin() { grep -i -E "^$1==" requirements/constraints.txt | head -1; }
mkdir -p .whl
for name in pydantic pydantic_core annotated-types typing-inspection typing_extensions nibabel; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$(pin "$name")"
done
ls -l .whl
