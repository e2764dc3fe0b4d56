"""Router files on disk: the ``models/moga`` folder, router files, and routers inside MoGA checkpoints."""

from __future__ import annotations

import os
import pickle
import re

import folder_paths

from ..moga_core.routers import (ROUTER_FILE, UNREADABLE_FILE_ERRORS, RouterSet, read_safetensors_header,
                                 routers_from_split, split_checkpoint, unreadable_file)

FOLDER = "moga"


def register_folder() -> None:
    """``models/moga`` as a ComfyUI model folder (extra_model_paths.yaml entries under ``moga:`` add to it)."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[FOLDER]
        if default not in paths:
            paths.append(default)
        if isinstance(exts, set):
            exts.add(".safetensors")
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], {".safetensors"})


def router_files() -> list[str]:
    register_folder()
    return folder_paths.get_filename_list(FOLDER)


def folder_description() -> str:
    register_folder()
    return ", ".join(folder_paths.get_folder_paths(FOLDER))


_BLOCK = re.compile(r"^(double_blocks|single_blocks|blocks)\.(\d+)\.")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")


def strip_prefix(sd: dict) -> dict:
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def checkpoint_structure(model_sd: dict) -> tuple[str, int, int]:
    """(family, number of double/plain blocks, number of single blocks) of a diffusion model state dict."""
    counts: dict[str, set] = {}
    for key in model_sd:
        m = _BLOCK.match(key)
        if m:
            counts.setdefault(m.group(1), set()).add(int(m.group(2)))
    if "double_blocks" in counts:
        return "hunyuan_video", len(counts["double_blocks"]), len(counts.get("single_blocks", ()))
    if "blocks" in counts and any(k.startswith("blocks.0.self_attn.") for k in model_sd):
        return "wan", len(counts["blocks"]), 0
    raise ValueError("the file is neither a Wan nor a HunyuanVideo diffusion model (no 'blocks.N.self_attn' or "
                     "'double_blocks.N' keys)")


def routers_from_checkpoint(sd: dict, name: str) -> tuple[dict, RouterSet | None]:
    """Split a MoGA checkpoint: (model state dict without router keys, its RouterSet or None if it has none)."""
    sd = strip_prefix(sd)
    family_hint = checkpoint_structure({k: v for k, v in sd.items() if "router" not in k})
    model_sd, parts = split_checkpoint(sd, num_double_blocks=family_hint[1])
    if not parts:
        return model_sd, None
    family, n_double, n_single = family_hint
    routers = routers_from_split(parts, name)
    width = next(iter(routers.values())).in_features
    return model_sd, RouterSet(routers, family, width, n_double + n_single, combine="mean", source="trained",
                               extra={"loaded_from": os.path.basename(name)})


def read_safetensors_file(path: str, expected: str, return_metadata: bool = False):
    """``comfy.utils.load_torch_file`` (ComfyUI's own reading: mmap, dynamic VRAM's file slices), with an error that
    names the file and what was expected when it is damaged (safetensors alone says "Error while deserializing
    header: header too large" and no name)."""
    import comfy.utils

    try:
        return comfy.utils.load_torch_file(path, return_metadata=return_metadata)
    except UNREADABLE_FILE_ERRORS + (pickle.UnpicklingError,) as exc:
        raise unreadable_file(path, exc, expected) from exc


def load_router_file(path: str) -> RouterSet:
    """A router file, or the routers of a full MoGA checkpoint (split out of the model weights)."""
    keys, meta = read_safetensors_header(path, ROUTER_FILE)
    if "moga_format_version" in meta:
        return RouterSet.load(path)
    if any("router" in k for k in keys):
        sd = read_safetensors_file(path, ROUTER_FILE)
        _, routers = routers_from_checkpoint(sd, path)
        if routers is not None:
            return routers
    raise ValueError(f"{os.path.basename(path)} holds no MoGA routers: expected a router file "
                     "(blocks.N.router.weight with moga_format_version metadata) or a MoGA checkpoint "
                     "(a diffusion model with ...router.weight keys)")
