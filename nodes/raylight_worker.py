"""MoGA Patch (Ray), worker side: what runs inside each raylight worker process.

A raylight worker (one Ray actor per GPU) loads its own copy of the diffusion model and cannot import this pack by
name (``custom_nodes/`` is not on its ``sys.path``). `nodes.ray_patch` sends every worker a self-contained function
through raylight's ``RayWorker.model_function_runner(fn, payload)`` (whose return value becomes the worker's model);
that function loads the pack by path under a private package name and calls `install` here. docs/RAYLIGHT.md §2, §5.

Payload (plain data, built by `nodes.ray_patch.build_payload`; nothing in it pickles by reference to this pack)::

    {"version": 1,
     "pack_root": "/abs/path/of/the/pack", "pack_rel": "custom_nodes/<pack>" or None (relative to ComfyUI's root),
     "router": RouterSet.to_plain() or None (auto routers),
     "options": {MoGAApply's option input id: value}}

`install` patches a clone exactly as MoGAApply does (`patcher.install`, same holder, same hooks) when the worker
runs without sequence parallelism (one GPU per model copy: data, CFG or FSDP parallel). With xfuser's
sequence-parallel group of world size > 1 (raylight's Ulysses/ring degree > 1) it installs
`sequence_parallel.SequenceParallelMogaPatch` and rewires Wan's self-attention at every load (ON_LOAD), after
raylight's own USP injection.
"""

from __future__ import annotations

import comfy.patcher_extension

from ..moga_core.routers import RouterSet
from .adapters import adapter_for
from .options import options_from_inputs
from .patcher import check_routers, install_patch
from .patcher import install as install_single
from .sequence_parallel import SequenceParallelMogaPatch, check_group_order, rewire_wan_self_attention

PAYLOAD_VERSION = 1
ON_LOAD_KEY = "moga_ray"  # key of the worker clone's ON_LOAD rewire (re-applying replaces it)


def sequence_parallel_group():
    """xfuser's sequence-parallel group coordinator when this process runs with an SP world size > 1, else None
    (xfuser not installed, its groups not initialised, or SP world size 1)."""
    try:
        from xfuser.core.distributed import get_sp_group, model_parallel_is_initialized
    except ImportError:
        return None
    if not model_parallel_is_initialized():
        return None
    group = get_sp_group()
    return group if group.world_size > 1 else None


def read_payload(payload):
    """-> (RouterSet or None, PatchOptions); a payload of another version or shape is a clear error."""
    if not isinstance(payload, dict) or payload.get("version") != PAYLOAD_VERSION:
        got = payload.get("version") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"MoGA Patch (Ray): expected a payload of version {PAYLOAD_VERSION} from the same pack, got "
                         f"{got!r} (the pack in the main process and on the workers differ: update both)")
    router = payload.get("router")
    routers = None if router is None else RouterSet.from_plain(router, name="MoGA Patch (Ray) router")
    return routers, options_from_inputs(**payload["options"])


def install(model, payload):
    """A MoGA-patched clone of the worker's ModelPatcher ``model`` (the input model is unchanged)."""
    routers, options = read_payload(payload)
    patched = model.clone()
    sp = sequence_parallel_group()
    if sp is None:
        install_single(patched, routers, options)
        return patched
    check_group_order(sp)
    adapter = adapter_for(patched)
    if routers is not None:
        check_routers(adapter, routers, patched)
    install_patch(patched, SequenceParallelMogaPatch(adapter, routers, options, sp.device_group, sp.world_size))

    def rewire(model_patcher, *rest):
        rewire_wan_self_attention(model_patcher.model.diffusion_model)

    # the model may already be loaded with raylight's USP forwards in place (no new load, no ON_LOAD): rewire now too
    rewire_wan_self_attention(patched.model.diffusion_model)
    patched.remove_callbacks_with_key(comfy.patcher_extension.CallbacksMP.ON_LOAD, ON_LOAD_KEY)
    patched.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_LOAD, ON_LOAD_KEY, rewire)
    return patched
