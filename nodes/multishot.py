"""MoGAMultiShotPrompt: shots (prompt + duration) -> conditioning where each shot's frames see their own caption."""

from __future__ import annotations

import torch

from comfy_api.latest import io

from .shot_attention import shot_hook_group
from .shots import check_shots_text, parse_shots, plan_shots, with_tokens
from .types import MogaShots

FPS_MIN, FPS_MAX = 1.0, 120.0
EXAMPLE = ("3s | A red-haired woman in a green coat walks into a rainy cafe, wide shot\n"
           "2s | Close-up of her face as she smiles at the barista\n"
           "3s | The barista, an old man with a grey beard, hands her a cup of coffee")


def encode(clip, text: str):
    """(tokens (1, L, C), extras dict) for one caption through the user's text encoder."""
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    tensor, extras = cond[0][0], dict(cond[0][1])
    return tensor, extras


def multishot_conditioning(clip, shots_text: str, global_prompt: str, fps: float):
    """-> (conditioning, plan). Captions are concatenated [global, shot 1, …]; the plan records their token ranges."""
    plan = plan_shots(parse_shots(shots_text, fps), fps)
    parts, masks, ranges = [], [], []
    pooled = None
    position = 0
    global_range = None
    texts = ([("global", global_prompt.strip())] if global_prompt and global_prompt.strip() else []) + \
        [(f"shot {i + 1}", s.prompt) for i, s in enumerate(plan.shots)]
    for name, text in texts:
        tensor, extras = encode(clip, text)
        if tensor.dim() != 3 or tensor.shape[0] != 1:
            raise ValueError(f"{name}: the text encoder returned {tuple(tensor.shape)}, expected (1, tokens, width)")
        if parts and tensor.shape[-1] != parts[0].shape[-1]:
            raise ValueError(f"{name}: caption width {tensor.shape[-1]} differs from {parts[0].shape[-1]}")
        span = (position, position + tensor.shape[1])
        position = span[1]
        if name == "global":
            global_range = span
        else:
            ranges.append(span)
        if pooled is None and extras.get("pooled_output") is not None:
            pooled = extras["pooled_output"]
        mask = extras.get("attention_mask")
        masks.append(mask if mask is not None else torch.ones(1, tensor.shape[1], dtype=torch.long))
        parts.append(tensor)
    plan = with_tokens(plan, global_range, ranges, position)
    extras = {"hooks": shot_hook_group(plan)}
    if pooled is not None:
        extras["pooled_output"] = pooled
    mask = torch.cat([m.reshape(1, -1).to(torch.long) for m in masks], dim=1)
    if not bool(mask.all()):  # only encoders that pad (HunyuanVideo's) need the mask in the conditioning
        extras["attention_mask"] = mask
    return [[torch.cat(parts, dim=1), extras]], plan


class MoGAMultiShotPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MoGAMultiShotPrompt",
            display_name="MoGA Multi-Shot Prompt",
            category="MoGA",
            description="One prompt per shot with its duration. Encodes every caption; inside the model each "
                        "shot's frames attend only to the global prompt and their own caption, and MoGA's local "
                        "windows break at the cuts. Negative prompts stay global (use a normal text encode).",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of your video model."),
                io.String.Input("shots", multiline=True, default=EXAMPLE,
                                tooltip="One shot per line: 'duration | prompt'. Durations in seconds ('3s', "
                                        "'2.5') or frames ('33f'). Cuts are moved to the nearest latent frame "
                                        "(4 frames) and reported."),
                io.String.Input("global_prompt", multiline=True, default="",
                                tooltip="Seen by every shot: characters, style, setting that stay the same."),
                io.Float.Input("fps", default=16.0, min=FPS_MIN, max=FPS_MAX, step=1.0,
                               tooltip="Frames per second of the video (Wan: 16, HunyuanVideo: 24)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="All captions, with the shot plan."),
                MogaShots.Output(display_name="shots", tooltip="The shot plan, for the long-video sampler."),
                io.Int.Output(display_name="frames", tooltip="Video length in frames (4k+1) for the empty latent."),
                io.String.Output(display_name="plan", tooltip="Frames, latent frames and cut positions per shot."),
            ],
        )

    @classmethod
    def validate_inputs(cls, shots=None, fps=None):
        """When the prompt is queued, before any model loads or text encodes: the shot text and the frame rate, as
        far as they are literals (a linked input arrives as None here and is checked when the node runs)."""
        if fps is not None:
            # naming fps here turns ComfyUI's own min/max check off for it: the same bounds, checked here
            if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not FPS_MIN <= fps <= FPS_MAX:
                return f"fps must be between {FPS_MIN:g} and {FPS_MAX:g}, got {fps!r}"
        if shots is not None:
            try:
                check_shots_text(shots, None if fps is None else float(fps))
            except ValueError as exc:
                return f"shots: {exc}"
        return True

    @classmethod
    def execute(cls, clip, shots: str, global_prompt: str, fps: float) -> io.NodeOutput:
        if clip is None:
            raise ValueError("clip is missing: connect the text encoder of your video model")
        conditioning, plan = multishot_conditioning(clip, shots, global_prompt, fps)
        report = plan.describe()
        return io.NodeOutput(conditioning, plan, plan.num_frames, report, ui={"text": [report]})
