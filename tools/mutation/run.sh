#!/usr/bin/env bash
# Mutation score of the token-choosing code (Stryker.NET), outside CI: see README.md beside this script.
# Usage (repo root, after ./build.sh --target=Build, which stages libxlstm_customops.so beside the tests):
#   tools/mutation/run.sh                 # the files and tests in stryker-config.json
#   tools/mutation/run.sh --mutate '**/Generation/TextStopper.cs'   # extra arguments go to dotnet-stryker
# The report lands in artifacts/mutation/ (StrykerOutput/<date>/reports/mutation-report.html and .json).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
tools=artifacts/mutation/tools
[ -x "$tools/dotnet-stryker" ] || dotnet tool install dotnet-stryker --version 5.1.0 --tool-path "$tools"
[ -f tests/XLstmOnnx.Tests/bin/Release/net10.0/libxlstm_customops.so ] \
  || { echo "run ./build.sh --target=Build first: the tests need libxlstm_customops.so beside them" >&2; exit 2; }
mkdir -p artifacts/mutation
cd runtime/XLstmOnnx.Runtime
exec "../../$tools/dotnet-stryker" --config-file ../../tools/mutation/stryker-config.json \
  --output ../../artifacts/mutation "$@"
