"""The example workflows (workflows/*.json): well-formed UI graphs of this ComfyUI, and every one of them EXECUTES in
ComfyUI's own executor on CPU.

Static checks, per file: valid JSON in the frontend's litegraph format (ids, links, slots, execution order,
properties, groups, no overlapping nodes); every node type exists in ComfyUI core or this pack (the real host's
node list, the pack loaded by ComfyUI's custom-node loader); every link type-checks; the notes name every model
file and its folder; the file converts to an API prompt (``ui_to_api``, strict) and ``execution.validate_prompt``
passes completely with the model folders pointed at stand-in files of the same names. The files must also be
exactly what ``devtools/build_workflows.py`` writes (byte for byte on the ComfyUI they are written for; on another
ComfyUI, the same graph and the same API prompt). A node that gained a widget since the files were written (v0.27's
CreateVideo ``bit_depth``) gets that input's default, as the frontend gives it.

Wan 2.2 S2V's workflow uses ComfyUI's audio nodes (Load Audio, Audio Encoder Loader / Encode), which ComfyUI only
imports where torchaudio is installed (its requirements list it; the CI's v0.19.3 host leaves it out). On such a host
that workflow's host-dependent tests are skipped, saying so (`skip_if_host_lacks`), and only then: a missing node of
any other kind, or those nodes missing although torchaudio imports, fails. Everywhere else it runs like the rest.

Execution (``test_workflow_executes``): the converted API prompt runs through ``run_api_prompt`` (ComfyUI's
PromptExecutor) with

* every model folder (diffusion_models, text_encoders, vae, clip_vision, audio_encoders, moga) and the input/output
  folders pointed at a private tree (`model_tree`) holding tiny files under the workflow's own file names:

  - diffusion models: tiny state dicts of ComfyUI's real model classes (tests/host/tiny_models.py,
    tiny_kandinsky5.py; real key layout, so the real UNETLoader and model detection choose the real model type):
    Wan 2.1 T2V (two sizes), Wan 2.1 I2V (36 input channels, CLIP image projection), two Wan 2.2 A14B experts,
    Wan 2.2 TI2V 5B (48 channels, Wan 2.2 latent format), Wan 2.2 Animate (the i2v layout plus the pose embedding,
    the motion encoder and one face adapter block: 5 blocks), Wan 2.2 S2V (t2v blocks plus the causal audio encoder
    of wav2vec2's 25 x 1024 features, one audio injector, FramePack's motion packer), HunyuanVideo (guidance
    embedding, 4096-wide text input, CLIP-L pooled vector), Kandinsky 5 Lite video (head dim 64, 1 text block,
    2 visual blocks);
  - VAEs, loaded by the real VAELoader through ``comfy.sd.VAE``'s detection: the Wan 2.1 VAE at width 16 (its width
    is read from the state dict: nothing substituted); the Wan 2.2 VAE and the HunyuanVideo VAE (also Kandinsky
    5's) as real classes with the real key layout at width 16 and 32, where ``comfy.sd.VAE`` hard-codes 160/256 and
    128: for this module the two constructors (``comfy.ldm.wan.vae2_2.WanVAE``; ``comfy.sd.AutoencoderKL`` for the
    conv3d HunyuanVideo branch) are wrapped to build that narrower width (`narrow_vae_constructors`);
  - a MoGA router file for the tiny 1.3B model under the name ``moga_calibrate_router.json`` writes;
  - placeholder files for the text and audio encoders (`TEXT_ENCODER_FILES`, `AUDIO_ENCODER_FILES`), a 2-layer ViT-H
    state dict for clip_vision_h; in input/ (`write_input_files`) PNGs for the first frame, Animate's character and
    S2V's reference, Wan 2.2 Animate's pose video (9 frames) and face clip (5 frames: the motion encoder runs at
    512 x 512, see `TEST_VIDEO_FRAMES`) as 64 x 64 mp4s, S2V's speech (1 s mono wav at 22.05 kHz);

* the ``class_type`` of the loaders of models that cannot run on CPU replaced by test-only stand-ins
  (tests/host/workflow_standins, loaded with ``nodes.load_custom_node``): CLIPLoader (UMT5-XXL) and DualCLIPLoader
  (CLIP-L + LLaVA for HunyuanVideo, Qwen2.5-VL 7B + CLIP-L for Kandinsky 5) by text encoders with ComfyUI's CLIP
  interface and the real output widths; CLIPVisionLoader (Wan 2.1 I2V, Wan 2.2 Animate) by a loader that builds
  ComfyUI's real ClipVisionModel with 2 layers; AudioEncoderLoader (wav2vec2 large, Wan 2.2 S2V) by an encoder with
  AudioEncoderEncode's interface and wav2vec2 large's outputs (16 kHz sample count, one frame per 320 samples, the
  25 hidden states of width 1024). Nothing else is substituted;

* sizes and steps shrunk after conversion (`shrink_prompt`) so each workflow runs in seconds: 32 x 32 px
  (64 x 64 for the 16x-compressing Wan 2.2 5B VAE), i.e. a 2 x 2 token grid per latent frame; 9 frames (3 latent
  frames) where a length is set, and shots of 5/4/4(/4) frames in the multi-shot prompts (4 or 5 latent frames:
  2 for the first shot, 1 for each other, cuts on latent-frame boundaries); 2 sampling steps (the Wan 2.2 expert
  split at step 1 of 2), 1 calibration step; VAE Decode (Tiled) with 8-frame (2 latent frames) temporal tiles, so the
  multi-shot videos decode in several temporal tiles; MoGA's ``min_tokens`` 0 and ``start_percent`` 0, so the tiny
  sequences run sparse from the first step.

Checked: success; the SaveVideo output is an mp4 with the expected frame count and size (MoGASaveRouter: a router
file that loads with the tiny model's sizes); every MoGA patch in the run (``MogaPatch``, recorded as it is
created) took every routed block's self-attention sparse in every forward (``last_run_stats``: sparse calls for
every block, no dense fallback), both experts of Wan 2.2, double and single blocks of HunyuanVideo; every
calibration pass saw the model's tokens; the multi-shot prompts encoded the global prompt and every caption;
Wan 2.2 Animate got the pose video's latents and the face clip (512 x 512) in every forward, with the character
image's latent frame in front of the video's, which TrimVideoLatent removed before decoding (9 frames saved);
Wan 2.2 S2V got the speech's audio features (encoded once) and the reference image's latent in every forward, and
its mp4 carries the audio track; Kandinsky 5's captions came from the Qwen2.5-VL + CLIP-L stand-in and its patch is
the Kandinsky 5 adapter's. Two more runs: the Wan 2.2 5B workflow with its bypassed Load Image enabled (its
image-to-video path), and the calibration workflow followed by the load-router workflow, unchanged, which must load
exactly the file the first one wrote.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import sys

import pytest
import torch

import tiny_kandinsky5 as tk
import tiny_models as tm
from devtools import build_workflows, workflow_graph as wt

pytestmark = pytest.mark.host

HOST_DIR = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(os.path.dirname(HOST_DIR))
WORKFLOWS_DIR = os.path.join(PACK_ROOT, "workflows")
STANDINS_DIR = os.path.join(HOST_DIR, "workflow_standins")

STAND_INS = {"CLIPLoader": "StandInCLIPLoader", "DualCLIPLoader": "StandInDualCLIPLoader",
             "CLIPVisionLoader": "StandInCLIPVisionLoader", "AudioEncoderLoader": "StandInAudioEncoderLoader"}
MODEL_FOLDERS = ("diffusion_models", "text_encoders", "vae", "clip_vision", "audio_encoders", "moga")
WIDGET_FOLDERS = {"unet_name": "diffusion_models", "clip_name": "text_encoders", "clip_name1": "text_encoders",
                  "clip_name2": "text_encoders", "vae_name": "vae", "audio_encoder_name": "audio_encoders",
                  "router_name": "moga"}
LOADER_FOLDERS = {"CLIPVisionLoader": {"clip_name": "clip_vision"}}

WAN21_VAE_DIM = 16  # comfy.sd.VAE reads it from the state dict
WAN22_VAE_DIM = 16  # hard-coded 160 (encoder) / 256 (decoder) in comfy.sd.VAE
HV_VAE_CH = 32  # hard-coded 128 in comfy.sd.VAE; 32 is the least GroupNorm(32 groups) allows


@dataclasses.dataclass(frozen=True)
class Expect:
    frames: int | None  # frames of the saved video (None: no video)
    size: int  # tiny width = height in pixels
    routed_patches: int  # MoGA patches that must run sparse
    calibrations: int  # calibration passes
    stand_ins: frozenset  # loader nodes whose class_type the test replaces (see workflow_standins)
    narrowed_vae: str | None = None  # VAE built narrower than comfy.sd.VAE's hard-coded width


UMT5, VIT_H, WAV2VEC2 = frozenset({"CLIPLoader"}), frozenset({"CLIPVisionLoader"}), frozenset({"AudioEncoderLoader"})
LLAVA = QWEN = frozenset({"DualCLIPLoader"})  # CLIP-L + LLaVA (HunyuanVideo), Qwen2.5-VL 7B + CLIP-L (Kandinsky 5)
EXPECT = {
    # the generation examples run without a router: the nodes' default grouping (random groups), no calibration
    "wan2.1_t2v_1.3B_multishot_moga.json": Expect(13, 32, 1, 0, UMT5),
    "wan2.1_t2v_14B_multishot_moga.json": Expect(17, 32, 1, 0, UMT5),
    "wan2.1_i2v_14B_moga.json": Expect(9, 32, 1, 0, UMT5 | VIT_H),
    "wan2.2_a14b_t2v_moga.json": Expect(13, 32, 2, 0, UMT5),
    "wan2.2_ti2v_5B_moga.json": Expect(9, 64, 1, 0, UMT5, narrowed_vae="wan2.2_vae.safetensors"),
    # 3 latent frames + the character image's, which TrimVideoLatent drops before decoding
    "wan2.2_animate_14B_moga.json": Expect(9, 32, 1, 0, UMT5 | VIT_H),
    "wan2.2_s2v_14B_moga.json": Expect(9, 32, 1, 0, UMT5 | WAV2VEC2),
    "hunyuanvideo_t2v_multishot_moga.json": Expect(13, 32, 1, 0, LLAVA,
                                                   narrowed_vae="hunyuan_video_vae_bf16.safetensors"),
    "kandinsky5_lite_t2v_moga.json": Expect(9, 32, 1, 0, QWEN, narrowed_vae="hunyuan_video_vae_bf16.safetensors"),
    "moga_calibrate_router.json": Expect(None, 32, 0, 1, UMT5),
    "moga_load_saved_router.json": Expect(9, 32, 1, 0, UMT5),
}
NARROWED_VAES = {"wan2.2_vae.safetensors", "hunyuan_video_vae_bf16.safetensors"}
#: placeholder files the stand-in text and audio encoders check (workflow_standins.STAND_IN_MARKER)
TEXT_ENCODER_FILES = ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "clip_l.safetensors",
                      "llava_llama3_fp8_scaled.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors")
AUDIO_ENCODER_FILES = ("wav2vec2_large_english_fp16.safetensors",)
TEST_AUDIO_SECONDS, TEST_AUDIO_RATE = 1.0, 22050  # Wan 2.2 S2V's speech: mono PCM, resampled to 16 kHz
WORKFLOW_FILES = sorted(f for f in os.listdir(WORKFLOWS_DIR) if f.endswith(".json"))


def load_workflow(name: str) -> dict:
    with open(os.path.join(WORKFLOWS_DIR, name), encoding="utf-8") as f:
        return json.load(f)


def load_builder():
    """devtools/build_workflows.py, the script that writes workflows/*.json."""
    return build_workflows


# ---------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def schemas(moga):
    """``/object_info`` of the real host with the pack loaded (before any test-only node is registered)."""
    return wt.node_schemas_from_comfy()


@pytest.fixture(scope="module")
def standins(moga, schemas):
    """The test-only stand-in loaders (tests/host/workflow_standins), registered for this module only (after
    `schemas` was taken, so they never appear in it)."""
    import nodes

    before = set(nodes.NODE_CLASS_MAPPINGS)
    assert asyncio.run(nodes.load_custom_node(STANDINS_DIR, module_parent="tests")), "stand-in nodes did not load"
    module = sys.modules[STANDINS_DIR.replace(".", "_x_")]
    yield module
    for name in set(nodes.NODE_CLASS_MAPPINGS) - before:
        nodes.NODE_CLASS_MAPPINGS.pop(name, None)


#: frames of the test videos in input/ (Wan 2.2 Animate's pose and face videos), 64 x 64 px; the face clip is
#: shorter than the 9 frames sampled (WanAnimateToVideo pads the face motion to the video's latent frames) because
#: the model's motion encoder runs at 512 x 512 whatever the model's width (about 2.5 s a frame per forward on 2
#: CPU cores)
TEST_VIDEO_FRAMES = {"ANIMATE_POSE_VIDEO": 9, "ANIMATE_FACE_VIDEO": 5}


def write_test_video(path: str, frames: int, size: int = 64, fps: int = 16, seed: int = 0) -> None:
    """An mp4 (MPEG-4 part 2) of seeded random frames, as Load Video reads it."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_test_audio(path: str, seconds: float = TEST_AUDIO_SECONDS, rate: int = TEST_AUDIO_RATE) -> None:
    """A mono 16-bit wav: a 220 Hz tone with seeded noise, as Load Audio reads it."""
    import wave

    n = int(seconds * rate)
    t = torch.arange(n) / rate
    signal = 0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(n, generator=torch.Generator().manual_seed(30))
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((signal.clamp(-1, 1) * 32767).to(torch.int16).numpy().tobytes())


def write_input_files(input_dir: str) -> None:
    """Every file the workflows load from input/: the first-frame, Animate character and S2V reference PNGs, Wan 2.2
    Animate's pose and face videos (`TEST_VIDEO_FRAMES`), Wan 2.2 S2V's speech (`write_test_audio`)."""
    from PIL import Image

    builder = load_builder()
    generator = torch.Generator().manual_seed(8)
    for name in (builder.START_IMAGE, builder.ANIMATE_CHARACTER, builder.S2V_REFERENCE):
        pixels = (torch.rand(64, 64, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(os.path.join(input_dir, name))
    for i, (constant, frames) in enumerate(sorted(TEST_VIDEO_FRAMES.items())):
        write_test_video(os.path.join(input_dir, getattr(builder, constant)), frames, seed=20 + i)
    write_test_audio(os.path.join(input_dir, builder.S2V_AUDIO))


def hunyuan_video_state_dict(seed: int) -> dict:
    """A tiny HunyuanVideo (T2V 720p layout: guidance embedding, LLaVA-width text input, CLIP-L pooled vector)."""
    import comfy.ldm.hunyuan_video.model as hv
    import comfy.ops

    model = hv.HunyuanVideo(image_model="hunyuan_video", operations=comfy.ops.disable_weight_init, in_channels=16,
                            out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=256, mlp_ratio=4.0,
                            num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[16, 56, 56], theta=256,
                            patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False,
                            use_cond_type_embedding=False, vision_in_dim=None, meanflow_sum=False)
    return tm._randomize(model, seed)


def _vae_state_dict(module: torch.nn.Module, seed: int) -> dict:
    """Seeded weights of moderate scale (norm gains 1), so the tiny decoders give finite, varied pixels."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, tensor in module.state_dict().items():
        if name.endswith("gamma") or (name.endswith("weight") and "norm" in name):
            sd[name] = torch.ones(tensor.shape)
        elif tensor.dim() >= 2:
            fan_in = tensor[0].numel()
            sd[name] = torch.randn(tensor.shape, generator=gen) * (0.5 / fan_in ** 0.5)
        else:
            sd[name] = 0.01 * torch.randn(tensor.shape, generator=gen)
    return sd


def wan21_vae_state_dict() -> dict:
    import comfy.ldm.wan.vae

    return _vae_state_dict(comfy.ldm.wan.vae.WanVAE(
        dim=WAN21_VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
        temperal_downsample=[False, True, True], image_channels=3, conv_out_channels=3, dropout=0.0), 11)


def wan22_vae_state_dict() -> dict:
    import comfy.ldm.wan.vae2_2

    return _vae_state_dict(comfy.ldm.wan.vae2_2.WanVAE(
        dim=WAN22_VAE_DIM, dec_dim=WAN22_VAE_DIM, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
        attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0), 12)


def hunyuan_vae_state_dict() -> dict:
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": HV_VAE_CH, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
                "dropout": 0.0, "conv3d": True, "time_compress": 4}
    return _vae_state_dict(AutoencoderKL(ddconfig=ddconfig, embed_dim=16), 13)


def narrow_vae_constructors(mp: pytest.MonkeyPatch) -> None:
    """comfy.sd.VAE hard-codes the widths of the Wan 2.2 and HunyuanVideo VAEs: build them at the test's width."""
    import comfy.ldm.wan.vae2_2
    import comfy.sd

    wan22 = comfy.ldm.wan.vae2_2.WanVAE
    autoencoder_kl = comfy.sd.AutoencoderKL

    def narrow_wan22_vae(**config):
        return wan22(**dict(config, dim=WAN22_VAE_DIM, dec_dim=WAN22_VAE_DIM))

    def narrow_hunyuan_vae(*args, **kwargs):
        ddconfig = kwargs.get("ddconfig")
        if ddconfig is not None and ddconfig.get("conv3d") and ddconfig.get("time_compress") == 4:
            kwargs["ddconfig"] = dict(ddconfig, ch=HV_VAE_CH)  # the HunyuanVideo (1.0) branch of comfy.sd.VAE
        return autoencoder_kl(*args, **kwargs)

    mp.setattr(comfy.ldm.wan.vae2_2, "WanVAE", narrow_wan22_vae)
    mp.setattr(comfy.sd, "AutoencoderKL", narrow_hunyuan_vae)


@pytest.fixture(scope="module")
def model_tree(comfyui, moga, standins, tmp_path_factory):
    """A private models/ tree with tiny files under every name the workflows use, plus input and output folders."""
    import folder_paths
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("workflow_models")
    for sub in MODEL_FOLDERS + ("input", "output"):
        (root / sub).mkdir()

    def save(folder: str, name: str, sd: dict, dtype=torch.float32, **metadata):
        save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(root / folder / name),
                  metadata={k: str(v) for k, v in metadata.items()} or None)

    diffusion = {
        "wan2.1_t2v_1.3B_fp16.safetensors": tm.wan_state_dict(seed=0),
        "wan2.1_t2v_14B_fp8_scaled.safetensors": tm.wan_state_dict(layers=3, seed=1),
        "wan2.1_i2v_480p_14B_fp16.safetensors": tm.wan_state_dict(model_type="i2v", in_dim=36, seed=2),
        "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": tm.wan_state_dict(seed=3),
        "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": tm.wan_state_dict(seed=4),
        "wan2.2_ti2v_5B_fp16.safetensors": tm.wan_state_dict(in_dim=48, out_dim=48, seed=5),
        "hunyuan_video_t2v_720p_bf16.safetensors": hunyuan_video_state_dict(seed=6),
        # 5 blocks: one face adapter block (Wan 2.2 Animate has one per five blocks)
        "wan2.2_animate_14B_bf16.safetensors": tm.wan_animate_state_dict(seed=9),
        "kandinsky5lite_t2v_sft_5s.safetensors": tk.kandinsky5_state_dict(**tk.LITE, seed=10),
        # t2v blocks + the causal audio encoder (25 wav2vec2 layers x 1024), one audio injector, the motion packer
        "wan2.2_s2v_14B_fp8_scaled.safetensors": tm.wan_s2v_state_dict(seed=11),
    }
    for name, sd in diffusion.items():
        save("diffusion_models", name, sd)
    for name in TEXT_ENCODER_FILES:
        save("text_encoders", name, {"stand_in": torch.zeros(1)}, **{standins.STAND_IN_MARKER: name})
    for name in AUDIO_ENCODER_FILES:
        save("audio_encoders", name, {"stand_in": torch.zeros(1)}, **{standins.STAND_IN_MARKER: name})
    save("vae", "wan_2.1_vae.safetensors", wan21_vae_state_dict())
    save("vae", "wan2.2_vae.safetensors", wan22_vae_state_dict())
    save("vae", "hunyuan_video_vae_bf16.safetensors", hunyuan_vae_state_dict())
    import comfy.clip_vision

    config = standins.tiny_vit_h_config()
    try:
        vit = comfy.clip_vision.ClipVisionModel(config)
    finally:
        os.unlink(config)
    save("clip_vision", "clip_vision_h.safetensors", tm._randomize(vit.model, 7), dtype=torch.float16)
    del vit
    routers = moga.routers.RouterSet({i: moga.core.Router(256, 5) for i in range(2)}, "wan", 256, 2,
                                     combine="union", source="calibrated")
    builder = load_builder()
    routers.save(str(root / "moga" / builder.CALIBRATED_ROUTER))
    write_input_files(str(root / "input"))

    saved_paths = {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()}
    saved_dirs = (folder_paths.get_input_directory(), folder_paths.get_output_directory())
    with pytest.MonkeyPatch.context() as mp:
        for sub in MODEL_FOLDERS:
            exts = {".safetensors"} if sub == "moga" else folder_paths.supported_pt_extensions
            folder_paths.folder_names_and_paths[sub] = ([str(root / sub)], exts)
        folder_paths.set_input_directory(str(root / "input"))
        folder_paths.set_output_directory(str(root / "output"))
        folder_paths.filename_list_cache.clear()
        narrow_vae_constructors(mp)
        try:
            yield root
        finally:
            folder_paths.folder_names_and_paths.clear()
            folder_paths.folder_names_and_paths.update(saved_paths)
            folder_paths.set_input_directory(saved_dirs[0])
            folder_paths.set_output_directory(saved_dirs[1])
            folder_paths.filename_list_cache.clear()


# ---------------------------------------------------------------------------------------------------------------
# static checks


def test_every_expected_workflow_is_shipped():
    assert set(WORKFLOW_FILES) == set(EXPECT)


def host_lacks(name: str, schemas: dict) -> set[str]:
    """The node types of a workflow that this ComfyUI lacks, only ever ComfyUI's audio nodes on a Python without
    torchaudio (which ComfyUI lists in its requirements, and the CI's v0.19.3 host leaves out): anything else, or
    those nodes missing although torchaudio imports, fails."""
    import importlib.util

    builder = load_builder()
    missing = builder.missing_node_types(name.removesuffix(".json"), schemas)
    if missing:
        assert missing <= builder.TORCHAUDIO_NODE_TYPES, f"{name}: this ComfyUI has no {sorted(missing)}"
        assert importlib.util.find_spec("torchaudio") is None, \
            f"{name}: torchaudio is installed, yet this ComfyUI has no {sorted(missing)}"
    return missing


def skip_if_host_lacks(name: str, schemas: dict) -> None:
    missing = host_lacks(name, schemas)
    if missing:
        pytest.skip(f"{name}: this ComfyUI has no {', '.join(sorted(missing))}: ComfyUI imports its audio nodes "
                    "only where torchaudio is installed, and this Python has none")


def host_version() -> str:
    import comfyui_version

    return comfyui_version.__version__


def test_shipped_files_are_the_build_scripts_output(schemas):
    """On the ComfyUI the files are written for (``build_workflows.COMFY_CORE_VERSION``, recorded in every core
    node's ``ver``): byte for byte what the script writes. On any other ComfyUI the script lays the nodes out from
    that host's schemas (a node may have gained widgets, which moves slots and sizes), so there the shipped file
    must mean the same graph as the script's output: the same nodes, titles, modes, notes and groups, and the same
    API prompt (every input's value and link) once converted as that host's frontend loads it."""
    builder = load_builder()
    lacking = {name for name in WORKFLOW_FILES if host_lacks(name, schemas)}  # only without torchaudio: see there
    built = builder.build_all(schemas, {name.removesuffix(".json") for name in WORKFLOW_FILES} -
                              {name.removesuffix(".json") for name in lacking})
    assert sorted(built) == sorted(set(WORKFLOW_FILES) - lacking)
    exact = host_version() == builder.COMFY_CORE_VERSION
    for name, workflow in built.items():
        with open(os.path.join(WORKFLOWS_DIR, name), encoding="utf-8") as f:
            text = f.read()
        stale = f"{name} is stale: run python -m devtools.build_workflows"
        if exact:
            assert text == builder.dumps(workflow), stale
            continue
        shipped = json.loads(text)

        def outline(wf):
            return ([(n["id"], n["type"], n.get("title"), n["mode"],
                      n["widgets_values"] if n["type"] in wt.NOTE_NODE_TYPES else None) for n in wf["nodes"]],
                    [g["title"] for g in wf["groups"]])

        assert outline(shipped) == outline(workflow), stale
        assert wt.ui_to_api(shipped, schemas, strict=True) == wt.ui_to_api(workflow, schemas, strict=True), stale


def _rect(node: dict) -> tuple[float, float, float, float]:
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - 30, x + w, y + h  # litegraph draws the title bar (30 px) above pos


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_ui_graph_is_well_formed(name):
    wf = load_workflow(name)
    for key in ("id", "revision", "last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        assert key in wf, key
    assert wf["version"] == 0.4
    assert set(wf["extra"]["ds"]) == {"scale", "offset"}
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and wf["last_node_id"] == max(nodes)
    links = {row[0]: row for row in wf["links"]}
    assert len(links) == len(wf["links"]) and wf["last_link_id"] == max(links)
    for link_id, origin, origin_slot, target, target_slot, link_type in wf["links"]:
        out = nodes[origin]["outputs"][origin_slot]
        assert link_id in out["links"] and out["type"] == link_type
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
    for node in wf["nodes"]:
        for slot in node["inputs"]:
            assert slot["link"] is None or slot["link"] in links
        for out in node["outputs"]:
            assert all(link in links for link in out["links"] or [])
    orders = sorted(n["order"] for n in wf["nodes"])
    assert orders == list(range(len(nodes)))
    for _, origin, _, target, _, _ in wf["links"]:
        assert nodes[origin]["order"] < nodes[target]["order"]
    for node in wf["nodes"]:
        assert set(node) >= {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs",
                             "properties", "widgets_values"}
        if node["type"] not in wt.NOTE_NODE_TYPES:
            assert node["properties"]["Node name for S&R"] == node["type"]
            assert node["properties"]["cnr_id"] in ("comfy-core", "comfyui-moga")
    shown = list(nodes.values())
    for i, a in enumerate(shown):
        for b in shown[i + 1:]:
            ax0, ay0, ax1, ay1 = _rect(a)
            bx0, by0, bx1, by1 = _rect(b)
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, \
                f"nodes {a['id']} ({a['type']}) and {b['id']} ({b['type']}) overlap"
    for group in wf["groups"]:
        gx, gy, gw, gh = group["bounding"]
        inside = []
        for node in shown:
            x0, y0, x1, y1 = _rect(node)
            if gx <= x0 and x1 <= gx + gw and gy <= y0 and y1 <= gy + gh:
                inside.append(node)
            else:  # a node is either in a group or clear of it
                assert x1 <= gx or gx + gw <= x0 or y1 <= gy or gy + gh <= y0, \
                    f"node {node['id']} ({node['type']}) sticks into group {group['title']!r}"
        assert inside, f"group {group['title']!r} holds no node"


def _model_files(wf: dict) -> dict[str, str]:
    """{file name: models/ folder} of every loader widget in the workflow."""
    files = {}
    for node in wf["nodes"]:
        if node["type"] in wt.NOTE_NODE_TYPES:
            continue
        for value in node["widgets_values"]:
            if isinstance(value, str) and value.endswith(".safetensors"):
                folder = "clip_vision" if node["type"] == "CLIPVisionLoader" else \
                    "moga" if node["type"].startswith("MoGA") else \
                    {"UNETLoader": "diffusion_models", "CLIPLoader": "text_encoders",
                     "DualCLIPLoader": "text_encoders", "VAELoader": "vae",
                     "AudioEncoderLoader": "audio_encoders"}[node["type"]]
                files[value] = folder
    return files


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_notes_say_which_files_to_get_and_where(name):
    wf = load_workflow(name)
    notes = "\n".join(n["widgets_values"][0] for n in wf["nodes"] if n["type"] in wt.NOTE_NODE_TYPES)
    files = _model_files(wf)
    assert files
    for file_name, folder in files.items():
        assert file_name in notes, f"no note names {file_name}"
        assert f"{folder}/" in notes or f"**{folder}**" in notes, f"no note says where {file_name} goes ({folder})"
    for node in wf["nodes"]:
        for entry in node["properties"].get("models", []):
            assert files[entry["name"]] == entry["directory"] and entry["url"].startswith("https://huggingface.co/")
    types = {n["type"] for n in wf["nodes"]}
    if "MoGAApply" in types:
        assert "MoGA settings" in notes and "start_percent" in notes and "min_tokens" in notes
    if types & {"MoGALoadRouter", "MoGASaveRouter", "MoGACalibrateRouter"}:
        assert "models/moga/" in notes


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_node_types_exist_and_links_type_check(name, schemas):
    skip_if_host_lacks(name, schemas)
    wf = load_workflow(name)
    for node in wf["nodes"]:
        if node["type"] in wt.VIRTUAL_NODE_TYPES:
            continue
        assert node["type"] in schemas, f"{node['type']} is not a node of this ComfyUI"
        module = schemas[node["type"]]["python_module"]
        assert module == "custom_nodes.ComfyUI-MoGA" if node["type"].startswith("MoGA") else \
            module == "nodes" or module.startswith("comfy_extras.")
    assert wt.validate_links(wf, schemas, include_stale=True) == len(wf["links"])


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_converts_and_validates_with_the_model_files_present(name, schemas, model_tree):
    skip_if_host_lacks(name, schemas)
    wf = load_workflow(name)
    prompt = wt.ui_to_api(wf, schemas, strict=True)
    active = {n["type"] for n in wf["nodes"] if n["mode"] == 0 and n["type"] not in wt.VIRTUAL_NODE_TYPES}
    assert {entry["class_type"] for entry in prompt.values()} == active
    for node in wf["nodes"]:  # a loader's file is present in the folder the node reads
        for widget, folder in WIDGET_FOLDERS.items():
            folder = LOADER_FOLDERS.get(node["type"], {}).get(widget, folder)
            value = prompt.get(str(node["id"]), {}).get("inputs", {}).get(widget)
            if isinstance(value, str) and value.endswith(".safetensors"):
                assert (model_tree / folder / value).is_file(), f"{value} not in {folder}"
    validation = wt.validate_api_prompt(prompt)
    assert validation[0], wt.validation_error_messages(validation)
    assert not validation[3]


# ---------------------------------------------------------------------------------------------------------------
# execution

_DURATION = re.compile(r"^\s*[^|#]+\|")


def tiny_shots(text: str) -> str:
    """Keep every shot's prompt, give the shots 5/4/4/... frames (one latent frame per later shot, cuts on
    latent-frame boundaries)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return "\n".join(_DURATION.sub(f"{5 if i == 0 else 4}f |", line) for i, line in enumerate(lines))


def shrink_prompt(prompt: dict, size: int) -> dict:
    """Tiny sizes and steps, MoGA sparse at any length and from the first step, stand-in loaders."""
    for entry in prompt.values():
        inputs, kind = entry["inputs"], entry["class_type"]
        if kind in STAND_INS:
            entry["class_type"] = STAND_INS[kind]
        for key in ("width", "height"):
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = size
        if "length" in inputs and not isinstance(inputs["length"], list):
            inputs["length"] = 9
        if kind == "MoGAMultiShotPrompt":
            inputs["shots"] = tiny_shots(inputs["shots"])
        if kind == "KSamplerAdvanced":
            total = inputs["steps"]
            for key in ("start_at_step", "end_at_step"):
                if inputs[key] < total:
                    inputs[key] = inputs[key] * 2 // total
            inputs["steps"] = 2
        elif kind == "MoGACalibrateRouter":
            inputs.update(steps=1, tokens_per_block=256)
        elif "steps" in inputs:
            inputs["steps"] = 2
        if kind == "MoGAApply":
            inputs.update(min_tokens=0, start_percent=0.0, dense_if_slower=False)
        if kind == "VAEDecodeTiled":
            inputs.update(tile_size=64, overlap=32, temporal_size=8, temporal_overlap=4)
    return prompt


def video_frames(path: str) -> tuple[int, int, int]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.codec_context.width, stream.codec_context.height


@dataclasses.dataclass
class Run:
    prompt: dict
    result: wt.PromptRunResult
    patches: list  # every MogaPatch created during the run
    replaced: set  # class types the stand-ins replaced


def run_workflow(name: str, schemas: dict, moga, standins, monkeypatch, edit=None) -> Run:
    """Convert a shipped workflow (optionally ``edit``-ed in UI form first), shrink it, execute it."""
    import comfy.model_management

    wf = load_workflow(name)
    if edit is not None:
        edit(wf)
    prompt = wt.ui_to_api(wf, schemas, strict=True)
    replaced = {e["class_type"] for e in prompt.values()} & set(STAND_INS)
    prompt = shrink_prompt(prompt, EXPECT[name].size)
    patches = []
    original_init = moga.patcher.BlockPatch.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        patches.append(self)

    with monkeypatch.context() as mp:
        mp.setattr(moga.patcher.BlockPatch, "__init__", recording_init)
        standins.ENCODED.clear()
        standins.ENCODED_AUDIO.clear()
        try:
            result = wt.run_api_prompt(prompt, extra_data={"extra_pnginfo": {"workflow": wf}})
        finally:
            comfy.model_management.unload_all_models()
    assert result.success, result.errors
    return Run(prompt, result, patches, replaced)


def check_video(run: Run, model_tree, frames: int, size: int) -> None:
    saves = [nid for nid, entry in run.prompt.items() if entry["class_type"] == "SaveVideo"]
    assert len(saves) == 1
    saved = run.result.outputs[saves[0]]["images"]
    assert len(saved) == 1 and saved[0]["type"] == "output"
    path = model_tree / "output" / saved[0]["subfolder"] / saved[0]["filename"]
    assert path.is_file() and path.suffix == ".mp4"
    assert video_frames(str(path)) == (frames, size, size)


def check_moga_ran_sparse(run: Run, routed_patches: int, calibrations: int) -> None:
    """Every calibration pass saw tokens; every patch took every routed block sparse in every forward."""
    probes = [p for p in run.patches if type(p).__name__ == "CapturePatch"]  # calibration passes
    routed = [p for p in run.patches if type(p).__name__ == "MogaPatch"]
    assert len(probes) == calibrations and len(routed) == routed_patches
    for probe in probes:
        assert probe.last_run_stats["forwards"] > 0 and probe.sample.seen
    for patch in routed:
        stats = patch.last_run_stats
        assert stats is not None and stats["forwards"] > 0, "the patched model never ran"
        assert not stats["dense"], f"MoGA fell back to dense attention: {dict(stats['dense'])}"
        assert stats["sparse_forwards"] == stats["forwards"]
        blocks = {(k.block_type, k.block_index) for k in patch.adapter.blocks() if k.index in patch.routed_blocks()}
        assert set(stats["sparse_calls"]) == blocks
        assert min(stats["sparse_calls"].values()) == max(stats["sparse_calls"].values()) == stats["forwards"]


def record_animate_inputs(monkeypatch) -> list:
    """Record what every forward of Wan 2.2 Animate got: the patch-embedded video, the pose latents, the face
    pixels (``AnimateWanModel.after_patch_embedding``)."""
    import comfy.ldm.wan.model_animate as animate

    seen = []
    original = animate.AnimateWanModel.after_patch_embedding

    def recording(self, x, pose_latents, face_pixel_values):
        seen.append((tuple(x.shape), None if pose_latents is None else tuple(pose_latents.shape),
                     None if face_pixel_values is None else tuple(face_pixel_values.shape)))
        return original(self, x, pose_latents, face_pixel_values)

    monkeypatch.setattr(animate.AnimateWanModel, "after_patch_embedding", recording)
    return seen


def check_animate_inputs(run: Run, seen: list) -> None:
    """The pose and face videos reached the model: the pose video's latents (one per video latent frame, the
    character's frame excluded) and the face clip at 512 x 512, in every forward (cfg 1: one batch)."""
    (patch,) = [p for p in run.patches if type(p).__name__ == "MogaPatch"]
    assert type(patch.adapter).__name__ == "WanAnimateAdapter"
    assert len(seen) == patch.last_run_stats["forwards"] == 2
    latent_frames = (9 - 1) // 4 + 1
    face_frames = TEST_VIDEO_FRAMES["ANIMATE_FACE_VIDEO"]
    for x_shape, pose_shape, face_shape in seen:
        assert x_shape[2:] == (latent_frames + 1, 2, 2)  # the character's latent frame + the video's, 2 x 2 tokens
        assert pose_shape == (1, 16, latent_frames, 4, 4)
        assert face_shape == (1, 3, face_frames, 512, 512)


def record_s2v_inputs(monkeypatch) -> list:
    """Record what every forward of Wan 2.2 S2V got (``WanModel_S2V.forward_orig``): the audio features, the
    reference image's latent, FramePack's motion latents."""
    import inspect

    import comfy.ldm.wan.model as wan

    seen = []
    original = wan.WanModel_S2V.forward_orig
    signature = inspect.signature(original)

    def recording(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs).arguments
        seen.append({key: None if bound.get(key) is None else tuple(bound[key].shape)
                     for key in ("x", "audio_embed", "reference_latent", "reference_motion")})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(wan.WanModel_S2V, "forward_orig", recording)
    return seen


def check_s2v_inputs(run: Run, seen: list, standins, model_tree) -> None:
    """The speech reached the model and the video: Load Audio's waveform went through the (stand-in) wav2vec2 once,
    WanSoundImageToVideo's audio buckets (25 layers x 1024, 4 per latent frame at least) and the reference image's
    latent frame were in every forward (cfg 6: the positive and negative batched), and the saved mp4 carries the
    audio track Create Video got."""
    import av

    (patch,) = [p for p in run.patches if type(p).__name__ == "MogaPatch"]
    assert type(patch.adapter).__name__ == "WanS2VAdapter"
    samples = math.ceil(int(TEST_AUDIO_SECONDS * TEST_AUDIO_RATE) * 16000 / TEST_AUDIO_RATE)  # resampled to 16 kHz
    assert [s for s, _ in standins.ENCODED_AUDIO] == [samples]
    assert len(seen) == patch.last_run_stats["forwards"] == 2
    latent_frames = (9 - 1) // 4 + 1
    for shapes in seen:
        assert shapes["x"] == (2, 16, latent_frames, 4, 4)
        batch, layers, width, buckets = shapes["audio_embed"]
        assert (batch, layers, width) == (2, standins.WAV2VEC2_LAYERS + 1, standins.WAV2VEC2_WIDTH)
        assert buckets >= 4 * latent_frames
        assert shapes["reference_latent"] == (2, 16, 1, 4, 4)
        assert shapes["reference_motion"] is None  # the first chunk: no motion frames
    (nid,) = [nid for nid, entry in run.prompt.items() if entry["class_type"] == "SaveVideo"]
    saved = run.result.outputs[nid]["images"][0]
    with av.open(str(model_tree / "output" / saved["subfolder"] / saved["filename"])) as container:
        assert len(container.streams.audio) == 1


def check_saved_router(run: Run, model_tree, moga) -> str:
    (nid,) = [nid for nid, entry in run.prompt.items() if entry["class_type"] == "MoGASaveRouter"]
    path = run.result.outputs[nid]["text"][0]
    assert os.path.dirname(path) == str(model_tree / "moga")
    assert re.fullmatch(r"wan2\.1_t2v_1\.3B_calibrated_\d{5}\.safetensors", os.path.basename(path))
    routers = moga.routers.RouterSet.load(path)
    assert (routers.model_family, routers.hidden_size, routers.num_blocks, routers.num_groups, routers.combine,
            routers.source) == ("wan", 256, 2, 5, "union", "calibrated")
    return path


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_workflow_executes(name, schemas, model_tree, standins, moga, monkeypatch):
    """The shipped workflow, converted to API form, shrunk and run (module doc: tiny files, stand-ins, sizes).

    Substituted, per workflow (``EXPECT[name].stand_ins``, asserted below): the class_type of CLIPLoader (UMT5-XXL)
    everywhere but HunyuanVideo and Kandinsky 5; of DualCLIPLoader, CLIP-L + LLaVA in hunyuanvideo_t2v_multishot,
    Qwen2.5-VL 7B + CLIP-L in kandinsky5_lite_t2v; of CLIPVisionLoader (ViT-H) in wan2.1_i2v_14B and
    wan2.2_animate_14B; of AudioEncoderLoader (wav2vec2 large) in wan2.2_s2v_14B, by the stand-ins of
    tests/host/workflow_standins. Narrowed in place (``narrowed_vae``): the Wan 2.2 VAE of wan2.2_ti2v_5B and the
    HunyuanVideo VAE of hunyuanvideo_t2v_multishot and kandinsky5_lite_t2v are real classes built narrower than
    comfy.sd.VAE's hard-coded width. Everything else is the workflow's own node, run on a tiny file of the real
    format: the diffusion models (real classes), the Wan 2.1 VAE, the router file, the input images, videos and
    audio. Skipped only where this ComfyUI lacks the workflow's audio nodes for want of torchaudio
    (`skip_if_host_lacks`).
    """
    skip_if_host_lacks(name, schemas)
    expect = EXPECT[name]
    animate_inputs = record_animate_inputs(monkeypatch) if name.startswith("wan2.2_animate") else None
    s2v_inputs = record_s2v_inputs(monkeypatch) if name.startswith("wan2.2_s2v") else None
    run = run_workflow(name, schemas, moga, standins, monkeypatch)
    assert run.replaced == expect.stand_ins
    vaes = {e["inputs"]["vae_name"] for e in run.prompt.values() if e["class_type"] == "VAELoader"}
    assert vaes & NARROWED_VAES == ({expect.narrowed_vae} if expect.narrowed_vae else set())
    if expect.frames is None:
        assert not [e for e in run.prompt.values() if e["class_type"] == "SaveVideo"]
    else:
        check_video(run, model_tree, expect.frames, expect.size)
    if any(e["class_type"] == "MoGASaveRouter" for e in run.prompt.values()):
        os.remove(check_saved_router(run, model_tree, moga))
    check_moga_ran_sparse(run, expect.routed_patches, expect.calibrations)
    if not name.startswith("moga_"):  # the generation examples: no router, the nodes' default (random groups)
        patches = [p for p in run.patches if type(p).__name__ == "MogaPatch"]
        assert all(p.routers is None and p.random is not None for p in patches)
    if name.startswith("hunyuan"):
        (patch,) = [p for p in run.patches if type(p).__name__ == "MogaPatch"]
        assert {kind for kind, _ in patch.last_run_stats["sparse_calls"]} == {"double", "single"}
    if animate_inputs is not None:
        check_animate_inputs(run, animate_inputs)
    if s2v_inputs is not None:
        check_s2v_inputs(run, s2v_inputs, standins, model_tree)
    if name.startswith("kandinsky5"):  # the visual blocks ran sparse; the captions came from the Qwen + CLIP-L encoder
        (patch,) = [p for p in run.patches if type(p).__name__ == "MogaPatch"]
        assert type(patch.adapter).__name__ == "Kandinsky5Adapter"
        assert {kind for kind, _ in standins.ENCODED} == {"qwen25_7b+clip_l"}
    # the text nodes ran on the stand-in encoders: the global prompt and every shot caption were encoded
    texts = [t for _, t in standins.ENCODED]
    for entry in run.prompt.values():
        if entry["class_type"] == "MoGAMultiShotPrompt":
            assert entry["inputs"]["global_prompt"] in texts
            for line in entry["inputs"]["shots"].splitlines():
                assert line.split("|", 1)[1].strip() in texts


def test_ti2v_workflow_with_its_first_frame_enabled(schemas, model_tree, standins, moga, monkeypatch):
    """The 5B workflow's image-to-video path: Load Image un-bypassed (Ctrl + B), as its note tells users."""

    def enable_image(wf):
        (image,) = [n for n in wf["nodes"] if n["type"] == "LoadImage"]
        assert image["mode"] == 4
        image["mode"] = 0

    run = run_workflow("wan2.2_ti2v_5B_moga.json", schemas, moga, standins, monkeypatch, edit=enable_image)
    latents = [e for e in run.prompt.values() if e["class_type"] == "Wan22ImageToVideoLatent"]
    assert len(latents) == 1 and "start_image" in latents[0]["inputs"]
    check_video(run, model_tree, 9, 64)
    check_moga_ran_sparse(run, 1, 0)


def test_calibration_workflow_writes_the_router_the_load_workflow_reads(schemas, model_tree, standins, moga,
                                                                        monkeypatch):
    """moga_calibrate_router.json then moga_load_saved_router.json, unchanged: the second loads the first's file."""
    builder = load_builder()
    shipped = model_tree / "moga" / builder.CALIBRATED_ROUTER
    aside = model_tree / "router_set_aside.bin"
    shipped.rename(aside)
    try:
        calibrated = run_workflow("moga_calibrate_router.json", schemas, moga, standins, monkeypatch)
        path = check_saved_router(calibrated, model_tree, moga)
        assert path == str(shipped)
        loaded = run_workflow("moga_load_saved_router.json", schemas, moga, standins, monkeypatch)
        check_moga_ran_sparse(loaded, 1, 0)
        (patch,) = loaded.patches
        written = moga.routers.RouterSet.load(path)
        assert patch.routers.routers.keys() == written.routers.keys()
        for i, router in written.routers.items():
            assert torch.equal(patch.routers.routers[i].weight, router.weight)
    finally:
        if shipped.exists():
            shipped.unlink()
        aside.rename(shipped)
