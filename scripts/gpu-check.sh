#!/usr/bin/env bash
# gpu-check.sh -- prepares the check of the CUDA build on a GPU machine (issue 7).
#
# Here (no GPU needed): builds the `sampler` binary with --features cuda using the CUDA 13.0
# build toolchain of shared/gpu/cuda-toolchain.sh, and gathers what the GPU machine needs into
# the git-ignored folder .gpu-bundle/ (at most 64 MiB):
#     .gpu-bundle/sampler          the stripped release binary
#     .gpu-bundle/golden/          the golden cases (for `sampler selftest`)
#     .gpu-bundle/run-on-gpu.sh    what runs on the GPU machine
# Then it prints the one command to run there, from the repository root:
#     bash .gpu-bundle/run-on-gpu.sh
# which finds the CUDA libraries (shared/gpu/README.md, "Run on the GPU machine"), then runs
#     sampler selftest --device cuda                -> $OUT/selftest.txt
#     sampler bench --suite --device cuda --json    -> $OUT/bench.json
# and writes the environment it saw to $OUT/env.txt ($OUT: set by the device tool; default
# ./gpu-reports). Its exit status is non-zero when either command fails.
#
# Settings (environment):
#   CARGO_TARGET_DIR    where to build (default <repo>/target/cuda; keep one per feature set,
#                       a cold build costs ~8 min of two cores)
#   SAMPLER_GOLDEN_DIR  the golden cases (default: <repo>/tests/golden)
#   GPU_CHECK_COMPRESS  1: build candle's kernels as compressed fat binaries (binary ~15 MB instead
#                       of ~41 MB; not yet exercised on a GPU). Switching it rebuilds candle-kernels.
#   CUDA_TOOLCHAIN_SH   the toolchain script (default: <repo>/shared/gpu/ or <repo>/../shared/gpu/)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bundle="$root/.gpu-bundle"
limit=$((64 * 1024 * 1024))

find_first() { for f in "$@"; do if [ -n "$f" ] && [ -e "$f" ]; then echo "$f"; return 0; fi; done; return 1; }

tc=$(find_first "${CUDA_TOOLCHAIN_SH:-}" "$root/shared/gpu/cuda-toolchain.sh" "$root/../shared/gpu/cuda-toolchain.sh") || {
    echo "gpu-check: shared/gpu/cuda-toolchain.sh not found (set CUDA_TOOLCHAIN_SH)" >&2; exit 1; }
golden=$(find_first "${SAMPLER_GOLDEN_DIR:-}" "$root/tests/golden") || {
    echo "gpu-check: golden cases not found (set SAMPLER_GOLDEN_DIR)" >&2; exit 1; }

# shellcheck disable=SC1090
source "$tc" >&2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}

if [ "${GPU_CHECK_COMPRESS:-0}" = 1 ]; then
    want="--compress-mode=size"
else
    want=""
fi
# candle-kernels does not rebuild when NVCC_APPEND_FLAGS changes: remember what it was built with
stamp="$CARGO_TARGET_DIR/.gpu-check-nvcc-append-flags"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$want" ]; then
    echo "gpu-check: NVCC_APPEND_FLAGS changed ('$(cat "$stamp")' -> '$want'): rebuilding candle-kernels" >&2
    cargo clean --release -p candle-kernels
fi
if [ -n "$want" ]; then export NVCC_APPEND_FLAGS="$want"; else unset NVCC_APPEND_FLAGS; fi

echo "gpu-check: building sampler --features cuda in $CARGO_TARGET_DIR" >&2
(cd "$root" && cargo build --release -p sampler-cli --features cuda)
mkdir -p "$CARGO_TARGET_DIR" && printf '%s' "$want" >"$stamp"

rm -rf "$bundle"
mkdir -p "$bundle"
cp "$CARGO_TARGET_DIR/release/sampler" "$bundle/sampler"
if command -v strip >/dev/null 2>&1; then strip "$bundle/sampler"; fi
cp -R "$golden" "$bundle/golden"
chmod -R u+w "$bundle/golden" # the source may be read-only; the next run deletes the copy

cat >"$bundle/run-on-gpu.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root: bash .gpu-bundle/run-on-gpu.sh
# Reports go to $OUT (default ./gpu-reports): env.txt, selftest.txt, bench.json (+ bench.stderr).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:-$PWD/gpu-reports}
mkdir -p "$out"
bin="$here/sampler"

# The CUDA libraries of the pip nvidia-* wheels (shared/gpu/README.md): a python that has them.
NVLIBS=
for py in "${PY:-}" /opt/torch/.venv/bin/python3 python3; do
    [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 || continue
    NVLIBS=$("$py" -c 'import glob, os, nvidia; print(":".join(sorted({os.path.dirname(f) for d in nvidia.__path__ for f in glob.glob(os.path.join(d, "*", "lib", "lib*.so*"))})))' 2>/dev/null) && [ -n "$NVLIBS" ] && break
    NVLIBS=
done
if [ -z "$NVLIBS" ]; then
    NVLIBS=$(find /opt /usr/local /usr/lib /root /home -xdev -type d -path '*/nvidia/*/lib' 2>/dev/null | paste -sd: -)
fi
DRVLIB=
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib64 /usr/lib/x86_64-linux-gnu; do
        [ -e "$d/libcuda.so.1" ] && { DRVLIB=$d; break; }
    done
fi
export LD_LIBRARY_PATH="$NVLIBS${DRVLIB:+:$DRVLIB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SAMPLER_GOLDEN_DIR="$here/golden"

{
    echo "date: $(date -u)"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1
    else
        echo "no nvidia-smi"
    fi
    echo "--- ldd"
    ldd "$bin" 2>&1 | grep -E 'not found|libcu|nvrtc|libstdc'
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
# (grep without -q reads all of ldd's output: no SIGPIPE under pipefail)
if ldd "$bin" 2>&1 | grep 'not found' >/dev/null; then
    echo "run-on-gpu: unresolved libraries, see $out/env.txt" >&2
    exit 2
fi

status=0
echo "== sampler selftest --device cuda"
timeout "${SELFTEST_TIMEOUT:-300}" "$bin" selftest --device cuda >"$out/selftest.txt" 2>&1 || status=$?
tail -n 40 "$out/selftest.txt"
echo "selftest exit status: $status"
bstatus=0
echo "== sampler bench --suite --device cuda --json"
timeout "${BENCH_TIMEOUT:-300}" "$bin" bench --suite --device cuda --json >"$out/bench.json" 2>"$out/bench.stderr" || bstatus=$?
tail -c 4000 "$out/bench.json"; tail -n 20 "$out/bench.stderr"
echo "bench exit status: $bstatus"
[ "$status" -eq 0 ] && [ "$bstatus" -eq 0 ]
RUN
chmod +x "$bundle/run-on-gpu.sh" "$bundle/sampler"

size=$(du -sb "$bundle" | cut -f1)
echo "gpu-check: $bundle holds $((size / 1024 / 1024)) MiB:" >&2
ls -l "$bundle" >&2
if [ "$size" -ge "$limit" ]; then
    echo "gpu-check: the bundle is over 64 MiB; try GPU_CHECK_COMPRESS=1" >&2
    exit 1
elif [ "$size" -ge $((56 * 1024 * 1024)) ]; then
    echo "gpu-check: warning: the bundle and the working tree travel together within 64 MiB" >&2
fi
cat <<MSG
Bundle ready. On the GPU machine, from the repository root (carry .gpu-bundle; reports go to \$OUT):

    bash .gpu-bundle/run-on-gpu.sh
MSG
