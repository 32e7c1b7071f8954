#!/usr/bin/env bash
# A farm of several "hosts" on one Linux machine: the gatekeeper and each
# executor run in a network namespace of their own, with their own address
# on a bridge, so what crosses the network really does (and can be cut).
# The namespaces share the file system, which stands in for the shared tree.
#
#   deploy/netns-farm.sh up [N]    gatekeeper + N executors (default 3)
#   deploy/netns-farm.sh env       the variables a client needs
#   deploy/netns-farm.sh status    mexec --status through the gatekeeper
#   deploy/netns-farm.sh cut I     drop host nI's packets (no reset)
#   deploy/netns-farm.sh mend I    reconnect host nI
#   deploy/netns-farm.sh kill I    power host nI off (every process on it)
#   deploy/netns-farm.sh start I   start host nI's executor again
#   deploy/netns-farm.sh down      stop everything and remove it all
#
# Needs root and iproute2. Jobs run as $JOB_USER (default: the user who ran
# sudo, else nobody), so build in a tree that user can write. Binaries come
# from $MEXEC_BIN_DIR, else a release build of this checkout. FARM_NAME and
# FARM_SUBNET (three octets) let two farms coexist.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
name=${FARM_NAME:-mexec}
subnet=${FARM_SUBNET:-10.77.0}
state=/run/$name-netns
bridge="${name:0:10}-br"
gatekeeper_ip="$subnet.10"
executor_port=7460
gatekeeper_port=7461

die() { echo "netns-farm: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
command -v ip >/dev/null || die "needs ip (apt-get install iproute2)"

host_ns() { echo "$name-$1"; }
host_ip() { if [ "$1" = gk ]; then echo "$gatekeeper_ip"; else echo "$subnet.$((10 + $1))"; fi; }
host_link() { echo "${name:0:8}-v$1"; }

bin_dir() {
    if [ -n "${MEXEC_BIN_DIR:-}" ]; then
        echo "$MEXEC_BIN_DIR"
    else
        cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bins >&2
        echo "$root/target/release"
    fi
}

add_host() {
    local ns link
    ns=$(host_ns "$1")
    link=$(host_link "$1")
    ip netns add "$ns"
    ip link add "$link" type veth peer name eth0 netns "$ns"
    ip link set "$link" master "$bridge" up
    ip -n "$ns" addr add "$(host_ip "$1")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
}

# Starts host I's executor, which joins the gatekeeper, and waits until it
# listens.
start_executor() {
    local i=$1 bin
    bin=$(cat "$state/bin")
    ip netns exec "$(host_ns "$i")" "$bin/mexecd" \
        --listen "$(host_ip "$i"):$executor_port" --name "n$i" \
        --token-file "$state/token" --gatekeeper "$gatekeeper_ip:$gatekeeper_port" \
        --user "$(cat "$state/user")" \
        >"$state/n$i.out" 2>"$state/n$i.log" &
    echo $! >"$state/n$i.pid"
    wait_listening "$state/n$i.out"
}

wait_listening() {
    for _ in $(seq 1 100); do
        grep -q "listening on" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$1: the daemon did not start; see ${1%.out}.log"
}

kill_host() {
    local ns pids
    ns=$(host_ns "$1")
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # Stopped first, then killed: all at once, as a power cut would.
    [ -z "$pids" ] || kill -STOP $pids 2>/dev/null || true
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
}

print_env() {
    echo "export MEXEC_GATEKEEPER=$gatekeeper_ip:$gatekeeper_port MEXEC_TOKEN_FILE=$state/token"
}

up() {
    local count=${1:-3} bin
    [ ! -e "$state" ] || die "$state exists: run '$0 down' first"
    bin=$(bin_dir)
    mkdir -p "$state"
    echo "$bin" >"$state/bin"
    echo "${JOB_USER:-${SUDO_USER:-nobody}}" >"$state/user"
    echo "$count" >"$state/count"
    head -c 32 /dev/urandom | base64 >"$state/token"
    chmod 600 "$state/token"
    ip link add "$bridge" type bridge
    ip addr add "$subnet.1/24" dev "$bridge"
    ip link set "$bridge" up
    add_host gk
    ip netns exec "$(host_ns gk)" "$bin/mexec-gatekeeper" \
        --listen "$gatekeeper_ip:$gatekeeper_port" --token-file "$state/token" \
        >"$state/gk.out" 2>"$state/gk.log" &
    wait_listening "$state/gk.out"
    for i in $(seq 1 "$count"); do
        add_host "$i"
        start_executor "$i"
    done
    echo "gatekeeper on $gatekeeper_ip:$gatekeeper_port, executors n1..n$count on $subnet.11.."
    echo "jobs run as $(cat "$state/user"); logs in $state"
    print_env
}

down() {
    local count
    count=$(cat "$state/count" 2>/dev/null || echo 0)
    for host in gk $(seq 1 "$count"); do
        kill_host "$host"
        ip link del "$(host_link "$host")" 2>/dev/null || true
        ip netns del "$(host_ns "$host")" 2>/dev/null || true
    done
    ip link del "$bridge" 2>/dev/null || true
    rm -rf "$state"
}

case "${1:-}" in
    up) up "${2:-3}" ;;
    env) print_env ;;
    status) MEXEC_GATEKEEPER=$gatekeeper_ip:$gatekeeper_port MEXEC_TOKEN_FILE=$state/token \
        "$(cat "$state/bin")/mexec" --status ;;
    cut) ip link set "$(host_link "${2:?host number}")" down ;;
    mend) ip link set "$(host_link "${2:?host number}")" up ;;
    kill) kill_host "${2:?host number}" ;;
    start) start_executor "${2:?host number}" ;;
    down) down ;;
    *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
