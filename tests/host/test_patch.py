"""MoGAApply and friends against the real ComfyUI, on tiny models of every supported family (CPU, float32)."""

from __future__ import annotations

import math
from importlib import import_module

import pytest
import torch

import tiny_models as tm

pytestmark = pytest.mark.host

STEPS = 4


def ksample(model, pos, neg, latent, seed=0, cfg=5.0, steps=STEPS):
    import nodes

    return nodes.common_ksampler(model, seed, steps, cfg, "euler", "simple", pos, neg, latent)[0]["samples"]


def routers_for(moga, adapter, m, seed=0, combine="union", blocks=None):
    gen = torch.Generator().manual_seed(seed)
    routers = {}
    for key in adapter.blocks():
        if blocks is None or key.index in blocks:
            weight = torch.randn(m, adapter.hidden_size, generator=gen)
            routers[key.index] = moga.core.Router.from_weights(weight, torch.zeros(m))
    return moga.routers.RouterSet(routers, adapter.family, adapter.hidden_size, adapter.num_blocks, combine=combine)


def patched(moga, model, m, combine="union", seed=0, **options):
    adapter = moga.adapters.adapter_for(model)
    routers = routers_for(moga, adapter, m, seed=seed, combine=combine)
    clone = model.clone()
    shots = options.pop("shots", None)
    if shots is not None:
        moga.wiring.set_shot_cuts(clone, shots)
    # tiny models: MoGA's cost estimate would send them dense, and these tests are about the sparse path
    defaults = dict(start_percent=0.0, min_tokens=0, temporal_group=2, dense_if_slower=False)
    defaults.update(options)
    patch = moga.patcher.install(clone, routers, moga.patcher.PatchOptions(**defaults))
    return clone, patch


# ---------------------------------------------------------------------------------------------------------------
# the families

def wan_t2v():
    return tm.load(tm.wan_state_dict()), tm.wan_conditioning(seed=1), tm.wan_conditioning(seed=2), tm.video_latent(), 5.0


def wan22_ti2v():
    """Wan 2.2 TI2V-5B layout: 48 latent channels; a noise mask on the first frame gives per-frame timesteps."""
    model = tm.load(tm.wan_state_dict(in_dim=48, out_dim=48))
    latent = tm.video_latent(channels=48, frames=4, height=8, width=8)
    mask = torch.ones(1, 1, 4, 8, 8)
    mask[:, :, 0] = 0.0  # the first frame is given (image-to-video): timestep 0 there
    latent["noise_mask"] = mask
    latent["samples"][:, :, 0] = 0.3
    return model, tm.wan_conditioning(seed=1), tm.wan_conditioning(seed=2), latent, 5.0


def wan_i2v():
    """Wan 2.1 i2v: 36 input channels (noise + mask + image latent), CLIP-vision tokens in the cross-attention."""
    model = tm.load(tm.wan_state_dict(in_dim=36, model_type="i2v"))

    class ClipVisionOutput:  # what CLIPVisionEncode returns: the penultimate hidden states are what Wan reads
        penultimate_hidden_states = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(4))

    image = torch.randn(1, 16, 5, 16, 16, generator=torch.Generator().manual_seed(5)) * 0.2
    mask = torch.ones(1, 1, 5, 16, 16)
    mask[:, :, 0] = 0.0
    extra = dict(concat_latent_image=image, concat_mask=mask, clip_vision_output=ClipVisionOutput())
    return model, tm.wan_conditioning(seed=1, **extra), tm.wan_conditioning(seed=2, **extra), tm.video_latent(), 5.0


def wan_vace():
    model = tm.load(tm.wan_state_dict(vace_layers=1))
    return model, tm.wan_conditioning(seed=1), tm.wan_conditioning(seed=2), tm.video_latent(), 5.0


def wan_reference():
    """A ref_conv model (Wan Fun 2.2 style): reference-latent tokens are prepended to the video tokens."""
    model = tm.load(tm.wan_state_dict(in_dim_ref_conv=16))
    ref = [torch.randn(1, 16, 1, 16, 16, generator=torch.Generator().manual_seed(6))]
    return (model, tm.wan_conditioning(seed=1, reference_latents=ref), tm.wan_conditioning(seed=2, reference_latents=ref),
            tm.video_latent(), 5.0)


