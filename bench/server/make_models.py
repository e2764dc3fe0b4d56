"""Stand-in model files for bench/server/run_workflows.py, written into a ComfyUI tree's own model folders.

    python3 bench/server/make_models.py --comfyui DIR --spec JSON

Runs in its own process: it imports ComfyUI from DIR in CPU mode (devtools/workflow_graph.init_comfyui), as the
host tests do, and writes, under the names the shipped workflows use (the tests' model tree,
tests/host/test_workflows.py):

- ``models/diffusion_models``: state dicts of ComfyUI's real model classes (tests/host/tiny_models.py; real key
  layout, so the real UNETLoader and model detection pick the real model type), at the sizes in the spec: Wan 2.1
  T2V "1.3B" (L layers) and "14B" (L + 1), Wan 2.1 I2V (36 input channels, CLIP image projection), the two Wan 2.2
  A14B experts, Wan 2.2 TI2V 5B (48 channels), Wan 2.2 Animate (i2v layout plus pose embedding, motion encoder and
  face adapter; a multiple of 5 blocks, at least 5, for its one face adapter block per five blocks), HunyuanVideo
  T2V (guidance embedding, 4096-wide text input, CLIP-L pooled vector). Heads are 128 wide (num_heads = width //
  128) as in the real models. Kandinsky 5 Lite video (tests/host/tiny_kandinsky5.py): the tests' tiny Lite (head
  dim 64) at the tests' sizes, else Lite's own width 1792 (28 heads of 64), FFN 7168 and 2 text blocks with L
  visual blocks; Wan 2.2 S2V (t2v blocks plus the causal audio encoder for wav2vec2's 25 x 1024 features, one
  audio injector and FramePack's motion packer) at the Wan sizes;
- ``models/vae``: the tests' narrow VAEs (Wan 2.1 at width 16, read from the file; Wan 2.2 and HunyuanVideo at the
  widths that bench/server/standin_vae makes comfy.sd.VAE build);
- ``models/text_encoders``, ``models/audio_encoders``: the tests' placeholder files for the stand-in text and audio
  encoders; ``models/clip_vision``: the tests' 2-layer ViT-H; ``input/``: the tests' input files
  (test_workflows.write_input_files: the first-frame, character and reference PNGs, Wan 2.2 Animate's pose and face
  videos, Wan 2.2 S2V's speech).

Spec keys: wan_dim, wan_layers, wan_ffn, hv_hidden, hv_double, hv_single, dtype ("float32" | "bfloat16" |
"float16"). A marker file records the spec and a hash of the files that decide the tree (`SOURCES`); the tree is
written again when either changed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(os.path.dirname(HERE))
HOST_DIR = os.path.join(PACK_ROOT, "tests", "host")
STANDINS_DIR = os.path.join(HOST_DIR, "workflow_standins")
MARKER = ".moga_server_models.json"

#: the sizes of tests/host/test_workflows.py's model tree (the "tiny" profile)
TEST_SPEC = {"wan_dim": 256, "wan_layers": 2, "wan_ffn": 512, "hv_hidden": 256, "hv_double": 2, "hv_single": 2,
             "dtype": "float32"}


def hunyuan_video_t2v_state_dict(hidden: int, double: int, single: int, seed: int) -> dict:
    """HunyuanVideo T2V 720p's layout (as tests/host/test_workflows.hunyuan_video_state_dict) at another width and
    depth; 128-wide heads."""
    import comfy.ldm.hunyuan_video.model as hv
    import comfy.ops
    import tiny_models as tm

    model = hv.HunyuanVideo(image_model="hunyuan_video", operations=comfy.ops.disable_weight_init, in_channels=16,
                            out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=hidden, mlp_ratio=4.0,
                            num_heads=hidden // 128, depth=double, depth_single_blocks=single, axes_dim=[16, 56, 56],
                            theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False,
                            meanflow=False, use_cond_type_embedding=False, vision_in_dim=None, meanflow_sum=False)
    return tm._randomize(model, seed)


def diffusion_models(spec: dict, twf) -> dict:
    """File name -> builder of its state dict (the tests' table, sized by ``spec``)."""
    import tiny_kandinsky5 as tk
    import tiny_models as tm

    d, n, f = spec["wan_dim"], spec["wan_layers"], spec["wan_ffn"]

    def wan(**kw):
        return lambda: tm.wan_state_dict(dim=d, ffn=f, **dict({"layers": n}, **kw))

    if (spec["hv_hidden"], spec["hv_double"], spec["hv_single"]) == (256, 2, 2):
        hunyuan = lambda: twf.hunyuan_video_state_dict(seed=6)  # noqa: E731  (the tests' own)
    else:
        hunyuan = lambda: hunyuan_video_t2v_state_dict(spec["hv_hidden"], spec["hv_double"],  # noqa: E731
                                                       spec["hv_single"], seed=6)
    # Kandinsky 5 Lite: the tests' tiny Lite at the tests' Wan sizes, else Lite's own width, FFN and text blocks
    # (1792 = 28 heads of 64, 7168, 2) with the Wan block count of visual blocks
    k5 = tk.LITE if (d, n, f) == (TEST_SPEC["wan_dim"], TEST_SPEC["wan_layers"], TEST_SPEC["wan_ffn"]) else \
        dict(model_dim=1792, ff_dim=7168, time_dim=512, num_text_blocks=2, num_visual_blocks=n)
    return {
        "wan2.1_t2v_1.3B_fp16.safetensors": wan(seed=0),
        "wan2.1_t2v_14B_fp8_scaled.safetensors": wan(layers=n + 1, seed=1),
        "wan2.1_i2v_480p_14B_fp16.safetensors": wan(model_type="i2v", in_dim=36, seed=2),
        "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": wan(seed=3),
        "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": wan(seed=4),
        "wan2.2_ti2v_5B_fp16.safetensors": wan(in_dim=48, out_dim=48, seed=5),
        "hunyuan_video_t2v_720p_bf16.safetensors": hunyuan,
        # Wan 2.2 Animate has one face adapter block per five blocks: a multiple of 5 (the tests' 5 at L = 2)
        "wan2.2_animate_14B_bf16.safetensors":
            lambda: tm.wan_animate_state_dict(dim=d, layers=max(5, n - n % 5), ffn=f, seed=9),
        "kandinsky5lite_t2v_sft_5s.safetensors": lambda: tk.kandinsky5_state_dict(**k5, seed=10),
        "wan2.2_s2v_14B_fp8_scaled.safetensors": lambda: tm.wan_s2v_state_dict(dim=d, layers=n, ffn=f, seed=11),
    }


#: the files that decide what the tree holds: a change to any of them writes the tree again
SOURCES = (os.path.join(HERE, "make_models.py"), os.path.join(HOST_DIR, "test_workflows.py"),
           os.path.join(HOST_DIR, "tiny_models.py"), os.path.join(HOST_DIR, "tiny_kandinsky5.py"),
           os.path.join(HOST_DIR, "tiny_ltx.py"), os.path.join(STANDINS_DIR, "__init__.py"),
           os.path.join(PACK_ROOT, "devtools", "build_workflows.py"))


def source_id() -> str:
    digest = hashlib.sha256()
    for path in SOURCES:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def load_standins():
    spec = importlib.util.spec_from_file_location("moga_workflow_standins_for_models",
                                                  os.path.join(STANDINS_DIR, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tree(comfy_dir: str, spec: dict) -> dict:
    for path in (PACK_ROOT, HOST_DIR):
        if path not in sys.path:
            sys.path.append(path)
    from devtools import workflow_graph as wt

    wt.init_comfyui(comfy_dir, init_api_nodes=False)
    import torch
    from safetensors.torch import save_file

    import comfy.clip_vision
    import test_workflows as twf
    import tiny_models as tm

    standins = load_standins()
    models = os.path.join(comfy_dir, "models")
    dtype = getattr(torch, spec["dtype"])
    sizes = {}

    def save(folder: str, name: str, sd: dict, dtype=torch.float32, **metadata):
        os.makedirs(os.path.join(models, folder), exist_ok=True)
        path = os.path.join(models, folder, name)
        save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, path,
                  metadata={k: str(v) for k, v in metadata.items()} or None)
        sizes[f"{folder}/{name}"] = {"params": sum(v.numel() for v in sd.values()), "bytes": os.path.getsize(path)}

    for name, build in diffusion_models(spec, twf).items():
        t = time.time()
        sd = build()
        save("diffusion_models", name, sd, dtype)
        del sd
        print(f"make_models: {name}: {sizes['diffusion_models/' + name]['params'] / 1e6:.1f}M parameters, "
              f"{time.time() - t:.1f} s", flush=True)
    for name in twf.TEXT_ENCODER_FILES:
        save("text_encoders", name, {"stand_in": torch.zeros(1)}, **{standins.STAND_IN_MARKER: name})
    for name in twf.AUDIO_ENCODER_FILES:
        save("audio_encoders", name, {"stand_in": torch.zeros(1)}, **{standins.STAND_IN_MARKER: name})
    save("vae", "wan_2.1_vae.safetensors", twf.wan21_vae_state_dict())
    save("vae", "wan2.2_vae.safetensors", twf.wan22_vae_state_dict())
    save("vae", "hunyuan_video_vae_bf16.safetensors", twf.hunyuan_vae_state_dict())
    config = standins.tiny_vit_h_config()
    try:
        vit = comfy.clip_vision.ClipVisionModel(config)
    finally:
        os.unlink(config)
    save("clip_vision", "clip_vision_h.safetensors", tm._randomize(vit.model, 7), dtype=torch.float16)
    os.makedirs(os.path.join(models, "moga"), exist_ok=True)
    input_dir = os.path.join(comfy_dir, "input")
    os.makedirs(input_dir, exist_ok=True)
    twf.write_input_files(input_dir)  # the tests' images and videos under the workflows' names
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", required=True, help="the ComfyUI tree whose models/ and input/ get the files")
    parser.add_argument("--spec", required=True, help="JSON: the sizes (see the module doc)")
    args = parser.parse_args(argv)
    spec = dict(TEST_SPEC, **json.loads(args.spec))
    marker = os.path.join(args.comfyui, "models", MARKER)
    source = source_id()
    if os.path.exists(marker):
        with open(marker) as f:
            written = json.load(f)
        if written.get("spec") == spec and written.get("source") == source:
            print("make_models: the model tree is already there with this spec", flush=True)
            return 0
        os.remove(marker)
    t = time.time()
    sizes = write_tree(os.path.abspath(args.comfyui), spec)
    with open(marker, "w") as f:
        json.dump({"spec": spec, "source": source, "files": sizes, "seconds": round(time.time() - t, 1)}, f,
                  indent=1)
    print(f"make_models: {len(sizes)} files in {time.time() - t:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
