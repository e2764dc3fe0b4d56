"""Test-only custom nodes: stand-ins for the loaders whose real models cannot run in a CPU test.

tests/host/test_workflows.py loads this folder with ComfyUI's own ``nodes.load_custom_node`` and, in the API prompt
converted from a shipped workflow, replaces the ``class_type`` of exactly these loader nodes (nothing else):

- ``CLIPLoader`` (UMT5-XXL, 6.7 GB) -> ``StandInCLIPLoader``
- ``DualCLIPLoader`` (CLIP-L + LLaVA-Llama-3-8B, 9 GB, HunyuanVideo; Qwen2.5-VL 7B + CLIP-L, 9 GB, Kandinsky 5)
  -> ``StandInDualCLIPLoader``
- ``CLIPVisionLoader`` (ViT-H/14, 1.2 GB) -> ``StandInCLIPVisionLoader``
- ``AudioEncoderLoader`` (wav2vec2 large, 24 layers x 1024, 0.6 GB; Wan 2.2 S2V) -> ``StandInAudioEncoderLoader``,
  registered only where ComfyUI has AudioEncoderLoader (its module imports torchaudio)

Each stand-in declares the real node's inputs (its ``INPUT_TYPES`` is the real class's), resolves and reads the
file the workflow names from the same model folder, and returns an object with the interface the consuming nodes
use:

- the text encoders return `StandInTextEncoder`: ComfyUI's CLIP interface as CLIPTextEncode and MoGA Multi-Shot
  Prompt use it (``tokenize`` -> ``encode_from_tokens_scheduled`` -> ``[[cond (1, L, 4096), extras]]``), with the
  real encoders' output widths (UMT5-XXL and LLaVA: 4096; Qwen2.5-VL 7B: 3584; HunyuanVideo and Kandinsky 5 also
  get CLIP-L's pooled (1, 768) vector and a text attention mask with padding, as LLaVA's and Qwen's encodings can
  carry), deterministic per text;
- the CLIP-vision loader returns ComfyUI's real ``comfy.clip_vision.ClipVisionModel`` built from ComfyUI's own
  ViT-H config (``comfy/clip_vision_config_h.json``) with 2 layers instead of 32 and narrow MLPs (``TINY_VIT_H``;
  the 1280 width that Wan's image projection reads, 224 px, patch 14, 257 tokens stay), and loads the tiny state
  dict (real key layout) from the file. The real loader picks its config from the layer count (a file with
  layer 30 is ViT-H), which is why the loader node itself is substituted;
- the audio-encoder loader returns `StandInAudioEncoder`: the interface AudioEncoderEncode uses (``encode_audio``)
  with wav2vec2 large's outputs as ``comfy.audio_encoders.audio_encoders.AudioEncoderModel`` returns them: the
  audio resampled to 16 kHz (``audio_samples``), one feature frame per 320 samples as the convolutional feature
  encoder counts them, ``encoded_audio`` (B, T, 1024) and ``encoded_audio_all_layers``, the 25 hidden states (the
  input of each of the 24 layers and the output) that Wan 2.2 S2V's audio encoder weighs; deterministic per audio.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile

import torch

import comfy.clip_vision
import comfy.utils
import folder_paths
import nodes

#: what differs from ComfyUI's ViT-H config
TINY_VIT_H = {"num_hidden_layers": 2, "intermediate_size": 64, "projection_dim": 64}
STAND_IN_MARKER = "moga_test_stand_in"  # metadata key of the placeholder text-encoder files
QWEN25_7B_WIDTH = 3584  # Qwen2.5-VL 7B's hidden size: the caption width Kandinsky 5 reads

#: every text a stand-in encoder encoded, in order (tests inspect it)
ENCODED: list[tuple[str, str]] = []
#: every audio the stand-in audio encoder encoded: (16 kHz samples, feature frames), in order
ENCODED_AUDIO: list[tuple[int, int]] = []

WAV2VEC2_LAYERS, WAV2VEC2_WIDTH = 24, 1024  # wav2vec2 large (comfy.audio_encoders.audio_encoders: embed_dim 1024)
#: (kernel, stride) of wav2vec2's convolutional feature encoder (comfy.audio_encoders.wav2vec2.ConvFeatureEncoder)
WAV2VEC2_CONVS = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))


def tiny_vit_h_config() -> str:
    """Path of a JSON config: ComfyUI's ViT-H config with `TINY_VIT_H` applied."""
    with open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")) as f:
        config = json.load(f)
    config.update(TINY_VIT_H)
    with tempfile.NamedTemporaryFile("w", prefix="moga_test_vit_h_", suffix=".json", delete=False) as f:
        json.dump(config, f)
    return f.name


class StandInTextEncoder:
    """ComfyUI's CLIP interface as the text nodes use it; deterministic random features per text."""

    def __init__(self, kind: str, width: int = 4096, tokens: int = 16, pooled: bool = False, pad: int = 0):
        self.kind, self.width, self.tokens, self.pooled, self.pad = kind, width, tokens, pooled, pad

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs):
        return {"stand_in": text}

    def encode_from_tokens_scheduled(self, tokens, unprojected: bool = False, add_dict=None, show_pbar=True):
        text = tokens["stand_in"]
        ENCODED.append((self.kind, text))
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        gen = torch.Generator().manual_seed(seed)
        cond = torch.randn(1, self.tokens, self.width, generator=gen)
        extras = dict(add_dict or {})
        if self.pooled:
            extras["pooled_output"] = torch.randn(1, 768, generator=gen)
        if self.pad:
            mask = torch.ones(1, self.tokens, dtype=torch.long)
            mask[:, -self.pad:] = 0
            extras["attention_mask"] = mask
        return [[cond, extras]]


