#!/usr/bin/env bash
# The README's test command: every test of the workspace (unit, property, golden through the
# library and the CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d ../shared/golden ] && [ -z "${SAMPLER_GOLDEN_DIR:-}" ]; then
  echo "error: the golden cases are expected at ../shared/golden (or set SAMPLER_GOLDEN_DIR)" >&2
  exit 1
fi
cargo test --workspace
