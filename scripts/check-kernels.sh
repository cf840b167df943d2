#!/usr/bin/env bash
# check-kernels.sh -- compiles every crates/sampler-kernels/kernels/*.cu with nvcc: to PTX for sm_90 (what CI checks)
# and to an sm_90 cubin, printing each kernel's registers, spills and shared memory.
#
# At run time the kernels are compiled by NVRTC (crates/sampler-kernels/src/cuda.rs), so a normal
# build needs no CUDA compiler; this script catches CUDA compile errors and warnings without a GPU.
#
# nvcc: the one on PATH, else the CUDA 13.0 build toolchain recipe shared/gpu/cuda-toolchain.sh,
# which lives outside this repository (found at $CUDA_TOOLCHAIN_SH, <repo>/shared/gpu/ or
# <repo>/../shared/gpu/; installs itself on first use). Without either, the check says so and
# is skipped (exit 0). Output files go to $KERNEL_CHECK_OUT (default: a temporary folder, removed).
# Exit status: 0 when every file compiles without warnings, 1 otherwise.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if ! command -v nvcc >/dev/null 2>&1; then
    tc=
    for f in "${CUDA_TOOLCHAIN_SH:-}" "$root/shared/gpu/cuda-toolchain.sh" "$root/../shared/gpu/cuda-toolchain.sh"; do
        if [ -n "$f" ] && [ -f "$f" ]; then tc=$f; break; fi
    done
    if [ -z "$tc" ]; then
        echo "check-kernels: skipped: no nvcc on PATH and no CUDA toolchain recipe (../shared/gpu/cuda-toolchain.sh or \$CUDA_TOOLCHAIN_SH)"
        exit 0
    fi
    # The recipe prints the exports; when it cannot install (offline), there is nothing to check.
    if ! exports=$(bash "$tc"); then
        echo "check-kernels: skipped: the CUDA toolchain recipe $tc could not install the toolchain"
        exit 0
    fi
    eval "$exports"
fi

out=${KERNEL_CHECK_OUT:-}
if [ -z "$out" ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"

echo "check-kernels: $(nvcc --version | tail -n 1)"
shopt -s nullglob
files=("$root"/crates/sampler-kernels/kernels/*.cu)
if [ ${#files[@]} -eq 0 ]; then
    echo "check-kernels: no crates/sampler-kernels/kernels/*.cu" >&2
    exit 1
fi

status=0
for cu in "${files[@]}"; do
    name=$(basename "${cu%.cu}")
    # PTX for sm_90, warnings are errors
    if nvcc --ptx -arch=sm_90 -Werror all-warnings -I "$root/crates/sampler-kernels/kernels" -o "$out/$name.ptx" "$cu"; then
        echo "ok   $name.cu -> PTX (sm_90)"
    else
        echo "FAIL $name.cu -> PTX (sm_90)" >&2
        status=1
        continue
    fi
    # cubin: ptxas reports registers, spills and shared memory per kernel
    if nvcc --cubin -arch=sm_90 -Werror all-warnings -Xptxas -v -I "$root/crates/sampler-kernels/kernels" \
        -o "$out/$name.cubin" "$cu" 2>"$out/$name.ptxas.txt"; then
        grep -E "Compiling entry|registers|spill" "$out/$name.ptxas.txt" | sed 's/^/     /'
    else
        cat "$out/$name.ptxas.txt" >&2
        echo "FAIL $name.cu -> cubin (sm_90)" >&2
        status=1
    fi
done
exit $status
