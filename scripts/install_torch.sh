#!/usr/bin/env bash
# Install PyTorch into the virtual environment given as $1, without pulling a CUDA build onto a
# machine that has no NVIDIA GPU. PyPI's default Linux wheel of torch bundles CUDA (several GB).
# A CPU-only machine therefore first tries a CPU wheel that pip finds without an index (a local
# wheelhouse in pip's find-links setting), then the CPU wheel index of download.pytorch.org.
set -euo pipefail
python="$1/bin/python"
version="${TORCH_VERSION:-2.13.0}"

if "$python" -c "import torch" 2>/dev/null; then
    echo "torch $("$python" -c 'import torch; print(torch.__version__)') is already installed"
    exit 0
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$python" -m pip install "torch==$version"
elif "$python" -m pip install --no-index "torch==$version" 2>/dev/null; then
    echo "installed torch $version from the local wheelhouse"
else
    "$python" -m pip install "torch==$version" --index-url https://download.pytorch.org/whl/cpu
fi
