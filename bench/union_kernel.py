"""The attention layer on one GPU: dense cuDNN vs MoGA on the block kernel (FlexAttention) and on the varlen paths,
for routing capacities from unbounded to balanced, with the error against dense attention. Reports, never asserts.

    python bench/union_kernel.py --out results/union_kernel.json [--points 187200:5,580320:20] [--repeats 10]

Tokens are the structured synthetic multi-shot video of `moga_core.synthetic` (3 shots, 480p frames), lifted to
H·D channels; routers are k-means fits on them (`Router.fit`: unequal groups, as calibrated routers give), or with
``--groupings random`` also `RandomGroups` (balanced, content-free). Every
MoGA time is the whole layer as a model runs it: routing (with the capacity bound), the block plan or the varlen
packing, attention, unpacking. Also measured: the first call at a new length (compilation included), the kernel's
time per full and per partial block pair against cuDNN's dense rate (the constants of `blocksparse.relative_cost`),
and peak memory. CUDA events, median of ``--repeats`` after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moga_core import MogaConfig, RandomGroups, Router, moga_attention  # noqa: E402
from moga_core.bench import profile_table, time_back_to_back, time_call  # noqa: E402
import moga_core.blocksparse as blocksparse  # noqa: E402
from moga_core.blocksparse import BLOCK, _flex_module, build_block_plan, run_flex  # noqa: E402
from moga_core.synthetic import structured_video_qkv  # noqa: E402


def make_point(tokens, heads, head_dim, seed=0):
    return structured_video_qkv(tokens, heads, head_dim, seed=seed, device="cuda", dtype=torch.bfloat16)


def cudnn_dense(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                v.transpose(1, 2)).transpose(1, 2)


def peak_of(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return out, (torch.cuda.max_memory_allocated() - base) / 2 ** 30


def block_costs(layout, q, k, v, plan, dense_ms, repeats):
    """Kernel time of the plan as it is, with every listed block evaluated under the mask, and a dense BlockMask
    (every block full), each against cuDNN's dense time: → ms per full and per partial block pair, relative to
    cuDNN's time per block pair."""
    fa = _flex_module()
    b, n, h, d = q.shape
    batch = torch.arange(b, device=q.device)[:, None]
    qs = q[batch, plan.q_pos].transpose(1, 2)
    ks = k[batch, plan.kv_pos].transpose(1, 2)
    vs = v[batch, plan.kv_pos].transpose(1, 2)
    nv, lk = plan.seq_lengths
    nq, nk = plan.kv_num_blocks.shape[-1], plan.kv_indices.shape[-1]

    def run(mask):
        return time_call(lambda: run_flex(qs, ks, vs, mask, d ** -0.5), q.device, repeats)

    as_is = run(plan.block_mask)
    # every listed block partial: the same pairs, all under the mask
    hit = torch.zeros(b, 1, nq, nk + 1, dtype=torch.bool, device=q.device)
    for num, idx in ((plan.kv_num_blocks, plan.kv_indices), (plan.full_kv_num_blocks, plan.full_kv_indices)):
        valid = torch.arange(nk, device=q.device) < num[..., None]
        hit.scatter_(-1, torch.where(valid, idx.long(), nk), True)
    hit = hit[..., :nk]
    counts = hit.sum(-1, dtype=torch.int32)
    order = torch.argsort(hit.int(), dim=-1, descending=True, stable=True).int()
    all_partial = fa.BlockMask.from_kv_blocks(counts, order, BLOCK_SIZE=BLOCK, mask_mod=plan.mask_mod,
                                              seq_lengths=(nv, lk))
    partial_ms = run(all_partial)
    full_all = torch.ones(b, 1, nq, nk, dtype=torch.bool, device=q.device)
    dense_mask = fa.BlockMask.from_kv_blocks(torch.zeros(b, 1, nq, dtype=torch.int32, device=q.device),
                                             torch.zeros(b, 1, nq, nk, dtype=torch.int32, device=q.device),
                                             full_all.sum(-1, dtype=torch.int32),
                                             torch.arange(nk, dtype=torch.int32, device=q.device).expand(b, 1, nq, nk)
                                             .contiguous(), BLOCK_SIZE=BLOCK, seq_lengths=(nv, lk))
    flex_dense_ms = run(dense_mask)
    pairs = int(plan.block_pairs().sum())
    full = int(plan.full_blocks.sum())
    per_dense_pair = dense_ms / (b * (nv / BLOCK) * (lk / BLOCK))
    per_partial = partial_ms / pairs
    per_full = (as_is - (pairs - full) * per_partial) / max(full, 1)
    return {"kernel_ms": as_is, "all_partial_ms": partial_ms, "flex_dense_ms": flex_dense_ms,
            "block_pairs": pairs, "full_blocks": full,
            "full_block_cost": per_full / per_dense_pair, "partial_block_cost": per_partial / per_dense_pair,
            "flex_dense_vs_cudnn": dense_ms / flex_dense_ms}