def wan_animate():
    """Wan 2.2 Animate: an i2v model whose pose latents are added to the video tokens (every frame but the first,
    which is the reference image's) and whose face motion enters through face adapter blocks between the blocks."""
    model = tm.load(tm.wan_animate_state_dict())

    class ClipVisionOutput:
        penultimate_hidden_states = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(4))

    gen = torch.Generator().manual_seed(7)
    image = torch.randn(1, 16, 5, 16, 16, generator=gen) * 0.2
    mask = torch.ones(1, 1, 5, 16, 16)
    mask[:, :, 0] = 0.0
    pose = torch.randn(1, 16, 4, 16, 16, generator=gen) * 0.2  # WanAnimateToVideo: one pose latent per later frame
    extra = dict(concat_latent_image=image, concat_mask=mask, clip_vision_output=ClipVisionOutput(),
                 pose_video_latent=pose)
    return model, tm.wan_conditioning(seed=1, **extra), tm.wan_conditioning(seed=2, **extra), tm.video_latent(), 5.0


def wan_s2v():
    """Wan 2.2 S2V: audio features (wav2vec layers × 1024 × 4 per latent frame), a reference image latent and
    FramePack motion latents; the reference and motion tokens follow the video tokens in every self-attention."""
    model = tm.load(tm.wan_s2v_state_dict())
    gen = torch.Generator().manual_seed(8)
    latent = tm.video_latent()
    frames = latent["samples"].shape[2]
    audio = torch.randn(1, 25, 1024, 4 * frames, generator=gen) * 0.1
    ref = [torch.randn(1, 16, 1, 16, 16, generator=gen) * 0.2]
    motion = torch.randn(1, 16, 19, 16, 16, generator=gen) * 0.2  # (73 + 3) // 4 latent frames, as ComfyUI's node
    extra = dict(audio_embed=audio, reference_latents=ref, reference_motion=motion)
    neg = dict(extra, audio_embed=audio * 0.0)
    return model, tm.wan_conditioning(seed=1, **extra), tm.wan_conditioning(seed=2, **neg), latent, 5.0


def hunyuan10():
    # HunyuanVideo is guidance-distilled and runs at cfg 1 (ComfyUI's HunyuanVideo cannot batch two text masks)
    model = tm.load(tm.hunyuan_state_dict())
    return model, tm.hunyuan_conditioning(seed=1), tm.hunyuan_conditioning(seed=2), tm.video_latent(), 1.0


def hunyuan15():
    model = tm.load(tm.hunyuan_state_dict(in_channels=65, v15=True, single=0, double=3))
    latent = tm.video_latent(channels=32, frames=3, height=8, width=8)
    return model, tm.hunyuan_conditioning(seed=1), tm.hunyuan_conditioning(seed=2), latent, 1.0


FAMILIES = {
    "wan2.1-t2v": wan_t2v,
    "wan2.1-i2v": wan_i2v,
    "wan2.1-vace": wan_vace,
    "wan-reference-latent": wan_reference,
    "wan2.2-ti2v-5b": wan22_ti2v,
    "wan2.2-animate": wan_animate,
    "wan2.2-s2v": wan_s2v,
    "hunyuanvideo-1.0": hunyuan10,
    "hunyuanvideo-1.5": hunyuan15,
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, moga):
    return request.param, FAMILIES[request.param]()


def test_union_with_one_group_equals_the_unpatched_model(moga, family):
    name, (model, pos, neg, latent, cfg) = family
    reference = ksample(model, pos, neg, latent, cfg=cfg)
    clone, patch = patched(moga, model, m=1, combine="union")
    out = ksample(clone, pos, neg, latent, cfg=cfg)
    stats = patch.last_run_stats
    assert sum(stats["sparse_calls"].values()) > 0, (name, stats["dense"])
    scale = reference.abs().max().item()
    assert (out - reference).abs().max().item() <= 1e-4 * max(scale, 1.0), name
    # the unpatched model is untouched, bit for bit
    assert torch.equal(ksample(model, pos, neg, latent, cfg=cfg), reference)


