"""Each model family the pack patches, on the GPU: a random-weight model of ComfyUI's real class at the family's real
attention width (heads × head dim) with a few blocks, sampled through ComfyUI's own KSampler at about 32k video
tokens, unpatched (dense) and MoGA-patched, in one process. Reports, never asserts.

    COMFYUI_PATH=/path/to/ComfyUI python bench/families.py --out bench/results/<run>-<card>_families.json \\
        [--families wan2.2-animate,wan2.2-s2v,kandinsky5-lite,kandinsky5-pro,ltx2] [--steps 3] [--repeats 3] [--profile tiny]

The models come from the host tests' builders (tests/host/tiny_models.py, tiny_kandinsky5.py, tiny_ltx.py), at
the widths below instead of the tests' tiny ones, loaded through `comfy.sd.load_diffusion_model_state_dict`
(ComfyUI's detection and model_base); conditioning and extra inputs (pose, audio, reference, motion latents) are
shaped as ComfyUI's nodes make them. MoGA: MoGAApply's defaults (random balanced groups, union with the local
branches) except ``start_percent`` 0 and ``dense_if_slower`` off, so every step of the timed run is sparse — the
row's speed-up is the sparse step against the dense one; the run summary (what ran sparse, what stayed dense and
why) is in each row. Timing: CUDA events around a ``--steps``-step sampler run, median of ``--repeats`` after one
warm-up run; per step = run / steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PACK_ROOT)
sys.path.insert(0, os.path.join(PACK_ROOT, "tests", "host"))
sys.path.insert(0, os.path.join(PACK_ROOT, "bench"))

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _load(sd, tm):
    return tm.load(sd, dtype=torch.bfloat16 if CUDA else torch.float32)


def _clip_vision(seed):
    class ClipVisionOutput:  # what CLIPVisionEncode gives Wan i2v models: the penultimate hidden states
        penultimate_hidden_states = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(seed))
    return ClipVisionOutput()


def wan_animate(tiny: bool):
    """Wan 2.2 Animate at Wan's width (12 heads of 128 on the GPU), 5 blocks (one face adapter block), 81 frames at
    832 x 480 with its i2v image, mask and pose latents: 21 x 30 x 52 = 32,760 video tokens."""
    import tiny_models as tm

    dim, ffn = (256, 512) if tiny else (1536, 4096)
    t, h, w = (5, 16, 16) if tiny else (21, 60, 104)
    model = _load(tm.wan_animate_state_dict(dim=dim, ffn=ffn), tm)
    gen = torch.Generator().manual_seed(7)
    image = torch.randn(1, 16, t, h, w, generator=gen) * 0.2
    mask = torch.ones(1, 1, t, h, w)
    mask[:, :, 0] = 0.0
    pose = torch.randn(1, 16, t - 1, h, w, generator=gen) * 0.2
    extra = dict(concat_latent_image=image, concat_mask=mask, clip_vision_output=_clip_vision(4),
                 pose_video_latent=pose)
    latent = {"samples": torch.zeros(1, 16, t, h, w)}
    return model, tm.wan_conditioning(seed=1, **extra), tm.wan_conditioning(seed=2, **extra), latent, 5.0


def wan_s2v(tiny: bool):
    """Wan 2.2 S2V at Wan's width, 2 blocks, 32,760 video tokens plus the reference image's and FramePack's motion
    tokens (a global suffix), with wav2vec-shaped audio features."""
    import tiny_models as tm

    dim, ffn = (256, 512) if tiny else (1536, 4096)
    t, h, w = (5, 16, 16) if tiny else (21, 60, 104)
    model = _load(tm.wan_s2v_state_dict(dim=dim, ffn=ffn), tm)
    gen = torch.Generator().manual_seed(8)
    audio = torch.randn(1, 25, 1024, 4 * t, generator=gen) * 0.1
    ref = [torch.randn(1, 16, 1, h, w, generator=gen) * 0.2]
    motion = torch.randn(1, 16, 19, h, w, generator=gen) * 0.2
    extra = dict(audio_embed=audio, reference_latents=ref, reference_motion=motion)
    neg = dict(extra, audio_embed=audio * 0.0)
    latent = {"samples": torch.zeros(1, 16, t, h, w)}
    return model, tm.wan_conditioning(seed=1, **extra), tm.wan_conditioning(seed=2, **neg), latent, 5.0


def _kandinsky5(tiny: bool, model_dim: int, ff_dim: int):
    import tiny_kandinsky5 as tk
    import tiny_models as tm

    t, h, w = (5, 16, 16) if tiny else (21, 60, 104)
    config = dict(tk.LITE) if tiny else dict(model_dim=model_dim, ff_dim=ff_dim, time_dim=512, num_text_blocks=1,
                                              num_visual_blocks=2)
    model = _load(tk.kandinsky5_state_dict(**config), tm)
    return (model, tk.kandinsky5_conditioning(seed=1), tk.kandinsky5_conditioning(seed=2),
            tk.video_latent(frames=t, height=h, width=w), 5.0)


def kandinsky5_lite(tiny: bool):
    """Kandinsky 5 Lite video's width (1792 = 28 heads of 64, as ComfyUI detects it), 2 visual blocks and 1 text
    block, 21 x 60 x 104 latent (HunyuanVideo's VAE, patch 1x2x2): 32,760 video tokens."""
    return _kandinsky5(tiny, 1792, 4096)


def kandinsky5_pro(tiny: bool):
    """Kandinsky 5 Pro video's width (4096 = 32 heads of 128), otherwise as the Lite row."""
    return _kandinsky5(tiny, 4096, 4096)


def ltx2(tiny: bool):
    """LTX-2's attention widths (video 32 heads of 128, audio 32 of 64), 2 blocks, small caption connectors; a
    1280 x 704, 297-frame video latent (LTX's VAE: 32x space, 8x time, patch 1): 38 x 22 x 40 = 33,440 video tokens,
    with its 12-second audio latent beside it (the audio stream stays dense)."""
    import tiny_ltx as tl

    sizes = {} if tiny else dict(video=(32, 128), audio=(32, 64))
    model = tl.load_ltxav(layers=2, dtype=torch.bfloat16 if CUDA else torch.float32, **sizes)
    width, height, length = (256, 128, 33) if tiny else (1280, 704, 297)
    pos, neg = tl.with_frame_rate(tl.ltx_conditioning(seed=1), tl.ltx_conditioning(seed=2))
    latent = tl.av_latent(tl.video_latent(width=width, height=height, length=length), tl.audio_latent(length=length))
    return model, pos, neg, latent, 3.0


FAMILIES = {"wan2.2-animate": wan_animate, "wan2.2-s2v": wan_s2v, "kandinsky5-lite": kandinsky5_lite,
            "kandinsky5-pro": kandinsky5_pro, "ltx2": ltx2}


def _parts(x):
    """The tensors of a sample: itself, or a NestedTensor's (LTX-2: video, audio)."""
    return [x] if torch.is_tensor(x) else list(x.unbind())


def _finite(x) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _parts(x))


