#!/usr/bin/env bash
# Rebuild every shipped recipe and audit it: copy audit + privacy metrics + membership inference, and keep the
# recipe's evaluation (eval/: fidelity and downstream utility).
#   bash privacy_audits/regenerate.sh                 # all recipes in RECIPES below
#   bash privacy_audits/regenerate.sh recipes/demo.yaml
# Offline, CPU: a few minutes per recipe (each build trains its model once; later runs reuse the model cache).
# MAX_IMAGES (default 200) bounds the images per side that membership inference scores.
# WORK=DIR keeps the builds and the exported training data in DIR (default: a temporary folder, deleted at exit),
# e.g. to rerun `synthgen eval` on a build later.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
RECIPES=(recipes/demo.yaml recipes/demo-dp.yaml recipes/radiology-real.yaml)  # radiology-real needs ../shared/data
[ "$#" -gt 0 ] && RECIPES=("$@")
MAX_IMAGES="${MAX_IMAGES:-200}"
synthgen="${SYNTHGEN:-synthgen}"
python="${PYTHON:-python}"
if [ -x .venv/bin/synthgen ] && [ -z "${SYNTHGEN:-}" ]; then synthgen=.venv/bin/synthgen; python=.venv/bin/python; fi
if [ -n "${WORK:-}" ]; then
  work="$WORK" && mkdir -p "$work"
else
  work="$(mktemp -d)" && trap 'rm -rf "$work"' EXIT
fi

for recipe in "${RECIPES[@]}"; do
  name="$(basename "$recipe" .yaml)"
  if [ ! -f "$recipe" ]; then
    echo "privacy_audits/$name: skipped, $recipe does not exist"
    continue
  fi
  out="privacy_audits/$name" new="$work/$name-audit"
  "$synthgen" build "$recipe" --out "$work/$name"
  # The build's own audit (every generated image, dropped copies included) goes to build/.
  # Its rows and report name the training files: shipped only for the demo phantoms (ours), never for real data.
  mkdir -p "$new/build"
  cp "$work/$name/audit/summary.json" "$new/build/"
  if grep -q "type: demo" "$recipe"; then
    cp "$work/$name/audit/report.html" "$work/$name/audit/audit.parquet" "$new/build/"
  fi
  # The recipe's eval: block (fidelity, label fidelity, TRTR / TSTR utility on held-out data) goes to eval/.
  if [ -d "$work/$name/eval" ]; then mkdir -p "$new/eval" && cp "$work/$name/eval/eval.json" "$work/$name/eval/report.html" "$new/eval/"; fi
  # The published images against the training data, with a holdout of the same domain and the model itself.
  mapfile -t inputs < <("$python" privacy_audits/mia_inputs.py "$recipe" "$work/$name-data")
  model="${inputs[0]}" train="${inputs[1]}" holdout="${inputs[2]:-}"
  embedder="${inputs[3]}" threshold="${inputs[4]}"
  args=(audit --train "$train" --candidates "$work/$name" --out "$new" --embedder "$embedder" --threshold "$threshold")
  if [ -n "$holdout" ]; then
    args+=(--holdout "$holdout" --model "$model" --max-images "$MAX_IMAGES")
  else
    echo "privacy_audits/$name: no holdout set (set HOLDOUT=path): metrics without holdout, no membership inference"
  fi
  "$synthgen" "${args[@]}"
  rm -rf "$out" && mv "$new" "$out"
  echo "privacy_audits/$name: updated"
done