def test_several_groups_change_the_sample_and_run_sparse_in_every_block(moga, family):
    name, (model, pos, neg, latent, cfg) = family
    reference = ksample(model, pos, neg, latent, cfg=cfg)
    for combine in ("union", "mean"):
        clone, patch = patched(moga, model, m=4, combine=combine)
        out = ksample(clone, pos, neg, latent, cfg=cfg)
        assert torch.isfinite(out).all()
        assert not torch.allclose(out, reference, atol=1e-4), (name, combine)
        stats = patch.last_run_stats
        adapter = patch.adapter
        assert set(stats["sparse_calls"]) == {(k.block_type, k.block_index) for k in adapter.blocks()}, name
        # every forward of the run went through every block sparsely (cond/uncond may be batched or not)
        calls = set(stats["sparse_calls"].values())
        assert calls == {stats["forwards"]}, (name, stats)
        assert stats["forwards"] in (STEPS, 2 * STEPS)


def test_sampler_custom_advanced_with_cfg_guider(moga):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import BasicScheduler, CFGGuider, KSamplerSelect, RandomNoise, \
        SamplerCustomAdvanced

    model, pos, neg, latent, _ = wan_t2v()

    def run(m):
        guider = CFGGuider.execute(m, pos, neg, 5.0)[0]
        sampler = KSamplerSelect.execute("euler")[0]
        sigmas = BasicScheduler.execute(m, "simple", STEPS, 1.0)[0]
        noise = RandomNoise.execute(3)[0]
        return SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent)[0]["samples"]

    reference = run(model)
    clone, patch = patched(moga, model, m=1)
    assert (run(clone) - reference).abs().max() <= 1e-4
    clone, patch = patched(moga, model, m=3)
    out = run(clone)
    assert torch.isfinite(out).all() and not torch.allclose(out, reference)
    assert sum(patch.last_run_stats["sparse_calls"].values()) == 2 * STEPS
    assert isinstance(comfy.samplers.CFGGuider(clone), comfy.samplers.CFGGuider)


def test_dense_warmup_and_dense_blocks_are_honoured(moga):
    model, pos, neg, latent, _ = wan_t2v()
    clone, patch = patched(moga, model, m=3, start_percent=0.5, dense_blocks="-1")
    ksample(clone, pos, neg, latent)
    stats = patch.last_run_stats
    sigma_start = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    expected_sparse = sum(1 for s in stats["sigmas"] if s <= sigma_start + 1e-6)
    assert 0 < expected_sparse < len(stats["sigmas"])
    assert stats["sparse_forwards"] == expected_sparse
    assert stats["sparse_calls"] == {("double", 0): expected_sparse}  # block 1 = -1 stays dense
    assert stats["dense"]["dense block"] == stats["forwards"]
    assert stats["dense"]["outside start/end percent"] == stats["forwards"] - expected_sparse
    # end_percent: dense again at the end
    clone, patch = patched(moga, model, m=3, start_percent=0.0, end_percent=0.5)
    ksample(clone, pos, neg, latent)
    stats = patch.last_run_stats
    sigma_end = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    assert stats["sparse_forwards"] == sum(1 for s in stats["sigmas"] if s >= sigma_end - 1e-6)


def test_min_tokens_keeps_short_videos_dense(moga):
    model, pos, neg, latent, _ = wan_t2v()
    clone, patch = patched(moga, model, m=3, min_tokens=10_000)
    out = ksample(clone, pos, neg, latent)
    assert torch.equal(out, ksample(model, pos, neg, latent))
    assert not patch.last_run_stats["sparse_calls"]
    assert patch.last_run_stats["dense"]["below min_tokens"] > 0


def counting_override(log, previous=None):
    def override(func, *args, **kwargs):
        log.append(args[0].shape)
        if previous is not None:
            return previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    return override


