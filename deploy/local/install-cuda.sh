#!/usr/bin/env bash
# Installs what building (not running) the cuda backend needs on Debian: CUDA
# 11.8 from Debian's non-free component (nvcc, cuda.h, cublas_v2.h, libcuda.so,
# libcublas), which the default apt sources lack. Adds a deb822 source file
# with the same URIs and suites as debian.sources and contrib non-free. Does
# nothing when nvcc and cuda.h are there. About 2 minutes and 2.8 GB.
set -euo pipefail
if command -v nvcc >/dev/null 2>&1 && [ -f /usr/include/cuda.h ] && [ -f /usr/include/cublas_v2.h ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
src=/etc/apt/sources.list.d/debian.sources
extra=/etc/apt/sources.list.d/alexring-non-free.sources
if [ ! -f "$extra" ]; then
  if [ ! -f "$src" ]; then
    echo "install-cuda: $src not found: add contrib and non-free to the apt sources by hand" >&2
    exit 1
  fi
  # Same stanzas, other components: main stays in debian.sources.
  sed -e 's/^Components:.*/Components: contrib non-free/' "$src" | $sudo tee "$extra" >/dev/null
fi
echo "installing nvidia-cuda-toolkit (CUDA 11.8) with apt-get" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit >/dev/null
nvcc --version | tail -1
