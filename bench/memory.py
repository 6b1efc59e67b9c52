#!/usr/bin/env python3
"""Peak RSS of silverline-worker beside its key state, on inputs of several sizes (see bench/memory.sh).

    python3 bench/memory.py --worker BIN --contract FILE [--reps 5] [--threads N] INPUT...

Runs the worker on every input in turn, --reps rounds, each run into a fresh local lake, measured with
/usr/bin/time. The key state is what the run reports as `ledger_bytes` (the duplicate and key tables, 29.5 bytes
per valid row by construction); the rest is the peak RSS without it. Prints every run, then for the last input
against the first the ratio of their rests round by round and its median. It only measures.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TIME = "/usr/bin/time"
MIB = 1024 * 1024


def ledger_bytes(log):
    """The `ledger_bytes` of the worker's `run finished` line (one JSON object per line)."""
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        fields = entry.get("fields", entry)
        if "ledger_bytes" in fields:
            return int(fields["ledger_bytes"])
    sys.exit("the worker's log has no ledger_bytes: is it a worker of this checkout?\n" + log[-2000:])


def run_once(args, input_path):
    lake = Path(tempfile.mkdtemp(prefix="silverline-memory-"))
    try:
        with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
            cmd = [TIME, "-o", t.name, "-f", "%e %U %S %M", args.worker, "run", "--contract", args.contract,
                   "--input", input_path, "--lake", str(lake), "--run-id", "bench", "--progress", "off",
                   "--log-format", "json"]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            # The `run finished` line (with ledger_bytes) is at info, whatever RUST_LOG the caller has.
            env = dict(os.environ, RUST_LOG="info")
            p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            if p.returncode != 0:
                sys.exit(f"the worker failed with exit code {p.returncode} on {input_path}:\n{p.stderr[-4000:]}")
            wall, user, system, max_rss_kib = t.read().split()[-4:]
    finally:
        shutil.rmtree(lake, ignore_errors=True)
    peak = int(max_rss_kib) * 1024
    key = ledger_bytes(p.stderr)
    return {"wall": float(wall), "cpu": float(user) + float(system), "peak": peak, "key": key, "rest": peak - key}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", required=True)
    p.add_argument("--contract", required=True)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("inputs", nargs="+")
    args = p.parse_args()

    if len(set(args.inputs)) != len(args.inputs):
        sys.exit("give each input once")
    rows = [sum(1 for _ in open(i, "rb")) - 1 for i in args.inputs]
    runs = {i: [] for i in args.inputs}
    print(f"{'rows':>10} {'round':>5} {'wall s':>7} {'CPU s':>6} {'peak RSS MiB':>12} {'key state MiB':>13} "
          f"{'the rest MiB':>12}")
    for round_ in range(1, args.reps + 1):
        for n, i in zip(rows, args.inputs):
            r = run_once(args, i)
            runs[i].append(r)
            print(f"{n:>10} {round_:>5} {r['wall']:>7.2f} {r['cpu']:>6.2f} {r['peak'] / MIB:>12.1f} "
                  f"{r['key'] / MIB:>13.1f} {r['rest'] / MIB:>12.1f}", flush=True)

    print()
    for n, i in zip(rows, args.inputs):
        rests = [r["rest"] / MIB for r in runs[i]]
        peaks = [r["peak"] / MIB for r in runs[i]]
        print(f"{n:>10} rows: the rest {min(rests):.1f}-{max(rests):.1f} MiB (median {statistics.median(rests):.1f}), "
              f"peak RSS {min(peaks):.1f}-{max(peaks):.1f} MiB (median {statistics.median(peaks):.1f})")
    if len(args.inputs) > 1:
        first, last = args.inputs[0], args.inputs[-1]
        growth = [(b["rest"] / a["rest"] - 1) * 100 for a, b in zip(runs[first], runs[last])]
        within = sum(1 for g in growth if abs(g) <= 20)
        print(f"the rest at {rows[-1]} rows against {rows[0]}, round by round: "
              + " ".join(f"{g:+.1f} %" for g in growth)
              + f"; median {statistics.median(growth):+.1f} %; within ±20 % in {within} of {len(growth)}")


if __name__ == "__main__":
    main()
