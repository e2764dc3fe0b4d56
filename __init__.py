"""MoGA for ComfyUI — Mixture-of-Groups Attention for long, multi-shot video on Wan 2.1/2.2 and HunyuanVideo.

ComfyUI loads this file as the custom-node module: it reads ``WEB_DIRECTORY`` and calls ``comfy_entrypoint()``
(the V3 API). ComfyUI is imported only inside that function, so importing the pack's library outside ComfyUI
(``import moga_core``) never needs it.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import MogaExtension

    return MogaExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
