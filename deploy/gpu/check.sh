#!/usr/bin/env bash
# The GPU backend's check on a lent GPU machine, in one command well under
# its 10 minutes. Run it through ../shared/device/gpu.sh, which unpacks the Go
# toolchain and the vendored modules and points cgo at the machine's CUDA,
# cuBLAS and cuDNN:
#
#   ../shared/device/pack.sh        # here, then carry [".device"] to the device
#   GPU_PKGS=./internal/atomicfile GPU_BENCH='bash deploy/gpu/check.sh' TORCH_BENCH=1 bash .device/gpu.sh
#
# (gpu.sh vets and tests GPU_PKGS with -tags cuda, which is gorgonia's own
# tag: it turns on gorgonia's unfinished CUDA graphs, which need cudnn.h and
# would take our CPU graphs with them. Our backend's tag is gpu, so GPU_PKGS
# names a package without gorgonia, and this script vets and tests ours.)
#
# It prints, under $OUT: go vet and go test -tags gpu of the GPU packages
# (the GPU-against-CPU parity figures, max abs and
# relative difference per tensor), a tiny 2-worker job on one GPU
# (coordinator --local --gpus 0,0) to the end, one epoch of the seed model on
# generated images, the best checkpoint's top-1 from predict --gpu 0 and from
# predict on the CPU, and bench step at batch 32 and 128 with the GEMM and the
# cuDNN convolution (gpu.sh's TORCH_BENCH=1 runs the PyTorch peer after it).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
fail=0
step() { echo; echo "=== $*"; }
check() { # check NAME CMD...: run, log, remember a failure, go on
  local name=$1; shift
  step "$name: $*"
  if ! "$@" 2>&1 | tee "$OUT/$name.log"; then echo "FAILED: $name"; fail=1; fi
}

# gpu.sh's CGO_CFLAGS has the include paths only; cgo's default is -O2 -g.
export CGO_CFLAGS="-O2 -g ${CGO_CFLAGS:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
step "build"
go build -tags gpu -o bin/ ./cmd/... || { echo "FAILED: build"; exit 1; }
check vet go vet -tags gpu ./alexnet/... ./internal/devices ./cmd/...
check gpu-tests go test -tags gpu -count=1 -v ./alexnet/cuda/... ./alexnet/gpu/...

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
check tiny-job ./bin/coordinator --workers 2 --local --gpus 0,0 --config tiny --out "$work/tiny" --log-format console --wait-timeout 2m

./bin/synth --out "$work/seed-data" --train 60 --val 12 --size 96 --seed 3 >/dev/null
check seed-epoch ./bin/worker --standalone --gpu 0 --data "$work/seed-data" --out "$work/seed" --epochs 1 --progress never --log-format console

img=$(find "$work/seed-data/val" -name '*.png' | sort | head -1)
for model in "$work/tiny" "$work/seed"; do
  [ -f "$model/best.safetensors" ] || { echo "FAILED: no $model/best.safetensors"; fail=1; continue; }
  gpu=$(./bin/predict --gpu 0 --json --model "$model/best.safetensors" --class-indices "$model/class_indices.json" "$img")
  cpu=$(./bin/predict --json --model "$model/best.safetensors" --class-indices "$model/class_indices.json" "$img")
  echo "predict --gpu 0: $gpu"; echo "predict (cpu):   $cpu"
  top1() { sed 's/.*"class":"\([^"]*\)".*/\1/'; }
  if [ -z "$gpu" ] || [ "$(echo "$gpu" | top1)" != "$(echo "$cpu" | top1)" ]; then
    echo "FAILED: top-1 differs between the GPU and the CPU for $model"; fail=1
  fi
done

for conv in gemm cudnn; do
  for b in 32 128; do
    check "bench-$conv-$b" ./bin/bench step --gpu 0 --conv "$conv" --variant seed --batch "$b" --steps 50 --warmup 10
  done
done
grep -h '^RESULT' "$OUT"/bench-*.log
exit $fail
