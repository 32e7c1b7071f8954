#!/usr/bin/env python3
"""Where a GMP build's time goes, local against CC=mexec on one executor.

The build section of `mexec-bench` gives the wall-clock ratio; this says
what makes it up. For each build it reads the whole machine's busy and
idle CPU time (/proc/stat), the CPU of make's process tree (make, the
shells, libtool, and the `mexec` fronts, or the compilers when local:
wait4's rusage), the executor's own CPU and its jobs' (/proc/PID/stat:
utime, stime, cutime, cstime), and the agent's own. Local and mexec
builds alternate, `--rounds` of each; medians are printed.

`--single N` runs one of GMP's compiles (mpz/add.c) N times in a row
instead, local and through mexec, and prints the same per compile, in
milliseconds: with one job at a time nothing waits for a core, so what
mexec adds is its own processes' CPU, one compile at a time.

    python3 benches/build_cpu.py [--rounds 3] [--jobs 3] [--single N]

Needs root (the executor runs jobs as nobody) and the release binaries
(`cargo build --release`). Run it on an otherwise idle machine.
"""

import argparse
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
TICK = os.sysconf("SC_CLK_TCK")


def gmp_source():
    home = pathlib.Path(os.environ.get("CARGO_HOME", pathlib.Path.home() / ".cargo"))
    for tree in sorted((home / "registry" / "src").glob("*/gmp-mpfr-sys-1.7.1*/gmp-6.3.0-c")):
        return tree
    sys.exit("GMP's source is not in the cargo registry: run the tests once (cargo fetch)")


