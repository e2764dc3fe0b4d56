"""Quality study: what MoGA costs against dense attention, and what training the router buys.

A small real ComfyUI ``WanModel`` is trained here on a synthetic multi-shot latent-video task (bench/quality_data.py)
where cross-shot identity matters; then every mode of the pack is measured against dense attention with the same
prompts and seeds: MoGA union / mean with k-means routers, union with router-only distillation
(moga_core.distill), a paper-style MoGA fine-tune (routers + DiT, balancing loss α = 0.1, combine "mean", local
branches on), local branches only, random groups, and an SVG2-style per-head k-means baseline.

    # the GPU run (one H100, about 8 minutes); writes quality.json, QUALITY.md, checkpoints and a log under --out
    COMFYUI_PATH=.comfy python bench/quality.py --device cuda --all --out "$OUT"      (or: bash bench/quality_gpu.sh)
    # the study at length (preset `long`: 96 frames, 36,864 tokens, every training-free mode at matched densities
    # 0.15 / 0.25 / 0.35 against the SVG2-style baseline and random groups; ~12 minutes on one H200)
    bash bench/quality_gpu.sh --preset long            (its CI slice: --preset long-tiny --device cpu, seconds)
    # the same pipeline on a tiny slice, on CPU (what tests/host/test_quality_slice.py runs)
    COMFYUI_PATH=/path/to/ComfyUI python bench/quality.py --device cpu --tiny --all --out /tmp/q
    # docs/QUALITY.md from a results file (no hand-editing)
    python bench/quality.py --write-doc quality.json [--doc docs/QUALITY.md]

Needs a ComfyUI tree at $COMFYUI_PATH (only comfy/ and its import chain; bench/prepare_gpu_carry.sh copies it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace

import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(BENCH)
for _p in (BENCH, PACK_ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from moga_core import MogaConfig  # noqa: E402
from moga_core.distill import distill_routers  # noqa: E402
from moga_core.routers import RouterSet  # noqa: E402
from quality_data import SyntheticMultiShot, TaskSpec  # noqa: E402
from quality_metrics import (GaussianBaseline, adherence, fidelity, identity_score,  # noqa: E402
                             subject_instances, train_probe)
from quality_model import (AttentionController, AttentionMode, ModelSpec, TrainConfig, build_model,  # noqa: E402
                           capture, clone_routers, copy_model, fit_routers, layout_for, load_checkpoint, load_comfy,
                           noisy, param_count, predict, predict_mode, pure_torch_rope, sample, save_checkpoint,
                           soften_router, train)
from quality_tune import tune  # noqa: E402

SEED_CALIB, SEED_EVAL, SEED_PROBE = 9_100_000, 9_200_000, 9_300_000
FORMAT = 1


@dataclass
class StudyConfig:
    name: str
    task: TaskSpec
    model: ModelSpec
    dense: TrainConfig
    finetune: TrainConfig
    num_groups: int = 5
    window: tuple[int, int] = (2, 2)
    temporal_group: int = 4
    neighbor_frames: int = 1
    distill_steps: int = 300
    calib_batches: int = 2
    calib_batch: int = 2
    calib_ts: tuple[float, ...] = (0.8, 0.5, 0.2)
    eval_batches: int = 4
    eval_batch: int = 4
    sample_steps: int = 20
    shift: float = 2.0
    loss_ts: tuple[float, ...] = (0.2, 0.5, 0.8)
    probe_batches: int = 4
    probe_batch: int = 8
    probe_steps: int = 1500
    svg2_q_clusters: int = 32
    svg2_k_clusters: int = 128
    svg2_top_p: float = 0.9
    svg2_iters: int = 3
    deadline: float | None = None  # seconds from the start: rows that would end later are skipped (GPU call limit)
    seed: int = 0
    # --- the study at length (matched densities); empty targets = the original row set (ROWS)
    targets: tuple[float, ...] = ()  # densities every training-free mode is tuned to (quality_tune)
    matched_modes: tuple[str, ...] = ("union_auto", "union_auto_g2", "union_calibrated", "random_groups", "svg2")
    capacity: float | None = 1.25  # routed modes' capacity bound (the pack's default, nodes/options.py)
    tune_capacities: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0)  # refine M's density step with the bound ((): off)
    tune_max_groups: int = 64
    tune_auto_t: float | None = None  # calibration noise level the auto routers are tuned at (None: every one)
    dense_steps: int = 0  # sampling steps run dense before a training-free row's mode (the node's start_percent)
    far_shots: int = 2  # identity_far: pairs at least this many shots apart (and identity_span's minimum)
    # teacher-forced identity (identity_tf): noise levels t at which each row's one-step estimate of the clean video,
    # x̂0 = x_t − t·v̂, is read at the subjects' true pixels. It needs no generated subject (a small model's samples
    # may show few: the sampled identity then rests on a handful of pairs); at high t a shot's own pixels carry little
    # of its subject's colour, so agreeing across shots takes attention to the other shots. () = off.
    identity_ts: tuple[float, ...] = ()
    # a local-branches-only row (window + frame, no groups) among the matched rows: the control that says how much of
    # each metric long-range attention carries
    local_control: bool = False
    # ComfyUI core's own sparse attention (comfy-kitchen's Sol-Attn) as rows of a matched study, at fixed settings:
    # (tau, top-k share) pairs, top-k > 0 meaning the top-k selection (tau ignored); each row reports its density
    sol_rows: tuple[tuple[float, float], ...] = ()
    train_task: TaskSpec | None = None  # dense training clips (None: the evaluation task); same world, frame size
    dense_long: TrainConfig | None = None  # a second dense phase on the evaluation task (full length)

    @property
    def matched(self) -> bool:
        return bool(self.targets)

    def moga(self, combine: str, num_groups: int | None = None) -> MogaConfig:
        return MogaConfig(num_groups=num_groups or self.num_groups, window=self.window,
                          temporal_group=self.temporal_group, neighbor_frames=self.neighbor_frames,
                          frame_branch=True, combine=combine)

    def to_dict(self) -> dict:
        return asdict(self)


def preset(name: str) -> StudyConfig:
    if name == "full":  # one H100: ~4.2 min dense, 1.5 min fine-tune, ~1.5 min calibration/distillation/eval
        return StudyConfig(
            name="full", task=TaskSpec(), model=ModelSpec(), deadline=550,
            dense=TrainConfig(seconds=240, batch=8, lr=1e-3, warmup=200, shift=2.0, log_every=200),
            finetune=TrainConfig(seconds=90, batch=8, lr=2e-4, router_lr=1e-3, warmup=50, shift=2.0, alpha=0.1,
                                 weight_decay=0.0, log_every=100, seed=1))
    if name == "small":  # CPU sanity check of the learning problem (minutes on 2 cores)
        task = TaskSpec(frames=12, height=12, width=16, min_shots=3, max_shots=4, min_shot_frames=3,
                        num_subjects=6, num_backgrounds=6, cast=3)
        return StudyConfig(
            name="small", task=task, model=ModelSpec(dim=128, heads=2, layers=4, ffn=256),
            dense=TrainConfig(seconds=360, batch=4, lr=1e-3, warmup=100, shift=1.5, log_every=50),
            finetune=TrainConfig(seconds=60, batch=4, lr=2e-4, router_lr=1e-3, warmup=20, shift=1.5, alpha=0.1,
                                 weight_decay=0.0, log_every=25, seed=1),
            num_groups=4, temporal_group=3, distill_steps=100, calib_batches=1, eval_batches=3, eval_batch=4,
            sample_steps=12, shift=1.5, probe_batches=2, probe_steps=800, svg2_q_clusters=16, svg2_k_clusters=48)
    if name == "tiny":  # CI slice: every row, real WanModel, seconds on a 2-core CPU
        task = TaskSpec(frames=6, height=12, width=16, min_shots=2, max_shots=3, min_shot_frames=2, num_subjects=4,
                        num_backgrounds=4, cast=2, text_dim=32)
        return StudyConfig(
            name="tiny", task=task, model=ModelSpec(dim=64, heads=1, layers=2, ffn=128, freq_dim=64, text_dim=32),
            dense=TrainConfig(steps=12, batch=2, lr=2e-3, warmup=3, shift=1.0, log_every=6, layout_pool=4),
            finetune=TrainConfig(steps=4, batch=2, lr=2e-4, router_lr=1e-3, warmup=1, shift=1.0, alpha=0.1,
                                 log_every=4, layout_pool=4, seed=1),
            num_groups=3, temporal_group=2, distill_steps=10, calib_batches=1, calib_batch=2, calib_ts=(0.7, 0.3),
            eval_batches=2, eval_batch=2, sample_steps=3, shift=1.0, loss_ts=(0.5,), probe_batches=2, probe_batch=4,
            probe_steps=300, svg2_q_clusters=4, svg2_k_clusters=8, svg2_iters=2)
    if name == "long":
        # the study at length (issue 12): 96 latent frames of 32×48 latent pixels (36,864 tokens), 6–8 shots, and a
        # larger model than `full` (dim 384, 6 heads of 64, 6 blocks, FFN 1024: 13.2 M parameters vs 3.8 M).
        # Estimate (forward FLOPs per token and block = 2·(6d² + 2·d·FFN) + 4·N·d; training = 3× forward): `full`
        # trained at 100 ms/step (batch 8 × 9,216 tokens, 4 blocks of d 256: 9.5 TFLOP/step -> ~95 TFLOP/s
        # effective on the H100, bench/results/quality/run1); the H200 has the H100's compute, so the same rate:
        # - dense training on 96-frame videos would cost 4.0e13 FLOPs per video-step (~0.42 s): ~570 video-steps in
        #   4 minutes, too few. So phase 1 trains on 24-frame clips of the same frame size and shot statistics
        #   (2.9e12 per video-step, ~0.25 s per batch of 8: ~700 steps in 180 s), phase 2 adapts the model to the
        #   full length (60 s, batch 2, ~0.85 s/step: ~70 steps): trained short, run long, as video models are;
        # - the MoGA fine-tune runs at full length (mean mode, density ~0.3; 60 s budget);
        # - evaluation: a 96-frame forward is 1.33e13 FLOPs (~0.1 s at ~130 TFLOP/s inference); 6 videos × 16
        #   steps (+ 2 teacher-forced noise levels, dense and mode) ≈ 12 s a row for dense, ~16 s for the routed
        #   rows (routing with the capacity bound: M rounds per block and video), ~35 s for SVG2 (masked attention
        #   over query chunks + per-head k-means); dense + the fine-tune + 5 modes × 3 densities = 17 rows
        #   ≈ 12 + 16 + 12 × 16 + 3 × 35 ≈ 325 s; calibration, tuning and probe ≈ 40 s.
        # Total ≈ 180 + 60 + 60 + 40 + 325 ≈ 665 s, ~11.5 min with start-up (one H200; `full` on the H100: ~8 min).
        # A call limit of 10 minutes: run it in two calls (bench/quality_gpu.sh says how); the second ≈ 7.5 min.
        task = TaskSpec(frames=96, height=32, width=48, min_shots=6, max_shots=8, min_shot_frames=8)
        train_task = TaskSpec(frames=24, height=32, width=48, min_shots=3, max_shots=6, min_shot_frames=3)
        return StudyConfig(
            name="long", task=task, train_task=train_task,
            model=ModelSpec(dim=384, heads=6, layers=6, ffn=1024, freq_dim=256),
            dense=TrainConfig(seconds=180, batch=8, lr=8e-4, warmup=150, shift=2.0, log_every=100),
            dense_long=TrainConfig(seconds=60, batch=2, lr=2e-4, warmup=10, shift=2.0, log_every=20, seed=2,
                                   layout_pool=16),
            finetune=TrainConfig(seconds=60, batch=2, lr=2e-4, router_lr=1e-3, warmup=10, shift=2.0, alpha=0.1,
                                 weight_decay=0.0, log_every=20, seed=1, layout_pool=16),
            num_groups=8, temporal_group=4, neighbor_frames=1, calib_batches=2, calib_batch=2,
            # auto routers are tuned at the noise level where sampling fits them: the last dense step (index 2 of
            # 16, shift 2) starts at t = shift_t(1 − 2/16) = 0.933 (calibration_t checks it)
            calib_ts=(0.933, 0.6, 0.3), eval_batches=2, eval_batch=3, sample_steps=16, shift=2.0,
            loss_ts=(0.3, 0.7), probe_batches=2, probe_batch=4, probe_steps=1500, targets=(0.15, 0.25, 0.35),
            dense_steps=3, far_shots=4, tune_auto_t=0.933, distill_steps=0, identity_ts=(0.9, 0.7),
            local_control=True, sol_rows=((1.0, 0.0), (1.3, 0.0), (2.0, 0.0), (0.0, 0.1), (0.0, 0.2)))
    if name == "long-tiny":  # CI slice of `long`: the same pipeline (short-clip training, tuning, every row), tiny
        task = TaskSpec(frames=12, height=8, width=16, min_shots=6, max_shots=6, min_shot_frames=2, num_subjects=4,
                        num_backgrounds=4, cast=2, text_dim=32)
        train_task = TaskSpec(frames=6, height=8, width=16, min_shots=2, max_shots=3, min_shot_frames=2,
                              num_subjects=4, num_backgrounds=4, cast=2, text_dim=32)
        return StudyConfig(
            name="long-tiny", task=task, train_task=train_task,
            model=ModelSpec(dim=64, heads=2, layers=2, ffn=128, freq_dim=64, text_dim=32),
            dense=TrainConfig(steps=8, batch=2, lr=2e-3, warmup=2, shift=1.0, log_every=8, layout_pool=4),
            dense_long=TrainConfig(steps=3, batch=2, lr=5e-4, warmup=1, shift=1.0, log_every=3, layout_pool=2,
                                   seed=2),
            finetune=TrainConfig(steps=3, batch=2, lr=2e-4, router_lr=1e-3, warmup=1, shift=1.0, alpha=0.1,
                                 log_every=3, layout_pool=2, seed=1),
            num_groups=4, temporal_group=2, distill_steps=0, calib_batches=1, calib_batch=2, calib_ts=(0.75, 0.3),
            eval_batches=1, eval_batch=3, sample_steps=4, shift=1.0, loss_ts=(0.5,), probe_batches=2, probe_batch=3,
            probe_steps=200, svg2_q_clusters=4, svg2_k_clusters=8, svg2_iters=2, targets=(0.15, 0.25, 0.35),
            dense_steps=2, far_shots=3, tune_auto_t=0.75, tune_max_groups=32, identity_ts=(0.9,),
            local_control=True, sol_rows=((1.0, 0.0), (1.3, 0.0), (2.0, 0.0), (0.0, 0.1), (0.0, 0.2)))
    raise ValueError(f"unknown preset {name!r}")


PRESETS = ("full", "small", "tiny", "long", "long-tiny")


def auto_fit_t(cfg: StudyConfig) -> float | None:
    """The noise level t at which sampling fits the auto routers: the start of the last dense step."""
    if cfg.dense_steps < 1:
        return None
    t = 1.0 - (cfg.dense_steps - 1) / cfg.sample_steps
    return cfg.shift * t / (1 + (cfg.shift - 1) * t)

MATCHED_LABELS = {
    "union_auto": "MoGA union, auto routers",
    "union_auto_g2": "MoGA union, auto routers + second group",
    "union_calibrated": "MoGA union, routers calibrated on other prompts",
    "random_groups": "MoGA union, random groups",
    "svg2": "SVG2-style per-head k-means, top-p",
}


def matched_key(mode: str, target: float) -> str:
    return f"{mode}@{target:.2f}"


def matched_rows(cfg: StudyConfig, tuned: dict, routers_cal: dict, routers_ft: list) -> list[tuple]:
    """The rows of a matched-density study: dense; the MoGA fine-tune (mean mode, its own routers and M) as the
    trained reference; every mode of ``cfg.matched_modes`` at every target density with the knob
    `quality_tune.tune` chose (in that order: a deadline skips the last target's rows first). Each row: (key,
    label, weights, AttentionMode, dense warm-up steps, extra JSON fields)."""
    rows = [("dense", "Dense attention", "dense", AttentionMode("dense"), 0, {}),
            ("moga_finetuned", "MoGA mean, fine-tuned model + routers", "finetuned",
             AttentionMode("moga", cfg.moga("mean"), routers=routers_ft), 0,
             {"mode": "moga_finetuned", "params": {"num_groups": cfg.num_groups}})]
    for target in cfg.targets:
        for mode in cfg.matched_modes:
            t = tuned[(mode, float(target))]
            extra = {"mode": mode, "target_density": float(target), "tuned_density": t.density, "params": t.params}
            if mode == "svg2":
                am = AttentionMode("svg2", seed=cfg.seed, svg2_q_clusters=cfg.svg2_q_clusters,
                                   svg2_k_clusters=cfg.svg2_k_clusters, svg2_top_p=t.params["svg2_top_p"],
                                   svg2_iters=cfg.svg2_iters)
            else:
                mcfg = replace(cfg.moga("union", num_groups=t.params["num_groups"]), capacity=t.params["capacity"],
                               second_group=t.params["second_group"])
                if mode == "random_groups":
                    am = AttentionMode("random", mcfg, seed=cfg.seed)
                elif mode == "union_calibrated":
                    am = AttentionMode("moga", mcfg, routers=routers_cal[t.params["num_groups"]])
                else:
                    am = AttentionMode("moga", mcfg, auto=True)
            rows.append((matched_key(mode, target), f"{MATCHED_LABELS[mode]} @ {target:.2f}", "dense", am,
                         cfg.dense_steps, extra))
    for tau, topk in cfg.sol_rows:  # core's alternative, at the settings a user picks (its density reported)
        key, knob = (f"sol_topk{topk:g}", f"top-k {topk:g}") if topk else (f"sol_tau{tau:g}", f"tau {tau:g}")
        rows.append((key, f"Sol-Attn (ComfyUI core's Model Sparse Attention), {knob}", "dense",
                     AttentionMode("sol", sol_tau=float(tau), sol_topk=float(topk)), cfg.dense_steps,
                     {"mode": "sol", "params": {"sol_tau": float(tau), "sol_topk": float(topk)}}))
    if cfg.local_control:  # after every target's rows: a deadline drops the control first
        rows.append(("local_only", "Local branches only (window + frame), control", "dense",
                     AttentionMode("local", cfg.moga("union")), cfg.dense_steps, {"mode": "local_only"}))
    return rows


ROWS = [
    # key, label, which weights, what a user would run it on
    ("dense", "Dense attention", "dense"),
    ("union_kmeans", "MoGA union, k-means routers", "dense"),
    ("mean_kmeans", "MoGA mean, k-means routers", "dense"),
    ("union_distilled", "MoGA union, distilled routers", "dense"),
    ("moga_finetuned", "MoGA mean, fine-tuned model + routers", "finetuned"),
    ("local_only", "Local branches only (window + frame)", "dense"),
    ("random_groups", "MoGA union, random groups", "dense"),
    ("svg2", "SVG2-style per-head k-means, top-p", "dense"),
]


# ---------------------------------------------------------------------------------------------------------------
# the pipeline


class Logger:
    def __init__(self, path: str | None = None, quiet: bool = False):
        self.lines: list[str] = []
        self.path = path
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f}s] {msg}"
        self.lines.append(line)
        if not self.quiet:
            print(line, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")


def _mean(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else float("nan")


def evaluate_row(model, ctrl, mode, cfg: StudyConfig, task, eval_set, probe, autocast, dense_samples, log,
                 dense_steps: int = 0) -> dict:
    """Teacher-forced flow loss + per-layer attention error, then sampling + sample metrics, for one row.

    ``dense_steps``: sampling steps run dense before the mode (the node's dense warm-up); an auto mode fits its
    routers there (and, teacher-forced, on a dense forward of the same input: `predict_mode`)."""
    device = eval_set[0][0].latents.device
    ctrl.set(mode)
    ctrl.reset_records()
    ctrl.compare = True
    losses = []
    with torch.no_grad():
        for bi, (batch, noise) in enumerate(eval_set):
            ctrl.set(layout=layout_for(task.spec, batch.shots))
            for ti, t in enumerate(cfg.loss_ts):
                xt, eps = noisy(batch.latents, t, SEED_EVAL + 100 * bi + ti)
                tt = torch.full((xt.shape[0],), float(t), device=device)
                pred = predict_mode(model, ctrl, xt, tt, batch.context, autocast)
                losses.append(float((pred - (eps - batch.latents)).pow(2).mean()))
    rel_err = [_mean(ctrl.rel_err.get(i, [])) for i in range(len(model.blocks))]
    coverage = _mean([c for i in range(len(model.blocks)) for c in ctrl.coverage.get(i, [])])
    ctrl.compare = False
    ctrl.reset_records()
    identity_tf = teacher_forced_identity(model, ctrl, cfg, task, eval_set, autocast)
    ctrl.reset_records()
    samples, step_times = [], []
    for bi, (batch, noise) in enumerate(eval_set):
        ctrl.set(layout=layout_for(task.spec, batch.shots))
        samples.append(sample(model, ctrl, batch.context, noise, cfg.sample_steps, cfg.shift, autocast, step_times,
                              dense_steps=dense_steps))
    compute = _mean([d for i in range(len(model.blocks)) for d in ctrl.density.get(i, [])])
    density_sampling = _mean([d for i in range(len(model.blocks)) for d in ctrl.keyset.get(i, [])])
    ctrl.reset_records()
    timed = sorted(step_times[1:] if len(step_times) > 1 else step_times)  # the first step warms caches
    row = {"density": coverage, "density_sampling": density_sampling, "compute": compute, "layer_rel_err": rel_err,
           "rel_err": _mean(rel_err),
           "flow_loss": _mean(losses), "ms_per_step": 1000 * timed[len(timed) // 2]}
    insts, missing, adh = [], 0, []
    fid = {"psnr": [], "cosine": []}
    for bi, ((batch, _), x) in enumerate(zip(eval_set, samples)):
        pred = probe.classify(x)
        found, miss = subject_instances(x, pred, batch, task, video_offset=1000 * bi)
        insts += found
        missing += miss
        adh.append(adherence(pred, batch, task))
        if dense_samples is not None:
            f = fidelity(x, dense_samples[bi])
            fid["psnr"].append(f["psnr"])
            fid["cosine"].append(f["cosine"])
    row.update(identity_score(insts, missing, far=cfg.far_shots))
    row.update(identity_tf)
    row.update(_merge_adherence(adh))
    if dense_samples is not None:
        row["psnr"] = _mean(fid["psnr"]) if all(math.isfinite(p) for p in fid["psnr"]) else float("inf")
        row["cosine"] = _mean(fid["cosine"])
    return row, samples


@torch.no_grad()
def teacher_forced_identity(model, ctrl, cfg: StudyConfig, task, eval_set, autocast) -> dict:
    """Cross-shot identity of the one-step clean estimate x̂0 = x_t − t·v̂ at each t of ``cfg.identity_ts``, read at
    the subjects' true pixels (``Batch.labels``), with the controller's current mode (an auto mode fits its routers
    on a dense forward of the same input). Returns ``identity_tf``, ``identity_tf_far``, ``identity_tf_pairs``,
    ``identity_tf_far_pairs`` (the first t; every t's score under ``identity_tf_by_t``); {} when off."""
    if not cfg.identity_ts:
        return {}
    device = eval_set[0][0].latents.device
    by_t = {}
    for ti, t in enumerate(cfg.identity_ts):
        insts, missing = [], 0
        for bi, (batch, _) in enumerate(eval_set):
            ctrl.set(layout=layout_for(task.spec, batch.shots))
            # noise seeds apart from the flow loss's (SEED_EVAL + 100·bi + ti): a different draw at another t
            xt, _ = noisy(batch.latents, t, SEED_EVAL + 50 + 100 * bi + ti)
            tt = torch.full((xt.shape[0],), float(t), device=device)
            x0_hat = xt - t * predict_mode(model, ctrl, xt, tt, batch.context, autocast).float()
            found, miss = subject_instances(x0_hat, batch.labels, batch, task, video_offset=1000 * bi)
            insts += found
            missing += miss
        by_t[f"{t:g}"] = identity_score(insts, missing, far=cfg.far_shots)
    first = by_t[f"{cfg.identity_ts[0]:g}"]
    return {"identity_tf": first["identity"], "identity_tf_far": first["identity_far"],
            "identity_tf_pairs": first["identity_pairs"], "identity_tf_far_pairs": first["identity_far_pairs"],
            "identity_tf_t": cfg.identity_ts[0],
            "identity_tf_by_t": {k: {"identity": v["identity"], "identity_far": v["identity_far"],
                                     "pairs": v["identity_pairs"]} for k, v in by_t.items()}}


def _identity_of(samples_and_batches, probe, task, far: int = 2) -> dict:
    insts, missing = [], 0
    for bi, (x, batch) in enumerate(samples_and_batches):
        found, miss = subject_instances(x, probe.classify(x), batch, task, video_offset=1000 * bi)
        insts += found
        missing += miss
    return identity_score(insts, missing, far=far)


def _merge_adherence(parts):
    n = sum(p["decisions"] for p in parts)
    sides = sum(p["side_count"] for p in parts)
    return {"adherence": sum(p["score"] * p["decisions"] for p in parts) / max(1, n),
            "adherence_background": _mean([p["background"] for p in parts]),
            "adherence_subjects": _mean([p["subjects"] for p in parts]),
            "adherence_side": (sum(p["side"] * p["side_count"] for p in parts if p["side_count"]) / sides
                               if sides else float("nan"))}


def run_study(cfg: StudyConfig, out_dir: str, device: str = "cpu", dense_checkpoint: str | None = None,
              resume_seconds: float = 0.0,
              log: Logger | None = None, comfyui_path: str | None = None, stop_after: str | None = None) -> dict:
    """The whole study; returns the results dict (also written to ``out_dir/quality.json`` with QUALITY.md).

    ``stop_after="dense"``: return once the dense checkpoint is written (a GPU call limit: the rest runs in a
    second call with ``dense_checkpoint``)."""
    os.makedirs(out_dir, exist_ok=True)
    log = log or Logger(os.path.join(out_dir, "quality.log"))
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = dev.type == "cuda"
    t_start = time.perf_counter()
    comfy = load_comfy(comfyui_path, cpu=dev.type == "cpu")
    torch.manual_seed(cfg.seed)
    task = SyntheticMultiShot(cfg.task, dev)
    timings: dict[str, float] = {}
    results: dict = {"format": FORMAT, "rows": [], "checks": {}, "training": {}, "reference": {}}

    def mark(name, t0):
        timings[name] = round(time.perf_counter() - t0, 2)

    with pure_torch_rope(comfy[2]):
        # 1. the dense model
        t0 = time.perf_counter()
        if dense_checkpoint:
            model, mspec, _ = load_checkpoint(dense_checkpoint, dev, comfy)
            if mspec != cfg.model:
                raise ValueError(f"checkpoint model {mspec} differs from the preset's {cfg.model}")
            log(f"dense model loaded from {dense_checkpoint}")
            results["training"]["dense"] = {"loaded": os.path.basename(dense_checkpoint)}
            prior = _prior_training(dense_checkpoint)
            if prior:  # a --stop-after dense call wrote it beside the checkpoint: keep what it trained
                results["training"].update(prior["training"])
                timings["dense_train_previous_call"] = prior["seconds"]
                log(f"  trained by an earlier call ({prior['seconds']} s): its training report is kept")
            if resume_seconds > 0:  # train on from the checkpoint (fresh optimizer state, a short warm-up)
                ctrl0 = AttentionController(model)
                rep = train(model, ctrl0, task, replace(cfg.dense, seconds=resume_seconds, steps=None), dev,
                            autocast, log=log)
                ctrl0.remove()
                results["training"]["dense"]["resumed"] = asdict(rep)
        else:
            model = build_model(cfg.model, cfg.seed, dev, comfy)
            train_task = SyntheticMultiShot(cfg.train_task, dev) if cfg.train_task is not None else task
            log(f"dense WanModel: {param_count(model) / 1e6:.2f} M parameters; training ({cfg.dense.seconds:.0f} s "
                f"budget)" if cfg.dense.steps is None else f"dense WanModel: training {cfg.dense.steps} steps")
            if cfg.train_task is not None:
                log(f"  on {cfg.train_task.frames}-frame clips (the evaluation runs {cfg.task.frames} frames)")
            ctrl0 = AttentionController(model)
            rep = train(model, ctrl0, train_task, cfg.dense, dev, autocast, log=log)
            results["training"]["dense"] = asdict(rep)
            if cfg.dense_long is not None:  # phase 2: the evaluation length
                log(f"dense phase 2 at {cfg.task.frames} frames" + (
                    f" ({cfg.dense_long.seconds:.0f} s budget)" if cfg.dense_long.steps is None
                    else f" ({cfg.dense_long.steps} steps)"))
                rep = train(model, ctrl0, task, cfg.dense_long, dev, autocast, log=log, seed_offset=2_000_000)
                results["training"]["dense_long"] = asdict(rep)
            ctrl0.remove()
        mark("dense_train", t0)
        ckpt = os.path.join(out_dir, "quality_dense.safetensors")
        size = save_checkpoint(model, cfg.model, ckpt, {"task": cfg.task.to_dict(), "study": cfg.name,
                                                       "dense_steps": results["training"]["dense"].get("steps")})
        results["training"]["dense_checkpoint_bytes"] = size
        if stop_after == "dense":
            timings["total"] = round(time.perf_counter() - t_start, 1)
            results["meta"] = _meta(cfg, dev, model, timings)
            _write_json(results, out_dir)
            log(f"stopped after the dense model: {ckpt}")
            return results
        ctrl = AttentionController(model)

        # 2. calibration capture -> k-means routers -> distilled routers
        t0 = time.perf_counter()
        calib = [task.batch(SEED_CALIB + i, cfg.calib_batch) for i in range(cfg.calib_batches)]
        captured = capture(model, ctrl, task, calib, cfg.calib_ts, autocast, seed=SEED_CALIB)
        routers_km = fit_routers(captured, cfg.num_groups, seed=cfg.seed)
        mark("calibrate", t0)
        tuned, routers_cal = {}, {}
        if cfg.matched:  # matched densities, on the calibration prompts
            t0 = time.perf_counter()
            auto_entries = None
            if cfg.tune_auto_t is not None:
                ti = min(range(len(cfg.calib_ts)), key=lambda j: abs(cfg.calib_ts[j] - cfg.tune_auto_t))
                auto_entries = [bi * len(cfg.calib_ts) + ti for bi in range(cfg.calib_batches)]
            svg2_base = AttentionMode("svg2", seed=cfg.seed, svg2_q_clusters=cfg.svg2_q_clusters,
                                      svg2_k_clusters=cfg.svg2_k_clusters, svg2_iters=cfg.svg2_iters)
            tuning = tune(captured, cfg.moga("union"), cfg.targets, cfg.matched_modes, capacity=cfg.capacity,
                          capacities=cfg.tune_capacities, max_groups=cfg.tune_max_groups, seed=cfg.seed, auto_entries=auto_entries, svg2=svg2_base,
                          log=log)
            results["tuning"] = [t.to_dict() for t in tuning]
            tuned = {(t.mode, t.target): t for t in tuning}
            # the calibrated routers (a router file) at every M the tuning chose
            need = sorted({t.params["num_groups"] for t in tuning if t.mode == "union_calibrated"})
            routers_cal = {m: fit_routers(captured, m, seed=cfg.seed) for m in need}
            mark("tune", t0)
        t0 = time.perf_counter()
        routers_dist, dist_reports = [], []
        union_cfg = cfg.moga("union")
        for i in (sorted(captured) if cfg.distill_steps > 0 else []):
            r, rep = distill_routers(captured[i], union_cfg, init=routers_km[i], steps=cfg.distill_steps,
                                     seed=cfg.seed + i)
            rep.pop("history", None)
            routers_dist.append(r.to(dev))
            dist_reports.append(rep)
            log(f"distilled block {i}: union error on held-out queries {rep['init_error']:.4f} -> "
                f"{rep['final_error']:.4f}, group density {rep['init_density']:.3f} -> {rep['final_density']:.3f}")
        results["training"]["distill"] = dist_reports
        mark("distill", t0)
        calib_x = {i: torch.cat([s["x"] for s in captured[i]]) for i in captured}
        del captured
        for name, routers, combine, source in (("routers_kmeans", routers_km, "union", "calibrated"),
                                               ("routers_distilled", routers_dist, "union", "calibrated")):
            if not routers:
                continue
            # RouterSet.save copies the weights to the CPU itself; r.cpu() would move the live modules off the GPU
            RouterSet({i: r for i, r in enumerate(routers)}, "wan", cfg.model.dim, cfg.model.layers, combine,
                      source, extra={"quality_study": name}).save(os.path.join(out_dir, f"{name}.safetensors"))
        routers_km = [r.to(dev) for r in routers_km]

        # 3. paper-style MoGA fine-tune: routers + DiT, combine "mean", balancing loss
        t0 = time.perf_counter()
        softened = [soften_router(r, calib_x[i]) for i, r in enumerate(routers_km)]
        del calib_x
        log("MoGA fine-tune (mean, routers + DiT, alpha = 0.1)" + (
            f" ({cfg.finetune.seconds:.0f} s budget)" if cfg.finetune.steps is None else f" {cfg.finetune.steps} steps"))
        for backend in ("auto", "loop"):  # "loop" = per-segment SDPA: autograd everywhere, if a varlen kernel balks
            model_ft = copy_model(model, cfg.model, dev, comfy)
            ctrl_ft = AttentionController(model_ft)
            routers_ft = clone_routers(softened, dev)
            ctrl_ft.set(AttentionMode("moga", replace(cfg.moga("mean"), backend=backend), routers=list(routers_ft)))
            try:
                rep = train(model_ft, ctrl_ft, task, cfg.finetune, dev, autocast, routers=routers_ft, log=log,
                            seed_offset=1_000_000)
                break
            except Exception as exc:
                if backend == "loop":
                    raise
                log(f"fine-tune with backend 'auto' failed ({type(exc).__name__}: {str(exc)[:200]}); "
                    "retrying with backend 'loop'")
                ctrl_ft.remove()
        results["training"]["finetune"] = asdict(rep)
        results["training"]["finetune"]["backend"] = backend
        mark("finetune", t0)
        ft_path = os.path.join(out_dir, "quality_moga_ft.safetensors")
        sd_extra = {f"blocks.{i}.self_attn.router.{k}": v for i, r in enumerate(routers_ft)
                    for k, v in (("weight", r.weight), ("bias", r.bias))}
        save_checkpoint(_WithExtra(model_ft, sd_extra), cfg.model, ft_path, {"study": cfg.name, "combine": "mean"})

        # 4. probe, evaluation set, references
        t0 = time.perf_counter()
        probe_data = [task.batch(SEED_PROBE + i, cfg.probe_batch) for i in range(cfg.probe_batches)]
        probe, probe_acc = train_probe(probe_data, task, cfg.probe_steps, dev, seed=cfg.seed)
        eval_set = []
        for i in range(cfg.eval_batches):
            batch = task.batch(SEED_EVAL + i, cfg.eval_batch)
            gen = torch.Generator(device=dev).manual_seed(SEED_EVAL + 7 * i)
            eval_set.append((batch, torch.randn(batch.latents.shape, generator=gen, device=dev)))
        gt_id = _identity_of([(b.latents, b) for b, _ in eval_set], probe, task, far=cfg.far_shots)
        gt_adh = _merge_adherence([adherence(probe.classify(b.latents), b, task) for b, _ in eval_set])
        baseline = GaussianBaseline(probe_data)
        trivial = []
        for bi, (batch, _) in enumerate(eval_set):
            for ti, t in enumerate(cfg.loss_ts):
                xt, eps = noisy(batch.latents, t, SEED_EVAL + 100 * bi + ti)
                tt = torch.full((xt.shape[0],), float(t), device=dev)
                trivial.append(float((baseline.predict(xt, tt) - (eps - batch.latents)).pow(2).mean()))
        results["reference"] = {"probe_pixel_accuracy": probe_acc, "ground_truth": {**gt_id, **gt_adh},
                                "trivial_flow_loss": _mean(trivial)}
        log(f"probe pixel accuracy {probe_acc:.3f}; ground truth identity {gt_id['identity']:.3f}, adherence "
            f"{gt_adh['adherence']:.3f}; trivial (per-channel Gaussian) flow loss {_mean(trivial):.4f}")
        mark("probe", t0)

        # 5. the rows
        t0 = time.perf_counter()
        svg2 = dict(svg2_q_clusters=cfg.svg2_q_clusters, svg2_k_clusters=cfg.svg2_k_clusters,
                    svg2_top_p=cfg.svg2_top_p, svg2_iters=cfg.svg2_iters)
        if cfg.matched:
            row_specs = matched_rows(cfg, tuned, routers_cal, list(routers_ft))
        else:
            row_specs = [(key, label, weights, None, 0, {}) for key, label, weights in ROWS]
        modes = {
            "dense": AttentionMode("dense"),
            "union_kmeans": AttentionMode("moga", cfg.moga("union"), routers=routers_km),
            "mean_kmeans": AttentionMode("moga", cfg.moga("mean"), routers=routers_km),
            "union_distilled": AttentionMode("moga", cfg.moga("union"), routers=routers_dist),
            "moga_finetuned": AttentionMode("moga", cfg.moga("mean"), routers=list(routers_ft)),
            "local_only": AttentionMode("local", cfg.moga("union")),
            "random_groups": AttentionMode("random", cfg.moga("union"), seed=cfg.seed),
            "svg2": AttentionMode("svg2", seed=cfg.seed, **svg2),
        }
        dense_samples = None
        slowest = 0.0
        for key, label, weights, spec_mode, warm, extra in row_specs:
            m, c = (model_ft, ctrl_ft) if weights == "finetuned" else (model, ctrl)
            entry = {"key": key, "label": label, "weights": weights, **extra}
            t_row = time.perf_counter()
            if key != "dense" and cfg.deadline and t_row - t_start + 1.5 * slowest > cfg.deadline:
                entry["error"] = f"skipped: the {cfg.deadline:.0f} s deadline would pass"
                log(f"row {key} skipped (deadline)")
                results["rows"].append(entry)
                continue
            try:
                row, samples = evaluate_row(m, c, spec_mode or modes[key], cfg, task, eval_set, probe, autocast,
                                            dense_samples if key != "dense" else None, log, dense_steps=warm)
                if key == "dense":
                    dense_samples = samples
                    row.update(psnr=float("inf"), cosine=1.0)
                entry.update(row)
            except Exception as exc:  # one broken row must not lose the others
                entry["error"] = f"{type(exc).__name__}: {exc}"
                log(f"row {key} FAILED: {entry['error']}\n{traceback.format_exc()}")
                if key == "dense":
                    raise
            entry["seconds"] = round(time.perf_counter() - t_row, 1)
            slowest = max(slowest, entry["seconds"])
            results["rows"].append(entry)
            _write_json(results, out_dir)  # partial results survive a killed run
            if "error" not in entry:
                log(f"row {key}: density {entry['density']:.3f} psnr {entry['psnr']:.2f} cos {entry['cosine']:.4f} "
                    f"attn err {entry['rel_err']:.3f} identity {entry['identity']:.3f} adherence "
                    f"{entry['adherence']:.3f} loss {entry['flow_loss']:.4f} {entry['ms_per_step']:.1f} ms/step")
        mark("evaluate", t0)

        # 6. checks: union mode with one group is dense attention
        t0 = time.perf_counter()
        batch, noise = eval_set[0]
        ctrl.set(AttentionMode("random", cfg.moga("union", num_groups=1)), layout=layout_for(task.spec, batch.shots))
        x1 = sample(model, ctrl, batch.context, noise, cfg.sample_steps, cfg.shift, autocast)
        ref = dense_samples[0]
        results["checks"]["union_m1_vs_dense_max_abs"] = float((x1 - ref).abs().max())
        results["checks"]["union_m1_vs_dense_rel"] = float((x1 - ref).abs().max() / ref.abs().max())
        # the PSNR of two samples that differ by kernel rounding only (bf16 on the GPU): the floor under which a
        # row's PSNR cannot be told from dense attention's
        results["checks"]["union_m1_vs_dense_psnr"] = fidelity(x1, ref[: x1.shape[0]])["psnr"]
        ctrl.set(AttentionMode("dense"))
        x2 = sample(model, ctrl, batch.context, noise, cfg.sample_steps, cfg.shift, autocast)
        results["checks"]["dense_repeat_max_abs"] = float((x2 - ref).abs().max())
        mark("checks", t0)

    timings["total"] = round(time.perf_counter() - t_start, 1)
    results["meta"] = _meta(cfg, dev, model, timings)
    _write_outputs(results, out_dir, log)
    return results


def _prior_training(dense_checkpoint: str) -> dict | None:
    """The dense training report of the call that wrote ``dense_checkpoint`` (``--stop-after dense``): the
    quality.json beside it, when that is a dense-only result for the same checkpoint. None otherwise."""
    path = os.path.join(os.path.dirname(os.path.abspath(dense_checkpoint)), "quality.json")
    if not os.path.exists(path) or os.path.basename(dense_checkpoint) != "quality_dense.safetensors":
        return None
    data = load_results(path)
    tr = data.get("training", {})
    if data.get("rows") or "steps" not in tr.get("dense", {}):
        return None
    keep = {k: tr[k] for k in ("dense", "dense_long", "dense_checkpoint_bytes") if k in tr}
    return {"training": keep, "seconds": (data.get("meta") or {}).get("timings_s", {}).get("dense_train")}


class _WithExtra(torch.nn.Module):
    """Saves a model's state dict plus extra tensors (MoGA checkpoint: router keys beside the model's)."""

    def __init__(self, model, extra):
        super().__init__()
        self.model = model
        self.extra = extra

    def state_dict(self, *args, **kwargs):
        sd = dict(self.model.state_dict())
        sd.update({k: v.detach() for k, v in self.extra.items()})
        return sd


def _meta(cfg: StudyConfig, dev, model, timings) -> dict:
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    return {
        "study": cfg.name, "config": cfg.to_dict(), "device": gpu or f"CPU ({platform.processor() or 'cpu'}, "
                                                                        f"{torch.get_num_threads()} threads)",
        "device_type": dev.type, "torch": torch.__version__, "python": platform.python_version(),
        "params": param_count(model), "timings_s": timings,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        import subprocess

        return subprocess.run(["git", "-C", PACK_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------------------------
# output: JSON, table, QUALITY.md


def _jsonable(obj):
    if isinstance(obj, float):
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        if math.isnan(obj):
            return None
        return obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _num(v):
    if v in ("inf", "-inf"):
        return float(v)
    return float("nan") if v is None else v


def load_results(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _write_json(results: dict, out_dir: str) -> dict:
    data = _jsonable(results)
    with open(os.path.join(out_dir, "quality.json"), "w") as f:
        json.dump(data, f, indent=1)
    return data


def _write_outputs(results: dict, out_dir: str, log) -> None:
    data = _write_json(results, out_dir)
    with open(os.path.join(out_dir, "QUALITY.md"), "w") as f:
        f.write(render_doc(data))
    log("results: " + os.path.join(out_dir, "quality.json"))
    print(compact_table(data), flush=True)


def _f(v, fmt):
    v = _num(v)
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, fmt)


COLUMNS = [
    ("density", "density", ".3f"), ("compute", "scores/N²", ".3f"), ("psnr", "PSNR dB", ".2f"),
    ("cosine", "cos", ".4f"), ("rel_err", "attn err", ".3f"), ("identity", "identity", ".3f"),
    ("adherence", "adherence", ".3f"), ("flow_loss", "flow loss", ".4f"), ("ms_per_step", "ms/step", ".1f"),
]


def compact_table(data: dict) -> str:
    head = f"{'mode':<40}" + "".join(f"{h:>11}" for _, h, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for row in data.get("rows", []):
        if row.get("error"):
            lines.append(f"{row['key']:<40} ERROR {row['error'][:80]}")
            continue
        lines.append(f"{row['key']:<40}" + "".join(f"{_f(row.get(k), fmt):>11}" for k, _, fmt in COLUMNS))
    ref = data.get("reference", {})
    gt = ref.get("ground_truth", {})
    if gt:
        lines.append(f"{'ground truth (data)':<40}" + " " * 55 + f"{_f(gt.get('identity'), '.3f'):>11}"
                     f"{_f(gt.get('adherence'), '.3f'):>11}{_f(ref.get('trivial_flow_loss'), '.4f'):>11}  <- trivial")
    lines.append("checks: " + ", ".join(f"{k} = {v:.3g}" for k, v in data.get("checks", {}).items()
                                        if isinstance(v, (int, float))))
    return "\n".join(lines)


DOC_COMMAND_GPU = "COMFYUI_PATH=/path/to/ComfyUI python bench/quality.py --device cuda --all --out quality_out"
DOC_COMMAND_DOC = "python bench/quality.py --write-doc quality.json --doc docs/QUALITY.md"
DOC_COMMAND_CPU = "COMFYUI_PATH=/path/to/ComfyUI python bench/quality.py --device cpu --tiny --all --out /tmp/q"

_LABELS = {key: label for key, label, _ in ROWS}


def render_doc(data: dict | None) -> str:
    """docs/QUALITY.md from a results dict (JSON form); ``None`` gives the page with its numbers not yet measured.
    A matched-density study (preset ``long``: ``targets`` in its config) gets `quality_doc.render`'s page."""
    measured = bool(data and data.get("rows"))
    meta = (data or {}).get("meta", {})
    cfg = meta.get("config") or _jsonable(preset("full").to_dict())
    task, model = cfg["task"], cfg["model"]
    tokens = (task["frames"] // model["patch"][0]) * (task["height"] // model["patch"][1]) * (
        task["width"] // model["patch"][2])
    if measured and cfg.get("targets"):
        import quality_doc

        return quality_doc.render(data, meta.get("params") or _model_spec(model).num_params, tokens)
    out = ["# Quality: what MoGA costs, and what training the router buys", ""]
    if measured:
        out.append(f"Measured on **{meta.get('device')}** ({meta.get('date')}, commit {meta.get('commit') or '?'}, "
                   f"torch {meta.get('torch')}, study preset `{meta.get('study')}`), one run, every row with the same "
                   f"prompts and seeds. Total wall time {meta.get('timings_s', {}).get('total', '?')} s.")
    else:
        out.append("**Status: not yet measured on a GPU.** The numbers below are placeholders; the command in "
                   "*Regenerate* writes this page, table and recommendation included, from one run.")
    out += ["", "No MoGA-trained weights are public and Wan/HunyuanVideo weights cannot be downloaded on the machines "
            "this pack is built on, so the study trains its own small video DiT — ComfyUI's real `WanModel` class "
            "(`comfy.ldm.wan.model`, real 3-D RoPE, real cross-attention) — on a synthetic multi-shot task where "
            "cross-shot identity matters, then runs every attention mode of the pack on it.", "",
            "## Setup", "",
            f"- **Task** (`bench/quality_data.py`, deterministic by seed): latent videos of {task['channels']} channels, "
            f"{task['frames']} latent frames of {task['height']}×{task['width']} latent pixels "
            f"({tokens} tokens after Wan's 1×2×2 patches), {task['min_shots']}–{task['max_shots']} shots. Each shot "
            f"has a background (texture, zoomed by the framing) and up to two subjects (left/right half) that move; "
            f"a cast of {task['cast']} subjects recurs across shots (the protagonist opens and closes the video and "
            "leaves in between). A subject's colour = class base (captioned) + a random **identity** drawn per video "
            "and shared by all its shots — no caption carries it, so generating shot k consistently means attending "
            "to the subject's other shots. Captions: 3 tokens per shot (background + framing, left subject + motion, "
            "right subject + motion), sums of fixed random embeddings; cross-attention is masked per shot.",
            f"- **Model**: `WanModel` t2v, dim {model['dim']}, {model['heads']} heads of {model['dim'] // model['heads']}, "
            f"{model['layers']} blocks, FFN {model['ffn']}"
            + f", {_model_spec(model).num_params / 1e6:.2f} M parameters "
            f"({_model_spec(model).num_params * 2 / 1e6:.1f} MB in fp16)"
            + "; `comfy.ops.disable_weight_init` layers, seeded DiT init, rectified flow (x_t = (1−t)·x0 + t·ε, "
            "target ε − x0, logit-normal t with shift), AdamW, bf16 autocast on the GPU, EMA weights. "
            "Checkpoint: fp16 safetensors in ComfyUI's key layout (`quality_dense.safetensors`).",
            f"- **MoGA** (`moga_core`): M = {cfg['num_groups']} groups, window {tuple(cfg['window'])}, temporal groups of "
            f"{cfg['temporal_group']} latent frames, {cfg['neighbor_frames']} neighbour-shot frame(s) in K/V, frame "
            "branch on. Router input = the block's self-attention input `norm1(x)·(1+e1)+e0`.",
            "- **Routers**: *k-means* = `Router.fit` on router inputs of a calibration pass (other prompts than the "
            "evaluation's, several noise levels); *distilled* = `moga_core.distill.distill_routers` from the k-means "
            "init, DiT frozen, on the same calibration pass (expected dense-attention mass kept by the groups, "
            "hard-evaluated, density-capped); *fine-tuned* = the paper's recipe in miniature: from the dense "
            "checkpoint, routers (k-means init, softened) + all DiT weights trained with `combine=\"mean\"`, local "
            "branches on, group-balancing loss α = 0.1.",
            f"- **SVG2-style baseline**: per sample and head, {cfg['svg2_iters']} Lloyd steps of k-means on q "
            f"({cfg['svg2_q_clusters']} clusters) and k ({cfg['svg2_k_clusters']}), warm-started across denoising "
            f"steps; each query cluster attends to the key clusters holding top-p = {cfg['svg2_top_p']} of the "
            "centroid-estimated attention mass. Implemented as masked dense attention (correctness over speed), so "
            "its ms/step is not SVG2's speed.",
            f"- **Sampling**: {cfg['eval_batches'] * cfg['eval_batch']} evaluation videos (held-out prompts, fixed noise), "
            f"{cfg['sample_steps']} Euler steps, shift {cfg['shift']}, no CFG; batches of {cfg['eval_batch']} videos.",
            "", "## Results", ""]
    out += _doc_table(data if measured else None)
    out += ["", "Columns:", "",
            "- **density**: fraction of query–key pairs attended (1 − sparsity, the paper's convention; the key set "
            "G ∪ W ∪ F that every branch reads), measured on the routed groups.",
            "- **scores/N²**: attention scores the implementation computes, over N² (from `moga_attention`'s stats; "
            "union mode also computes the branch intersections, so it can exceed the density).",
            "- **PSNR dB / cos**: the generated latent against the dense model's sample from the same prompt and "
            "noise (PSNR peak = the dense sample's range).",
            "- **attn err**: ‖O_mode − O_dense‖ / ‖O_dense‖ of every self-attention output, on the same q, k, v "
            f"(teacher-forced on held-out videos at t ∈ {{{', '.join(str(t) for t in cfg['loss_ts'])}}}); mean over blocks "
            "(per block in the JSON). "
            "For the fine-tuned model it is measured against dense attention of its own weights.",
            "- **identity**: cross-shot identity consistency — for each recurring subject, cosine between its "
            "identity colour (mean latent of its pixels minus the same subject class's mean in the other videos) in "
            "a later shot and in its first shot; 1 = the same individual, 0 = unrelated. Subjects are located by a "
            "probe trained on ground-truth latents, wherever the model put them.",
            "- **adherence**: per shot, is the captioned background there, and exactly the captioned set of subjects "
            "(probe-read); fraction of correct decisions. Whether each found subject sits in its captioned half "
            "(`adherence_side`) is in the JSON and below.",
            "- **flow loss**: rectified-flow MSE on the held-out videos (teacher-forced).",
            "- **ms/step**: median wall time of one denoising step (a batch of videos) on the device named above.",
            ""]
    out += _doc_reference(data if measured else None)
    out += ["", "## Which mode to pick", ""]
    out += _doc_recommendation(data if measured else None)
    out += ["", "## Regenerate", "",
            "On a GPU machine (one H100: about 8 minutes for training, fine-tune, distillation and evaluation):", "",
            "```", DOC_COMMAND_GPU, "```", "",
            "It writes `quality.json`, `QUALITY.md` (this page), `quality_dense.safetensors` (the dense checkpoint, "
            "fp16), `quality_moga_ft.safetensors` (fine-tuned model with router keys), the two router files and "
            "`quality.log` to `quality_out/`. This page from the JSON, without hand-editing:", "",
            "```", DOC_COMMAND_DOC, "```", "",
            "The CPU test `tests/host/test_quality_slice.py` runs the same pipeline on a tiny slice (every row) in CI:",
            "", "```", DOC_COMMAND_CPU, "```", "",
            "## Caveats", "",
            f"- A {model['layers']}-block, {_model_spec(model).num_params / 1e6:.1f} M-parameter model on a synthetic "
            "task is a miniature: the numbers rank the modes and show "
            "the mechanisms (which keys each mode keeps, what routing costs in fidelity), they are not Wan 14B's "
            "VBench scores. Speed here is dominated by fixed overheads at this size; see docs/PERFORMANCE.md for "
            "MoGA's speed at real sequence lengths.",
            "- The fine-tuned row is a different model (its own weights); its PSNR is against the dense model's sample, "
            "so it measures how far fine-tuning moved the output, not an error.",
            "- Training budgets are wall-clock; the step counts actually run are in the JSON (`training`), and "
            "`--dense-steps/--finetune-steps` reproduce a run from its seeds (up to GPU non-determinism).", ""]
    return "\n".join(out)


def _model_spec(d: dict) -> ModelSpec:
    d = dict(d)
    d["patch"] = tuple(d["patch"])
    return ModelSpec(**d)


def _doc_table(data):
    head = ("| mode | weights | density | scores/N² | PSNR dB | cos | attn err | identity | adherence | flow loss "
            "| ms/step |")
    sep = "|---|---|---|---|---|---|---|---|---|---|---|"
    lines = [head, sep]
    if data is None:
        for key, label, weights in ROWS:
            lines.append(f"| {label} | {weights} | " + " | ".join(["not yet measured on a GPU"] + ["–"] * 8) + " |")
        return lines
    for row in data["rows"]:
        if row.get("error"):
            lines.append(f"| {row['label']} | {row['weights']} | error: {row['error'][:100]} |" + " |" * 8)
            continue
        lines.append(f"| {row['label']} | {row['weights']} | " + " | ".join(
            _f(row.get(k), fmt) for k, _, fmt in COLUMNS) + " |")
    ref = data.get("reference", {})
    gt = ref.get("ground_truth", {})
    lines.append(f"| *ground-truth videos* | data | – | – | – | – | – | {_f(gt.get('identity'), '.3f')} | "
                 f"{_f(gt.get('adherence'), '.3f')} | – | – |")
    lines.append(f"| *trivial denoiser (per-channel Gaussian)* | – | – | – | – | – | – | – | – | "
                 f"{_f(ref.get('trivial_flow_loss'), '.4f')} | – |")
    return lines


def _doc_reference(data):
    if data is None:
        return ["Training, distillation and probe statistics: not yet measured on a GPU."]
    tr = data.get("training", {})
    ref = data.get("reference", {})
    dense, ft = tr.get("dense", {}), tr.get("finetune", {})
    lines = ["Training and references:", ""]
    if "steps" in dense:
        lines.append(f"- dense: {dense['steps']} steps in {dense['seconds']:.0f} s ({dense['step_ms']:.0f} ms/step), "
                     f"flow loss {dense['loss_first']:.3f} → {dense['loss_last']:.4f}; checkpoint "
                     f"{tr.get('dense_checkpoint_bytes', 0) / 1e6:.2f} MB (fp16).")
    if "loaded" in dense:
        resumed = dense.get("resumed")
        more = (f", then trained {resumed['steps']} more steps in this run" if resumed else "")
        lines.append(f"- dense: loaded from `{dense['loaded']}`{more} — the checkpoint of earlier runs of this "
                     "script, kept in `bench/results/quality/` with their logs (`run1/`: 2,340 steps from scratch; "
                     "`run2/`: 2,317 more steps from that checkpoint); `quality_dense_h100.safetensors` there is the "
                     "model every row of this table was evaluated with, so `--dense-checkpoint` reproduces the run.")
    if "steps" in ft:
        lines.append(f"- MoGA fine-tune: {ft['steps']} steps in {ft['seconds']:.0f} s ({ft['step_ms']:.0f} ms/step), "
                     f"flow loss {ft['loss_first']:.4f} → {ft['loss_last']:.4f}, balancing loss "
                     f"{_f(ft.get('aux_last'), '.3f')} (α = 0.1; 0.1 = perfectly balanced).")
    dist = tr.get("distill") or []
    if dist:
        errs = ", ".join(f"{_f(d['init_error'], '.3f')}→{_f(d['final_error'], '.3f')}" for d in dist)
        lines.append(f"- router distillation, union error on held-out calibration queries per block: {errs}.")
    gt = ref.get("ground_truth", {})
    lines.append(f"- probe pixel accuracy {_f(ref.get('probe_pixel_accuracy'), '.3f')}; ground-truth videos score "
                 f"identity {_f(gt.get('identity'), '.3f')} (far pairs, ≥ 2 shots apart: "
                 f"{_f(gt.get('identity_far'), '.3f')}) and adherence {_f(gt.get('adherence'), '.3f')}.")
    rows = [r for r in data.get("rows", []) if not r.get("error")]
    if rows:
        lines.append("- where the found subjects sit (captioned half of the frame; RoPE only, no absolute position): "
                     + ", ".join(f"{r['key']} {_f(r.get('adherence_side'), '.2f')}" for r in rows)
                     + f"; ground truth {_f(gt.get('adherence_side'), '.2f')}. Identity over pairs ≥ 2 shots apart: "
                     + ", ".join(f"{r['key']} {_f(r.get('identity_far'), '.2f')}" for r in rows) + ".")
    checks = data.get("checks", {})
    if checks:
        lines.append(f"- check: union mode with M = 1 vs dense, max |Δ| of the sample = "
                     f"{_f(checks.get('union_m1_vs_dense_max_abs'), '.2e')} (dense resampled: "
                     f"{_f(checks.get('dense_repeat_max_abs'), '.2e')}).")
    return lines


def _doc_recommendation(data):
    """The recommendation paragraph, written from the measured numbers: every comparative word is decided by them."""
    if data is None:
        return ["Not yet measured on a GPU: the recommendation is written from the measured table by "
                "`bench/quality.py --write-doc`."]
    rows = {r["key"]: r for r in data["rows"] if not r.get("error")}

    def g(key, col):
        v = _num(rows.get(key, {}).get(col, float("nan")))
        return v if isinstance(v, (int, float)) else float("nan")

    def fmt(key, col, spec):
        return _f(rows.get(key, {}).get(col), spec)

    def gt(a, b, margin=0.0):  # a clearly above b (False when either is missing)
        return math.isfinite(a) and math.isfinite(b) and a > b + margin

    text = []
    uk, ud = "union_kmeans", "union_distilled"
    free = [k for k in (uk, ud, "random_groups", "local_only", "svg2", "mean_kmeans") if k in rows]
    if uk in rows:
        best_union = ud if ud in rows and gt(g(ud, "psnr"), g(uk, "psnr")) else uk
        text.append(
            f"**Stock weights (Wan, HunyuanVideo): use `combine=\"union\"`.** On this model union mode stays at "
            f"{fmt(uk, 'psnr', '.1f')} dB PSNR (cosine {fmt(uk, 'cosine', '.3f')}) to the dense sample with k-means "
            f"routers" + (f" and {fmt(ud, 'psnr', '.1f')} dB (cosine {fmt(ud, 'cosine', '.3f')}) with distilled routers "
                          f"(attention error {fmt(uk, 'rel_err', '.3f')} → {fmt(ud, 'rel_err', '.3f')})" if ud in rows
                          else "")
            + f", at density {fmt(uk, 'density', '.2f')}" + (f" / {fmt(ud, 'density', '.2f')}" if ud in rows else "")
            + f"; cross-shot identity {fmt(uk, 'identity', '.2f')}"
            + (f" / {fmt(ud, 'identity', '.2f')}" if ud in rows else "")
            + f" against dense attention's {fmt('dense', 'identity', '.2f')}. ")
        if ud in rows:
            if best_union == ud and gt(g(ud, "psnr"), g(uk, "psnr"), 0.3) and \
                    gt(g(uk, "identity"), g(ud, "identity"), 0.05):
                text.append("Router distillation trades one for the other here: closer to the dense sample per "
                            f"frame ({fmt(ud, 'psnr', '.1f')} vs {fmt(uk, 'psnr', '.1f')} dB) but less consistent "
                            f"across shots (identity {fmt(ud, 'identity', '.2f')} vs {fmt(uk, 'identity', '.2f')}); "
                            "for multi-shot videos, whose point is that consistency, prefer the k-means routers. ")
            elif best_union == ud and gt(g(ud, "psnr"), g(uk, "psnr"), 0.3):
                text.append("Router distillation is worth its minutes here: it beats plain k-means calibration. ")
            elif gt(g(uk, "psnr"), g(ud, "psnr"), 0.3):
                text.append("Router distillation did not help here (k-means calibration scored higher); use k-means "
                            "calibration. ")
            else:
                text.append("Router distillation and k-means calibration are within noise of each other here; k-means "
                            "calibration alone is the simpler choice. ")
    if "random_groups" in rows and uk in rows:
        word = "helps" if gt(g(uk, "psnr"), g("random_groups", "psnr"), 0.3) else "does not help"
        text.append(f"Learned grouping {word} against random groups of the same M ({fmt('random_groups', 'psnr', '.1f')} "
                    f"dB, identity {fmt('random_groups', 'identity', '.2f')}). ")
    if "local_only" in rows:
        lost = gt(g("dense", "identity"), g("local_only", "identity"), 0.05)
        text.append(f"Local branches alone give {fmt('local_only', 'psnr', '.1f')} dB and identity "
                    f"{fmt('local_only', 'identity', '.2f')}"
                    + (" — they lose the cross-shot identity that the routed long-range keys keep. " if lost and
                       gt(g(uk, "identity"), g("local_only", "identity"), 0.05) else
                       " — on this model they lose cross-shot identity, and the routed keys do not restore it. " if lost
                       else ". "))
    if "svg2" in rows and uk in rows:
        ref = ud if ud in rows and gt(g(ud, "psnr"), g(uk, "psnr")) else uk
        cmp = "above" if gt(g("svg2", "psnr"), g(ref, "psnr")) else "below"
        text.append(f"The SVG2-style per-head online k-means baseline reaches {fmt('svg2', 'psnr', '.1f')} dB at density "
                    f"{fmt('svg2', 'density', '.2f')} ({cmp} the better union row), at the price of clustering q and k "
                    "per head at every step. ")
    if "mean_kmeans" in rows and uk in rows:
        poor = gt(g(uk, "psnr"), g("mean_kmeans", "psnr"), 1.0)
        text.append(f"**Do not use `combine=\"mean\"` on stock weights**: with calibrated routers it gives "
                    f"{fmt('mean_kmeans', 'psnr', '.1f')} dB, attention error {fmt('mean_kmeans', 'rel_err', '.2f')} and "
                    f"identity {fmt('mean_kmeans', 'identity', '.2f')} — "
                    + ("worse than union, as expected: " if poor else "not clearly worse than union on this small "
                       "model, yet still not the right operator: ")
                    + "the mean of three separately normalised branches is a different operator, which only weights "
                    "trained with it expect. ")
    if "moga_finetuned" in rows:
        text.append(f"**What training buys**: the MoGA-fine-tuned model (the paper's recipe in miniature, "
                    f"{data.get('training', {}).get('finetune', {}).get('steps', '?')} steps) runs mean mode at density "
                    f"{fmt('moga_finetuned', 'density', '.2f')} with flow loss {fmt('moga_finetuned', 'flow_loss', '.4f')} "
                    f"(dense model: {fmt('dense', 'flow_loss', '.4f')}; calibrated mean mode on the dense weights: "
                    f"{fmt('mean_kmeans', 'flow_loss', '.4f')}), identity {fmt('moga_finetuned', 'identity', '.2f')} and "
                    f"adherence {fmt('moga_finetuned', 'adherence', '.2f')} (dense: {fmt('dense', 'identity', '.2f')}, "
                    f"{fmt('dense', 'adherence', '.2f')}). Mean mode belongs to such weights, with the routers they were "
                    "trained with. ")
    order = sorted((k for k in free if math.isfinite(g(k, "psnr"))), key=lambda k: -g(k, "psnr"))
    text.append("**What to expect on Wan/Hunyuan**: union mode is exact wherever the groups catch the attention mass, "
                "so its error grows with how much of a model's attention lies outside the local windows and the query's "
                "group. The training-free ranking measured here by PSNR — "
                + " > ".join(f"{k} ({fmt(k, 'psnr', '.1f')})" for k in order)
                + " — is the qualitative expectation, not these numbers: this is a "
                + f"{(data.get('meta') or {}).get('config', {}).get('model', {}).get('layers', '?')}-block model on "
                "synthetic data. "
                "Before a long render, compare one short clip against a dense sample at the same seed.")
    return ["".join(text)]


# ---------------------------------------------------------------------------------------------------------------
# CLI


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true", help="train, fine-tune, distill, evaluate, write the outputs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.environ.get("OUT", "quality_out"), help="output directory")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="the CI slice (seconds on CPU)")
    size.add_argument("--small", action="store_true", help="a CPU-sized study (minutes)")
    size.add_argument("--preset", choices=PRESETS, help="a study preset by name (default: full; `long`: the study at "
                      "length, matched densities; `long-tiny`: its CI slice)")
    p.add_argument("--stop-after", choices=("dense",), help="stop once the dense checkpoint is written")
    p.add_argument("--deadline", type=float, help="seconds from the start after which rows are skipped")
    p.add_argument("--dense-checkpoint", help="skip dense training: load this quality_dense.safetensors")
    p.add_argument("--dense-seconds", type=float)
    p.add_argument("--resume-seconds", type=float, default=0.0,
                   help="with --dense-checkpoint: train the loaded model this many more seconds first")
    p.add_argument("--dense-steps", type=int, help="exact step count (reproduce a run) instead of the time budget")
    p.add_argument("--dense-long-seconds", type=float, help="presets that train short: the full-length phase 2")
    p.add_argument("--finetune-seconds", type=float)
    p.add_argument("--finetune-steps", type=int)
    p.add_argument("--comfyui", help="ComfyUI tree (default: $COMFYUI_PATH)")
    p.add_argument("--write-doc", metavar="RESULTS_JSON", help="write the doc from a results file ('none': placeholder)")
    p.add_argument("--doc", default=os.path.join(PACK_ROOT, "docs", "QUALITY.md"))
    a = p.parse_args(argv)
    if a.write_doc:
        data = None if a.write_doc == "none" else load_results(a.write_doc)
        with open(a.doc, "w") as f:
            f.write(render_doc(data))
        print(f"wrote {a.doc}")
        if data:
            print(compact_table(data))
        return 0
    if not a.all:
        p.error("nothing to do: pass --all (run the study) or --write-doc RESULTS_JSON")
    cfg = preset(a.preset or ("tiny" if a.tiny else "small" if a.small else "full"))
    if a.deadline is not None:
        cfg.deadline = a.deadline
    if a.dense_seconds is not None:
        cfg.dense = replace(cfg.dense, seconds=a.dense_seconds)
    if a.dense_steps is not None:
        cfg.dense = replace(cfg.dense, steps=a.dense_steps)
    if a.dense_long_seconds is not None:
        if cfg.dense_long is None:
            p.error(f"--dense-long-seconds: preset {cfg.name!r} has no full-length dense phase (try --preset long)")
        cfg.dense_long = replace(cfg.dense_long, seconds=a.dense_long_seconds, steps=None)
    if a.finetune_seconds is not None:
        cfg.finetune = replace(cfg.finetune, seconds=a.finetune_seconds)
    if a.finetune_steps is not None:
        cfg.finetune = replace(cfg.finetune, steps=a.finetune_steps)
    os.makedirs(a.out, exist_ok=True)
    log_path = os.path.join(a.out, "quality.log")
    if os.path.exists(log_path):
        os.remove(log_path)
    log = Logger(log_path)
    log(f"quality study '{cfg.name}' on {a.device}: " + " ".join(sys.argv[1:]))
    run_study(cfg, a.out, a.device, a.dense_checkpoint, a.resume_seconds, log, a.comfyui, stop_after=a.stop_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
