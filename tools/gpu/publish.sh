#!/usr/bin/env bash
# Publishes the CLI self-contained for linux-x64 into .gpu/cli (ignored) and stages it for the GPU machine.
# Usage (repo root): tools/gpu/publish.sh   then make the runs that ../shared/device/stage.sh prints.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
rm -rf .gpu/cli
dotnet publish cli/XLstmOnnx.Cli -c Release -r linux-x64 --self-contained -o .gpu/cli
# The Gpu meta-package also drops the Windows natives into a linux-x64 publish, and we never use TensorRT: prune them.
rm -f .gpu/cli/onnxruntime*.dll .gpu/cli/libonnxruntime_providers_tensorrt.so
du -sh .gpu/cli
# (no --ort: the publish already carries libonnxruntime*.so, and stage.sh --ort stops early when a NuGet package lacks build/native/include)
# 50 MiB parts: a part plus the ~8 MiB tree must stay under 64 MiB
../shared/device/stage.sh --part-mib 50 .gpu/cli
