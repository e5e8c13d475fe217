#!/usr/bin/env bash
# gen.sh [OUTDIR]: compiles kernels.cu to the PTX the cuda build embeds,
# kernels_sm80.ptx and kernels_sm90.ptx, in OUTDIR (default: this folder).
# CI runs it into a temporary folder and compares with the committed files,
# so the same nvcc (Debian's CUDA 11.8) must give the same bytes.
#
# -fmad=false: no fused multiply-add, so that Adam (and every other body) is
# rounded as the CPU's Go code is, bit for bit. The IEEE division, square root
# and denormals are nvcc's defaults, spelt out so that no one flips them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$here" # relative source path: the PTX does not depend on where the repo is
for arch in 80 90; do
	nvcc -ptx -arch=sm_$arch -fmad=false -prec-div=true -prec-sqrt=true -ftz=false \
		-o "$out/kernels_sm$arch.ptx" kernels.cu
done
