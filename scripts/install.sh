#!/usr/bin/env bash
# Install kdbench and what it needs on a fresh machine (used by the README's two commands and CI).
#  - Fashion-MNIST from the Debian package when apt is available (the offline default dataset);
#    elsewhere the torchvision download serves (--set data.download=true).
#  - torch/torchvision pinned by constraints.txt, then kdbench in place with its C++ extension
#    (--no-build-isolation: setup.py builds the extension against the installed torch).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist) \
    || echo "install.sh: could not install dataset-fashion-mnist; kdbench will need --set data.download=true" >&2
fi
python -m pip install -q -c constraints.txt torch torchvision setuptools wheel ninja
python -m pip install -q -c constraints.txt --no-build-isolation --use-pep517 -e '.[test]'
