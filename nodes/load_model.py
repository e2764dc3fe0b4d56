"""MoGALoadModel ("MoGA Model Loader"): a diffusion model file -> MoGA-patched MODEL + its routers, in one node."""

from __future__ import annotations

import torch

import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io

from .options import option_inputs, options_from_inputs
from .patcher import install
from .router_files import FOLDER, load_router_file, router_files, routers_from_checkpoint
from .types import MogaRouter

FROM_CHECKPOINT = "(routers inside the model file)"
NO_ROUTER = "(none: groups as the grouping input says)"  # random and balanced by default
AUTO_ROUTERS = "(auto: fitted to each video)"  # no router, k-means at the end of each run's dense warm-up
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def _model_options(weight_dtype: str) -> dict:
    # the same choices as ComfyUI's own diffusion model loader
    if weight_dtype == "fp8_e4m3fn":
        return {"dtype": torch.float8_e4m3fn}
    if weight_dtype == "fp8_e4m3fn_fast":
        return {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    if weight_dtype == "fp8_e5m2":
        return {"dtype": torch.float8_e5m2}
    if weight_dtype != "default":
        raise ValueError(f"weight_dtype must be one of {WEIGHT_DTYPES}, got {weight_dtype!r}")
    return {}


def load_moga_model(path: str, weight_dtype: str = "default", router_path: str | None = None, auto: bool = False):
    """(ModelPatcher, RouterSet or None): the model through ComfyUI's loader, router keys taken out first.
    ``auto``: no routers (None; the patch draws or fits its own groups), whatever the file holds."""
    sd, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    model_sd, embedded = routers_from_checkpoint(sd, path) if any("router" in k for k in sd) else (sd, None)
    model = comfy.sd.load_diffusion_model_state_dict(model_sd, model_options=_model_options(weight_dtype),
                                                     metadata=metadata)
    if model is None:
        raise ValueError(f"ComfyUI could not detect the model type of {path}")
    if auto:
        routers = None
    elif router_path is not None:
        routers = load_router_file(router_path)
    elif embedded is not None:
        routers = embedded
    else:
        raise ValueError(f"{path} has no router weights; choose a router file from models/moga/ in router_name, "
                         f"{NO_ROUTER!r} or {AUTO_ROUTERS!r} (or calibrate one with MoGA Calibrate Router)")
    return model, routers


class MoGALoadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MoGALoadModel",
            display_name="MoGA Model Loader",
            category="MoGA/loaders",
            description="Loads a Wan or HunyuanVideo diffusion model from models/diffusion_models/ with ComfyUI's "
                        "own loader and returns it MoGA-patched. The routers come from the same file when it is a "
                        "MoGA checkpoint, or from a router file in models/moga/.",
            inputs=[
                io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="The diffusion model (models/diffusion_models/)."),
                io.Combo.Input("weight_dtype", options=WEIGHT_DTYPES, default="default", advanced=True,
                               tooltip="Weight storage type, as in ComfyUI's Load Diffusion Model."),
                io.Combo.Input("router_name", options=[FROM_CHECKPOINT, NO_ROUTER, AUTO_ROUTERS] + router_files(),
                               default=FROM_CHECKPOINT,
                               tooltip="Where the routers come from: the model file itself (a MoGA checkpoint), "
                                       "a router file in models/moga/, 'none': auto_groups groups as the grouping "
                                       "input says (random and balanced by default), or 'auto': fitted to each "
                                       "video at the end of the dense warm-up, whatever grouping says (needs "
                                       "start_percent > 0)."),
                *option_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="The MoGA-patched model."),
                     MogaRouter.Output(tooltip="The routers in use (nothing with 'none' or 'auto': those groups "
                                               "are drawn or fitted per video).")],
            search_aliases=["load moga", "mixture of groups"],
        )

    @classmethod
    def validate_inputs(cls, router_name: str):
        if router_name not in (FROM_CHECKPOINT, NO_ROUTER, AUTO_ROUTERS) and router_name not in router_files():
            return f"router file {router_name!r} is not in models/moga/"
        return True

    @classmethod
    def execute(cls, unet_name: str, weight_dtype: str, router_name: str, **options) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        no_router = router_name in (NO_ROUTER, AUTO_ROUTERS)
        router_path = None if router_name in (FROM_CHECKPOINT, NO_ROUTER, AUTO_ROUTERS) else \
            folder_paths.get_full_path_or_raise(FOLDER, router_name)
        patch_options = options_from_inputs(**options)
        if router_name == AUTO_ROUTERS:  # the explicit choice of routers fitted to each video
            patch_options.grouping = "kmeans"
        model, routers = load_moga_model(path, weight_dtype, router_path, no_router)
        install(model, routers, patch_options)
        return io.NodeOutput(model, routers)
