#!/usr/bin/env bash
# The test suite, on a bare Debian machine: installs what the tests need
# beyond the Rust toolchain, gcc, make and python3 (m4 for GMP's configure;
# cmake, ninja-build and ccache for the build-tool tests; util-linux's
# unshare; iproute2's ip for the multi-host tests in network namespaces),
# then runs every test against real processes.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in make gcc unshare ip m4 cmake ninja ccache; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "scripts/test.sh: missing ${missing[*]}; install them (as root) or run as root" >&2
        exit 1
    fi
    pkgs=()
    for tool in "${missing[@]}"; do
        case "$tool" in
            unshare) pkgs+=(util-linux) ;;
            ip) pkgs+=(iproute2) ;;
            ninja) pkgs+=(ninja-build) ;;
            *) pkgs+=("$tool") ;;
        esac
    done
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"
fi

cargo test --workspace "$@"
