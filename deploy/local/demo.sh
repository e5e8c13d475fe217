#!/usr/bin/env bash
# The built-in demo (configs/demo.yaml): a coordinator and 2 workers on this
# machine train the tiny model on the synthetic shapes dataset (generated into a
# temporary folder, seed 1), then predict classifies a freshly generated image
# with the best checkpoint: a triangle of seed 7, which no training image is.
# usage: bash deploy/local/demo.sh [OUT_DIR]   (default: ./demo-out)
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/install-deps.sh
out=${1:-demo-out}
mkdir -p "$out"
go build -o bin/ ./cmd/...
./bin/coordinator --workers 2 --local --out "$out" --log-format console
./bin/synth --out "$out/sample" --train 1 --val 1 --size 64 --seed 7 >/dev/null
./bin/predict --model "$out/best.safetensors" --class-indices "$out/class_indices.json" --plot "$out/prediction.png" "$out/sample/val/triangle/triangle_0000.png"
echo "model, class index and prediction plot are in $out/"
