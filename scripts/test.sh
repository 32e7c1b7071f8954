#!/usr/bin/env bash
# The test suite, on a bare Debian machine: installs what the tests need
# beyond the Rust toolchain, gcc, make and python3 (m4 for GMP's configure;
# cmake, ninja-build and ccache for the build-tool tests; util-linux's
# unshare and nsenter; iproute2's ip for the multi-host tests in network
# namespaces; glusterfs-server and glusterfs-client for the tests on a real
# network file system, client/tests/netfs.rs through testkit::netfs;
# wine and MinGW-w64 for the Windows client and the Windows-tool tests;
# munge (munged, the munge command, libmunge2) for the MUNGE tests of jobs
# run as their submitter: mexec loads libmunge at run time, so no -dev
# package is needed to build);
# prometheus for promtool, chromium and chromium-driver for the dashboard
# test in a real browser),
# builds the Windows client (mexec.exe, which the Wine test runs),
# then runs every test against real processes.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in make gcc unshare nsenter ip m4 cmake ninja ccache wine x86_64-w64-mingw32-gcc \
    glusterd mount.glusterfs munged promtool chromium chromedriver; do
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
            unshare | nsenter) pkgs+=(util-linux) ;;
            ip) pkgs+=(iproute2) ;;
            ninja) pkgs+=(ninja-build) ;;
            glusterd) pkgs+=(glusterfs-server) ;;
            mount.glusterfs) pkgs+=(glusterfs-client) ;;
            wine) pkgs+=(wine wine64) ;;
            x86_64-w64-mingw32-gcc) pkgs+=(gcc-mingw-w64-x86-64) ;;
            munged) pkgs+=(munge libmunge2) ;;
            promtool) pkgs+=(prometheus) ;;
            chromedriver) pkgs+=(chromium-driver) ;;
            *) pkgs+=("$tool") ;;
        esac
    done
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"
fi

# The Windows client, for the Wine test (client/tests/windows_client.rs).
windows=x86_64-pc-windows-gnu
if ! rustup target list --installed | grep -qx "$windows"; then
    rustup target add "$windows"
fi
cargo build -p mexec-client --bin mexec --target "$windows"

cargo test --workspace "$@"
