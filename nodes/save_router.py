"""MoGASaveRouter: write routers to ``models/moga/``."""

from __future__ import annotations

import os
import re

import folder_paths
from comfy_api.latest import io

from .router_files import FOLDER, register_folder
from .types import MogaRouter


class MoGASaveRouter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MoGASaveRouter",
            display_name="MoGA Save Router",
            category="MoGA",
            description="Writes routers (one per block, with their metadata) to models/moga/<name>.safetensors, "
                        "numbered so that nothing is overwritten.",
            inputs=[
                MogaRouter.Input("router", tooltip="Routers to save."),
                io.String.Input("filename", default="moga_router",
                                tooltip="File name (no extension); letters, digits, '-', '_' and sub-folders."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the file was written.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, router, filename: str) -> io.NodeOutput:
        name = (filename or "").strip().replace("\\", "/")
        if not name or not re.fullmatch(r"[A-Za-z0-9_\-./ ]+", name) or ".." in name.split("/"):
            raise ValueError(f"filename {filename!r}: use letters, digits, '-', '_' and '/' (no '..')")
        register_folder()
        root = folder_paths.get_folder_paths(FOLDER)[0]
        base = os.path.join(root, name)
        os.makedirs(os.path.dirname(base), exist_ok=True)
        counter = 1
        while os.path.exists(path := f"{base}_{counter:05d}.safetensors"):
            counter += 1
        router.save(path)
        return io.NodeOutput(path, ui={"text": [path]})