def test_chains_with_another_override_in_both_orders(moga):
    model, pos, neg, latent, _ = wan_t2v()
    reference = ksample(model, pos, neg, latent)

    # another pack's override first, MoGA on top: MoGA passes its dense calls down the chain
    seen = []
    first = model.clone()
    first.model_options["transformer_options"]["optimized_attention_override"] = counting_override(seen)
    clone, patch = patched(moga, first, m=1)
    out = ksample(clone, pos, neg, latent)
    assert (out - reference).abs().max() <= 1e-4
    assert sum(patch.last_run_stats["sparse_calls"].values()) == 2 * STEPS
    # only the cross-attention calls reach it: one per block (2 blocks) per forward (cond+uncond batched: 4)
    assert len(seen) == 2 * STEPS and all(shape[1] == 320 for shape in seen)

    # MoGA first, another override installed later replaces the key: MoGA goes back on top every forward
    seen.clear()
    clone, patch = patched(moga, model, m=1)
    later = clone.clone()
    to = later.model_options["transformer_options"]
    to["optimized_attention_override"] = counting_override(seen, previous=None)
    out = ksample(later, pos, neg, latent)
    assert (out - reference).abs().max() <= 1e-4
    assert sum(patch.last_run_stats["sparse_calls"].values()) == 2 * STEPS
    assert len(seen) == 2 * STEPS

    # re-applying MoGA replaces the first patch instead of stacking two
    first_run = patch.last_run_stats
    again, patch2 = patched(moga, clone, m=2)
    ksample(again, pos, neg, latent)
    assert sum(patch2.last_run_stats["sparse_calls"].values()) == 2 * STEPS
    assert patch.last_run_stats is first_run  # the replaced patch took no part in the new run
    override = again.model_options["transformer_options"]["optimized_attention_override"]
    assert override._moga_patch is patch2 and getattr(override._moga_previous, "_moga_patch", None) is None


def test_lora_patched_model_composes(moga):
    import comfy.sd

    model, pos, neg, latent, _ = wan_t2v()
    gen = torch.Generator().manual_seed(9)
    lora = {}
    for i in range(2):
        for proj in ("q", "k", "v", "o"):
            base = f"diffusion_model.blocks.{i}.self_attn.{proj}"
            lora[f"{base}.lora_down.weight"] = torch.randn(4, 256, generator=gen) * 0.1
            lora[f"{base}.lora_up.weight"] = torch.randn(256, 4, generator=gen) * 0.1
    with_lora, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    reference_base = ksample(model, pos, neg, latent)
    reference = ksample(with_lora, pos, neg, latent)
    assert not torch.allclose(reference, reference_base)  # the LoRA does something
    clone, patch = patched(moga, with_lora, m=1)
    assert (ksample(clone, pos, neg, latent) - reference).abs().max() <= 1e-4
    assert sum(patch.last_run_stats["sparse_calls"].values()) > 0


def test_native_context_windows_compose(moga):
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    model = tm.load(tm.wan_state_dict())
    pos, neg = tm.wan_conditioning(seed=1), tm.wan_conditioning(seed=2)
    latent = tm.video_latent(frames=9, height=8, width=8)

    def windows(m):
        return ContextWindowsManualNode.execute(m, 5, 2, "standard_static", 1, False, "pyramid", 2, False)[0]

    reference = ksample(windows(model), pos, neg, latent)
    clone, patch = patched(moga, model, m=1, shots=(0, 4))
    out = ksample(windows(clone), pos, neg, latent)
    assert (out - reference).abs().max() <= 1e-4
    stats = patch.last_run_stats
    assert sum(stats["sparse_calls"].values()) > 0 and stats["forwards"] > STEPS  # several windows per step
    # windows are 5 latent frames: layouts are per window
    clone, patch = patched(moga, model, m=3)
    assert torch.isfinite(ksample(windows(clone), pos, neg, latent)).all()


