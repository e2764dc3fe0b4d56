"""`python -m moga_core bench`: dense attention vs the MoGA layer on synthetic structured video tokens.

The MoGA time covers the whole layer as a model would run it: routing (router logits + argmax), packing
(sort, cu_seqlens, gathers of q/k/v), attention, unpacking and the combine. The dense time is the fastest SDPA
kernel torch offers on the device (each is timed; the table names it). Timing: CUDA events around each call,
median of ``repeats`` after warm-up; on CPU, ``time.perf_counter``.

Accuracy columns: ``err vs dense`` = ‖MoGA − dense‖/‖dense‖ (what the sparsity costs on these tokens);
``check`` = max|fast − simple|/max|simple| against the per-group float32 ``loop`` backend on the same groups
(whether the fast path computes MoGA exactly).
"""



from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from .attention import moga_attention
from .backends import available_backends
from .config import BACKENDS, MogaConfig
from .router import Router
from .synthetic import structured_video_qkv

COLUMNS = """output columns:
  variant           dense SDPA (the kernel named), or MoGA in a mode: mean / union = how branches combine,
                    +local = with the spatio-temporal window and per-frame branches, balanced = equal-size groups
  median ms         median wall time of one attention layer call (routing and packing included for MoGA)
  eff. TFLOP/s      FLOPs of the scores actually computed (4·H·D·N²·computed) per second; n/a on CPU, where
                    these float32 timings only check that the code runs, not how fast a GPU kernel is
  density           size of MoGA's key sets, as a share of dense attention's N² (dense = 1.000); in mean mode a
                    key that two branches both see is counted by each, so small videos with large windows can
                    exceed 1 (MoGA then costs more than dense: it pays off on long videos)
  computed          scores the kernels actually compute / N²: whole 128x128 blocks on the block kernel (flex),
                    every inclusion-exclusion piece of union mode on the varlen paths
  speedup vs dense  the best dense kernel's time / this row's time
  err vs dense      ||MoGA - dense|| / ||dense||: how far the sparse result is from full attention on these tokens
  check             max|fast - float32 loop| / max|loop| on the same groups: 0 to rounding means the fast path
                    computes MoGA exactly (1e-3 is bf16 rounding)"""

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def time_calls(fn, device: torch.device, repeats: int, warmup: int = 2, before_each=None) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones (CUDA events on GPU).

    ``before_each``: run (untimed) before every timed call, e.g. a barrier so that all ranks start together."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if before_each is not None:
            before_each()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_back_to_back(fn, device: torch.device, calls: int, warmup: int = 2) -> float:
    """Milliseconds per call of ``calls`` calls of ``fn()`` issued back to back (one pair of CUDA events around all
    of them), as a model's layers run: the host prepares the next call while the GPU still runs the last, so host
    work that a call does before its first kernel is hidden the way a model hides it. `time_calls` instead starts
    every call on an idle GPU (a conservative figure for layers that do host work first)."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) * 1e3 / calls
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def time_call(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs (CUDA events on GPU)."""
    return statistics.median(time_calls(fn, device, repeats, warmup))


