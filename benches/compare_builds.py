#!/usr/bin/env python3
"""Per-job overhead of two builds of mexec, side by side in one run.

    benches/compare_builds.py BEFORE_BIN_DIR AFTER_BIN_DIR [--runs N]

Each directory holds `mexec` (with `mexec-client` beside it, where the
build has one) and `mexecd` (a `target/release` of some
commit). One executor of each build listens on loopback; then, round by
round, a local `true`, `mexec -- true` of each build, a local compile of a
small C file and the same compile through each build run one after the
other, so drift on a shared machine hits all variants alike. Prints the
median wall time of each variant, the added time over local, and the CPU
per job of the client (from wait4) and of the executor (from its
/proc/PID/stat over the whole run).

Used for a change that must not move the overhead (a refactor): run it with
the commit before and after the change, on an otherwise idle machine.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

SMALL_C = """
#include <stdio.h>
#include <string.h>
static int table[64];
int small_sum(const char *s) {
    int total = 0;
    for (size_t i = 0; i < strlen(s); i++) total += table[(unsigned char)s[i] % 64] + s[i];
    return total;
}
int small_main(int argc, char **argv) {
    for (int i = 0; i < 64; i++) table[i] = i * 7 % 13;
    int sum = 0;
    for (int i = 1; i < argc; i++) sum += small_sum(argv[i]);
    printf("%d\\n", sum);
    return 0;
}
"""

def cpu_seconds(pid):
    """CPU time of a process's own threads, in seconds (not of the jobs it
    ran: those are the command's, the same in every build). schedstat
    counts nanoseconds on the CPU; /proc/PID/stat's clock ticks (10 ms)
    are too coarse for one job."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass  # the thread ended in between
    return total / 1e9


def start_executor(bin_dir, name, state):
    args = [os.path.join(bin_dir, "mexecd"), "--listen", "127.0.0.1:0", "--slots", "2",
            "--name", name]
    if os.geteuid() == 0:
        args += ["--user", "nobody"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(os.path.join(state, f"{name}.log"), "w"),
                            text=True)
    line = proc.stdout.readline()
    # "mexecd NAME listening on ADDR"
    address = line.strip().rsplit(" ", 1)[-1]
    if "listening on" not in line:
        raise SystemExit(f"{name}: mexecd did not start: {line!r}")
    return proc, address


def timed(argv, cwd, env):
    """Wall seconds and the child's CPU seconds (user + system)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed with {status}")
    return wall, usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--runs", type=int, default=200)
    options = parser.parse_args()

    state = tempfile.mkdtemp(prefix="mexec-compare-")
    work = tempfile.mkdtemp(prefix="mexec-compare-job-")
    os.chmod(work, 0o777)
    with open(os.path.join(work, "small.c"), "w") as f:
        f.write(SMALL_C)
    builds = {}
    for label, bin_dir in (("before", options.before), ("after", options.after)):
        proc, address = start_executor(bin_dir, label, state)
        env = dict(os.environ, MEXEC_NODES=address, MEXEC_NO_LOCAL="1",
                   MEXEC_STATE_DIR=os.path.join(state, label))
        env.pop("MEXEC_GATEKEEPER", None)
        env.pop("MEXEC_CONFIG", None)
        builds[label] = (proc, os.path.join(bin_dir, "mexec"), env)

    variants = [("local true", ["true"], dict(os.environ))]
    for label, (_, mexec, env) in builds.items():
        variants.append((f"{label}: mexec -- true", [mexec, "--", "true"], env))
    compile_args = ["gcc", "-O2", "-c", "small.c", "-o"]
    variants.append(("local compile", compile_args + ["l.o"], dict(os.environ)))
    for label, (_, mexec, env) in builds.items():
        variants.append((f"{label}: mexec gcc -c", [mexec] + compile_args + [f"{label}.o"], env))

    warm_up = 5
    samples = {name: [] for name, _, _ in variants}
    cpu = {name: [] for name, _, _ in variants}
    executor_cpu = {name: 0.0 for name, _, _ in variants}
    for round_ in range(options.runs + warm_up):
        for name, argv, env in variants:
            label = name.split(":")[0]
            before_cpu = cpu_seconds(builds[label][0].pid) if label in builds else 0
            wall, child_cpu = timed(argv, work, env)
            if round_ >= warm_up:
                samples[name].append(wall)
                cpu[name].append(child_cpu)
                if label in builds:
                    executor_cpu[name] += cpu_seconds(builds[label][0].pid) - before_cpu
    for proc, _, _ in builds.values():
        proc.terminate()
        proc.wait()

    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"{options.runs} runs per variant, interleaved; load average at the end {load}; "
          f"{os.cpu_count()} CPUs")
    print(f"{'variant':<26} {'median ms':>10} {'added ms':>9} {'client CPU ms':>14} "
          f"{'executor CPU ms/job':>20}")
    base = {}
    for name, _, _ in variants:
        median = statistics.median(samples[name]) * 1000
        kind = "true" if "true" in name else "compile"
        if name.startswith("local"):
            base[kind] = median
        added = median - base[kind]
        label = name.split(":")[0]
        per_job = ""
        if label in builds:
            per_job = f"{executor_cpu[name] * 1000 / options.runs:.2f}"
        client = statistics.mean(cpu[name]) * 1000
        print(f"{name:<26} {median:>10.2f} {added:>+9.2f} {client:>14.2f} {per_job:>20}")
    print("executor CPU: time on the CPU of mexecd's threads (schedstat) while each "
          "variant ran, divided by the runs.")


if __name__ == "__main__":
    sys.exit(main())
