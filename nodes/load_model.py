"""MoGALoadModel ("MoGA Model Loader"): a diffusion model file -> MoGA-patched MODEL + its routers, in one node."""

from __future__ import annotations

import inspect
import logging
import os

import torch

import comfy.sd
import folder_paths
from comfy_api.latest import io

from .options import GROUPINGS, option_inputs, options_from_inputs
from .patcher import install
from .router_files import FOLDER, load_router_file, read_safetensors_file, router_files, routers_from_checkpoint
from .types import MogaRouter

log = logging.getLogger("moga")

# router_name choices. The default works on every file: a MoGA checkpoint's own routers, or for a stock file (all
# files so far: no MoGA-trained weights are public) groups as the grouping input says (random balanced by default).
FILE_OR_GROUPING = "(routers inside the model file, else as grouping says)"
NO_ROUTER = "(none: groups as the grouping input says)"  # random and balanced by default
AUTO_ROUTERS = "(auto: fitted to each video)"  # no router, k-means at the end of each run's dense warm-up
# the default before FILE_OR_GROUPING, which refused stock files; prompts saved with it now get FILE_OR_GROUPING
FROM_CHECKPOINT = "(routers inside the model file)"
CHOICES = [FILE_OR_GROUPING, NO_ROUTER, AUTO_ROUTERS]
LEGACY_CHOICES = {FROM_CHECKPOINT: FILE_OR_GROUPING}
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


def _read_model_file(path: str):
    """(model state dict without router keys, the file's RouterSet or None, safetensors metadata or None)."""
    sd, metadata = read_safetensors_file(path, "a Wan or HunyuanVideo diffusion model", return_metadata=True)
    if any("router" in k for k in sd):
        model_sd, embedded = routers_from_checkpoint(sd, path)
        return model_sd, embedded, metadata
    return sd, None, metadata


def _build_patcher(model_sd: dict, metadata, model_options: dict, path: str, disable_dynamic: bool = False):
    """ComfyUI's own loader on a state dict; the patcher can rebuild itself (`reload_diffusion_model`)."""
    kwargs = {"model_options": model_options, "metadata": metadata}
    # ComfyUI with dynamic VRAM (v0.19.3 … v0.27.0 at least) has the keyword; one without it loads plain patchers
    if disable_dynamic and "disable_dynamic" in inspect.signature(comfy.sd.load_diffusion_model_state_dict).parameters:
        kwargs["disable_dynamic"] = True
    model = comfy.sd.load_diffusion_model_state_dict(model_sd, **kwargs)
    if model is None:
        raise ValueError(f"ComfyUI could not detect the model type of {path}")
    # as core's load_diffusion_model does: ComfyUI calls fn(*args, disable_dynamic=True) for the non-dynamic delegate
    # it swaps in when a conditioning carries hooks (every multi-shot prompt), and fn(*args) for multi-GPU clones
    model.cached_patcher_init = (reload_diffusion_model, (path, model_options))
    return model


def reload_diffusion_model(path: str, model_options: dict, disable_dynamic: bool = False):
    """The MoGA loader's ``cached_patcher_init``: ``path`` through ComfyUI's loader again, router keys taken out, with
    the same ``model_options`` (weight dtype) -> a plain, unpatched ModelPatcher (not dynamic with
    ``disable_dynamic``); the MoGA patch travels on the clone ComfyUI makes of it."""
    model_sd, _, metadata = _read_model_file(path)
    return _build_patcher(model_sd, metadata, model_options, path, disable_dynamic)


def load_moga_model(path: str, weight_dtype: str = "default", router_path: str | None = None, auto: bool = False):
    """(ModelPatcher, RouterSet or None): the model through ComfyUI's loader, router keys taken out first.

    Routers: ``auto`` -> None (the patch draws or fits its own groups), whatever the file holds; ``router_path`` ->
    that router file; else the file's own routers, or None when it has none (a stock model)."""
    model_sd, embedded, metadata = _read_model_file(path)
    model = _build_patcher(model_sd, metadata, _model_options(weight_dtype), path)
    if auto:
        return model, None
    if router_path is not None:
        return model, load_router_file(router_path)
    return model, embedded