def test_torch_compile_wrapper_composes(moga):
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    model, pos, neg, latent, _ = wan_t2v()
    reference = ksample(model, pos, neg, latent)
    clone, patch = patched(moga, model, m=1)
    compiled = clone.clone()
    set_torch_compile_wrapper(compiled, backend="eager")
    torch._dynamo.reset()
    out = ksample(compiled, pos, neg, latent)
    assert (out - reference).abs().max() <= 1e-4
    assert sum(patch.last_run_stats["sparse_calls"].values()) == 2 * STEPS


def test_shot_cuts_shape_the_local_windows(moga):
    """With cuts, the window branch breaks at them: the same model with and without a cut samples differently."""
    model, pos, neg, latent, _ = wan_t2v()
    a, _ = patched(moga, model, m=2, combine="mean", shots=(0,))
    b, _ = patched(moga, model, m=2, combine="mean", shots=(0, 3))
    assert not torch.allclose(ksample(a, pos, neg, latent), ksample(b, pos, neg, latent))


# ---------------------------------------------------------------------------------------------------------------
# bad input


def test_router_for_another_family_or_size_is_refused(moga):
    wan, _, _, _, _ = wan_t2v()
    hv, _, _, _, _ = hunyuan10()
    hv_routers = routers_for(moga, moga.adapters.adapter_for(hv), 3)
    with pytest.raises(ValueError, match=r"family 'hunyuan_video' vs the model's 'wan'"):
        moga.patcher.install(wan.clone(), hv_routers, moga.patcher.PatchOptions())
    adapter = moga.adapters.adapter_for(wan)
    small = moga.routers.RouterSet({0: moga.core.Router(128, 3)}, "wan", 128, 2)
    with pytest.raises(ValueError, match="hidden size 128 vs the model's 256"):
        moga.patcher.install(wan.clone(), small, moga.patcher.PatchOptions())
    deeper = moga.routers.RouterSet({0: moga.core.Router(256, 3)}, "wan", 256, 40)
    with pytest.raises(ValueError, match="40 blocks vs the model's 2"):
        moga.patcher.install(wan.clone(), deeper, moga.patcher.PatchOptions())
    assert adapter.num_blocks == 2


def test_unsupported_family_is_a_clear_error(moga):
    # a real ComfyUI Wan variant the pack does not know (camera control adds tokens of its own)
    sd = tm.wan_state_dict(in_dim=32, model_type="camera")
    model = tm.load(sd)
    with pytest.raises(ValueError, match=r"MoGA cannot patch CameraWanModel .*supported: Wan 2.1"):
        moga.adapters.adapter_for(model)
    apply = moga.NODES["MoGAApply"]
    routers = moga.routers.RouterSet({0: moga.core.Router(256, 3)}, "wan", 256, 2)
    with pytest.raises(ValueError, match="MoGA cannot patch"):
        apply.execute(model=model, router=routers, combine="union", windows_h=2, windows_w=2, temporal_group=10,
                      neighbor_frames=2, frame_branch=True, balanced=False, start_percent=0.0, end_percent=1.0,
                      dense_blocks="", min_tokens=0, backend="auto", capacity=1.25,
                      dense_if_slower=False, auto_groups=5, second_group=False)


@pytest.mark.parametrize("text, message", [("0,x", "cannot read 'x'"), ("5", "block 5 does not exist"),
                                           ("-3", "block -3 does not exist")])
def test_bad_dense_blocks(moga, text, message):
    with pytest.raises(ValueError, match=message):
        moga.patcher.parse_block_list(text, 2)
    assert moga.patcher.parse_block_list("0-1, -1", 3) == {0, 1, 2}


def test_option_validation(moga):
    from importlib import import_module

    options = import_module(f"{moga.name}.nodes.options")
    base = dict(combine="union", windows_h=2, windows_w=2, temporal_group=10, neighbor_frames=2, frame_branch=True,
                balanced=False, start_percent=0.5, end_percent=0.2, dense_blocks="", min_tokens=0, backend="auto",
                capacity=1.25, dense_if_slower=True, auto_groups=5, second_group=False)
    with pytest.raises(ValueError, match=r"end_percent \(0.2\) must not be below start_percent \(0.5\)"):
        options.options_from_inputs(**base)
    with pytest.raises(ValueError, match="windows_h and windows_w must both be 0"):
        options.options_from_inputs(**dict(base, end_percent=1.0, windows_w=0))
    assert math.isclose(options.options_from_inputs(**dict(base, end_percent=1.0)).start_percent, 0.5)


