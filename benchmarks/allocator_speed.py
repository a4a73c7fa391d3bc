"""Training-step time with glibc malloc, jemalloc and tcmalloc, side by side (issue 15, item 4).

    python benchmarks/allocator_speed.py                         # quick shape, m=5, 3 pairs
    python benchmarks/allocator_speed.py --shape paper --pairs 2 --reps 2

The allocator is chosen per process (``LD_PRELOAD``), so the comparison runs
``benchmarks/speed.py``'s own time worker (plain ResNet-50, per-sample and lite Zoo-Tuning, one
training step each, interleaved inside the process, best of ``--reps`` after a warm-up) in
fresh processes that alternate between the allocators: glibc, jemalloc, tcmalloc, glibc, ...
``--pairs`` times. For each allocator and method the best step over all its processes is
reported, with the 1-minute load average before and after every process. The libraries are
found as ``zootune --allocator`` finds them (:mod:`zootune.allocator`); a missing one is skipped.
Prints a markdown table (paste it into ``results/speed_notes.md``) and writes
``results/allocator_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    from zootune.allocator import find_library

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="quick", choices=("quick", "paper"))
    ap.add_argument("--m", type=int, default=5)
    ap.add_argument("--methods", default="plain,zoo,lite")
    ap.add_argument("--pairs", type=int, default=3, help="rounds of one process per allocator")
    ap.add_argument("--reps", type=int, default=3, help="timed steps per method per process")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--allocators", default="system,jemalloc,tcmalloc")
    args = ap.parse_args()
    libs = {}
    for name in args.allocators.split(","):
        lib = None if name == "system" else find_library(name)
        if name != "system" and lib is None:
            print(f"skip {name}: not installed", file=sys.stderr)
            continue
        libs[name] = lib
    methods = args.methods.split(",")
    spec = {"shape": args.shape, "phase": "train", "m": args.m, "threads": args.threads,
            "methods": methods, "reps": args.reps}
    runs = {name: [] for name in libs}
    for _ in range(args.pairs):
        for name, lib in libs.items():
            env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
            if lib is not None:
                env["LD_PRELOAD"] = str(lib)
            load0 = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, str(HERE / "speed.py"), "--worker", "time", json.dumps(spec)],
                                  capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            times = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[name].append({"times": times, "load": [load0, os.getloadavg()[0]]})
            print(name, {m: round(min(t), 3) for m, t in times.items()}, "load", runs[name][-1]["load"],
                  flush=True)
    best = {n: {m: min(min(r["times"][m]) for r in rs) for m in methods} for n, rs in runs.items()}
    loads = [x for rs in runs.values() for r in rs for x in r["load"]]
    out = {"spec": spec, "pairs": args.pairs, "libraries": {n: str(l) for n, l in libs.items()},
           "runs": runs, "best_seconds": best, "load_average_1min": [min(loads), max(loads)],
           "command": "python benchmarks/allocator_speed.py " + " ".join(sys.argv[1:])}
    (HERE / "results" / "allocator_speed.json").write_text(json.dumps(out, indent=1))
    base = best.get("system")
    print(f"\nCommand: `{out['command']}`; load average {min(loads):.1f}-{max(loads):.1f}\n")
    print("| allocator | " + " | ".join(f"{m} s/step" for m in methods) + " | "
          + " | ".join(f"{m}/plain" for m in methods if m != "plain")
          + (" | " + " | ".join(f"{m} vs glibc" for m in methods) if base else "") + " |")
    print("|---" * (1 + len(methods) * 2 + (len(methods) if base else 0) - 1) + "|")
    for n, b in best.items():
        cells = [f"{b[m]:.3f}" for m in methods]
        cells += [f"{b[m] / b['plain']:.2f}x" for m in methods if m != "plain"] if "plain" in b else []
        if base:
            cells += [f"{base[m] / b[m]:.2f}x" for m in methods]
        print(f"| {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