def machine_cpu():
    """(busy, idle) seconds of all CPUs since boot."""
    fields = [int(f) for f in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK, idle / TICK


def process_cpu(pid):
    """(own, waited-for children) CPU seconds of `pid`; zeros if it is gone."""
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return 0.0, 0.0
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def agent_pids():
    found = subprocess.run(["pgrep", "-x", "mexec-client"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean(tree):
    subprocess.run(["make", "clean"], cwd=tree, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def build(tree, args, env):
    agents = {p: process_cpu(p)[0] for p in agent_pids()}
    busy0, idle0 = machine_cpu()
    started = time.monotonic()
    make = subprocess.Popen(["make", *args], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, stderr = make.communicate()
    # communicate() reaped make; its rusage is read from the children total.
    wall = time.monotonic() - started
    busy1, idle1 = machine_cpu()
    if make.returncode != 0:
        sys.exit(f"make {' '.join(args)} failed:\n{stderr.decode(errors='replace')}")
    agent = sum(process_cpu(p)[0] - agents.get(p, 0.0) for p in agent_pids())
    return {"wall": wall, "busy": busy1 - busy0, "idle": idle1 - idle0, "agent": agent}


def compiles(cwd, command, env, count, executor):
    """`count` runs of `command` one after another: per-run milliseconds."""
    agents = {p: process_cpu(p)[0] for p in agent_pids()}
    tree_before = os.times()
    executor_before = process_cpu(executor.pid)
    busy0, _ = machine_cpu()
    started = time.monotonic()
    for _ in range(count):
        subprocess.run(command, cwd=cwd, env=env, check=True)
    wall = time.monotonic() - started
    busy1, _ = machine_cpu()
    tree_after = os.times()
    executor_after = process_cpu(executor.pid)
    agent = sum(process_cpu(p)[0] - agents.get(p, 0.0) for p in agent_pids())
    per = 1000.0 / count
    return {
        "wall": wall * per,
        "busy": (busy1 - busy0) * per,
        "make tree": (tree_after.children_user + tree_after.children_system
                      - tree_before.children_user - tree_before.children_system) * per,
        "executor's jobs": (executor_after[1] - executor_before[1]) * per,
        "executor": (executor_after[0] - executor_before[0]) * per,
        "agent": agent * per,
    }


def single(tree, count, rounds, local_env, remote_env, executor):
    """One compile again and again, local against mexec; ms per compile."""
    # The headers GMP generates first.
    subprocess.run(["make", "-j3"], cwd=tree, env=local_env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    subprocess.run(["chown", "-R", "nobody:nogroup", str(tree)], check=True)
    gcc = ["gcc", "-DHAVE_CONFIG_H", "-I.", "-I..", "-D__GMP_WITHIN_GMP", "-O2",
           "-pedantic", "-fomit-frame-pointer", "-c", "add.c", "-o"]
    cwd = tree / "mpz"
    # Each its own output: the job's account could not overwrite root's.
    variants = {
        "local": ([*gcc, "add-local.o"], local_env),
        "mexec": ([str(RELEASE / "mexec"), *gcc, "add-remote.o"], remote_env),
    }
    compiles(cwd, variants["mexec"][0], remote_env, 3, executor)
    results = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (command, env) in variants.items():
            result = compiles(cwd, command, env, count, executor)
            results[name].append(result)
            print(name, {k: round(v, 2) for k, v in result.items()}, flush=True)
    return results, "ms per compile"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--single", type=int, metavar="N",
                        help="N compiles of one file in a row instead of whole builds")
    opts = parser.parse_args()
    load_before = open("/proc/loadavg").read().split()[0]
    work = pathlib.Path(tempfile.mkdtemp(prefix="mexec-build-cpu-"))
    os.chmod(work, 0o755)
    tree = work / "gmp"
    shutil.copytree(gmp_source(), tree, symlinks=True)
    subprocess.run(["./configure", "--disable-assembly", "--disable-shared"], cwd=tree,
                   stdout=subprocess.DEVNULL, check=True)
    subprocess.run(["chown", "-R", "nobody:nogroup", str(tree)], check=True)
    # The agent's socket goes in a directory private to its user.
    state = work / "state"
    state.mkdir(mode=0o700)
    port = free_port()
    executor = subprocess.Popen(
        [str(RELEASE / "mexecd"), "--listen", f"127.0.0.1:{port}", "--name", "n1",
         "--slots", str(opts.jobs), "--user", "nobody"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(work / "mexecd.log", "w"), env={**os.environ, "MEXEC_LOG": "warn"})
    time.sleep(1)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MEXEC_") and k not in ("MAKEFLAGS", "MFLAGS")}
    remote_env = {**env, "MEXEC_NODES": f"127.0.0.1:{port}", "MEXEC_STATE_DIR": str(state),
                  "MEXEC_NO_LOCAL": "1"}
    j = f"-j{opts.jobs}"
    variants = {
        "local": ([j], env),
        "mexec": ([j, f"CC={RELEASE / 'mexec'} gcc"], remote_env),
    }
    results = {name: [] for name in variants}
    unit = "seconds"
    try:
        if opts.single:
            results, unit = single(tree, opts.single, opts.rounds, env, remote_env, executor)
        # One untimed build of each first: caches warm, the agent started.
        for args, variant_env in variants.values():
            if opts.single:
                break
            clean(tree)
            build(tree, args, variant_env)
        for _ in range(0 if opts.single else opts.rounds):
            for name, (args, variant_env) in variants.items():
                clean(tree)
                tree_before = os.times()
                executor_before = process_cpu(executor.pid)
                result = build(tree, args, variant_env)
                tree_after = os.times()
                executor_after = process_cpu(executor.pid)
                result["make tree"] = (tree_after.children_user + tree_after.children_system
                                       - tree_before.children_user
                                       - tree_before.children_system)
                result["executor"] = executor_after[0] - executor_before[0]
                result["executor's jobs"] = executor_after[1] - executor_before[1]
                results[name].append(result)
                print(name, {k: round(v, 2) for k, v in result.items()}, flush=True)
    finally:
        executor.terminate()
        executor.wait()
    keys = [k for k in ["wall", "busy", "idle", "make tree", "executor's jobs", "executor",
                        "agent"] if k in results["local"][0]]
    runs = f"{opts.rounds} rounds of {opts.single} compiles" if opts.single else \
        f"{opts.rounds} builds"
    print(f"\nmedians of {runs} each, {unit} (load average before: {load_before})")
    print("| variant | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, runs in results.items():
        medians = [statistics.median(r[k] for r in runs) for k in keys]
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
