#!/usr/bin/env bash
# Try a farm on one machine: start three executors on loopback, build lz4 (a
# real third-party C project with its own Makefiles, fetched from crates.io)
# with `make -j8 CC=mexec`, check the result works, and print where the jobs
# ran. Everything it starts is stopped at the end; KEEP=1 keeps the build.
# GATEKEEPER=1 puts a gatekeeper in front: executors join it and clients
# ask it for placement leases.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
nodes=${NODES:-3}
slots=${SLOTS:-2}
jobs=${JOBS:-8}

echo "== building mexec (release)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bins
bin="$root/target/release"

echo "== fetching lz4's sources from crates.io (lz4-sys vendors them)"
cargo fetch --quiet --manifest-path "$root/testkit/fixtures/c-projects/Cargo.toml"
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
lz4_src=$(find "$registry" -maxdepth 2 -type d -name 'lz4-sys-1.11.1*' | head -n1)
[ -n "$lz4_src" ] || { echo "lz4-sys sources not found under $registry" >&2; exit 1; }

work=$(mktemp -d /tmp/mexec-farm.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

cp -a "$lz4_src/liblz4" "$work/lz4"
user_args=()
if [ "$(id -u)" = 0 ]; then
    # Executors never run jobs as root: give the tree to an unprivileged user.
    chown -R nobody: "$work"
    user_args=(--user nobody)
fi

wait_listening() {
    for _ in $(seq 1 100); do
        grep -q "listening on" "$1" 2>/dev/null && break
        sleep 0.1
    done
    sed -n 's/.*listening on //p' "$1"
}

join_args=()
if [ "${GATEKEEPER:-0}" = 1 ]; then
    echo "== starting a gatekeeper"
    "$bin/mexec-gatekeeper" --listen 127.0.0.1:0 >"$work/gatekeeper.out" 2>"$work/gatekeeper.log" &
    pids+=($!)
    gatekeeper=$(wait_listening "$work/gatekeeper.out")
    join_args=(--gatekeeper "$gatekeeper")
fi

echo "== starting $nodes executors with $slots slots each"
addrs=()
for i in $(seq 1 "$nodes"); do
    "$bin/mexecd" --listen 127.0.0.1:0 --name "node$i" --slots "$slots" "${user_args[@]}" \
        "${join_args[@]}" >"$work/node$i.out" 2>"$work/node$i.log" &
    pids+=($!)
done
for i in $(seq 1 "$nodes"); do
    addrs+=("$(wait_listening "$work/node$i.out")")
done
if [ -n "${gatekeeper:-}" ]; then
    export MEXEC_GATEKEEPER="$gatekeeper"
    # Give the executors a moment to register (they report within 0.5 s).
    sleep 1
else
    export MEXEC_NODES
    MEXEC_NODES=$(IFS=,; echo "${addrs[*]}")
fi
export MEXEC_JOBLOG="$work/jobs.jsonl" MEXEC_STATE_DIR="$work/state" MEXEC_CC=gcc
"$bin/mexec" --status

echo "== make -j$jobs CC=mexec lib lz4"
start=$(date +%s.%N)
make -s -C "$work/lz4" -j"$jobs" CC="$bin/mexec" lib lz4 >"$work/make.log" 2>&1 \
    || { cat "$work/make.log"; exit 1; }
end=$(date +%s.%N)

echo "== checking the lz4 that the farm built"
head -c 2000000 /dev/urandom >"$work/sample"
"$work/lz4/lz4" -q -f "$work/sample" "$work/sample.lz4"
"$work/lz4/lz4" -q -d -f "$work/sample.lz4" "$work/sample.out"
cmp "$work/sample" "$work/sample.out"
echo "lz4 round trip: ok"

echo "== where the jobs ran"
python3 - "$MEXEC_JOBLOG" "$start" "$end" <<'PY'
import collections, json, sys
jobs = [json.loads(line) for line in open(sys.argv[1])]
per_node = collections.Counter(j["node"] for j in jobs)
for node, count in sorted(per_node.items()):
    print(f"{node:>8}: {count} jobs")
placed = collections.Counter(j["placed"] for j in jobs)
print(f"   total: {len(jobs)} jobs ({', '.join(f'{n} {k}' for k, n in sorted(placed.items()))}), "
      f"build took {float(sys.argv[3]) - float(sys.argv[2]):.1f} s")
PY
