#!/usr/bin/env bash
# Builds tools/profile/kernel_trace.cc into ${1:-/tmp/libkernel_trace.so} against this machine's CUPTI, trying the
# kernel activity record versions newest first (CUPTI renames the struct as it grows; the fields we read stay put).
set -u
out=${1:-/tmp/libkernel_trace.so}
cuda=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc || ls -d /usr/local/cuda*/bin/nvcc | sort -V | tail -1)")")}
inc=$(dirname "$(find "$cuda" -name cupti.h 2>/dev/null | head -1)")
lib=$(dirname "$(find "$cuda" -name 'libcupti.so*' 2>/dev/null | head -1)")
[[ -n $inc && -n $lib ]] || { echo "profile/build.sh: no CUPTI under $cuda" >&2; exit 2; }
for v in 11 10 9 8 7 6 5 4; do
  if g++ -O2 -std=c++17 -shared -fPIC -DKERNEL_RECORD=CUpti_ActivityKernel$v -I"$cuda/include" -I"$inc" \
      "$(dirname "$0")/kernel_trace.cc" -o "$out" -L"$lib" -lcupti -Wl,-rpath,"$lib" 2>/dev/null; then
    echo "kernel_trace: built with CUpti_ActivityKernel$v ($lib)"; exit 0
  fi
done
echo "profile/build.sh: could not build against $inc" >&2
exit 1
