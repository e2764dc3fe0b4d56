"""The attention layer side by side with ComfyUI core's own sparse attention: dense cuDNN, MoGA and comfy-kitchen's
`sol_attn` (Sol-Attn, what core's "Model Sparse Attention" node runs) on the same q/k/v, in one process. Reports,
never asserts.

    python bench/vs_sol.py --out bench/results/<run>-<card>_vs_sol.json \\
        [--points 32760:5,74880:5,187200:5,580320:20] [--sharpness 12] [--sharp-points 187200] [--repeats 10]

Inputs: the structured multi-shot tokens of `moga_core.synthetic` (3 shots, 480p frames, H = 12, D = 128, bf16,
one sample) at sharpness 12 (the top 5 % of keys hold ~86 % of the attention mass), and at the ``--sharpness-all``
values (default 6, 12, 24: 59 / 86 / 98 %) at the ``--sharp-points`` lengths.

Rows, each the whole layer as a model runs it and its relative L2 error against dense cuDNN:

- ``dense``: cuDNN SDPA;
- ``moga random``: the nodes' default (balanced random groups of M, union with the local branches, MogaConfig's
  defaults), first call of a run (block plan built, one read-back) and ``… plan reused`` (the `PlanCache` hit every
  later step of a run gets); ``moga random M=8``; ``moga k-means`` (Router.fit on the tokens, capacity 1.25);
- ``sol tau T``: ``comfy_kitchen.sol_attn(q, k, v, tau=T)`` for each ``--taus`` (core's node default is 1.3);
  ``sol top-k R``: ``topk_ratio=R`` for each ``--topks``.

Also per MoGA random point: the block plan alone, the kernel alone on a built plan, and the cost model's estimate
(`blocksparse.relative_cost`) beside the measured kernel / dense ratio — what the dense-if-slower guard knows.
CUDA events, median of ``--repeats`` after warm-up. Sol rows are missing (with the reason) where comfy-kitchen or
its CUDA kernels cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moga_core import MogaConfig, PlanCache, RandomGroups, Router, moga_attention  # noqa: E402
from moga_core.bench import time_call  # noqa: E402
from moga_core.blocksparse import block_attention, build_block_plan, relative_cost  # noqa: E402
from moga_core.synthetic import structured_video_qkv  # noqa: E402


def cudnn_dense(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                v.transpose(1, 2)).transpose(1, 2)


def rel_err(out, ref) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def load_sol():
    """comfy_kitchen.sol_attn, or (None, why)."""
    try:
        import comfy_kitchen as ck
    except Exception as exc:  # noqa: BLE001 — report, don't stop the bench
        return None, f"comfy_kitchen not importable: {type(exc).__name__}: {exc}"
    try:
        if not ck.sol_attn_is_available(torch.device("cuda")):
            return None, "comfy_kitchen.sol_attn_is_available() is False (no CUDA kernels for this GPU/torch)"
    except Exception as exc:  # noqa: BLE001
        return None, f"sol_attn_is_available failed: {type(exc).__name__}: {exc}"
    try:
        from importlib.metadata import version as dist_version

        version = dist_version("comfy-kitchen")
    except Exception:  # noqa: BLE001 — unpacked without its dist-info
        version = getattr(ck, "__version__", "?")
    return (ck.sol_attn, version), None


def measure(name, fn, ref, repeats, rows, extra=None):
    try:
        out = fn()
        err = rel_err(out, ref) if ref is not None else 0.0
        finite = bool(torch.isfinite(out).all())
        del out
        ms = time_call(fn, torch.device("cuda"), repeats, warmup=2)
        row = {"method": name, "ms": ms, "err": err, "finite": finite, **(extra or {})}
    except Exception as exc:  # noqa: BLE001
        row = {"method": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}", **(extra or {})}
    rows.append(row)
    shown = f"{row['ms']:9.2f} ms  err {row['err']:.4f}" if "ms" in row else row["error"]
    print(f"    {name:<28} {shown}", flush=True)
    return row


def run_point(tokens, m, sharp, args, sol):
    layout, x, q, k, v = structured_video_qkv(tokens, args.heads, args.head_dim, seed=0, device="cuda",
                                              dtype=torch.bfloat16, sharpness=sharp)
    n = layout.num_tokens
    print(f"  {n} tokens, grid {layout.grid}, M = {m}, sharpness {sharp}", flush=True)
    rows: list[dict] = []
    ref = cudnn_dense(q, k, v)
    # how concentrated attention is here: the share of the mass on the top 5 % of keys (sampled queries, one head)
    sel = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:256].cuda()
    p = torch.softmax((q[0, sel, 0].float() @ k[0, :, 0].float().T) / args.head_dim ** 0.5, -1)
    top5 = float(p.topk(max(1, n // 20), dim=-1).values.sum(-1).mean())
    dense = measure("dense (cuDNN)", lambda: cudnn_dense(q, k, v), None, args.repeats, rows)
    rows[-1]["err"] = 0.0

    cfg = MogaConfig(num_groups=m, combine="union")
    groups = RandomGroups(m, seed=0).partition(layout.num_video_tokens, q.device)[None]
    fresh = {}
    measure("moga random", lambda: moga_attention(q, k, v, layout, cfg, groups, stats=fresh, dense_fallback=False),
            ref, args.repeats, rows)
    cache = PlanCache()
    cached_stats = {}
    measure("moga random, plan reused",
            lambda: moga_attention(q, k, v, layout, cfg, groups, stats=cached_stats, plan_cache=cache,
                                   plan_key="bench"), ref, args.repeats, rows, {"cache_hits": None})
    rows[-1]["cache_hits"] = cache.hits
    rows[-2]["density"] = fresh.get("density")
    rows[-2]["work_density"] = fresh.get("work_density")
    # what the guard knows: the plan alone, the kernel alone, and the estimate
    plan = build_block_plan(layout, cfg, groups, "union")
    counts = [int(plan.partial_blocks.sum()), int(plan.full_blocks.sum())]
    plan_ms = time_call(lambda: build_block_plan(layout, cfg, groups, "union"), torch.device("cuda"), args.repeats)
    scale = args.head_dim ** -0.5
    kernel_ms = time_call(lambda: block_attention(q, k, v, plan, scale), torch.device("cuda"), args.repeats)
    guard = {"plan_ms": plan_ms, "kernel_ms": kernel_ms, "partial_blocks": counts[0], "full_blocks": counts[1],
             "estimate": relative_cost(counts[0], counts[1], 1, layout.num_video_tokens, layout.num_video_tokens),
             "kernel_over_dense": kernel_ms / dense["ms"] if "ms" in dense else None}
    print(f"    guard: plan {plan_ms:.2f} ms, kernel {kernel_ms:.2f} ms, estimate {guard['estimate']:.3f} vs "
          f"measured kernel/dense {guard['kernel_over_dense']:.3f}", flush=True)
    del plan
    if m != 8:
        cfg8 = MogaConfig(num_groups=8, combine="union")
        g8 = RandomGroups(8, seed=0).partition(layout.num_video_tokens, q.device)[None]
        measure("moga random M=8", lambda: moga_attention(q, k, v, layout, cfg8, g8), ref, args.repeats, rows)
    router = Router.fit(x.float(), num_groups=m, seed=0).cuda()
    cfg_k = MogaConfig(num_groups=m, combine="union", capacity=1.25)

    def kmeans_layer():
        g, _ = router(x, capacity=1.25)
        return moga_attention(q, k, v, layout, cfg_k, g)

    measure("moga k-means", kmeans_layer, ref, args.repeats, rows)

    if sol[0] is not None:
        sol_attn = sol[0][0]
        qc, kc, vc = (t.contiguous() for t in (q, k, v))
        for tau in args.taus:
            measure(f"sol tau {tau:g}", lambda tau=tau: sol_attn(qc, kc, vc, tau=tau), ref, args.repeats, rows)
        for topk in args.topks:
            measure(f"sol top-k {topk:g}", lambda topk=topk: sol_attn(qc, kc, vc, topk_ratio=topk), ref,
                    args.repeats, rows)
    for row in rows:
        if "ms" in row and "ms" in dense:
            row["speedup"] = dense["ms"] / row["ms"]
    del q, k, v, x, ref
    torch.cuda.empty_cache()
    return {"tokens": n, "groups": m, "sharpness": sharp, "top5_mass": top5, "grid": list(layout.grid),
            "rows": rows, "guard": guard}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--points", default="32760:5,74880:5,187200:5,580320:20", help="comma list of tokens:groups")
    p.add_argument("--sharpness", type=float, default=12.0, help="at every point")
    p.add_argument("--sharpness-all", default="6,12,24", help="at --sharp-points")
    p.add_argument("--sharp-points", default="187200", help="tokens at which every --sharpness-all value runs")
    p.add_argument("--taus", default="1.0,1.3,2.0")
    p.add_argument("--topks", default="0.1,0.2")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--repeats-long", type=int, default=4, help="repeats at 400,000 tokens and more")
    p.add_argument("--deadline", type=float, default=0.0, help="seconds; skip points that would start after it")
    args = p.parse_args()
    args.taus = [float(t) for t in args.taus.split(",") if t]
    args.topks = [float(t) for t in args.topks.split(",") if t]
    t0 = time.time()
    sol = load_sol()
    print(f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}; sol_attn: "
          f"{'comfy-kitchen ' + sol[0][1] if sol[0] else sol[1]}", flush=True)
    sharp_points = {int(t) for t in args.sharp_points.split(",") if t}
    results = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "comfy_kitchen": sol[0][1] if sol[0] else None, "sol_missing": sol[1], "points": []}
    repeats = args.repeats
    for spec in args.points.split(","):
        tokens, m = (int(x) for x in spec.split(":"))
        sharps = [float(s) for s in args.sharpness_all.split(",")] if tokens in sharp_points else [args.sharpness]
        for sharp in sharps:
            if args.deadline and time.time() - t0 > args.deadline:
                print(f"  skipped {tokens}:{m} sharpness {sharp}: past the deadline", flush=True)
                results["points"].append({"tokens": tokens, "groups": m, "sharpness": sharp, "skipped": "deadline"})
                continue
            args.repeats = args.repeats_long if tokens >= 400_000 else repeats
            results["points"].append(run_point(tokens, m, sharp, args, sol))
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    print(f"done in {time.time() - t0:.0f} s -> {args.out}")
    print_table(results)


def print_table(results):
    for point in results["points"]:
        if "rows" not in point:
            continue
        print(f"\n{point['tokens']} tokens, M={point['groups']}, sharpness {point['sharpness']:g} "
              f"(top 5 % mass {point['top5_mass']:.2f})")
        for row in point["rows"]:
            if "ms" in row:
                print(f"  {row['method']:<28} {row['ms']:9.2f} ms  {row.get('speedup', 0):5.2f}x  err {row['err']:.4f}")
            else:
                print(f"  {row['method']:<28} {row['error'][:80]}")


if __name__ == "__main__":
    main()
