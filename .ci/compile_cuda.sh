#!/usr/bin/env bash
# Compile-only check of the CUDA sources of the S4D extension (csrc/*.cu) for sm_80 and sm_90 with nvcc,
# against the headers of the installed torch (the CPU wheel ships the CUDA headers too). Nothing is
# linked or run: this catches compile errors on machines without a GPU.
# Usage: .ci/compile_cuda.sh            (PYTHON and NVCC may be overridden from the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" ]]; then
  echo "compile_cuda.sh: nvcc not found; skipping the CUDA compile check" >&2
  exit 0
fi
mapfile -t INCLUDES < <("$PYTHON" -c 'from torch.utils.cpp_extension import include_paths
for p in include_paths(): print("-I" + p)')
# torch >= 2.10 headers need C++20; torch's own nvcc flags keep half/bfloat16 operators out of the way.
# The CPU wheel lacks the generated c10/cuda/impl/cuda_cmake_macros.h, hence
# C10_CUDA_NO_CMAKE_CONFIGURE_FILE (harmless for a compile-only check, not for a real build).
CXX_STD="$("$PYTHON" -c 'import torch; print("c++20" if tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 10) else "c++17")')"
ABI="$("$PYTHON" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
for src in csrc/*.cu; do
  echo "nvcc -c $src (sm_80, sm_90, -std=$CXX_STD)"
  "$NVCC" -c "$src" -o "$OUT/$(basename "$src").o" "${INCLUDES[@]}" -Icsrc \
    -std="$CXX_STD" -O3 -Xcompiler -fPIC --expt-relaxed-constexpr \
    -D_GLIBCXX_USE_CXX11_ABI="$ABI" -DLAMBDASKIP_WITH_CUDA -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ \
    -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90
done
# The binding file registers the CUDA kernels only under LAMBDASKIP_WITH_CUDA: check that branch too.
echo "c++ -fsyntax-only csrc/s4d_bindings.cpp -DLAMBDASKIP_WITH_CUDA"
PY_INCLUDE="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
"${CXX:-c++}" -fsyntax-only csrc/s4d_bindings.cpp "${INCLUDES[@]}" -I"$PY_INCLUDE" -Icsrc -std="$CXX_STD" \
  -D_GLIBCXX_USE_CXX11_ABI="$ABI" -DLAMBDASKIP_WITH_CUDA -DTORCH_EXTENSION_NAME=_s4d_ext
echo "compile_cuda.sh: OK"
