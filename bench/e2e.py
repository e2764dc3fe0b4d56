"""End to end on a GPU: one denoising step (cond + uncond) of a random-weight ComfyUI WanModel through
MoGALongVideoSampler, MoGA-patched vs unpatched, with step time and peak GPU memory.

    COMFYUI_PATH=/path/to/ComfyUI python bench/e2e.py --out results/e2e.json \
        [--cases 1.3b:187200,1.3b:580320,...] [--routers calibrated,skewed,auto,random,calibrated+second]
        [--capacity 1.25] [--free-gib 23] [--profile step_profile.txt]

The model is ComfyUI's own WanModel class with the Wan 2.1 1.3B (or 14B) shapes and random weights, loaded through
comfy.sd.load_diffusion_model_state_dict; conditioning is random UMT5-shaped (1, 512, 4096) text for both prompts
(same length, so ComfyUI batches cond and uncond as B = 2, as it does for real prompts padded to 512).

Routers, as users get them:
- ``calibrated``: the pack's own calibration (`nodes.calibrate.calibrate`, what MoGACalibrateRouter runs): k-means on
  the model's router inputs of a short dense pass over a 33-frame latent of the same frame size;
- ``skewed``: random linear routers — groups as unequal as a router that does not fit the video gives;
- ``balanced``: random routers with capacity 1.0 (the old fast setting);
- ``auto``: no router file — routers fitted to this video (`nodes.auto_routers`): two sampler steps, the first dense
  (its router inputs are sampled), the fit, then one sparse step; reported: the fit's cost and the sparse step (the
  two steps' time minus the dense step's);
- ``random``: no router, the nodes' default grouping — balanced random groups (`moga_core.RandomGroups`), no fit;
- any of them but ``random`` with ``+second`` (``calibrated+second``): the second group on (each query also sees its second-best
  group).
The patch uses the node's defaults (combine union, capacity, local branches) except ``start_percent = 0`` so that
the one timed step is sparse; the 30-step projection applies the default dense warm-up (start_percent 0.2, i.e.
the first 6 of 30 steps dense). Each MoGA case is run twice: cold (the first call at this length, kernel
compilation included) and warm. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import time

import torch

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_ROOT)
from moga_core.bench import profile_table  # noqa: E402  (the pack's own stages are named moga.* there)
SHAPES = {  # dim, ffn, layers (heads = dim // 128)
    "tiny": (256, 512, 2),  # a CPU smoke test of this script
    "1.3b": (1536, 8960, 30),
    "14b": (5120, 13824, 40),
}
FRAME_TOKENS = 30 * 52  # 480p (832x480): 30 x 52 patches per latent frame


CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def init_comfyui(path: str):
    sys.path.insert(0, path)
    import comfy.cli_args  # default GPU settings

    comfy.cli_args.args.cpu = not CUDA

    importlib.import_module("utils.install_util")
    importlib.import_module("utils.extra_config")
    import nodes

    link = os.path.join("/tmp", "moga_e2e_nodes", "ComfyUI-MoGA")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.islink(link):
        os.symlink(PACK_ROOT, link)
    assert asyncio.run(nodes.load_custom_node(link)), "the pack did not load"
    name = link.replace(".", "_x_")
    return {sub: importlib.import_module(f"{name}.{sub}") for sub in
            ("moga_core", "moga_core.routers", "nodes.patcher", "nodes.long_video", "nodes.wiring")}


def random_wan(shape: str, seed: int = 0):
    import comfy.ldm.wan.model as wan
    import comfy.ops
    import comfy.sd

    dim, ffn, layers = SHAPES[shape]
    with torch.device(DEVICE):
        model = wan.WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=dim, ffn_dim=ffn,
                             freq_dim=256, text_dim=4096, out_dim=16, num_heads=dim // 128, num_layers=layers,
                             window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
                             operations=comfy.ops.disable_weight_init, dtype=torch.bfloat16, device=DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    sd = {k: v.cpu() for k, v in model.state_dict().items()}
    del model
    if CUDA:
        torch.cuda.empty_cache()
    dtype = torch.bfloat16 if CUDA else torch.float32
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype})


HELD_BYTES = 0  # memory held by --free-gib (not the run's), taken off every reported peak


def hold_all_but(free_gib: float) -> torch.Tensor:
    """Allocate what the GPU has free beyond ``free_gib`` GiB (a 24 GB card has ~23 GiB free for ComfyUI)."""
    global HELD_BYTES
    torch.cuda.init()
    free, _ = torch.cuda.mem_get_info()
    size = int(free - free_gib * 2 ** 30)
    if size <= 0:
        raise SystemExit(f"--free-gib {free_gib}: this GPU has only {free / 2 ** 30:.1f} GiB free")
    held = torch.empty(size, dtype=torch.uint8, device="cuda")
    HELD_BYTES = size
    print(f"holding {size / 2 ** 30:.1f} GiB: {torch.cuda.mem_get_info()[0] / 2 ** 30:.1f} GiB left free", flush=True)
    return held


def timed(fn):
    if not CUDA:
        t0 = time.perf_counter()
        return fn(), time.perf_counter() - t0, None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - HELD_BYTES) / 2 ** 30


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--cases", default="1.3b:32760,1.3b:187200,1.3b:580320")
    p.add_argument("--dense-max-tokens", type=int, default=187200, help="skip the unpatched run above this")
    p.add_argument("--min-tokens", type=int, default=16384, help="the patch's min_tokens (the node default)")
    p.add_argument("--combine", default="union")
    p.add_argument("--routers", default="calibrated,skewed",
                   help="comma list of: calibrated, skewed, balanced, auto, random (+second: the second group on)")
    p.add_argument("--capacity", default="1.25", help="routing capacity ('none' = unbounded groups)")
    p.add_argument("--warmup-steps", type=float, default=0.2,
                   help="the dense warm-up (start_percent) of the 30-step projection")
    p.add_argument("--free-gib", type=float, default=0.0,
                   help="emulate a smaller card: hold all but this much free GPU memory before the model loads, so "
                        "ComfyUI plans its batches (cond/uncond together or apart) and its weight loading for that "
                        "card, and a run that needs more fails with out of memory; peaks are reported without the "
                        "held memory")
    p.add_argument("--steady-steps", type=int, default=0,
                   help="with K >= 2, also time a K-step run of each case without a fit (random, calibrated, "
                        "skewed, balanced): (t(K steps) - t(1 step)) / (K - 1) is what a later step costs, with the "
                        "run's block plans reused and its speed check settled")
    p.add_argument("--profile", default="",
                   help="file for a torch.profiler table of one more warm MoGA step of the first router kind")
    args = p.parse_args()
    held = hold_all_but(args.free_gib) if args.free_gib > 0 and CUDA else None
    mods = init_comfyui(os.environ["COMFYUI_PATH"])
    core, routers_mod, patcher, long_video = (mods[k] for k in ("moga_core", "moga_core.routers", "nodes.patcher",
                                                                "nodes.long_video"))
    sampler = long_video.MoGALongVideoSampler
    gen = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 512, 4096, generator=gen), {}]]
    neg = [[torch.randn(1, 512, 4096, generator=gen), {}]]
    results = []
    models = {}
    profiled = False
    calibrate = importlib.import_module(mods["nodes.patcher"].__name__.rsplit(".", 1)[0] + ".calibrate").calibrate
    capacity = None if args.capacity == "none" else float(args.capacity)
    for case in args.cases.split(","):
        shape, tokens = case.split(":")
        tokens = int(tokens)
        if shape not in models:
            models.clear()
            if CUDA:
                torch.cuda.empty_cache()
            t0 = time.time()
            models[shape] = random_wan(shape)
            print(f"built {shape} in {time.time() - t0:.0f} s", flush=True)
        model = models[shape]
        frame_tokens = FRAME_TOKENS if shape != "tiny" else 4 * 4
        frames = 4 * (tokens // frame_tokens - 1) + 1
        size = dict(width=832, height=480) if shape != "tiny" else dict(width=64, height=64)
        groups = 20 if tokens > 300000 else 5
        dim, _, layers = SHAPES[shape]
        common = dict(positive=pos, negative=neg, **size, length=frames, seed=0, steps=1, cfg=5.0,
                      sampler_name="euler", scheduler="simple", shift=0.0, denoise=1.0, ffn_chunk_tokens=0,
                      context_frames=0, context_overlap=0)
        base = {"model": f"Wan {shape} shape (random weights)", "tokens": tokens, "frames": frames, "groups": groups,
                "combine": args.combine, "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
                "torch": torch.__version__}
        dense = None
        if tokens <= args.dense_max_tokens:
            sampler.execute(model=model, **dict(common, length=9))
            out, seconds, peak = timed(lambda: sampler.execute(model=model, **common).args[0])
            assert torch.isfinite(out["samples"]).all(), "non-finite sample"
            dense = {"dense_step_s": seconds, "dense_peak_gib": peak}
            print(f"{shape} N={tokens} dense: {seconds:.2f} s/step, peak {peak} GiB", flush=True)
        for kind in args.routers.split(","):
            row = dict(base, routers=kind, capacity=1.0 if kind == "balanced" else capacity, **(dense or {}))
            if held is not None:
                row["emulated_free_gib"] = args.free_gib
            second = kind.endswith("+second")
            kind = kind.removesuffix("+second")
            steps, start, grouping = 1, 0.0, "kmeans"
            if kind == "auto":
                # auto routers are fitted on the last dense step: two steps, the first dense (start_percent 0.5)
                rs, steps, start = None, 2, 0.5
            elif kind == "random":
                rs, grouping = None, "random"
            elif kind == "calibrated":
                latent = {"samples": torch.zeros(1, 16, 9, size["height"] // 8, size["width"] // 8)}
                t0 = time.time()
                rs = calibrate(model, pos, neg, latent, 2, 5.0, "euler", "simple", 0, groups)
                row["calibration_s"] = time.time() - t0
            elif kind in ("skewed", "balanced"):
                gen = torch.Generator().manual_seed(1)
                rs = routers_mod.RouterSet({i: core.Router(dim, groups) for i in range(layers)}, "wan", dim, layers,
                                           combine=args.combine)
                for r in rs.routers.values():
                    with torch.no_grad():
                        r.weight.normal_(0.0, dim ** -0.5, generator=gen)
            else:
                raise SystemExit(f"unknown router kind {kind!r}: expected calibrated, skewed, balanced, auto, random "
                                 "(each but random optionally with +second)")
            patched = model.clone()
            extra = dict(second_group=True) if second else {}
            patcher.install(patched, rs, patcher.PatchOptions(start_percent=start, min_tokens=args.min_tokens,
                                                              combine=args.combine, capacity=row["capacity"],
                                                              auto_groups=groups, grouping=grouping, **extra))
            row["second_group"] = second
            run = dict(common, steps=steps)
            sampler.execute(model=patched, **dict(run, length=9))  # weights loaded, small kernels built
            runs = []
            for label in ("cold", "warm"):
                try:
                    out, seconds, peak = timed(lambda: sampler.execute(model=patched, **run).args[0])
                except torch.OutOfMemoryError as exc:
                    row["moga_error"] = f"out of memory: {str(exc)[:200]}"
                    break
                assert torch.isfinite(out["samples"]).all(), "non-finite sample"
                if steps == 2:  # the dense capture step, the fit and the sparse step: report the sparse one
                    row[f"moga_{label}_two_steps_s"] = seconds
                    seconds = seconds - dense["dense_step_s"] if dense else float("nan")
                runs.append((seconds, peak))
                row[f"moga_{label}_s"] = seconds
            if runs and args.profile and not profiled:
                profiled = True
                profile_table(lambda: sampler.execute(model=patched, **run), args.profile, DEVICE,
                              f"{shape} N={tokens} {row['routers']} one MoGA step ({steps} sampler steps)")
            if runs:
                stats = mods["nodes.wiring"].patch_of(patched).last_run_stats
                if steps == 2:
                    row["auto_fit_s"] = stats.get("auto_fit_s")
                    row["auto_capture_s"] = stats.get("auto_capture_s")
                row["moga_step_s"] = runs[-1][0]
                row["moga_peak_gib"] = max(r[1] for r in runs) if CUDA else None
                sparse = sum(stats["sparse_calls"].values())
                row["moga_sparse_calls"] = sparse
                row["moga_dense_calls"] = dict(stats["dense"])
                row["largest_group"] = stats["largest_group_sum"] / max(sparse, 1)
                row["density"] = stats["density_sum"] / max(sparse, 1)
                row["summary"] = patcher.summarize_run(stats)
                if dense:
                    row["speedup"] = dense["dense_step_s"] / row["moga_step_s"]
                    dense_steps = round(30 * args.warmup_steps)
                    row["projected_30_steps_s"] = dense_steps * dense["dense_step_s"] + \
                        (30 - dense_steps) * row["moga_step_s"]
                    row["projected_30_steps_dense_s"] = 30 * dense["dense_step_s"]
            if runs and args.steady_steps >= 2 and steps == 1:
                many = dict(run, steps=args.steady_steps)
                out, seconds_k, _ = timed(lambda: sampler.execute(model=patched, **many).args[0])
                assert torch.isfinite(out["samples"]).all(), "non-finite sample"
                row["steady_steps"] = args.steady_steps
                row["moga_steady_run_s"] = seconds_k
                row["moga_steady_step_s"] = (seconds_k - runs[-1][0]) / (args.steady_steps - 1)
                steady_stats = mods["nodes.wiring"].patch_of(patched).last_run_stats
                row["steady_summary"] = patcher.summarize_run(steady_stats)
                if dense:
                    row["steady_speedup"] = dense["dense_step_s"] / row["moga_steady_step_s"]
                    dense_steps = round(30 * args.warmup_steps)
                    # a 30-step run: the dense warm-up, the first sparse step (plans built), then later steps
                    row["projected_30_steps_steady_s"] = dense_steps * dense["dense_step_s"] + runs[-1][0] + \
                        (30 - dense_steps - 1) * row["moga_steady_step_s"]
                print(f"{shape} N={tokens} {row['routers']}: {args.steady_steps} steps {seconds_k:.2f} s -> later "
                      f"step {row['moga_steady_step_s']:.2f} s ({row.get('steady_speedup')}x); "
                      f"{row['steady_summary']}", flush=True)
            print(f"{shape} N={tokens} {row['routers']}: cold {row.get('moga_cold_s')} warm {row.get('moga_warm_s')} s/step, "
                  f"peak {row.get('moga_peak_gib')} GiB, speedup {row.get('speedup')}; {row.get('summary')} "
                  f"{row.get('moga_error', '')}", flush=True)
            results.append(row)
            del patched
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
