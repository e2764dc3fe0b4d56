"""The V3 extension: the node list ComfyUI asks for."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .apply import MoGAApply
from .calibrate import MoGACalibrateRouter
from .load_model import MoGALoadModel
from .load_router import MoGALoadRouter
from .long_video import MoGALongVideoGuider, MoGALongVideoSampler
from .multishot import MoGAMultiShotPrompt
from .ray_patch import MoGAApplyRay
from .router_files import register_folder
from .save_router import MoGASaveRouter


class MogaExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_folder()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [MoGALoadModel, MoGALoadRouter, MoGAApply, MoGACalibrateRouter, MoGASaveRouter, MoGAMultiShotPrompt,
                MoGALongVideoSampler, MoGALongVideoGuider, MoGAApplyRay]
