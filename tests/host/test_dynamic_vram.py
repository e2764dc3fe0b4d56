"""Dynamic VRAM's delegate swap, reproduced on CPU (real ComfyUI, real loaders, real sampling).

On an NVIDIA GPU ComfyUI loads models with dynamic VRAM (``ModelPatcherDynamic``). When a conditioning carries hooks
— every MoGA multi-shot prompt does — ``CFGGuider.inner_set_conds`` replaces the patcher by
``get_non_dynamic_delegate()``: a clone whose model is loaded afresh through ``cached_patcher_init``, carrying the
clone's patches, wrappers and options. From then on the original model's weights are not resident, so anything that
kept a module of the model a patch was made on runs weights that are not there.

`DelegatingPatcher` does on CPU what matters of that: it says it is dynamic, builds its delegate with ComfyUI's own
``ModelPatcherDynamic.get_non_dynamic_delegate`` (so through the loader's ``cached_patcher_init``), and then moves the
original model's weights to the meta device, where any use of them fails. The loaders create it because the test
sets ``comfy.model_patcher.CoreModelPatcher`` to it, as ComfyUI's ``main.py`` sets it to ``ModelPatcherDynamic``.

Each case runs the main path — MoGA Multi-Shot Prompt → a loader → MoGA patch → MoGA Long Video Sampler (or the
guider, calibration, auto routers, context windows) — once with ordinary patchers and once with delegating ones, and
requires the same latent, bit for bit, and sparse attention where the model is patched.
"""

from __future__ import annotations

import re
from importlib import import_module

import pytest
import torch
from safetensors.torch import save_file

import tiny_models as tm
from test_loaders import OPTIONS
from test_multishot import SAMPLER_ARGS, StandInTextEncoder

pytestmark = pytest.mark.host

SHOTS = "9f | a ball\n8f | a cube\n8f | a cone"
NODE_DEFAULTS = dict(OPTIONS, grouping="random (balanced)")  # the nodes' default grouping without a router


def delegating_patcher_class():
    import comfy.model_patcher

    class DelegatingPatcher(comfy.model_patcher.ModelPatcher):
        """A ModelPatcher that swaps in a non-dynamic delegate as ModelPatcherDynamic does, then retires its model."""

        delegates = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.non_dynamic_delegate_model = None

        def is_dynamic(self):
            return True

        def get_non_dynamic_delegate(self):
            delegate = comfy.model_patcher.ModelPatcherDynamic.get_non_dynamic_delegate(self)
            assert delegate.model is not self.model and not delegate.is_dynamic()
            type(self).delegates += 1
            # on a GPU the original's weights are not resident any more: here, they are nowhere
            self.model.diffusion_model.to("meta")
            return delegate

    return DelegatingPatcher


@pytest.fixture()
def loaders(moga, models_dir, monkeypatch):
    """load(dynamic, family) -> a MODEL through ComfyUI's UNETLoader (``dynamic``: a `DelegatingPatcher`)."""
    import comfy.model_patcher
    import nodes

    save_file(tm.wan_state_dict(seed=4), str(models_dir / "diffusion_models" / "wan.safetensors"))
    save_file(tm.hunyuan_state_dict(seed=4), str(models_dir / "diffusion_models" / "hunyuan.safetensors"))
    delegating = delegating_patcher_class()
    ordinary = comfy.model_patcher.CoreModelPatcher

    class Loaders:
        cls = delegating

        @staticmethod
        def use(dynamic: bool):
            monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", delegating if dynamic else ordinary)

        @staticmethod
        def unet(dynamic: bool, name="wan.safetensors"):
            Loaders.use(dynamic)
            model = nodes.UNETLoader().load_unet(name, "default")[0]
            assert isinstance(model, delegating) == dynamic
            return model

        @staticmethod
        def moga_loader(dynamic: bool, **options):
            Loaders.use(dynamic)
            model = moga.NODES["MoGALoadModel"].execute(
                unet_name="wan.safetensors", weight_dtype="default",
                router_name=moga.load_model.NO_ROUTER, **dict(NODE_DEFAULTS, **options)).args[0]
            assert isinstance(model, delegating) == dynamic
            return model

    return Loaders


def apply(moga, model, **options):
    return moga.NODES["MoGAApply"].execute(model=model, **dict(NODE_DEFAULTS, **options)).args[0]


def multishot(moga, clip):
    pos, plan, _frames, _report = moga.NODES["MoGAMultiShotPrompt"].execute(
        clip=clip, shots=SHOTS, global_prompt="studio", fps=16).args
    assert pos[0][1].get("hooks") is not None, "the multi-shot conditioning carries hooks (what makes the swap)"
    return pos, plan


def run_sampler(moga, model, clip, neg, **args):
    pos, plan = multishot(moga, clip)
    result = moga.NODES["MoGALongVideoSampler"].execute(model=model, positive=pos, negative=neg, shots=plan,
                                                       **dict(SAMPLER_ARGS, **args))
    return result.args[0]["samples"], result.ui


def wan_case(moga, loaders, dynamic, how):
    clip, neg = StandInTextEncoder(), tm.wan_conditioning(seed=9)
    if how == "unet+apply":
        model = apply(moga, loaders.unet(dynamic))
    elif how == "moga loader":
        model = loaders.moga_loader(dynamic)
    elif how == "unet only":
        model = loaders.unet(dynamic)
    elif how == "auto routers":
        model = apply(moga, loaders.unet(dynamic), grouping="k-means on this video", start_percent=0.4,
                      auto_groups=3)
    elif how == "context windows":
        model = apply(moga, loaders.unet(dynamic))
        return run_sampler(moga, model, clip, neg, context_frames=9, context_overlap=4, ffn_chunk_tokens=24), model
    else:
        raise AssertionError(how)
    return run_sampler(moga, model, clip, neg, ffn_chunk_tokens=48), model


