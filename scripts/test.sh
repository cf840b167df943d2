#!/usr/bin/env bash
# The README's test command: every test of the workspace (unit, property, golden cases through
# the library and the CLI). The golden cases are the repository's own, tests/golden.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
