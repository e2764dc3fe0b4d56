"""MoGALongVideoSampler and MoGALongVideoGuider: sample a long multi-shot latent end to end.

What they add to a stock sampler, all on a clone of the model:
- memory: the token-wise feed-forward networks run in chunks of tokens (object patches on each FFN's ``forward``,
  scoped to the clone), so activation memory grows linearly with length; a pre-flight estimate refuses a run that
  cannot fit, saying how many tokens, what it needs and what to change;
- the shot plan for every cond (MoGA's local windows break at the cuts for the negative prompt too);
- progress: per-step time and ETA as progress text, latent previews, ComfyUI's interrupt between and within steps;
- a windowed fallback: ComfyUI's native context windows, cut-aligned (no window crosses a cut), so each window's
  frames see only their own shot's caption.
"""

from __future__ import annotations

import logging
import math
import time

import torch

import comfy.context_windows
import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from . import wiring
from .adapters import adapter_for
from .module_patches import add_module_patch
from .patcher import GroupMapProbe, MogaPatch, summarize_run
from .shots import MAX_FRAMES, ShotPlan
from .types import MogaShots

log = logging.getLogger("moga")
DEFAULT_FFN_CHUNK = 32768
RESERVE_BYTES = 1 << 30


def chunked_forward(chunk_tokens: int):
    """A `module_patches` behaviour: the module's own ``forward`` run over slices of the token dimension (dim 1) of
    inputs longer than ``chunk_tokens``."""

    def forward(module, x, *args, **kwargs):
        original = type(module).forward
        n = x.shape[1] if x.dim() >= 3 else 0
        if n <= chunk_tokens:
            return original(module, x, *args, **kwargs)
        out = None
        for start in range(0, n, chunk_tokens):
            part = original(module, x[:, start:start + chunk_tokens], *args, **kwargs)
            if out is None:
                out = part.new_empty(part.shape[:1] + (n,) + part.shape[2:])
            out[:, start:start + part.shape[1]] = part
            comfy.model_management.throw_exception_if_processing_interrupted()
        return out

    forward._moga_chunk = chunk_tokens
    return forward


def chunk_ffns(model, chunk_tokens: int) -> int:
    """Object-patch every FFN of ``model`` (a clone) to run in token chunks; returns how many were patched. The patches
    hold paths, not modules: they run on the model being sampled (`module_patches`)."""
    behaviour = chunked_forward(chunk_tokens)
    paths = adapter_for(model).ffn_paths()
    for path in paths:
        add_module_patch(model, path, behaviour, f"feed-forward in chunks of {chunk_tokens} tokens")
    return len(paths)


def shot_aligned_windows(plan: ShotPlan):
    """A context schedule whose windows never cross a cut (long shots get overlapping windows inside them)."""

    def schedule(num_frames: int, handler, model_options=None):
        ranges = plan.latent_ranges() if plan.num_latent_frames == num_frames else [(0, num_frames)]
        length, overlap = handler.context_length, handler.context_overlap
        step = max(1, length - overlap)
        windows = []
        for a, b in ranges:
            if b - a <= length:
                windows.append(list(range(a, b)))
                continue
            start = a
            while True:
                end = min(start + length, b)
                windows.append(list(range(end - length, end)))
                if end == b:
                    break
                start += step
        return windows

    return comfy.context_windows.ContextSchedule("moga_shot_aligned", schedule)


def estimate_activation_bytes(model, tokens: int, batch: int, ffn_chunk: int) -> int:
    """A deliberately plain upper estimate of one forward's activation memory (weights excluded)."""
    adapter = adapter_for(model)
    elem = torch.tensor([], dtype=model.model.get_dtype()).element_size() if hasattr(model.model, "get_dtype") else 2
    per_token = adapter.hidden_size * elem * 16  # residual, norms, q/k/v, packed copies, outputs
    ffn_width = 4 * adapter.hidden_size
    for _, module in adapter.ffn_modules()[:1]:
        first = next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
        if first is not None:
            ffn_width = first.out_features
    ffn_tokens = min(tokens, ffn_chunk) if ffn_chunk > 0 else tokens
    return batch * (tokens * per_token + ffn_tokens * ffn_width * elem * 3)