def test_layers_that_would_not_pay_off_run_dense_and_the_run_says_so(moga):
    """On a tiny model no sparse layer beats dense attention: with the default dense_if_slower every routed call
    runs densely (union mode's M = 1 case, so the sample equals the unpatched model's), and the run's summary —
    the log line and the long-video sampler's UI text — names the reason."""
    model, pos, neg, latent, cfg = wan_t2v()
    reference = ksample(model, pos, neg, latent, cfg=cfg)
    clone, patch = patched(moga, model, m=3, dense_if_slower=True)
    out = ksample(clone, pos, neg, latent, cfg=cfg)
    stats = patch.last_run_stats
    assert sum(stats["sparse_calls"].values()) == 0
    # the reason is the cost at this (tiny) length, not unequal groups: even equal groups would not beat dense
    at_length = import_module(f"{moga.name}.moga_core.attention").DENSE_AT_LENGTH
    assert stats["dense"][at_length] > 0 and moga.patcher.DENSE_BY_COST not in stats["dense"]
    assert (out - reference).abs().max().item() <= 1e-4 * max(reference.abs().max().item(), 1.0)
    line = moga.patcher.summarize_run(stats)
    assert line.startswith("MoGA: 0 sparse / ") and at_length in line


def test_random_groups_reuse_their_block_plans_within_a_run(moga, family):
    """Random groups are the same at every step: each block's plan is built on its first call of a run and reused
    by the later ones (moga_core.PlanCache), with exactly the sample of a run that rebuilds every plan; the cache
    is emptied when the run ends."""
    name, (model, pos, neg, latent, cfg) = family
    defaults = dict(start_percent=0.0, min_tokens=0, temporal_group=2, dense_if_slower=False, auto_groups=4)
    runs = {}
    for budget in (0, moga.patcher.PLAN_CACHE_BYTES):  # 0: nothing is stored, every call builds its plan
        clone = model.clone()
        patch = moga.patcher.install(clone, None, moga.patcher.PatchOptions(**defaults))
        assert patch.random is not None and patch.plan_cache is not None
        patch.plan_cache.max_bytes = budget
        runs[budget] = ksample(clone, pos, neg, latent, cfg=cfg)
        stats = patch.last_run_stats
        sparse = sum(stats["sparse_calls"].values())
        assert sparse > 0, (name, stats["dense"])
        blocks = len(stats["sparse_calls"])
        if budget:
            # every call after a block's first ones (one per distinct batch of cond/uncond) reused its plan
            assert sparse - 2 * blocks <= stats["plans_reused"] <= sparse - blocks, (name, stats)
            assert "block plans reused in" in moga.patcher.summarize_run(stats)
        else:
            assert stats["plans_reused"] == 0
        assert len(patch.plan_cache) == 0  # cleared at the end of the run (its device memory is given back)
    assert torch.equal(runs[0], runs[moga.patcher.PLAN_CACHE_BYTES]), name


