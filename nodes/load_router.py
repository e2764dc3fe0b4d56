"""MoGALoadRouter: routers from ``models/moga/`` (router files, or the routers of a MoGA checkpoint)."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from .router_files import FOLDER, folder_description, load_router_file, router_files
from .types import MogaRouter


class MoGALoadRouter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MoGALoadRouter",
            display_name="MoGA Router Loader",
            category="MoGA/loaders",
            description="Loads MoGA routers from models/moga/: a router file (from MoGA Save Router or a release), "
                        "or a full MoGA checkpoint, whose router weights are split out.",
            inputs=[
                io.Combo.Input("router_name", options=router_files(),
                               tooltip="A .safetensors file in models/moga/ (extra_model_paths.yaml 'moga:' "
                                       "entries are searched too)."),
            ],
            outputs=[MogaRouter.Output(tooltip="The routers, one per patched block, with their metadata.")],
        )

    @classmethod
    def validate_inputs(cls, router_name: str):
        files = router_files()
        if not files:
            return (f"no router files found in models/moga/ (searched: {folder_description()}); calibrate one "
                    "with MoGA Calibrate Router + MoGA Save Router, or put a MoGA router/checkpoint there")
        if router_name not in files:
            return f"router file {router_name!r} is not in models/moga/ (found: {', '.join(files[:10])})"
        return True

    @classmethod
    def execute(cls, router_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(FOLDER, router_name)
        return io.NodeOutput(load_router_file(path))
