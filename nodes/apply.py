"""MoGAApply: patch a MODEL's video self-attention with MoGA."""

from __future__ import annotations

from comfy_api.latest import io

from . import wiring
from .options import option_inputs, options_from_inputs
from .patcher import install
from .types import MogaRouter, MogaShots


class MoGAApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MoGAApply",
            display_name="MoGA Attention Patch",
            category="MoGA",
            description="Patches a clone of a Wan 2.1/2.2 (incl. Animate, S2V), HunyuanVideo, Kandinsky 5 or LTX-2 MODEL so its video self-attention runs "
                        "Mixture-of-Groups Attention with the given routers, or with routers fitted to each video "
                        "at the end of the dense warm-up when none is connected. Everything else (cross-attention, "
                        "text refiner, dense steps) runs as before.",
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1/2.2 (t2v, i2v, VACE, TI2V-5B, Animate, S2V), HunyuanVideo 1.0/1.5, Kandinsky 5 video or LTX-2 model (LTX-2: its video stream)."),
                MogaRouter.Input("router", optional=True,
                                 tooltip="Routers from MoGA Router Loader or MoGA Calibrate Router. Left empty: "
                                         "auto_groups groups as the grouping input says (random and balanced by "
                                         "default, or fitted to each video at the end of the dense warm-up)."),
                *option_inputs(),
                MogaShots.Input("shots", optional=True,
                                tooltip="A shot plan: local windows break at its cuts for every prompt (the "
                                        "multi-shot prompt already carries it for its own conditioning)."),
            ],
            outputs=[io.Model.Output(tooltip="The MoGA-patched model (the input model is unchanged).")],
            search_aliases=["mixture of groups", "sparse attention", "long video"],
        )

    @classmethod
    def execute(cls, model, router=None, shots=None, **options) -> io.NodeOutput:
        patched = model.clone()
        if shots is not None:
            wiring.set_shot_cuts(patched, shots.latent_starts)
        install(patched, router, options_from_inputs(**options))
        return io.NodeOutput(patched)
