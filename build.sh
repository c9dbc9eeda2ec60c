#!/usr/bin/env bash
# Bootstraps Cake (pinned in .config/dotnet-tools.json) and runs build.cake: ./build.sh --target=Test
set -euo pipefail
cd "$(dirname "$0")"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
command -v dotnet >/dev/null || { echo "build.sh: the .NET 10 SDK is required (dotnet not on PATH)" >&2; exit 2; }
dotnet tool restore >/dev/null
exec dotnet tool run dotnet-cake build.cake "$@"