def describe_grouping(unet_name: str, router_name: str, routers, options) -> str:
    """One line for the log and the node: where the groups of this model come from."""
    if routers is not None:
        where = (f"the routers inside {unet_name}" if router_name == FILE_OR_GROUPING
                 else f"the router file {router_name}")
        return (f"MoGA Model Loader: {where} ({len(routers.routers)} of {routers.num_blocks} blocks, "
                f"{routers.num_groups} groups, {routers.source}, combine {routers.combine})")
    label = {v: k for k, v in GROUPINGS.items()}.get(options.grouping, options.grouping)
    how = (f"{options.auto_groups} random balanced groups per block" if options.grouping == "random" else
           f"{options.auto_groups} groups from k-means routers fitted to each video at the end of the dense warm-up")
    if router_name == FILE_OR_GROUPING:
        why = f"{unet_name} has no MoGA routers (a stock model), so groups as grouping says ({label!r})"
    elif router_name == AUTO_ROUTERS:
        why = "router_name 'auto'"
    else:
        why = f"no router, groups as grouping says ({label!r})"
    return f"MoGA Model Loader: {why}: {how}"


class MoGALoadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MoGALoadModel",
            display_name="MoGA Model Loader",
            category="MoGA/loaders",
            description="Loads a Wan or HunyuanVideo diffusion model from models/diffusion_models/ with ComfyUI's "
                        "own loader and returns it MoGA-patched. The routers come from the same file when it is a "
                        "MoGA checkpoint, or from a router file in models/moga/; a stock model (no routers) groups "
                        "as the grouping input says (random balanced groups by default). The log says which.",
            inputs=[
                io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="The diffusion model (models/diffusion_models/)."),
                io.Combo.Input("weight_dtype", options=WEIGHT_DTYPES, default="default", advanced=True,
                               tooltip="Weight storage type, as in ComfyUI's Load Diffusion Model."),
                io.Combo.Input("router_name", options=CHOICES + router_files(), default=FILE_OR_GROUPING,
                               tooltip="Where the groups come from. Default: the routers inside the model file "
                                       "when it is a MoGA checkpoint, else (any stock model) auto_groups groups as "
                                       "the grouping input says (random and balanced by default); the log says "
                                       "which. Or a router file in models/moga/, 'none': groups as grouping says "
                                       "even for a MoGA checkpoint, or 'auto': routers fitted to each video at the "
                                       "end of the dense warm-up, whatever grouping says (needs start_percent > "
                                       "0)."),
                *option_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="The MoGA-patched model."),
                     MogaRouter.Output(tooltip="The routers in use (nothing when the groups are drawn or fitted "
                                               "per video: 'none', 'auto', or a model file without routers).")],
            search_aliases=["load moga", "mixture of groups"],
        )

    @classmethod
    def validate_inputs(cls, router_name: str):
        if router_name not in CHOICES and router_name not in LEGACY_CHOICES and router_name not in router_files():
            return f"router file {router_name!r} is not in models/moga/"
        return True

    @classmethod
    def execute(cls, unet_name: str, weight_dtype: str, router_name: str, **options) -> io.NodeOutput:
        router_name = LEGACY_CHOICES.get(router_name, router_name)
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        router_path = None if router_name in CHOICES else folder_paths.get_full_path_or_raise(FOLDER, router_name)
        patch_options = options_from_inputs(**options)
        if router_name == AUTO_ROUTERS:  # the explicit choice of routers fitted to each video
            patch_options.grouping = "kmeans"
        loaded, routers = load_moga_model(path, weight_dtype, router_path, router_name in (NO_ROUTER, AUTO_ROUTERS))
        model = loaded.clone()  # carries cached_patcher_init (ModelPatcher.clone copies it)
        install(model, routers, patch_options)
        message = describe_grouping(os.path.basename(unet_name), router_name, routers, patch_options)
        log.info(message)
        return io.NodeOutput(model, routers, ui={"text": [message]})
