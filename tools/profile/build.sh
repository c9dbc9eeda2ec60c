#!/usr/bin/env bash
# Builds tools/profile/kernel_trace.cc into ${1:-/tmp/libkernel_trace.so} against this machine's CUPTI, trying the
# kernel activity record versions newest first (CUPTI renames the struct as it grows; the fields we read stay put).
set -u
out=${1:-/tmp/libkernel_trace.so}
cuda=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc || ls -d /usr/local/cuda*/bin/nvcc | sort -V | tail -1)")")}
# CUPTI ships in the toolkit (extras/CUPTI) or in pip's nvidia packages beside torch
h=$(find "$cuda" /usr/local /usr/include /usr/lib /opt $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) -name cupti.h 2>/dev/null | head -1)
l=$(find "$cuda" /usr/local /usr/lib /opt $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) -name 'libcupti.so*' 2>/dev/null | head -1)
[[ -n $h && -n $l ]] || { echo "profile/build.sh: no CUPTI found (cupti.h: ${h:-none}, libcupti: ${l:-none})" >&2; exit 2; }
inc=$(dirname "$h"); lib=$(dirname "$l")
[[ -e $lib/libcupti.so ]] || { mkdir -p /tmp/cupti-lib && ln -sf "$l" /tmp/cupti-lib/libcupti.so && lib=/tmp/cupti-lib; }
for v in 11 10 9 8 7 6 5 4; do
  if g++ -O2 -std=c++17 -shared -fPIC -DKERNEL_RECORD=CUpti_ActivityKernel$v -I"$cuda/include" -I"$inc" \
      "$(dirname "$0")/kernel_trace.cc" -o "$out" -L"$lib" -lcupti -Wl,-rpath,"$(dirname "$l")" 2>/tmp/kernel_trace_build.log; then
    echo "kernel_trace: built with CUpti_ActivityKernel$v ($lib)"; exit 0
  fi
done
echo "profile/build.sh: could not build against $inc" >&2
exit 1
