"""A tiny LTX-2 audio-video model (ComfyUI's ``LTXAVModel``), built and loaded the way ComfyUI loads a real one.

The builder instantiates the real ``comfy.ldm.lightricks.av_model.LTXAVModel`` with a tiny config, fills it with
seeded random weights (`tiny_models._randomize`) and hands the state dict, with the config as the safetensors
``config`` metadata LTX-2 checkpoints carry (``{"transformer": {...}}``), to
``comfy.sd.load_diffusion_model_state_dict``: model detection (the "Lightricks ltxv" branch picks ``ltxav`` by the
audio AdaLN keys), ``model_base.LTXAV``, the latent format and model_sampling are ComfyUI's own.

Sizes: video stream 2 heads × 32 (inner 64), audio stream 2 heads × 16 (inner 32), so a video self-attention call is
(B, Nv, 64) and an audio one (B, Na, 32); captions 32 channels with 1-layer connectors (2 heads × 16).

Inputs are made as ComfyUI's nodes make them: the video latent by ``EmptyLTXVLatentVideo`` (B, 128, (F-1)//8+1,
H/32, W/32), the audio latent by ``LTXVEmptyLatentAudio`` (B, 8, ceil(F/fps·25), 16), the pair by
``LTXVConcatAVLatent`` (a NestedTensor), guides by ``LTXVAddGuide``; the conditioning as LTX-2's Gemma text encoder
gives it (``LTXAVTEModel``: (B, L, caption_channels) with ``unprocessed_ltxav_embeds``, which ``model_base.LTXAV``
sends through the model's embeddings connectors) and ``LTXVConditioning`` (frame rate).
"""

from __future__ import annotations

import json
import math

import torch

from tiny_models import _randomize

CAPTION_CHANNELS = 32
VIDEO_HEADS, VIDEO_HEAD_DIM = 2, 32
AUDIO_HEADS, AUDIO_HEAD_DIM = 2, 16
FRAME_RATE = 25


def ltxav_config(layers: int = 2, video=(VIDEO_HEADS, VIDEO_HEAD_DIM), audio=(AUDIO_HEADS, AUDIO_HEAD_DIM)) -> dict:
    """The ``transformer`` config of a tiny LTX-2 (the keys ``LTXAVModel`` and its connectors read); ``video`` and
    ``audio``: (heads, head dim) of each stream (LTX-2 itself: 32 × 128 and 32 × 64, what bench/families.py uses)."""
    return {
        "num_layers": layers,
        "num_attention_heads": video[0],
        "attention_head_dim": video[1],
        "cross_attention_dim": video[0] * video[1],  # attn2's keys are the projected captions: inner dim
        "audio_num_attention_heads": audio[0],
        "audio_attention_head_dim": audio[1],
        "audio_cross_attention_dim": audio[0] * audio[1],
        "caption_channels": CAPTION_CHANNELS,
        "connector_num_attention_heads": 2,  # 2 × 16 = caption_channels: the connector runs on the captions
        "connector_attention_head_dim": CAPTION_CHANNELS // 2,
        "connector_num_layers": 1,
        "rope_type": "split",  # LTX-2's rope layout
        "frequencies_precision": "float64",
        "causal_temporal_positioning": True,
    }


def ltxav_state_dict(layers: int = 2, seed: int = 0, **sizes) -> tuple[dict, dict]:
    """(state dict, safetensors metadata) of a tiny LTX-2 with seeded random weights (``sizes``: `ltxav_config`'s)."""
    import comfy.ldm.lightricks.av_model as av
    import comfy.ops

    config = ltxav_config(layers, **sizes)
    model = av.LTXAVModel(in_channels=128, audio_in_channels=128, operations=comfy.ops.disable_weight_init, **config)
    return _randomize(model, seed), {"config": json.dumps({"transformer": config})}


def load_ltxav(layers: int = 2, seed: int = 0, dtype=torch.float32, **sizes):
    """The tiny LTX-2 as a ModelPatcher, loaded by ``comfy.sd.load_diffusion_model_state_dict``."""
    import comfy.sd

    sd, metadata = ltxav_state_dict(layers, seed, **sizes)
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype}, metadata=metadata)
    assert model is not None, "ComfyUI did not detect the tiny LTX-2"
    return model