def profile_table(fn, path: str, device, label: str, calls: int = 1) -> None:
    """``calls`` calls of ``fn`` under torch.profiler, appended to the text file ``path``: how busy the device was
    (kernel time / wall time), the pack's own stages (the ``moga.*`` ranges: routing, block plan, the one read-back,
    the block kernel) and the ops by device time. A report for people, not a timing (the profiler adds overhead)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events
                    if e.device_type == torch.autograd.DeviceType.CUDA) if cuda else 0.0
    with open(path, "a") as f:
        f.write(f"== {label}: {calls} call(s), wall {wall:.3f} s under the profiler, device kernels "
                f"{kernel_us / 1e6:.3f} s ({100 * kernel_us / 1e6 / wall:.0f} % busy)\n")
        for e in events:
            if e.key.startswith("moga."):
                f.write(f"  {e.key:24s} calls {e.count:5d}  host {e.cpu_time_total / 1e3:9.1f} ms  "
                        f"device {e.device_time_total / 1e3:9.1f} ms\n")
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        f.write(events.table(sort_by=sort, row_limit=45, max_name_column_width=70) + "\n")
    print(f"profile of {label} written to {path}", flush=True)


def _peak_gib(device: torch.device):
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def dense_candidates(device: torch.device, dtype: torch.dtype):
    """(name, context-manager factory) for the SDPA kernels worth timing on this device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type != "cuda":
        return [("sdpa", lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]))]
    names = [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
             ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    return [(name, (lambda b=b: sdpa_kernel([b]))) for name, b in names]


@torch.no_grad()
def run_bench(tokens: int = 32760, heads: int = 12, head_dim: int = 128, groups: int = 8, device: str = "cpu",
              dtype: str = "bf16", repeats: int = 10, shots: int = 3, backend: str = "auto",
              modes: list[str] | None = None, check: bool = True, seed: int = 0,
              dense_kernels: list[str] | None = None) -> dict:
    dev = torch.device(device)
    dt = DTYPES[dtype]
    if dev.type == "cpu" and dt != torch.float32:
        dt = torch.float32  # CPU bf16 attention is slow and not what anyone runs; time float32 there
    layout, x, q, k, v = structured_video_qkv(tokens, heads, head_dim, shots, seed, dev, dt)
    router = Router.fit(x.float(), groups, seed=seed).to(dev)
    flops_dense = 4.0 * heads * head_dim * layout.num_tokens ** 2

    rows = []
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    best_dense, dense_out, dense_name = None, None, None
    for name, ctx in dense_candidates(dev, dt):
        if dense_kernels is not None and name not in dense_kernels:
            continue
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        try:
            with ctx():
                fn = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
                ms = time_call(fn, dev, repeats)
                out = fn().transpose(1, 2)
        except RuntimeError:
            continue
        rows.append({"variant": f"dense SDPA ({name})", "ms": ms, "tflops": flops_dense / ms / 1e9,
                     "density": 1.0, "peak_gib": _peak_gib(dev)})
        if best_dense is None or ms < best_dense:
            best_dense, dense_out, dense_name = ms, out, name
        del out
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    modes = modes or ["mean", "mean+local", "union+local", "mean balanced"]
    for mode in modes:
        combine = "union" if mode.startswith("union") else "mean"
        local = "+local" in mode
        balanced = "balanced" in mode
        cfg = MogaConfig(num_groups=groups, window=(2, 2) if local else None, frame_branch=local, combine=combine,
                         balanced=balanced, backend=backend)

        def layer():
            g, gate = router(x, balanced=balanced)
            return moga_attention(q, k, v, layout, cfg, g, gate if combine == "mean" else None)

        stats = {}
        g, gate = router(x, balanced=balanced)
        moga_attention(q, k, v, layout, cfg, g, gate, stats=stats)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        ms = time_call(layer, dev, repeats)
        out = layer()
        row = {"variant": f"MoGA {mode} (M={groups})", "ms": ms, "density": stats["density"],
               "computed": stats["work_density"], "backend": stats["backend"],
               "tflops": stats["work_density"] * flops_dense / ms / 1e9, "speedup": best_dense / ms,
               "group_sizes": stats["group_sizes"][0].tolist(), "peak_gib": _peak_gib(dev)}
        # what the sparsity costs: compare with dense attention (for mean mode, against the same ungated mix
        # would be apples to oranges; we report against dense attention, which is what the model was trained on)
        row["err_vs_dense"] = float((out.float() - dense_out.float()).norm() / dense_out.float().norm())
        if check:
            # the float32 per-segment loop on the same groups; above 200k tokens on one head (a slice: every head is
            # computed independently by the same code, and all heads would take the loop minutes)
            heads_checked = heads if layout.num_tokens <= 200_000 else 1
            sl = slice(0, heads_checked)
            simple = moga_attention(q[:, :, sl].float(), k[:, :, sl].float(), v[:, :, sl].float(), layout,
                                    replace(cfg, backend="loop"), g, gate if combine == "mean" else None)
            row["check"] = float((out[:, :, sl].float() - simple).abs().max() / simple.abs().max())
            row["check_heads"] = heads_checked
            del simple
        rows.append(row)
        del out
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "tokens": layout.num_tokens, "grid": layout.grid, "shots": layout.shots,
        "heads": heads, "head_dim": head_dim, "groups": groups, "dtype": str(dt).replace("torch.", ""),
        "dense_kernel": dense_name, "backends": available_backends(), "rows": rows,
    }


