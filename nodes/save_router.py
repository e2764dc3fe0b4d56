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
        register_folder()
        path = new_router_path(folder_paths.get_folder_paths(FOLDER)[0], filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        router.save(path)
        return io.NodeOutput(path, ui={"text": [path]})


def new_router_path(root: str, filename: str) -> str:
    """``<root>/<filename>_NNNNN.safetensors`` with the first free number; never a path outside ``root``.

    A workflow can come from anywhere, so its ``filename`` is checked twice: by its characters (relative, no '..'),
    then by where it really lands once symbolic links are resolved (a linked sub-folder or file may point elsewhere).
    """
    name = (filename or "").strip().replace("\\", "/")
    if not name or not re.fullmatch(r"[A-Za-z0-9_\-./ ]+", name) or ".." in name.split("/") or name.startswith("/"):
        raise ValueError(f"filename {filename!r}: use letters, digits, '-', '_', '.', spaces and '/' for sub-folders "
                         "of models/moga (no '..', not starting with '/')")
    real_root = os.path.realpath(root)
    base = os.path.join(real_root, name)
    counter = 1
    while os.path.lexists(path := f"{base}_{counter:05d}.safetensors"):
        counter += 1
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise ValueError(f"filename {filename!r} leads outside models/moga ({os.path.realpath(path)}); "
                         "choose a name inside it")
    return path