def _check_stand_in_file(folder: str, name: str) -> str:
    path = folder_paths.get_full_path_or_raise(folder, name)
    _, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    if not metadata or STAND_IN_MARKER not in metadata:
        raise ValueError(f"{path} is not a stand-in file written by the workflow tests")
    return path


class StandInCLIPLoader:
    """For CLIPLoader (type wan: UMT5-XXL)."""

    INPUT_TYPES = nodes.CLIPLoader.INPUT_TYPES
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "testing"

    def load_clip(self, clip_name, type="stable_diffusion", device="default"):
        _check_stand_in_file("text_encoders", clip_name)
        if type != "wan":
            raise ValueError(f"the stand-in only models UMT5-XXL for Wan (type 'wan'), got {type!r}")
        return (StandInTextEncoder("umt5xxl"),)


class StandInDualCLIPLoader:
    """For DualCLIPLoader: type hunyuan_video (CLIP-L + LLaVA-Llama-3) and type kandinsky5 (Qwen2.5-VL 7B +
    CLIP-L)."""

    INPUT_TYPES = nodes.DualCLIPLoader.INPUT_TYPES
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "testing"

    def load_clip(self, clip_name1, clip_name2, type, device="default"):
        for name in (clip_name1, clip_name2):
            _check_stand_in_file("text_encoders", name)
        if type == "hunyuan_video":
            return (StandInTextEncoder("llava_llama3+clip_l", pooled=True, pad=2),)
        if type == "kandinsky5":  # comfy.text_encoders.kandinsky5: Qwen2.5-VL hidden states, CLIP-L pooled vector
            return (StandInTextEncoder("qwen25_7b+clip_l", width=QWEN25_7B_WIDTH, pooled=True, pad=2),)
        raise ValueError(f"the stand-in only models HunyuanVideo's and Kandinsky 5's encoders, got {type!r}")


class StandInCLIPVisionLoader:
    """For CLIPVisionLoader (clip_vision_h: ViT-H/14): the real ClipVisionModel class with a 2-layer config."""

    INPUT_TYPES = nodes.CLIPVisionLoader.INPUT_TYPES
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load_clip"
    CATEGORY = "testing"

    def load_clip(self, clip_name):
        path = folder_paths.get_full_path_or_raise("clip_vision", clip_name)
        sd = comfy.utils.load_torch_file(path)
        config = tiny_vit_h_config()
        try:
            model = comfy.clip_vision.ClipVisionModel(config)
        finally:
            os.unlink(config)
        missing, unexpected = model.load_sd(sd)
        if missing or unexpected:
            raise ValueError(f"tiny CLIP-vision state dict does not fit: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}")
        return (model,)


class StandInAudioEncoder:
    """wav2vec2 large as AudioEncoderEncode uses it (``encode_audio``): outputs of the real shapes and keys."""

    sample_rate = 16000

    def encode_audio(self, audio: torch.Tensor, sample_rate: int) -> dict:
        samples = math.ceil(audio.shape[2] * self.sample_rate / sample_rate)  # torchaudio's resampled length
        frames = samples
        for kernel, stride in WAV2VEC2_CONVS:
            frames = (frames - kernel) // stride + 1
        if frames < 1:
            raise ValueError(f"{audio.shape[2]} samples at {sample_rate} Hz are too short for wav2vec2")
        ENCODED_AUDIO.append((samples, frames))
        digest = hashlib.sha256(audio.float().numpy().tobytes()).hexdigest()
        gen = torch.Generator().manual_seed(int(digest[:8], 16))
        layers = tuple(torch.randn(audio.shape[0], frames, WAV2VEC2_WIDTH, generator=gen)
                       for _ in range(WAV2VEC2_LAYERS + 1))
        return {"encoded_audio": layers[-1], "encoded_audio_all_layers": layers, "audio_samples": samples}


class StandInAudioEncoderLoader:
    """For AudioEncoderLoader (wav2vec2 large: Wan 2.2 S2V's audio encoder)."""

    RETURN_TYPES = ("AUDIO_ENCODER",)
    FUNCTION = "load_audio_encoder"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return nodes.NODE_CLASS_MAPPINGS["AudioEncoderLoader"].INPUT_TYPES()

    def load_audio_encoder(self, audio_encoder_name):
        _check_stand_in_file("audio_encoders", audio_encoder_name)
        return (StandInAudioEncoder(),)


NODE_CLASS_MAPPINGS = {
    "StandInCLIPLoader": StandInCLIPLoader,
    "StandInDualCLIPLoader": StandInDualCLIPLoader,
    "StandInCLIPVisionLoader": StandInCLIPVisionLoader,
}
if "AudioEncoderLoader" in nodes.NODE_CLASS_MAPPINGS:  # ComfyUI imported its audio nodes (torchaudio is there)
    NODE_CLASS_MAPPINGS["StandInAudioEncoderLoader"] = StandInAudioEncoderLoader
