"""Throughput of the procedural faces (:mod:`zootune.data.landmarks.faces`), single thread.

    python benchmarks/landmarks_faces_speed.py                 # 64x64, 2,048 faces per measure
    python benchmarks/landmarks_faces_speed.py --size 48 --n 4096

Two numbers: ``render_faces`` on whole blocks (what a data loader pays per face), and
``ProceduralFaces[i]`` over a fresh data set in shuffled order (blocks rendered on first touch,
then served from the cache, plus the uint8 -> float tensor conversion of each sample).
Prints one line per measure; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from zootune.data.landmarks.faces import ProceduralFaces, render_faces

    render_faces(0, np.arange(64), a.size)  # warm up (imports, noise bank)
    best = 0.0
    for r in range(a.repeats):
        t = time.perf_counter()
        render_faces(r + 1, np.arange(a.n), a.size)
        best = max(best, a.n / (time.perf_counter() - t))
    print(f"render_faces, {a.size}x{a.size}: {best:.0f} faces/s (best of {a.repeats}, {a.n} faces, "
          f"1 thread, pid {os.getpid()})")
    best = 0.0
    for r in range(a.repeats):
        ds = ProceduralFaces(a.n, seed=100 + r, size=a.size)
        order = np.random.default_rng(r).permutation(a.n)
        t = time.perf_counter()
        for i in order:
            ds[int(i)]
        best = max(best, a.n / (time.perf_counter() - t))
    print(f"ProceduralFaces[i], shuffled, first epoch: {best:.0f} faces/s (best of {a.repeats})")


if __name__ == "__main__":
    main()
