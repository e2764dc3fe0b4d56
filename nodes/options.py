"""The patch options shared by MoGAApply and MoGALoadModel: one definition of inputs, tooltips and parsing."""

from __future__ import annotations

from comfy_api.latest import io

from ..moga_core.config import BACKENDS
from .patcher import PatchOptions

COMBINE_CHOICES = ["router default", "union", "mean"]


def option_inputs() -> list:
    """V3 inputs (ids are stable: workflows and scripts rely on them)."""
    return [
        io.Combo.Input("combine", options=COMBINE_CHOICES, default="router default",
                       tooltip="How the group attention and the local windows combine. 'union': exact attention over "
                               "group keys plus local keys (for stock weights and calibrated routers). 'mean': the "
                               "paper's average of branches (only for MoGA-trained weights). 'router default' uses "
                               "what the router file says."),
        io.Int.Input("windows_h", default=2, min=0, max=64,
                     tooltip="Spatial windows per latent frame along the height for the local branch (the paper: 2). "
                             "0 turns the window branch off."),
        io.Int.Input("windows_w", default=2, min=0, max=64,
                     tooltip="Spatial windows per latent frame along the width (the paper: 2). 0 turns the window "
                             "branch off."),
        io.Int.Input("temporal_group", default=10, min=1, max=1024,
                     tooltip="Latent frames per temporal group of the window branch; groups restart at every shot "
                             "cut (1 latent frame = 4 video frames)."),
        io.Int.Input("neighbor_frames", default=2, min=0, max=64,
                     tooltip="Latent frames of the adjacent shot that the first/last window of a shot also sees "
                             "(keys only), against flicker at cuts."),
        io.Boolean.Input("frame_branch", default=True,
                         tooltip="Also attend to every token of the query's own latent frame."),
        io.Boolean.Input("balanced", default=False, advanced=True,
                         tooltip="Force equal group sizes (a token over capacity goes to its next-best group): "
                                 "one batched attention call, faster, slightly less faithful."),
        io.Float.Input("start_percent", default=0.2, min=0.0, max=1.0, step=0.01,
                       tooltip="Sampling progress before which attention stays dense (a dense warm-up keeps the "
                               "composition of stock models; 0 = MoGA from the first step)."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Sampling progress after which attention is dense again (1 = MoGA to the end)."),
        io.String.Input("dense_blocks", default="",
                        tooltip="Blocks that stay dense, e.g. '0,1,-1' or '0-2' (negative counts from the end; "
                                "HunyuanVideo numbers double blocks first, then single blocks)."),
        io.Int.Input("min_tokens", default=16384, min=0, max=1 << 24,
                     tooltip="Sequences shorter than this stay dense (MoGA pays off on long videos; 32,760 tokens "
                             "= 5 s of 480p Wan)."),
        io.Combo.Input("backend", options=list(BACKENDS), default="auto", advanced=True,
                       tooltip="Attention kernel for the grouped calls; 'auto' picks the fastest installed "
                               "(see `python -m moga_core info`)."),
    ]


def options_from_inputs(combine: str, windows_h: int, windows_w: int, temporal_group: int, neighbor_frames: int,
                        frame_branch: bool, balanced: bool, start_percent: float, end_percent: float,
                        dense_blocks: str, min_tokens: int, backend: str) -> PatchOptions:
    if combine not in COMBINE_CHOICES:
        raise ValueError(f"combine must be one of {COMBINE_CHOICES}, got {combine!r}")
    if end_percent < start_percent:
        raise ValueError(f"end_percent ({end_percent}) must not be below start_percent ({start_percent})")
    if (windows_h == 0) != (windows_w == 0):
        raise ValueError(f"windows_h and windows_w must both be 0 (window branch off) or both >= 1; got "
                         f"{windows_h} and {windows_w}")
    return PatchOptions(
        combine=None if combine == "router default" else combine,
        window=None if windows_h == 0 else (windows_h, windows_w),
        temporal_group=temporal_group, neighbor_frames=neighbor_frames, frame_branch=frame_branch,
        balanced=balanced, start_percent=start_percent, end_percent=end_percent, dense_blocks=dense_blocks,
        min_tokens=min_tokens, backend=backend)
