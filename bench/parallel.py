"""Sequence-parallel MoGA on 1 vs N GPUs: the attention layer and a stand-in transformer block, Wan shapes.

    torchrun --nproc_per_node=2 bench/parallel.py --out bench/results/h200x2_parallel.json
    torchrun --nproc_per_node=2 bench/parallel.py --device cpu --tokens 3000 --shapes wan1.3b --out /tmp/p.json

For every (shape, tokens) point:

- ``layer 1 GPU``: `moga_attention` on the whole sequence on rank 0 (the other ranks wait) — what one GPU runs;
  random q/k/v and uniformly random group ids / gates (no router: groups of about N/M tokens each);
- ``layer N GPU``: `sequence_parallel_moga_attention` over all ranks (q/k/v sequence-sharded, group ids/gates
  gathered, all-to-all to heads, MoGA, all-to-all back); ``a2a`` = the four all-to-alls alone;
- ``block 1/N GPU``: a STAND-IN block with random weights (not Wan's code): LayerNorm → qkv projection → RMSNorm on
  q, k; `Router` (linear C→M on the normed input, argmax, gate) → MoGA self-attention (sequence-parallel on N
  GPUs) → out projection → residual; LayerNorm → cross-attention to 512 text tokens (sequence-local) → residual;
  LayerNorm → FFN (GELU-tanh) → residual. No timestep modulation, no RoPE. ``--blocks`` blocks are timed and the
  full forward is extrapolated as per-block time × the model's block count (labelled ``extrapolated``).

Shapes: ``wan1.3b`` = dim 1536, 12 heads (D 128), FFN 8960, 30 blocks; ``wan14b`` = dim 5120, 40 heads, FFN 13824,
40 blocks. Video grid from the token count (720p Wan frames 45×80 = 3600 tokens; 580,000 → 290 frames of 40×50),
3 shots, MoGA M groups with the paper's local branches (2×2 windows, temporal groups of 10 latent frames, 2 neighbour
frames, frame branch), ``mean`` combine by default. Timing: CUDA events (perf_counter on CPU), median of
``--repeats`` after ``--warmup``; the N-GPU time is the slowest rank's median. Peak memory: max_memory_allocated per
rank during the measurement (inputs and weights included). Sets NCCL_NVLS_ENABLE=0 unless already set.
"""

from __future__ import annotations

import os

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moga_core import MogaConfig, Router, VideoLayout, moga_attention  # noqa: E402
from moga_core.parallel import (_heads_to_seq, _seq_to_heads, _sharding,  # noqa: E402
                                sequence_parallel_moga_attention, shard_sequence, shard_sizes)
from moga_core.bench import time_calls  # noqa: E402
from moga_core.synthetic import even_shots, grid_for_tokens  # noqa: E402

SHAPES = {  # name: (dim, heads, ffn_dim, blocks)
    "wan1.3b": (1536, 12, 8960, 30),
    "wan14b": (5120, 40, 13824, 40),
}
TEXT_TOKENS = 512


# ---------------------------------------------------------------------------------------------------------------
# timing


def median_ms(fn, dev, repeats, warmup, group_barrier):
    """Median ms of ``fn()`` and every time; with ``group_barrier`` every repeat starts after a barrier of all
    ranks."""
    times = time_calls(fn, dev, repeats, warmup, dist.barrier if group_barrier else None)
    return statistics.median(times), times


def reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev):
    return torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None


def all_ranks(value, dev):
    """Gather one float per rank (None → nan) onto every rank."""
    t = torch.tensor([float("nan") if value is None else float(value)], dtype=torch.float64, device=dev)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [None if math.isnan(float(x)) else float(x) for x in out]


def _gen(dev, seed):
    return torch.Generator(device=dev).manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# the stand-in block