def run_timed(fn, repeats: int):
    """(last output, median seconds) of ``fn`` over ``repeats`` runs after one warm-up, CUDA events on the GPU."""
    out = fn()
    times = []
    for _ in range(repeats):
        if CUDA:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", choices=("gpu", "tiny"), default="gpu" if CUDA else "tiny",
                   help="tiny: the tests' sizes (a CPU check of this script)")
    args = p.parse_args()
    from e2e import init_comfyui

    mods = init_comfyui(os.environ["COMFYUI_PATH"])
    patcher, wiring = mods["nodes.patcher"], mods["nodes.wiring"]
    import nodes

    tiny = args.profile == "tiny"
    results = []
    for name in args.families.split(","):
        if name not in FAMILIES:
            raise SystemExit(f"unknown family {name!r}: expected one of {', '.join(FAMILIES)}")
        row = {"family": name, "device": torch.cuda.get_device_name(0) if CUDA else "cpu", "torch": torch.__version__,
               "steps": args.steps, "repeats": args.repeats, "profile": args.profile}
        try:
            t0 = time.time()
            model, pos, neg, latent, cfg = FAMILIES[name](tiny)
            row["build_s"] = time.time() - t0
            adapter = mods["nodes.patcher"].adapter_for(model)
            row["adapter"] = type(adapter).__name__
            row["blocks"] = adapter.num_blocks
            row["model_class"] = type(model.model.diffusion_model).__name__
            samples = latent["samples"]
            video = samples if torch.is_tensor(samples) else samples.unbind()[0]  # LTX-2: a NestedTensor (video, audio)
            grid = adapter.grid(tuple(video.shape), {})
            row["video_grid"] = list(grid)
            row["video_tokens"] = grid[0] * grid[1] * grid[2]

            def sample(m):
                return nodes.common_ksampler(m, 0, args.steps, cfg, "euler", "simple", pos, neg, latent)[0]["samples"]

            dense_out, dense_s = run_timed(lambda: sample(model), args.repeats)
            row["dense_finite"] = _finite(dense_out)
            clone = model.clone()
            # the tiny profile is below the node's min_tokens: it checks the script, sparse at any length
            options = patcher.PatchOptions(start_percent=0.0, dense_if_slower=False,
                                           **({"min_tokens": 0} if tiny else {}))
            holder = patcher.install(clone, None, options)
            moga_out, moga_s = run_timed(lambda: sample(clone), args.repeats)
            stats = holder.last_run_stats
            row.update(dense_step_s=dense_s / args.steps, moga_step_s=moga_s / args.steps,
                       speedup=dense_s / moga_s, moga_finite=_finite(moga_out),
                       # of the video latent (LTX-2's audio latent is the second part)
                       rel_l2_to_dense=float((_parts(moga_out)[0].float() - _parts(dense_out)[0].float()).norm()
                                             / _parts(dense_out)[0].float().norm().clamp_min(1e-12)),
                       sparse_calls=sum(stats["sparse_calls"].values()), dense_calls=dict(stats["dense"]),
                       forwards=stats["forwards"], density=stats["density_sum"] / max(sum(stats["sparse_calls"].values()), 1),
                       summary=patcher.summarize_run(stats), min_tokens=options.min_tokens,
                       latent_shape=list(video.shape))
            del clone, holder
        except Exception as exc:  # a family that fails is reported with its error; the others still run
            import traceback

            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()[-3000:]
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
        results.append(row)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        model = None
        if CUDA:
            torch.cuda.empty_cache()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