def check_fits(model, latent: torch.Tensor, ffn_chunk: int, batch: int) -> None:
    device = model.load_device
    if device.type != "cuda":
        return
    adapter = adapter_for(model)
    _, _, t, h, w = latent.shape
    grid = adapter.grid(latent.shape, {})
    tokens = grid[0] * grid[1] * grid[2]
    need = estimate_activation_bytes(model, tokens, batch, ffn_chunk)
    total = comfy.model_management.get_total_memory(device)
    if need + RESERVE_BYTES > total:
        gib = 1 << 30
        raise ValueError(
            f"{tokens} video tokens (latent {t}x{h}x{w}) need about {need / gib:.1f} GiB of activations per forward "
            f"(batch {batch}), more than this GPU's {total / gib:.1f} GiB. Lower the resolution or length, "
            f"set ffn_chunk_tokens lower, or use context_frames (windowed sampling)")


def prepare_model(model, plan: ShotPlan | None, ffn_chunk_tokens: int, context_frames: int, context_overlap: int):
    """The clone a long-video run samples with (see the module doc)."""
    m = model.clone()
    for path, (behaviour, what) in adapter_for(m).shot_module_patches().items():
        add_module_patch(m, path, behaviour, what)
    chunk = DEFAULT_FFN_CHUNK if ffn_chunk_tokens == 0 else ffn_chunk_tokens
    if chunk > 0:
        chunk_ffns(m, chunk)
    if plan is not None:
        wiring.set_shot_cuts(m, plan.latent_starts)
    if context_frames > 0:
        length = max(1, (context_frames - 1) // 4 + 1)
        overlap = max(0, (context_overlap - 1) // 4 + 1) if context_overlap > 0 else 0
        if overlap >= length:
            raise ValueError(f"context_overlap ({context_overlap} frames) must be shorter than context_frames "
                             f"({context_frames} frames)")
        schedule = shot_aligned_windows(plan) if plan is not None else \
            comfy.context_windows.get_matching_context_schedule("standard_static")
        m.model_options["context_handler"] = comfy.context_windows.IndexListContextHandler(
            context_schedule=schedule, fuse_method=comfy.context_windows.get_matching_fuse_method("pyramid"),
            context_length=length, context_overlap=overlap, context_stride=1, closed_loop=False, dim=2,
            freenoise=False)
        comfy.context_windows.create_prepare_sampling_wrapper(m)
    return m, chunk


class StepClock:
    """Per-step wall time and ETA, sent as progress text next to ComfyUI's own bar and previews."""

    def __init__(self, model, steps: int, node_id=None):
        self.steps = steps
        self.node_id = node_id
        self.preview = latent_preview.prepare_callback(model, steps)
        self.start = time.perf_counter()
        self.last = self.start
        self.step_times: list[float] = []
        self.texts: list[str] = []

    def __call__(self, step, x0, x, total_steps):
        now = time.perf_counter()
        self.step_times.append(now - self.last)
        self.last = now
        done = step + 1
        mean = (now - self.start) / done
        eta = mean * (total_steps - done)
        text = f"step {done}/{total_steps} · {self.step_times[-1]:.1f} s/step · ETA {_duration(eta)}"
        self.texts.append(text)
        self._send(text)
        self.preview(step, x0, x, total_steps)
        comfy.model_management.throw_exception_if_processing_interrupted()

    def _send(self, text):
        if self.node_id is None:
            return
        try:
            from server import PromptServer

            server = PromptServer.instance
            if server is not None and hasattr(server, "send_progress_text"):
                server.send_progress_text(text, self.node_id)
        except Exception:  # progress text is a courtesy; sampling must not fail over it
            pass


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def empty_latent(model, width: int, height: int, frames: int, batch: int = 1) -> dict:
    fmt = model.get_model_object("latent_format")
    ratio = getattr(fmt, "spacial_downscale_ratio", 8)
    if width % ratio or height % ratio:
        raise ValueError(f"width and height must be multiples of {ratio} for this model, got {width}x{height}")
    if frames < 1:
        raise ValueError(f"length must be at least 1 frame, got {frames}")
    samples = torch.zeros([batch, fmt.latent_channels, (frames - 1) // 4 + 1, height // ratio, width // ratio],
                          device=comfy.model_management.intermediate_device())
    return {"samples": samples, "downscale_ratio_spacial": ratio}


class MogaLongVideoGuider(comfy.samplers.CFGGuider):
    """A CFG guider that samples with the long-video clone (usable in SamplerCustomAdvanced)."""

    def __init__(self, model, plan: ShotPlan | None = None, ffn_chunk_tokens: int = 0, context_frames: int = 0,
                 context_overlap: int = 0, group_map: bool = False):
        prepared, self.ffn_chunk = prepare_model(model, plan, ffn_chunk_tokens, context_frames, context_overlap)
        # before the guider reads the options: with dynamic VRAM, set_conds may swap in a delegate patcher, and the
        # sampler builds every call's options from the guider's model_options (the ones of `prepared`)
        self.group_map = _group_map_probe(prepared, plan) if group_map else None
        super().__init__(prepared)
        self.plan = plan
        self.windowed = context_frames > 0

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if self.plan is not None and latent_image.shape[2] != self.plan.num_latent_frames:
            raise ValueError(f"the latent has {latent_image.shape[2]} latent frames but the shot plan needs "
                             f"{self.plan.num_latent_frames} ({self.plan.num_frames} frames); make the latent "
                             f"{self.plan.num_frames} frames long")
        if not self.windowed:
            batch = latent_image.shape[0] * (2 if self.cfg > 1.0 else 1)
            check_fits(self.model_patcher, latent_image, self.ffn_chunk, batch)
        return super().sample(noise, latent_image, sampler, sigmas, denoise_mask=denoise_mask, callback=callback,
                              disable_pbar=disable_pbar, seed=seed)


def _model_inputs():
    return [
        io.Model.Input("model", tooltip="The (MoGA-patched) video model."),
        io.Conditioning.Input("positive", tooltip="From MoGA Multi-Shot Prompt or a text encode."),
        io.Conditioning.Input("negative", tooltip="The negative prompt (global)."),
    ]


def make_guider(model, positive, negative, cfg, shots, ffn_chunk_tokens, context_frames, context_overlap,
                group_map: bool = False):
    guider = MogaLongVideoGuider(model, shots, ffn_chunk_tokens, context_frames, context_overlap, group_map)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


def _memory_inputs():
    return [
        io.Int.Input("ffn_chunk_tokens", default=0, min=-1, max=1 << 24, advanced=True,
                     tooltip="Feed-forward layers run on this many tokens at a time, so memory grows linearly with "
                             f"length. 0 = automatic ({DEFAULT_FFN_CHUNK}), -1 = off."),
        io.Int.Input("context_frames", default=0, min=0, max=100000, step=4,
                     tooltip="0: the whole video in one sequence (MoGA's point). >0: windowed fallback for GPUs that "
                             "cannot hold the sequence: ComfyUI's context windows of this many frames, aligned to "
                             "shot cuts."),
        io.Int.Input("context_overlap", default=16, min=0, max=100000, step=4, advanced=True,
                     tooltip="Frames shared by neighbouring windows inside a long shot (windowed mode only)."),
    ]


class MoGALongVideoGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MoGALongVideoGuider",
            display_name="MoGA Long Video Guider",
            category="MoGA/sampling",
            description="The long-video sampler's guider (CFG, chunked memory, shot plan, optional cut-aligned "
                        "windows) for SamplerCustomAdvanced.",
            inputs=[
                *_model_inputs(),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, tooltip="Classifier-free guidance."),
                MogaShots.Input("shots", optional=True, tooltip="The shot plan from MoGA Multi-Shot Prompt."),
                *_memory_inputs(),
            ],
            outputs=[io.Guider.Output(tooltip="For SamplerCustomAdvanced: CFG with MoGA over the whole latent.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, ffn_chunk_tokens, context_frames, context_overlap,
                shots=None) -> io.NodeOutput:
        return io.NodeOutput(make_guider(model, positive, negative, cfg, shots, ffn_chunk_tokens, context_frames,
                                         context_overlap))


class MoGALongVideoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MoGALongVideoSampler",
            display_name="MoGA Long Video Sampler",
            category="MoGA/sampling",
            description="Samples a long multi-shot video latent end to end: the shot plan sets the length and the "
                        "cuts; memory is chunked so long sequences fit; progress shows time per step and ETA.",
            inputs=[
                *_model_inputs(),
                MogaShots.Input("shots", optional=True,
                                tooltip="The shot plan: sets the length (overrides 'length') and the cut positions."),
                io.Latent.Input("latent", optional=True,
                                tooltip="A prepared latent (image-to-video, for example); overrides width, height, "
                                        "length."),
                io.Int.Input("width", default=832, min=16, max=8192, step=16, tooltip="Video width in pixels."),
                io.Int.Input("height", default=480, min=16, max=8192, step=16, tooltip="Video height in pixels."),
                io.Int.Input("length", default=81, min=1, max=MAX_FRAMES, step=4,
                             tooltip="Frames (4k+1) when no shot plan is connected."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Noise seed."),
                io.Int.Input("steps", default=30, min=1, max=1000, tooltip="Denoising steps."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, tooltip="Classifier-free guidance."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="uni_pc",
                               tooltip="Sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple",
                               tooltip="Noise schedule."),
                io.Float.Input("shift", default=0.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Flow shift (Wan: 8 for 480p t2v, 5 for 720p); 0 keeps the model's own."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, advanced=True,
                               tooltip="Fraction of the schedule to run."),
                *_memory_inputs(),
            ],
            outputs=[io.Latent.Output(tooltip="The sampled latent; decode with VAE Decode (Tiled), temporal tiles.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, negative, width, height, length, seed, steps, cfg, sampler_name, scheduler,
                shift, denoise, ffn_chunk_tokens, context_frames, context_overlap, shots=None,
                latent=None) -> io.NodeOutput:
        if shift > 0:
            from comfy_extras.nodes_model_advanced import ModelSamplingSD3

            model = ModelSamplingSD3().patch(model, shift)[0]
        if latent is None:
            frames = shots.num_frames if shots is not None else length
            latent = empty_latent(model, width, height, frames)
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        guider = make_guider(model, positive, negative, cfg, shots, ffn_chunk_tokens, context_frames,
                             context_overlap, group_map=True)
        probe = guider.group_map
        noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
        sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"), scheduler,
                                                 steps)
        if denoise < 1.0:
            total = max(1, int(math.ceil(steps / max(denoise, 1e-4))))
            sigmas = comfy.samplers.calculate_sigmas(guider.model_patcher.get_model_object("model_sampling"),
                                                     scheduler, total)[-(steps + 1):]
        clock = StepClock(guider.model_patcher, steps, getattr(cls.hidden, "unique_id", None) if cls.hidden else None)
        out = guider.sample(noise, samples, comfy.samplers.sampler_object(sampler_name), sigmas,
                            denoise_mask=latent.get("noise_mask"), callback=clock,
                            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        out = out.to(comfy.model_management.intermediate_device())
        result = dict(latent)
        result.pop("downscale_ratio_spacial", None)
        result["samples"] = out
        log.info("MoGA long video: %s", clock.texts[-1] if clock.texts else "no steps")
        ui = {}
        if probe is not None and probe.snapshot:
            ui["moga_group_map"] = [probe.snapshot]
        patch = wiring.patch_of(guider.model_patcher)
        if isinstance(patch, MogaPatch):  # what MoGA did in this run, also when it stayed dense
            ui["moga_run"] = [summarize_run(patch.last_run_stats)]
        return io.NodeOutput(result, ui=ui or None)


def _group_map_probe(model, plan: ShotPlan | None):
    """For a MoGA-patched model: record the routing of a middle block for the web group-map view."""
    patch = wiring.patch_of(model)
    if not isinstance(patch, MogaPatch):
        return None
    routed = patch.routed_blocks()
    if not routed:
        return None
    frame = plan.latent_starts[1] if plan is not None and plan.num_shots > 1 else None
    probe = GroupMapProbe(routed[len(routed) // 2], frame)
    model.model_options.setdefault("transformer_options", {})[wiring.GROUP_MAP] = probe
    return probe
