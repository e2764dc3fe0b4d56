"""Attention-layer benchmark matrix: dense SDPA vs MoGA (mean/union, local on/off, balanced on/off) on a GPU.

    python bench/attention_layer.py --out results/attention.json [--quick]

Every row of one (N, H, M) point is measured in the same process right after its dense baseline (CUDA events,
median of repeats). Writes JSON; `bench/report.py` turns it into docs/PERFORMANCE.md. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moga_core.bench import run_bench  # noqa: E402

# (tokens, heads, groups, modes, dense kernels, repeats, check)
FULL = [
    (32760, 12, 5, ["mean", "mean+local", "union+local", "mean balanced", "mean+local balanced"], None, 10, True),
    (32760, 40, 8, ["mean", "mean+local", "union+local", "mean balanced"], None, 6, True),
    (75600, 12, 8, ["mean", "mean+local", "union+local", "mean balanced"], None, 10, True),
    (187200, 12, 5, ["mean", "mean+local", "union+local", "mean balanced", "mean+local balanced",
                     "union+local balanced"], ["cudnn"], 4, True),
    (187200, 12, 8, ["mean+local", "mean+local balanced"], ["cudnn"], 4, True),
    (187200, 12, 20, ["mean+local", "mean+local balanced", "union+local balanced"], ["cudnn"], 4, True),
    (187200, 40, 5, ["mean+local balanced", "union+local balanced"], ["cudnn"], 2, True),
    (580000, 12, 20, ["mean", "mean+local", "mean+local balanced", "union+local balanced"], ["cudnn"], 2, True),
]
# only the points whose exactness check was skipped in an earlier run (checked on one head: see run_bench)
CHECKS = [
    (187200, 40, 5, ["mean+local balanced", "union+local balanced"], ["cudnn"], 2, True),
    (580000, 12, 20, ["mean", "mean+local", "mean+local balanced", "union+local balanced"], ["cudnn"], 2, True),
]
QUICK = [
    (75600, 12, 8, ["mean", "mean balanced"], None, 10, True),
    (187200, 12, 5, ["mean+local balanced"], ["cudnn"], 3, True),
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--checks", action="store_true", help="re-run only the large points with the sliced check")
    args = p.parse_args()
    results = []
    t0 = time.time()
    matrix = QUICK if args.quick else CHECKS if args.checks else FULL
    for tokens, heads, groups, modes, kernels, repeats, check in matrix:
        res = run_bench(tokens=tokens, heads=heads, groups=groups, device="cuda", repeats=repeats, modes=modes,
                        check=check, dense_kernels=kernels)
        results.append(res)
        best = min(r["ms"] for r in res["rows"] if r["variant"].startswith("dense"))
        for r in res["rows"]:
            extra = f" {r['speedup']:.2f}x err {r['err_vs_dense']:.3f} chk {r.get('check', float('nan')):.1e}" \
                if "speedup" in r else ""
            print(f"N={tokens} H={heads} M={groups} {r['variant']:34s} {r['ms']:9.2f} ms "
                  f"{r['tflops']:5.0f} TF/s dens {r['density']:.3f}{extra}", flush=True)
        print(f"  (dense best {best:.1f} ms; elapsed {time.time() - t0:.0f} s)", flush=True)
        torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
