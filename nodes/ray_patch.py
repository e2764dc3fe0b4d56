"""MoGA Patch (Ray): MoGA on the models of raylight's workers (github.com/komikndr/raylight).

raylight's workers each load their own copy of the model, so a patched MODEL from this process never reaches them.
This node sends every worker a plain-data payload and a self-contained function (`worker_function`) through
raylight's ``RayWorker.model_function_runner``; the worker's model becomes the MoGA-patched clone that
`nodes.raylight_worker.install` returns. Graph: Ray Init Actor → Load Diffusion Model (Ray) → MoGA Patch (Ray) →
raylight's sampler. docs/RAYLIGHT.md explains the mechanics.

``ray`` is imported only when the node runs: without ray and raylight the pack loads and the node registers, and
running it says what to install.
"""

from __future__ import annotations

import os

from comfy_api.latest import io

from .options import option_inputs, options_from_inputs
from .patcher import check_auto_options
from .raylight_worker import PAYLOAD_VERSION
from .types import MogaRouter, RayActors

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSING = ("MoGA Patch (Ray) needs raylight (github.com/komikndr/raylight, installed as a ComfyUI custom node) and its "
           "requirements ray>=2.48 and xfuser>=0.4.4 (yunchang comes with xfuser); {what}")


def require_ray():
    """The ``ray`` module, or a RuntimeError naming what to install (ray and raylight)."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(MISSING.format(what=f"'import ray' failed here ({exc}): pip install ray raylight's "
                                               "requirements, or install raylight")) from None
    import importlib.util

    if importlib.util.find_spec("raylight") is None:
        raise RuntimeError(MISSING.format(what="ray is installed but raylight is not (no 'raylight' package): "
                                               "install raylight into ComfyUI/custom_nodes"))
    return ray


def workers_of(ray_actors) -> list:
    """The actor handles of raylight's RAY_ACTORS value ``{"workers": [actor, ...]}``."""
    workers = ray_actors.get("workers") if isinstance(ray_actors, dict) else None
    if not isinstance(workers, (list, tuple)) or not workers:
        raise ValueError(f"ray_actors must be raylight's RAY_ACTORS ({{'workers': [actor, ...]}}, from Ray Init Actor "
                         f"or a raylight loader), got {type(ray_actors).__name__}"
                         + (f" with keys {sorted(ray_actors)}" if isinstance(ray_actors, dict) else ""))
    return list(workers)


def pack_relative_path(pack_root: str = PACK_ROOT) -> str | None:
    """The pack's path relative to ComfyUI's root (``custom_nodes/<pack>``), for clusters whose workers run in an
    uploaded copy of that root; None when the pack lies outside it."""
    import folder_paths

    rel = os.path.relpath(os.path.realpath(pack_root), os.path.realpath(folder_paths.base_path))
    return None if rel.startswith("..") else rel


def build_payload(router, options: dict, pack_root: str = PACK_ROOT, pack_rel: str | None = None) -> dict:
    """Plain data for the workers (see `nodes.raylight_worker`): the pack's location, the routers as CPU tensors and
    metadata strings (or None: auto routers), the option values by input id."""
    return {"version": PAYLOAD_VERSION, "pack_root": os.path.realpath(pack_root), "pack_rel": pack_rel,
            "router": None if router is None else router.to_plain(), "options": dict(options)}


def worker_function():
    """The function every worker runs as ``fn(model, payload) -> patched model``.

    Nested, so cloudpickle (Ray's serializer) sends it by value; it names nothing of this pack's modules (a module
    of a ComfyUI custom node is registered under its path and cannot be imported by that name on a worker). It
    finds the pack at ``payload["pack_root"]`` (same machine) or at ``payload["pack_rel"]`` under the worker's
    ComfyUI root (``$COMFYUI_BASE_DIRECTORY`` or the working directory: a remote cluster's uploaded copy), loads it
    under a private package name, and calls ``nodes.raylight_worker.install(model, payload)``.
    """

    def moga_ray_install(model, payload):
        import hashlib
        import importlib
        import importlib.util
        import os
        import sys

        rel = payload.get("pack_rel")
        bases = [os.environ.get("COMFYUI_BASE_DIRECTORY"), os.getcwd()]
        candidates = [payload["pack_root"]] + [os.path.join(b, rel) for b in bases if b and rel]
        root = next((c for c in candidates if os.path.isfile(os.path.join(c, "nodes", "raylight_worker.py"))), None)
        if root is None:
            raise RuntimeError(f"MoGA Patch (Ray): this worker finds no MoGA pack (nodes/raylight_worker.py) at "
                               f"{candidates}; the workers need the pack at the same path as the main process, or "
                               f"under their ComfyUI root as {rel!r}")
        root = os.path.realpath(root)
        name = "moga_pack_worker_" + hashlib.sha1(root.encode()).hexdigest()[:12]
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"),
                                                          submodule_search_locations=[root])
            pack = importlib.util.module_from_spec(spec)
            sys.modules[name] = pack
            try:
                spec.loader.exec_module(pack)
            except BaseException:
                sys.modules.pop(name, None)
                raise
        return importlib.import_module(f"{name}.nodes.raylight_worker").install(model, payload)

    return moga_ray_install


class MoGAApplyRay(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MoGAApplyRay",
            display_name="MoGA Patch (Ray)",
            category="MoGA",
            description="MoGA Attention Patch for raylight's multi-GPU workers: every worker's model is patched with "
                        "MoGA (the same patch as MoGA Attention Patch). Under raylight's sequence parallelism "
                        "(Ulysses/ring degree > 1; Wan only so far) MoGA runs across the GPUs. Needs raylight, ray "
                        "and xfuser.",
            inputs=[
                RayActors.Input("ray_actors", tooltip="raylight's actors, after Load Diffusion Model (Ray)."),
                MogaRouter.Input("router", optional=True,
                                 tooltip="Routers from MoGA Router Loader or MoGA Calibrate Router. Left empty: groups "
                                         "as the grouping input says (under sequence parallelism: random only)."),
                *option_inputs(),
            ],
            outputs=[RayActors.Output(tooltip="The same actors; their models are now MoGA-patched.")],
            search_aliases=["mixture of groups", "sparse attention", "raylight", "multi gpu"],
        )

    @classmethod
    def execute(cls, ray_actors, router=None, **options) -> io.NodeOutput:
        patch_options = options_from_inputs(**options)  # a bad value fails here, before any worker sees it
        if router is None:
            check_auto_options(patch_options)
        ray = require_ray()
        workers = workers_of(ray_actors)
        payload = build_payload(router, options, pack_rel=pack_relative_path())
        fn = worker_function()
        ray.get([worker.model_function_runner.remote(fn, payload) for worker in workers])
        return io.NodeOutput(ray_actors)