@pytest.mark.parametrize("slow", ["sparse", "dense"])
def test_the_speed_check_keeps_the_faster_path_for_the_rest_of_the_run(moga, slow, monkeypatch):
    """dense_if_slower also times the run's own calls: a few sparse ones, then a few on the dense backend, and from
    then on each call shape takes the faster. Here the estimate is told the layer pays off, and one side is made
    50 ms slower per call (a sleep), so the verdict is clear on any machine."""
    import time as time_module

    attention = import_module(f"{moga.name}.moga_core.attention")
    monkeypatch.setattr(attention, "relative_cost", lambda *args: 0.5)  # the estimate: sparse pays off
    monkeypatch.setattr(attention, "_varlen_relative_cost", lambda *args: 0.5)  # (the CPU's varlen path)
    patcher, wiring = moga.patcher, moga.wiring
    if slow == "sparse":
        real = patcher.moga_attention

        def slow_sparse(*args, **kwargs):
            time_module.sleep(0.05)
            return real(*args, **kwargs)

        monkeypatch.setattr(patcher, "moga_attention", slow_sparse)
    else:
        real = wiring.pass_down

        def slow_dense(*args, **kwargs):
            time_module.sleep(0.05)
            return real(*args, **kwargs)

        monkeypatch.setattr(wiring, "pass_down", slow_dense)
    model, pos, neg, latent, cfg = wan_t2v()
    clone = model.clone()
    options = dict(start_percent=0.0, min_tokens=0, temporal_group=2, dense_if_slower=True, auto_groups=3)
    patch = patcher.install(clone, None, patcher.PatchOptions(**options))
    out = ksample(clone, pos, neg, latent, cfg=cfg, steps=6)
    assert torch.isfinite(out).all()
    stats = patch.last_run_stats
    check = patch.speed
    sparse, timed = sum(stats["sparse_calls"].values()), stats["dense"][patcher.DENSE_TIMING]
    shapes = len(stats["speed"])
    assert shapes >= 1 and timed == check.dense_samples * shapes, stats
    verdict, sparse_ms, dense_ms = next(iter(stats["speed"].values()))
    line = patcher.summarize_run(stats)
    assert "speed check at" in line and f"so {verdict}" in line
    if slow == "sparse":
        assert verdict == "dense" and sparse_ms >= 50 > dense_ms
        # the plan's first build per block, one skipped call, the samples; after the verdict every call is dense
        assert stats["dense"][patcher.DENSE_MEASURED] > 0
        assert sparse <= 2 * len(stats["sparse_calls"]) + (check.skip_first + check.sparse_samples) * shapes + 1
    else:
        assert verdict == "sparse" and dense_ms >= 50 > sparse_ms
        assert stats["dense"][patcher.DENSE_MEASURED] == 0
        assert sparse + timed == stats["forwards"] * len(stats["sparse_calls"])


@pytest.mark.parametrize("with_extras", [True, False])
def test_s2v_reference_and_motion_tokens_are_a_global_suffix(moga, with_extras, monkeypatch):
    """Wan S2V appends the reference image's tokens and FramePack's motion tokens after the video tokens: the patch
    places them as a suffix (sized as the model made them) and still runs every block sparse; without them the
    sequence is the video alone."""
    model, pos, neg, latent, cfg = wan_s2v()
    if not with_extras:
        pos = [[pos[0][0], {"audio_embed": pos[0][1]["audio_embed"]}]]
        neg = [[neg[0][0], {"audio_embed": neg[0][1]["audio_embed"]}]]
    spans = []
    adapter_cls = type(moga.adapters.adapter_for(model))
    original = adapter_cls.video_span
    monkeypatch.setattr(adapter_cls, "video_span",
                        lambda self, *a: spans.append((a[1]["img"].shape[1], a[2], original(self, *a))) or spans[-1][2])
    clone, patch = patched(moga, model, m=4)
    out = ksample(clone, pos, neg, latent, cfg=cfg)
    assert torch.isfinite(out).all()
    assert spans and all(span is not None for *_, span in spans)
    _, _, t, h, w = latent["samples"].shape
    video = t * (h // 2) * (w // 2)
    # reference: one latent frame at the video's patch grid; motion: FramePack packs its last frame at that grid, the
    # 2 before it at half the grid (one packed frame) and 16 more at a quarter (four packed frames)
    expected = (h // 2) * (w // 2) + (h // 2) * (w // 2) + (h // 4) * (w // 4) + 4 * (h // 8) * (w // 8) if with_extras else 0
    assert {(n, nv, span) for n, nv, span in spans} == {(video + expected, video, (0, expected))}
    stats = patch.last_run_stats
    assert set(stats["sparse_calls"].values()) == {stats["forwards"]}
    assert not stats["dense"]
    assert moga.patcher.summarize_run(stats).startswith(f"MoGA: {sum(stats['sparse_calls'].values())} sparse / 0 dense")
