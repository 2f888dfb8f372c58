#!/usr/bin/env bash
# Install PyTorch into the virtual environment given as $1, without pulling a CUDA build onto a
# machine that has no NVIDIA GPU. PyPI's default Linux wheel of torch bundles CUDA (several GB).
# A CPU-only machine therefore takes a CPU wheel from pip's find-links folders when one is there
# (pip prefers the "+cpu" local version over PyPI's build of the same release), and otherwise
# the CPU wheel index of download.pytorch.org.
set -euo pipefail
python="$1/bin/python"
version="${TORCH_VERSION:-2.13.0}"

if "$python" -c "import torch" 2>/dev/null; then
    echo "torch $("$python" -c 'import torch; print(torch.__version__)') is already installed"
    exit 0
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "NVIDIA GPU found: installing the default (CUDA) build of torch $version"
    "$python" -m pip install "torch==$version"
    exit 0
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
if "$python" -m pip download --quiet --no-index --no-deps "torch==$version" -d "$scratch" >/dev/null 2>&1 \
    && ls "$scratch" | grep -q '+cpu'; then
    echo "installing the local CPU wheel of torch $version"
    "$python" -m pip install "torch==$version"
else
    echo "installing torch $version from the PyTorch CPU index"
    "$python" -m pip install "torch==$version" --index-url https://download.pytorch.org/whl/cpu
fi
