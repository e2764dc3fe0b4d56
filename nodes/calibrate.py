"""MoGACalibrateRouter: routers without training, from a short sampling pass of the user's own model.

The pass runs dense: `CapturePatch`, installed through the same adapter-driven hooks as MoGA (`patcher.install_patch`),
records each block's router input and changes nothing; a seeded reservoir keeps a uniform sample of those inputs per
block; k-means on each sample gives an exact linear router
(`moga_core.Router.fit`). Calibrated routers are meant for ``combine="union"``.
"""

from __future__ import annotations

import torch

import comfy.model_management
import comfy.samplers
import comfy.utils
import nodes as comfy_nodes
from comfy_api.latest import io

from ..moga_core import Router
from ..moga_core.routers import RouterSet
from .adapters import BlockKey, ModelAdapter, adapter_for
from .auto_routers import RouterInputSample
from .patcher import BlockPatch, ForwardInfo, install_patch
from .types import MogaRouter


class CapturePatch(BlockPatch):
    """A calibration pass's patch holder: gives every block's router input to a `RouterInputSample`, routes nothing."""

    def __init__(self, adapter: ModelAdapter, sample: RouterInputSample):
        super().__init__(adapter)
        self.sample = sample

    def takes_block(self, key: BlockKey) -> bool:
        return True

    def before_block(self, key: BlockKey, args: dict, to: dict, info: ForwardInfo):
        found = self.video_tokens(key, args, to, info)
        if found is not None:
            with torch.no_grad():
                self.sample.add(key.index, info.adapter.router_input(key, args, found[1]))
        return None


def calibrate(model, positive, negative, latent, steps: int, cfg: float, sampler_name: str, scheduler: str,
              seed: int, groups: int, tokens_per_block: int = 8192, iters: int = 25) -> RouterSet:
    adapter = adapter_for(model)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    sample = RouterInputSample(tokens_per_block, seed)
    probe = model.clone()
    install_patch(probe, CapturePatch(adapter, sample))
    comfy_nodes.common_ksampler(probe, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent)
    blocks = adapter.blocks()
    missing = [k.index for k in blocks if sample.sample(k.index) is None]
    if len(missing) == len(blocks):
        raise ValueError("the calibration pass saw no video tokens (is the latent a video latent of this model?)")
    device = comfy.model_management.get_torch_device()
    routers = {}
    bar = comfy.utils.ProgressBar(len(blocks))
    for key in blocks:
        rows = sample.sample(key.index)
        if rows is not None:
            if rows.shape[0] < groups:
                raise ValueError(f"block {key.index} saw only {rows.shape[0]} video tokens, fewer than the "
                                 f"{groups} groups asked for")
            routers[key.index] = Router.fit(rows.to(device=device, dtype=torch.float32), groups, iters=iters,
                                            seed=seed).cpu()
        bar.update(1)
    return RouterSet(routers, adapter.family, adapter.hidden_size, adapter.num_blocks, combine="union",
                     source="calibrated", extra={"calibration": {"steps": steps, "seed": seed,
                                                                 "tokens_per_block": tokens_per_block}})


class MoGACalibrateRouter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MoGACalibrateRouter",
            display_name="MoGA Calibrate Router",
            category="MoGA",
            description="Fits MoGA routers without training: runs a short dense sampling pass of your model, "
                        "samples each block's router input and clusters it with k-means (one linear router per "
                        "block, meant for combine 'union').",
            inputs=[
                io.Model.Input("model", tooltip="The (unpatched) Wan or HunyuanVideo model to calibrate."),
                io.Conditioning.Input("positive", tooltip="Prompts like the ones you will generate with."),
                io.Conditioning.Input("negative", tooltip="Negative prompt (cfg > 1 runs it too)."),
                io.Latent.Input("latent", tooltip="A video latent of the size you will generate (smaller works, "
                                                  "the router is size-independent)."),
                io.Int.Input("steps", default=4, min=1, max=100,
                             tooltip="Sampling steps of the calibration pass; router inputs of all steps are used."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1,
                               tooltip="CFG of the calibration pass."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="Sampler of the calibration pass."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple",
                               tooltip="Scheduler of the calibration pass."),
                io.Int.Input("groups", default=5, min=1, max=256,
                             tooltip="M, the number of groups (the paper: 5 for 30 s, 20 for 60 s)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff,
                             control_after_generate=io.ControlAfterGenerate.fixed,
                             tooltip="Seed of the pass's noise, the token sample and k-means (fixed, so ComfyUI "
                                     "reuses the routers instead of recalibrating on every queue)."),
                io.Int.Input("tokens_per_block", default=8192, min=64, max=1 << 20, advanced=True,
                             tooltip="Router-input rows kept per block for k-means (CPU memory: rows x width x 2 "
                                     "bytes per block)."),
            ],
            outputs=[MogaRouter.Output(tooltip="Calibrated routers (combine 'union').")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, cfg, sampler_name, scheduler, groups, seed,
                tokens_per_block) -> io.NodeOutput:
        return io.NodeOutput(calibrate(model, positive, negative, latent, steps, cfg, sampler_name, scheduler, seed,
                                       groups, tokens_per_block))
