#!/usr/bin/env bash
# Runs every benchmark side by side and writes BENCHMARKS.md and the plots.
#   benches/run.sh              the full run (about 20 minutes on 2 cores)
#   benches/run.sh --smoke      tiny sizes: checks the harness, measures nothing
# Extra arguments go to mexec-bench (for example --only overhead,sched).
set -euo pipefail
cd "$(dirname "$0")/.."

# The peers and tools: distcc for comparison, m4 for GMP's configure,
# matplotlib for the plots.
need=()
command -v distccd >/dev/null || need+=(distcc)
command -v m4 >/dev/null || need+=(m4)
python3 -c 'import matplotlib' 2>/dev/null || need+=(python3-matplotlib)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# icecream needs its scheduler, a daemon per node and a chroot it builds
# itself with root; see BENCHMARKS.md for why it is not measured here.

cargo build --release --quiet --bins
export MEXEC_BENCH_COMMAND="benches/run.sh $*"
target/release/mexec-bench --json benches/results.json --report BENCHMARKS.md \
    --notes benches/notes.md "$@"
python3 benches/plot.py benches/results.json benches