def ltx_conditioning(tokens: int = 12, seed: int = 1):
    """What LTX-2's text encoder (``LTXAVTEModel``) gives for one prompt: (1, L, caption_channels) features of the
    real tokens, flagged unprocessed so ``model_base.LTXAV`` runs them through the model's embeddings connectors."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, CAPTION_CHANNELS, generator=gen), {"unprocessed_ltxav_embeds": True}]]


def with_frame_rate(positive, negative, frame_rate: float = FRAME_RATE):
    """ComfyUI's ``LTXVConditioning``: the frame rate on both conds (the model's rope reads it)."""
    from comfy_extras.nodes_lt import LTXVConditioning

    return tuple(LTXVConditioning.execute(positive, negative, frame_rate))


def video_latent(width: int = 256, height: int = 128, length: int = 33) -> dict:
    """``EmptyLTXVLatentVideo``: (1, 128, (length-1)//8+1, height/32, width/32)."""
    from comfy_extras.nodes_lt import EmptyLTXVLatentVideo

    return EmptyLTXVLatentVideo.execute(width, height, length, 1)[0]


def audio_vae_stand_in():
    """The few facts of LTX-2's audio VAE that ``LTXVEmptyLatentAudio`` reads (16 kHz, hop 160, 8 × 16 latents), with
    ComfyUI's own ``AudioVAE`` formula for the latent count (its methods, borrowed: the real VAE is a multi-GB file).
    v0.19 hands the node the ``AudioVAE`` itself; newer ComfyUI a ``comfy.sd.VAE`` whose ``first_stage_model`` it
    is: the stand-in is both."""
    from comfy.ldm.lightricks.vae.audio_vae import AudioVAE

    class AudioVAEStandIn:
        sample_rate = 16000
        mel_hop_length = 160
        latent_channels = 8
        latent_frequency_bins = 16
        latents_per_second = AudioVAE.latents_per_second
        num_of_latents_from_frames = AudioVAE.num_of_latents_from_frames

        @property
        def first_stage_model(self):
            return self

    return AudioVAEStandIn()


def audio_latent(length: int = 33, frame_rate: int = FRAME_RATE) -> dict:
    """``LTXVEmptyLatentAudio``: (1, 8, ceil(length / frame_rate · 25), 16) zeros."""
    try:
        from comfy_extras.nodes_lt_audio import LTXVEmptyLatentAudio
    except ImportError:  # the audio nodes import torchaudio, which a CPU test environment may lack
        LTXVEmptyLatentAudio = None
    if LTXVEmptyLatentAudio is not None:
        return LTXVEmptyLatentAudio.execute(length, frame_rate, 1, audio_vae_stand_in())[0]
    # the node's latent by hand: 16 kHz / hop 160 / 4x downsampling = 25 latents a second, 8 channels x 16 bins
    count = math.ceil(length / frame_rate * 25)
    return {"samples": torch.zeros(1, 8, count, 16), "sample_rate": 16000, "type": "audio"}


def av_latent(video: dict, audio: dict) -> dict:
    """``LTXVConcatAVLatent``: the NestedTensor (video, audio) latent the sampler takes."""
    from comfy_extras.nodes_lt import LTXVConcatAVLatent

    return LTXVConcatAVLatent.execute(video, audio)[0]


class VideoVAEStandIn:
    """What ``LTXVAddGuide`` reads of the LTX video VAE: its scale factors (8, 32, 32) and ``encode`` (pixels
    (F, H, W, 3) -> latent (1, 128, (F-1)//8+1, H/32, W/32)); the "encoding" is seeded noise of that shape."""

    downscale_index_formula = (8, 32, 32)

    def __init__(self, seed: int = 3):
        self.seed = seed

    def encode(self, pixels):
        f, h, w, _ = pixels.shape
        gen = torch.Generator().manual_seed(self.seed)
        return 0.5 * torch.randn(1, 128, (f - 1) // 8 + 1, h // 32, w // 32, generator=gen)


def add_guide(positive, negative, latent: dict, frame_idx: int = 0, strength: float = 1.0, frames: int = 1):
    """ComfyUI's ``LTXVAddGuide`` on a video latent: appends the guide's latent frames along time, their keyframe
    positions (``keyframe_idxs``) and a ``guide_attention_entries`` row to both conds, and the guide's noise mask."""
    from comfy_extras.nodes_lt import LTXVAddGuide

    _, _, _, h, w = latent["samples"].shape
    image = torch.rand(frames, h * 32, w * 32, 3, generator=torch.Generator().manual_seed(9))
    return tuple(LTXVAddGuide.execute(positive, negative, VideoVAEStandIn(), latent, image, frame_idx, strength))
