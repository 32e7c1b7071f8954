#!/usr/bin/env bash
# Runs every benchmark side by side and writes BENCHMARKS.md and the plots.
#   benches/run.sh              the full run (about 20 minutes on 2 cores)
#   benches/run.sh --smoke      tiny sizes: checks the harness, measures nothing
# Extra arguments go to mexec-bench (for example --only sched, which
# re-measures that section and keeps the others from benches/results.json).
set -euo pipefail
cd "$(dirname "$0")/.."

# The peers and tools: distcc and icecream for comparison, m4 for GMP's
# configure, matplotlib for the plots.
need=()
command -v distccd >/dev/null || need+=(distcc)
command -v iceccd >/dev/null || need+=(icecc)
command -v m4 >/dev/null || need+=(m4)
# The plots need matplotlib; Debian's package serves /usr/bin/python3.
plot_python=
for p in python3 /usr/bin/python3; do
    if "$p" -c 'import matplotlib' 2>/dev/null; then plot_python=$p; break; fi
done
[ -n "$plot_python" ] || need+=(python3-matplotlib)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# icecream's scheduler and remote daemon get hosts of their own (network
# namespaces), which needs root; without it the report says why icecream
# was left out.

cargo build --release --quiet --bins
export MEXEC_BENCH_COMMAND="benches/run.sh${*:+ $*}"
target/release/mexec-bench --json benches/results.json --report BENCHMARKS.md \
    --notes benches/notes.md "$@"
[ -n "$plot_python" ] || plot_python=/usr/bin/python3
"$plot_python" benches/plot.py benches/results.json benches
