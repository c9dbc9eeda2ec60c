#!/usr/bin/env bash
# Publishes what tools/serve/run_serve_gpu.sh needs on the GPU machine and stages it (../shared/device/stage.sh):
#   .gpu/app         the NUnit tests as a self-contained executable (NUnit's own runner: the machine has no .NET SDK),
#                    with the CLI beside them (its apphost, dll, deps and runtimeconfig; the tests' folder holds its dependencies)
#   .gpu/old         the previous engine's assemblies (git revision $OLD_REV), for the before/after profile
#   .gpu/ort-include ONNX Runtime's C headers, to build customops/ there
# Usage (repo root): tools/serve/publish.sh   then make the runs that stage.sh prints, back to back.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
OLD_REV=${OLD_REV-009aadd}      # OLD_REV= (empty) skips the previous engine
rm -rf .gpu/app .gpu/old .gpu/ort-include /tmp/xlstm-cli-publish
dotnet publish tests/XLstmOnnx.Tests -c Release -r linux-x64 --self-contained -p:XLstmTestExecutable=true -o .gpu/app
dotnet publish cli/XLstmOnnx.Cli -c Release -r linux-x64 --self-contained -o /tmp/xlstm-cli-publish
cp /tmp/xlstm-cli-publish/xlstm-onnx /tmp/xlstm-cli-publish/xlstm-onnx.dll /tmp/xlstm-cli-publish/xlstm-onnx.deps.json \
   /tmp/xlstm-cli-publish/xlstm-onnx.runtimeconfig.json .gpu/app/
# never used there: Windows natives, TensorRT
rm -f .gpu/app/onnxruntime*.dll .gpu/app/libonnxruntime_providers_tensorrt.so
mkdir -p .gpu/old
if [[ -n $OLD_REV ]]; then
  old=$(mktemp -d)
  git worktree add -q --detach "$old" "$OLD_REV"
  dotnet build "$old/cli/XLstmOnnx.Cli" -c Release > /dev/null
  cp "$old"/cli/XLstmOnnx.Cli/bin/Release/net10.0/{xlstm-onnx.dll,XLstmOnnx.Runtime.dll,XLstmOnnx.GraphBuilder.dll} .gpu/old/
  git worktree remove --force "$old"
fi
nuget=${NUGET_PACKAGES:-$HOME/.nuget/packages}
cp -a "$(ls -d "$nuget"/microsoft.ml.onnxruntime.gpu.linux/1.31.0/buildTransitive/native/include | head -1)" .gpu/ort-include
du -sh .gpu/app .gpu/old .gpu/ort-include
../shared/device/stage.sh --part-mib 48 .gpu/app .gpu/old .gpu/ort-include
