#!/usr/bin/env bash
# Runs the robustness harness for SECONDS (default 60) in release mode and prints
# "N cases, 0 panics" when no case panicked, produced a NaN or failed with an untyped error.
# A failing case is printed in full (its config, shape, logits and history) with its seed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
case "$seconds" in
  ''|*[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2 ;;
esac
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! SAMPLER_ROBUSTNESS_SECONDS="$seconds" cargo test --release -p sampler-core \
    --test robustness -- --nocapture --test-threads 1 >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
grep -oE '[0-9]+ cases, 0 panics.*' "$log"