def format_table(result: dict) -> str:
    head = (f"{result['device']} · torch {result['torch']} · N={result['tokens']} grid={tuple(result['grid'])} "
            f"shots={len(result['shots'])} · H={result['heads']} D={result['head_dim']} · {result['dtype']}")
    on_gpu = result["device"] != "cpu"
    lines = [head, "", "| variant | median ms | eff. TFLOP/s | density | computed | speedup vs dense | err vs dense "
             "| check |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append("| {} | {:.2f} | {} | {:.3f} | {:.3f} | {} | {} | {} |".format(
            r["variant"] + (f" [{r['backend']}]" if "backend" in r else ""), r["ms"],
            f"{r['tflops']:.0f}" if on_gpu else "n/a", r["density"], r.get("computed", r["density"]),
            f"{r['speedup']:.2f}x" if "speedup" in r else "1.00x" if r["ms"] else "",
            f"{r['err_vs_dense']:.3f}" if "err_vs_dense" in r else "",
            f"{r['check']:.1e}" if "check" in r else ""))
    if not on_gpu:
        lines += ["", "eff. TFLOP/s: n/a on CPU (float32 timings there only show the code runs; use --device cuda)"]
    lines += ["", "columns: `python -m moga_core bench --help`"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m moga_core bench", description=__doc__.split("\n\n")[0],
                                epilog=COLUMNS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to run: cuda (or cuda:N) or cpu (default: cuda when torch sees a GPU)")
    p.add_argument("--tokens", type=int, default=32760,
                   help="video tokens N (rounded to a latent grid T x H x W; 32,760 = 5 s of 480p Wan; "
                        "default %(default)s)")
    p.add_argument("--heads", type=int, default=12,
                   help="attention heads H (Wan 1.3B: 12, 14B: 40; default %(default)s)")
    p.add_argument("--head-dim", type=int, default=128, help="channels per head D (default %(default)s)")
    p.add_argument("--groups", type=int, default=8, help="router groups M (the paper: 5 for 30 s, 20 for 60 s; "
                                                         "default %(default)s)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                   help="precision of q, k, v on the GPU (CPU always runs float32; default %(default)s)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per row after 2 warm-up calls; the median "
                                                           "is printed (default %(default)s)")
    p.add_argument("--shots", type=int, default=3, help="shots the synthetic video is cut into; local windows break "
                                                        "at the cuts (default %(default)s)")
    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="kernel for MoGA's grouped calls; auto picks the fastest installed (see `python -m moga_core "
                        "info`; default %(default)s)")
    p.add_argument("--modes", default="mean,mean+local,union+local,mean balanced",
                   help="comma list of MoGA rows: mean or union (how branches combine), +local (window and frame "
                        "branches on), balanced (equal-size groups), e.g. 'union+local,mean balanced' "
                        "(default %(default)r)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check column (the float32 loop it compares against is slow on long videos)")
    p.add_argument("--json", help="also write the result as JSON to this path")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA device here")
    result = run_bench(args.tokens, args.heads, args.head_dim, args.groups, args.device, args.dtype, args.repeats,
                       args.shots, args.backend, [m.strip() for m in args.modes.split(",") if m.strip()],
                       not args.no_check)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