class StandInBlock(torch.nn.Module):
    """Random-weight Wan-like block (see the module docstring); ``attn(q, k, v, groups, gate)`` is the MoGA call."""

    def __init__(self, dim, heads, ffn, groups, dev, dtype, seed):
        super().__init__()
        gen = torch.Generator(device="cpu").manual_seed(seed)

        def lin(i, o):
            return (torch.randn(o, i, generator=gen) * i ** -0.5).to(dev, dtype)

        self.heads = heads
        self.qkv, self.o = lin(dim, 3 * dim), lin(dim, dim)
        self.cq, self.ckv, self.co = lin(dim, dim), lin(dim, 2 * dim), lin(dim, dim)
        self.f1, self.f2 = lin(dim, ffn), lin(ffn, dim)
        self.router = Router.from_weights(torch.randn(groups, dim, generator=gen) * dim ** -0.5,
                                          torch.zeros(groups)).to(dev)

    def forward(self, x, context, attn):
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        y = F.layer_norm(x, (c,))
        groups, gate = self.router(y)  # the router reads the self-attention input (float32 logits, in chunks)
        qkv = F.linear(y, self.qkv)
        del y
        q, k, v = qkv.split(c, dim=-1)
        q, k, v = F.rms_norm(q, (c,)), F.rms_norm(k, (c,)), v.contiguous()
        del qkv
        a = attn(q.view(b, n, h, d), k.view(b, n, h, d), v.view(b, n, h, d), groups, gate.to(x.dtype))
        del q, k, v
        x = x + F.linear(a.reshape(b, n, c), self.o)
        y = F.layer_norm(x, (c,))
        cq = F.linear(y, self.cq).view(b, n, h, d).transpose(1, 2)
        ck, cv = F.linear(context, self.ckv).view(b, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        ca = F.scaled_dot_product_attention(cq, ck, cv).transpose(1, 2).reshape(b, n, c)
        x = x + F.linear(ca, self.co)
        y = F.layer_norm(x, (c,))
        return x + F.linear(F.gelu(F.linear(y, self.f1), approximate="tanh"), self.f2)


# ---------------------------------------------------------------------------------------------------------------
# one (shape, tokens) point


@torch.no_grad()
def run_point(shape, tokens, args, dev, dtype, rank, world):
    dim, heads, ffn, num_blocks = SHAPES[shape]
    d = dim // heads
    grid = grid_for_tokens(tokens)
    layout = VideoLayout(grid=grid, shots=even_shots(grid[0], args.shots))
    window = (2, 2) if grid[1] >= 2 and grid[2] >= 2 else None
    cfg = MogaConfig(num_groups=args.groups, window=window, temporal_group=10, neighbor_frames=2,
                     frame_branch=True, combine=args.combine, backend=args.backend)
    n = layout.num_tokens
    sizes = shard_sizes(n, world)
    gen = torch.Generator(device=dev).manual_seed(1234)
    rows = []
    point = dict(shape=shape, tokens=n, grid=list(grid), shots=list(layout.shots), heads=heads, head_dim=d,
                 groups=args.groups, combine=args.combine)

    def add(what, gpus, ms, times, peaks, **extra):
        row = dict(point, what=what, gpus=gpus, median_ms=ms, times_ms=times, peak_gib_per_rank=peaks, **extra)
        rows.append(row)
        if rank == 0:
            known = [p for p in peaks or [] if p is not None]
            peak = f" peak/rank {max(known):.1f} GiB" if known else ""
            print(f"  {shape} N={n} {what} {gpus} dev: {ms:.1f} ms{peak}", flush=True)
        return row

    # ----- the attention layer -----
    if "layer" in args.what:
        # the full inputs, generated identically on every rank (device generator, same seed); each rank keeps its
        # shard, rank 0 also the whole sequence for the 1-GPU baseline
        q, k, v = (torch.randn(1, n, heads, d, generator=gen, device=dev, dtype=dtype) for _ in range(3))
        groups = torch.randint(0, args.groups, (1, n), generator=gen, device=dev)
        gate = torch.rand(1, n, generator=gen, device=dev, dtype=dtype)
        single_out = None
        if not args.no_single:
            if rank == 0:
                qd, kd, vd, gd, ad = q, k, v, groups, gate
                nv, p = layout.num_video_tokens, layout.prefix
                gv, av = gd[:, p:p + nv], ad[:, p:p + nv]
                reset_peak(dev)
                fn = lambda: moga_attention(qd, kd, vd, layout, cfg, groups=gv, gate=av)  # noqa: E731
                ms, times = median_ms(fn, dev, args.repeats, args.warmup, False)
                peak = peak_gib(dev)
                if args.check:
                    single_out = fn().cpu()
                del qd, kd, vd, gd, ad, gv, av
                reset_peak(dev)
            dist.barrier()
            ms = all_ranks(ms if rank == 0 else None, dev)[0]
            add("layer", 1, ms, times if rank == 0 else None, [peak if rank == 0 else None])
        if world > 1:
            ql, kl, vl, gl, al = (shard_sequence(t, world, rank).clone() for t in (q, k, v, groups, gate))
        del q, k, v, groups, gate
        if world > 1:
            reset_peak(dev)
            fn = lambda: sequence_parallel_moga_attention(ql, kl, vl, layout, cfg, groups=gl, gate=al)  # noqa: E731
            ms, times = median_ms(fn, dev, args.repeats, args.warmup, True)
            peaks = all_ranks(peak_gib(dev), dev)
            ms_ranks = all_ranks(ms, dev)
            extra = {"median_ms_per_rank": ms_ranks}
            if args.check:
                out = fn()
                parts = [torch.empty(1, max(sizes), heads, d, dtype=dtype, device=dev) for _ in range(world)]
                padded = torch.cat([out, out.new_zeros(1, max(sizes) - out.shape[1], heads, d)], 1)
                dist.all_gather(parts, padded.contiguous())
                if rank == 0 and single_out is not None:  # compared on the device, in chunks of tokens
                    full = torch.cat([pp[:, :s] for pp, s in zip(parts, sizes)], 1)
                    err, top = 0.0, 0.0
                    for a in range(0, n, 65536):
                        ref = single_out[:, a:a + 65536].to(dev).float()
                        err = max(err, float((full[:, a:a + 65536].float() - ref).abs().max()))
                        top = max(top, float(ref.abs().max()))
                    extra["max_abs_rel_err_vs_1gpu"] = err / top
                    del full
                del out, parts, padded
            # the all-to-alls alone (3 to heads, 1 back), same sizes
            plan = _sharding([(n, sizes)], world, dev)

            def a2a():
                hq = [_seq_to_heads(t, plan, rank, None) for t in (ql, kl, vl)]
                return _heads_to_seq(hq[0], plan, rank, None)

            a2a_ms, _ = median_ms(a2a, dev, args.repeats, 1, True)
            extra["a2a_ms"] = max(all_ranks(a2a_ms, dev))
            row = add("layer", world, max(ms_ranks), times, peaks, **extra)
            if rank == 0 and "max_abs_rel_err_vs_1gpu" in row:
                print(f"    check vs 1 GPU: max abs rel err {row['max_abs_rel_err_vs_1gpu']:.2e}; "
                      f"all-to-alls {row['a2a_ms']:.1f} ms", flush=True)
            del ql, kl, vl, gl, al
        reset_peak(dev)

    # ----- the stand-in block (extrapolated to the full forward) -----
    if "block" in args.what:
        blocks = [StandInBlock(dim, heads, ffn, args.groups, dev, dtype, seed=100 + i) for i in range(args.blocks)]
        context = torch.randn(1, TEXT_TOKENS, dim, generator=gen, device=dev, dtype=dtype)
        nv, p = layout.num_video_tokens, layout.prefix

        def single_attn(q, k, v, groups, gate):
            return moga_attention(q, k, v, layout, cfg, groups=groups[:, p:p + nv], gate=gate[:, p:p + nv])

        def sp_attn(q, k, v, groups, gate):
            return sequence_parallel_moga_attention(q, k, v, layout, cfg, groups=groups, gate=gate)

        def forward(x, attn):
            for blk in blocks:
                x = blk(x, context, attn)
            return x

        if not args.no_single:
            if rank == 0:
                x = torch.randn(1, n, dim, generator=_gen(dev, 99), device=dev,
                                dtype=dtype) * 0.5
                reset_peak(dev)
                ms, times = median_ms(lambda: forward(x, single_attn), dev, args.repeats, args.warmup, False)
                peak = peak_gib(dev)
                del x
                reset_peak(dev)
            dist.barrier()
            ms = all_ranks(ms if rank == 0 else None, dev)[0]
            add(f"block x{args.blocks}", 1, ms, times if rank == 0 else None, [peak if rank == 0 else None],
                full_forward_ms_extrapolated=ms / args.blocks * num_blocks, model_blocks=num_blocks)
        if world > 1:
            x = shard_sequence(torch.randn(1, n, dim, generator=_gen(dev, 99), device=dev, dtype=dtype) * 0.5, world,
                               rank).clone()
            reset_peak(dev)
            ms, times = median_ms(lambda: forward(x, sp_attn), dev, args.repeats, args.warmup, True)
            peaks = all_ranks(peak_gib(dev), dev)
            ms = max(all_ranks(ms, dev))
            add(f"block x{args.blocks}", world, ms, times, peaks,
                full_forward_ms_extrapolated=ms / args.blocks * num_blocks, model_blocks=num_blocks)
            del x
        del blocks, context
        reset_peak(dev)

    # scaling of every N-GPU row against its 1-GPU row
    for row in rows:
        if row["gpus"] > 1:
            base = [r for r in rows if r["what"] == row["what"] and r["gpus"] == 1]
            if base:
                row["speedup"] = base[0]["median_ms"] / row["median_ms"]
                row["efficiency"] = row["speedup"] / row["gpus"]
    return rows


def table(rows, device_name, world):
    lines = [f"{device_name} · {world} rank(s) · torch {torch.__version__} · stand-in blocks: random weights",
             "| shape | tokens | what | GPUs | median ms | speedup | efficiency | full fwd (extrap.) s | "
             "peak GiB/rank | a2a ms | err vs 1 GPU |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peaks = [p for p in (r["peak_gib_per_rank"] or []) if p is not None]
        lines.append("| {} | {} | {} | {} | {:.1f} | {} | {} | {} | {} | {} | {} |".format(
            r["shape"], r["tokens"], r["what"], r["gpus"], r["median_ms"],
            f"{r['speedup']:.2f}x" if "speedup" in r else "", f"{r['efficiency']:.0%}" if "efficiency" in r else "",
            f"{r['full_forward_ms_extrapolated'] / 1e3:.1f}" if "full_forward_ms_extrapolated" in r else "",
            f"{max(peaks):.1f}" if peaks else "", f"{r['a2a_ms']:.1f}" if "a2a_ms" in r else "",
            f"{r['max_abs_rel_err_vs_1gpu']:.1e}" if "max_abs_rel_err_vs_1gpu" in r else ""))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON result path (written by rank 0)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tokens", type=int, nargs="+", default=[187200, 580000])
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["wan1.3b", "wan14b"])
    ap.add_argument("--what", nargs="+", choices=["layer", "block"], default=["layer", "block"])
    ap.add_argument("--groups", type=int, default=5, help="MoGA groups M")
    ap.add_argument("--combine", choices=["mean", "union"], default="mean")
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--blocks", type=int, default=1, help="stand-in blocks timed per forward (extrapolated)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-single", action="store_true", help="skip the 1-GPU baseline (rank 0)")
    ap.add_argument("--check", action="store_true",
                    help="compare the N-GPU layer output with the 1-GPU output (gathers it on rank 0)")
    args = ap.parse_args(argv)

    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda, but torch sees no CUDA device (use --device cpu for the gloo check)")
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        backend, dtype = "nccl", torch.bfloat16
    else:
        dev, backend, dtype = torch.device("cpu"), "gloo", torch.float32
    if "RANK" not in os.environ:  # plain `python bench/parallel.py`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    kwargs = dict(backend=backend, timeout=datetime.timedelta(minutes=30))
    if backend == "nccl":
        kwargs["device_id"] = dev
    dist.init_process_group(**kwargs)
    rank, world = dist.get_rank(), dist.get_world_size()
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    if rank == 0:
        print(f"{world} rank(s) on {device_name}, NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE')}", flush=True)
    rows = []
    t0 = time.time()
    try:
        for tokens in args.tokens:
            for shape in args.shapes:
                rows += run_point(shape, tokens, args, dev, dtype, rank, world)
                if rank == 0:
                    print(f"  ({time.time() - t0:.0f} s elapsed)", flush=True)
                    with open(args.out, "w") as f:
                        json.dump({"device": device_name, "world_size": world, "torch": torch.__version__,
                                   "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"), "args": vars(args),
                                   "rows": rows}, f, indent=1)
        if rank == 0:
            print(table(rows, device_name, world), flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
