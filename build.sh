#!/usr/bin/env bash
# Bootstraps Cake (pinned in .config/dotnet-tools.json) and runs build.cake: ./build.sh --target=Test
set -euo pipefail
cd "$(dirname "$0")"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
command -v dotnet >/dev/null || { echo "build.sh: the .NET 10 SDK is required (dotnet not on PATH)" >&2; exit 2; }

# customops/ (the C++ custom-op library, built by the Build and Test targets) needs cmake, make, g++ and GoogleTest:
# install whatever is missing from Debian/Ubuntu packages.
if [[ " $* " != *" --target=Quickstart "* ]]; then
  missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v make >/dev/null || missing+=(make)
  command -v g++ >/dev/null || missing+=(g++)
  [ -f /usr/include/gtest/gtest.h ] || missing+=(libgtest-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "build.sh: installing ${missing[*]} for customops/ ..."
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "build.sh: could not install ${missing[*]}; the customops build will say what is missing" >&2
  fi
fi

dotnet tool restore >/dev/null
exec dotnet tool run dotnet-cake build.cake "$@"
