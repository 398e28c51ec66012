#!/usr/bin/env bash
# Rebuild every shipped recipe that is runnable offline and copy its audit report here.
#   bash privacy_audits/regenerate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for recipe in recipes/demo.yaml; do
  name="$(basename "$recipe" .yaml)"
  synthgen build "$recipe" --out "$work/$name"
  mkdir -p "privacy_audits/$name"
  cp "$work/$name/audit/summary.json" "$work/$name/audit/report.html" "$work/$name/audit/audit.parquet" \
     "privacy_audits/$name/"
  echo "privacy_audits/$name: updated"
done