KERNEL_CANDIDATES = [
    {},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3},
    {"USE_TMA": True},
    {"PRESCALE_QK": True, "ROWS_GUARANTEED_SAFE": True},
]


@torch.no_grad()
def sweep_kernel_options(tokens, groups, heads, head_dim, capacity, repeats):
    """Kernel time of one union plan under each candidate of FlexAttention's kernel_options → the fastest."""
    layout, x, q, k, v = make_point(tokens, heads, head_dim)
    router = Router.fit(x.float(), groups, seed=0).cuda()
    g, _ = router(x, capacity=capacity)
    plan = build_block_plan(layout, MogaConfig(num_groups=groups, combine="union"), g, "union")
    b, n, h, d = q.shape
    batch = torch.arange(b, device=q.device)[:, None]
    qs = q[batch, plan.q_pos].transpose(1, 2)
    ks = k[batch, plan.kv_pos].transpose(1, 2)
    vs = v[batch, plan.kv_pos].transpose(1, 2)
    ref = run_flex(qs, ks, vs, plan.block_mask, d ** -0.5, {}).float()
    rows = []
    for opts in KERNEL_CANDIDATES:
        try:
            out = run_flex(qs, ks, vs, plan.block_mask, d ** -0.5, opts)
            err = float((out.float() - ref).abs().max() / ref.abs().max())
            ms = time_call(lambda: run_flex(qs, ks, vs, plan.block_mask, d ** -0.5, opts), q.device, repeats)
        except Exception as exc:  # a config this Triton cannot build
            rows.append({"options": opts, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            print(f"  kernel options {opts}: failed ({type(exc).__name__})", flush=True)
            continue
        rows.append({"options": opts, "ms": ms, "max_diff_vs_default": err})
        print(f"  kernel options {opts}: {ms:.1f} ms (diff vs default {err:.1e})", flush=True)
    ok = [r for r in rows if "ms" in r and r["max_diff_vs_default"] < 2e-2]
    best = min(ok, key=lambda r: r["ms"])
    return {"tokens": layout.num_tokens, "groups": groups, "capacity": capacity, "rows": rows,
            "best": best["options"]}


@torch.no_grad()
def run_point(tokens, groups, heads, head_dim, capacities, repeats, varlen_capacities, check, profile="",
              back_to_back=False, groupings=("kmeans",), combines=("union", "mean")):
    layout, x, q, k, v = make_point(tokens, heads, head_dim)
    kmeans_router = Router.fit(x.float(), groups, seed=0).cuda()
    res = {"tokens": layout.num_tokens, "grid": layout.grid, "shots": layout.shots, "heads": heads,
           "head_dim": head_dim, "groups": groups, "rows": []}
    dense_out, dense_peak = peak_of(lambda: cudnn_dense(q, k, v))
    dense_ms = time_call(lambda: cudnn_dense(q, k, v), q.device, repeats)
    res["dense_ms"], res["dense_peak_gib"] = dense_ms, dense_peak
    if back_to_back:
        res["dense_b2b_ms"] = time_back_to_back(lambda: cudnn_dense(q, k, v), q.device, repeats)
    print(f"N={layout.num_tokens} dense cuDNN {dense_ms:.1f} ms", flush=True)
    dense_f = dense_out.float()
    first = True
    for grouping, cap, combine, backend in [(gr, c, cb, be) for gr in groupings for c in capacities
                                            for cb in combines for be in ("auto", "varlen")]:
        if backend == "varlen" and cap not in varlen_capacities:
            continue
        if grouping == "random" and (combine != "union" or cap != capacities[0]):
            continue  # balanced already (the capacity changes nothing); union mode only
        # kmeans: `Router.fit` on the tokens (unequal groups); random: `RandomGroups` (balanced, content-free)
        router = kmeans_router if grouping == "kmeans" else RandomGroups(groups, seed=0)
        cfg = MogaConfig(num_groups=groups, combine=combine, capacity=cap, backend=backend)

        def layer():
            g, gate = router(x, capacity=cap)
            return moga_attention(q, k, v, layout, cfg, g, gate if combine == "mean" else None)

        cold = None
        if first and backend == "auto":
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            layer()
            torch.cuda.synchronize()
            cold = (time.perf_counter() - t0) * 1e3
            first = False
        stats = {}
        g, gate = router(x, capacity=cap)
        out, peak = peak_of(lambda: moga_attention(q, k, v, layout, cfg, g, gate if combine == "mean" else None,
                                                   stats=stats))
        ms = time_call(layer, q.device, repeats)
        b2b = time_back_to_back(layer, q.device, repeats) if back_to_back else None
        sizes = torch.bincount(g[0], minlength=groups).tolist()
        row = {"grouping": grouping, "capacity": cap, "combine": combine, "backend": stats["backend"], "ms": ms,
               "speedup": dense_ms / ms, "density": stats["density"], "work_density": stats["work_density"],
               "relative_cost": stats.get("relative_cost"), "peak_gib": peak,
               "largest_group": max(sizes) / sum(sizes), "group_sizes": sizes,
               "err_vs_dense": float((out.float() - dense_f).norm() / dense_f.norm())}
        if cold is not None:
            row["cold_ms"] = cold
        if b2b is not None:
            row["b2b_ms"], row["b2b_speedup"] = b2b, res["dense_b2b_ms"] / b2b
        if check and backend == "auto":
            sl = slice(0, 1)
            simple = moga_attention(q[:, :, sl].float(), k[:, :, sl].float(), v[:, :, sl].float(), layout,
                                    replace(cfg, backend="loop"), g, gate.float() if combine == "mean" else None)
            row["check"] = float((out[:, :, sl].float() - simple).abs().max() / simple.abs().max())
            del simple
        if profile and backend == "auto" and combine == "union" and cap == capacities[len(capacities) // 2]:
            profile_table(layer, profile, q.device, f"layer N={layout.num_tokens} M={groups} union "
                          f"capacity {cap}", calls=5)
        res["rows"].append(row)
        print(f"  {grouping:6s} cap={cap} {combine:5s} {row['backend']:6s} {ms:8.1f} ms {row['speedup']:5.2f}x "
              f"dens {row['density']:.3f} work {row['work_density']:.3f} err {row['err_vs_dense']:.3f} "
              f"largest {row['largest_group']:.2f} peak {peak:.2f} GiB"
              + (f" check {row['check']:.1e}" if "check" in row else "")
              + (f" cold {cold:.0f} ms" if cold else "")
              + (f" | back to back {b2b:.1f} ms {row['b2b_speedup']:.2f}x" if b2b else ""), flush=True)
        del out
        torch.cuda.empty_cache()
    # the kernel's cost per block pair, for the plan of the default-ish capacity
    g, _ = kmeans_router(x, capacity=capacities[len(capacities) // 2])
    plan = build_block_plan(layout, MogaConfig(num_groups=groups, combine="union"), g, "union")
    res["block_costs"] = block_costs(layout, q, k, v, plan, dense_ms, repeats)
    print("  block costs:", {k: round(v, 3) if isinstance(v, float) else v for k, v in res["block_costs"].items()},
          flush=True)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--points", default="187200:5,580320:20", help="comma list of tokens:groups")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--capacities", default="none,1.5,1.25,1.0",
                   help="routing capacities to time ('none' = unbounded groups)")
    p.add_argument("--varlen-capacities", default="none",
                   help="capacities at which the varlen paths are timed too (slow)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-check", action="store_true", help="skip the float32 one-head exactness check")
    p.add_argument("--back-to-back", action="store_true",
                   help="also time dense and each MoGA row as calls issued back to back (as a model's layers run; "
                        "moga_core.bench.time_back_to_back), beside the default of one call at a time")
    p.add_argument("--profile", default="", help="text file for a torch.profiler table of the union layer at the "
                                                 "middle capacity of each point")
    p.add_argument("--groupings", default="kmeans", help="comma list: kmeans (Router.fit on the tokens), random "
                                                          "(RandomGroups: balanced, content-free; union only)")
    p.add_argument("--combines", default="union,mean", help="comma list of combine modes to time")
    p.add_argument("--sweep-kernel-options", action="store_true",
                   help="first time FlexAttention kernel_options candidates on the first point and use the fastest")
    args = p.parse_args(argv)
    caps = [None if c == "none" else float(c) for c in args.capacities.split(",")]
    vcaps = [None if c == "none" else float(c) for c in args.varlen_capacities.split(",") if c]
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "points": []}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:
        out["triton"] = None
    print(out, flush=True)
    if args.sweep_kernel_options:
        tokens, groups = (int(s) for s in args.points.split(",")[0].split(":"))
        out["kernel_options_sweep"] = sweep_kernel_options(tokens, groups, args.heads, args.head_dim, 1.25,
                                                           args.repeats)
        blocksparse.KERNEL_OPTIONS = dict(out["kernel_options_sweep"]["best"])
        print("kernel options for the tables:", blocksparse.KERNEL_OPTIONS, flush=True)
    out["kernel_options"] = blocksparse.kernel_options_for(torch.device("cuda"))
    for point in args.points.split(","):
        tokens, groups = (int(s) for s in point.split(":"))
        out["points"].append(run_point(tokens, groups, args.heads, args.head_dim, caps, args.repeats, vcaps,
                                       not args.no_check and tokens <= 200_000, args.profile, args.back_to_back,
                                       tuple(args.groupings.split(",")), tuple(args.combines.split(","))))
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