@pytest.mark.parametrize("how", ["unet+apply", "moga loader", "unet only", "auto routers", "context windows"])
def test_wan_main_path_survives_the_delegate_swap(moga, loaders, how):
    (expected, ui_ref), ref_model = wan_case(moga, loaders, False, how)
    before = loaders.cls.delegates
    (got, ui), model = wan_case(moga, loaders, True, how)
    assert loaders.cls.delegates == before + 1, "the sampler did not swap in a delegate"
    assert model.model.diffusion_model.blocks[0].ffn[0].weight.device.type == "meta"  # the original is gone
    assert torch.isfinite(got).all()
    assert torch.equal(got, expected)
    patch = moga.wiring.patch_of(model)
    if how == "unet only":
        assert patch is None
        return
    stats = patch.last_run_stats
    assert sum(stats["sparse_calls"].values()) > 0, stats
    untimed = [re.sub(r"[\d.]+ s\b", "_ s", text) for text in ui["moga_run"] + ui_ref["moga_run"]]
    assert untimed[0] == untimed[1] and "sparse" in untimed[0]
    # the group map of the web view reaches the calls that run on the delegate
    assert ui.get("moga_group_map") and ui["moga_group_map"] == ui_ref["moga_group_map"]
    if how == "auto routers":
        assert stats["auto_fits"] == 1


def hunyuan_case(moga, loaders, dynamic):
    from comfy_extras.nodes_custom_sampler import BasicScheduler, KSamplerSelect, RandomNoise, SamplerCustomAdvanced

    model = apply(moga, loaders.unet(dynamic, "hunyuan.safetensors"), temporal_group=2)
    clip = StandInTextEncoder(width=64, tokens=10, pooled=True, pad=2)
    pos, plan = multishot(moga, clip)
    neg = tm.hunyuan_conditioning(seed=9)
    guider = moga.NODES["MoGALongVideoGuider"].execute(model=model, positive=pos, negative=neg, cfg=5.0,
                                                       ffn_chunk_tokens=32, context_frames=0, context_overlap=0,
                                                       shots=plan).args[0]
    sigmas = BasicScheduler.execute(model, "simple", 2, 1.0)[0]
    latent = {"samples": torch.zeros(1, 16, plan.num_latent_frames, 8, 8)}
    out = SamplerCustomAdvanced.execute(RandomNoise.execute(3)[0], guider, KSamplerSelect.execute("euler")[0],
                                        sigmas, latent)[0]["samples"]
    return out, model


def test_hunyuan_guider_survives_the_delegate_swap(moga, loaders):
    """HunyuanVideo adds the per-caption token refiner (an object patch) and its own router input."""
    expected, _ = hunyuan_case(moga, loaders, False)
    got, model = hunyuan_case(moga, loaders, True)
    assert torch.isfinite(got).all() and torch.equal(got, expected)
    stats = moga.wiring.patch_of(model).last_run_stats
    assert sum(stats["sparse_calls"].values()) > 0


def test_calibration_with_multishot_conds_survives_the_delegate_swap(moga, loaders):
    calibrate = import_module(f"{moga.name}.nodes.calibrate")
    clip = StandInTextEncoder()

    def fit(dynamic):
        pos, plan = multishot(moga, clip)
        latent = tm.video_latent(frames=plan.num_latent_frames, height=8, width=8)
        return calibrate.calibrate(loaders.unet(dynamic), pos, tm.wan_conditioning(seed=9), latent, 2, 5.0, "euler",
                                   "simple", seed=0, groups=3, tokens_per_block=64)

    expected, got = fit(False), fit(True)
    for index, router in expected.routers.items():
        assert torch.equal(got.routers[index].weight, router.weight)


def test_kandinsky5_main_path_survives_the_delegate_swap(moga, loaders, models_dir):
    """Kandinsky 5's patched clones carry object patches on every visual block (`Kandinsky5Adapter.module_patches`:
    ComfyUI's block_wrap calls the blocks with keywords they do not take); they must act on the delegate's blocks."""
    import tiny_kandinsky5 as tk

    save_file(tk.kandinsky5_state_dict(seed=4), str(models_dir / "diffusion_models" / "k5.safetensors"))

    def case(dynamic):
        model = apply(moga, loaders.unet(dynamic, "k5.safetensors"))
        clip = StandInTextEncoder(width=tk.TEXT_DIM, tokens=12, pooled=True)
        neg = tk.kandinsky5_conditioning(seed=9)
        return run_sampler(moga, model, clip, neg, ffn_chunk_tokens=48)[0], model

    expected, _ = case(False)
    before = loaders.cls.delegates
    got, model = case(True)
    assert loaders.cls.delegates == before + 1, "the sampler did not swap in a delegate"
    assert model.model.diffusion_model.visual_transformer_blocks[0].feed_forward.in_layer.weight.device.type == "meta"
    assert torch.isfinite(got).all() and torch.equal(got, expected)
    stats = moga.wiring.patch_of(model).last_run_stats
    assert sum(stats["sparse_calls"].values()) > 0, stats
