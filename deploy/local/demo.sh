#!/usr/bin/env bash
# The built-in demo: generate the synthetic shapes dataset, train the tiny model
# on it, then predict one generated image with the best checkpoint.
# usage: bash deploy/local/demo.sh [OUT_DIR]   (default: ./demo-out)
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/install-deps.sh
out=${1:-demo-out}
mkdir -p "$out"
go build -o bin/ ./cmd/...
./bin/synth --out "$out/data" --train 80 --val 20 --size 64 --seed 1
./bin/worker --standalone --data "$out/data" --out "$out" --variant tiny --epochs 20 --batch 32 --lr 1e-3 --log-format console
./bin/predict --model "$out/best.safetensors" --class-indices "$out/class_indices.json" --plot "$out/prediction.png" "$out/data/val/triangle/triangle_0000.png"
echo "model, class index and prediction plot are in $out/"
