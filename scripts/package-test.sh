#!/usr/bin/env bash
# The Debian packages, built from the workspace and tried on this machine
# as root: `mexec`, `mexecd` and `mexec-gatekeeper` built with cargo-deb
# (from the dev profile, reusing the test build: a release build costs
# minutes), installed with dpkg, their units checked with systemd-analyze
# where it is installed, the installed daemons started by hand (systemd
# does not run here), a compile run end to end through the installed
# masquerade link with the installed files only, and the packages removed
# again (it removes installed mexec packages of the same names). `.ci/run`
# runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/package-test.sh: SKIPPED: dpkg -i needs root" >&2
    [ "${MEXEC_REQUIRE_PACKAGES:-0}" = 1 ] && exit 1
    exit 0
fi
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked

out=$(mktemp -d)
work=$(mktemp -d /var/tmp/mexec-package-test.XXXXXX)
# The job account enters the tree below it.
chmod 755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    dpkg -r mexec mexecd mexec-gatekeeper >/dev/null 2>&1 || true
    rm -rf "$out" "$work"
}
trap cleanup EXIT
fail() { echo "package test: FAILED: $*" >&2; exit 1; }

cargo build --bins -p mexec-client -p mexec-make-shim -p mexec-server
# --fast: lighter compression; these packages are only installed here.
deb() { cargo deb --no-build --no-strip --fast --profile dev --output "$out" "$@"; }
deb -p mexec-client
deb -p mexec-server
deb -p mexec-server --variant gatekeeper
ls "$out"/*.deb

dpkg -r mexec mexecd mexec-gatekeeper >/dev/null 2>&1 || true
dpkg -i "$out"/mexec_*.deb "$out"/mexecd_*.deb "$out"/mexec-gatekeeper_*.deb

for f in /usr/bin/mexec /usr/bin/mexec-client /usr/bin/mpmake /usr/bin/mexecd /usr/bin/mexec-cert \
         /usr/bin/mexec-gatekeeper /etc/mexec/mexecd.toml /etc/mexec/mexec-gatekeeper.toml \
         /etc/mexec/mexec.toml /lib/systemd/system/mexecd.service \
         /lib/systemd/system/mexec-gatekeeper.service; do
    [ -e "$f" ] || fail "$f not installed"
done
for c in cc gcc g++ c++ clang clang++; do
    [ "$(readlink -f /usr/lib/mexec/bin/$c)" = /usr/bin/mexec ] || fail "/usr/lib/mexec/bin/$c is not mexec"
done
getent passwd mexec >/dev/null || fail "the mexec account was not created"

if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze verify /lib/systemd/system/mexecd.service \
        /lib/systemd/system/mexec-gatekeeper.service
else
    echo "package test: systemd-analyze not installed; units not verified"
fi

# Every flag the README's quick start gives each program is in its --help.
readme_flags() { grep -o -- "$1 [^|#]*" README.md | grep -o -- '--[a-z-]*' | sort -u; }
for program in mexecd mexec-gatekeeper; do
    help=$(/usr/bin/$program --help)
    for flag in $(readme_flags "^$program"); do
        grep -q -- "$flag" <<<"$help" || fail "README gives $program $flag; its --help does not have it"
    done
done

# A farm from the installed files only: a token, the gatekeeper, one
# executor running jobs as the package's account, and a compile through
# the masquerade directory.
(umask 077 && head -c 32 /dev/urandom | base64 >"$work/token")
/usr/bin/mexec-gatekeeper --listen 127.0.0.1:0 --token-file "$work/token" \
    >"$work/gk.out" 2>"$work/gk.log" &
pids+=($!)
wait_for() { for _ in $(seq 100); do grep -q listening "$1" && return 0; sleep 0.1; done; fail "$1: $(cat "$1" "${1%.out}.log")"; }
wait_for "$work/gk.out"
gk=$(grep -o '127.0.0.1:[0-9]*' "$work/gk.out")
/usr/bin/mexecd --listen 127.0.0.1:0 --name pkg1 --token-file "$work/token" --user mexec \
    --slots 2 --gatekeeper "$gk" >"$work/node.out" 2>"$work/node.log" &
pids+=($!)
wait_for "$work/node.out"
export MEXEC_GATEKEEPER=$gk MEXEC_TOKEN_FILE=$work/token MEXEC_STATE_DIR=$work/state MEXEC_NO_LOCAL=1
for _ in $(seq 100); do /usr/bin/mexec --status | grep -q pkg1 && break; sleep 0.1; done
/usr/bin/mexec --status

src=$work/src
mkdir "$src"
printf 'int answer(void) { return 42; }\n' >"$src/answer.c"
chown -R mexec:mexec "$src"
(cd "$src" && PATH=/usr/lib/mexec/bin:$PATH gcc -c answer.c -o answer.o)
[ -s "$src/answer.o" ] || fail "the compile through /usr/lib/mexec/bin/gcc made no object"
grep -q '"job finished"\|job finished' "$work/node.log" || fail "the job did not run on the node: $(cat "$work/node.log")"
jobs=$(/usr/bin/mpmake --print-jobs)
[ "$jobs" = 2 ] || fail "mpmake --print-jobs said $jobs, not the node's 2 slots"

for pid in "${pids[@]}"; do kill "$pid"; done
pids=()
dpkg -r mexec mexecd mexec-gatekeeper
for f in /usr/bin/mexec /usr/bin/mexec-client /usr/bin/mexecd /usr/bin/mexec-gatekeeper /usr/lib/mexec/bin/gcc; do
    [ ! -e "$f" ] || fail "$f left after dpkg -r"
done
echo "package test: ok (built, installed, verified, ran a compile, removed)"
