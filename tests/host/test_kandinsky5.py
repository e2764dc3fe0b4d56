"""MoGA on Kandinsky 5 video (comfy.ldm.kandinsky5.model.Kandinsky5) against the real ComfyUI, on tiny models (CPU,
float32): sampling through ``nodes.common_ksampler``, the dense cases and their reasons, the router input, and
per-shot captions through the text encoder blocks and the cross-attention."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

import pytest
import torch

import tiny_kandinsky5 as tk
from test_multishot import StandInTextEncoder
from test_patch import STEPS, ksample, patched

pytestmark = pytest.mark.host


@dataclass
class Case:
    model: object  # ModelPatcher
    pos: list
    neg: list
    latent: dict
    head_dim: int
    steps: int = STEPS

    @property
    def video_tokens(self) -> int:
        _, _, t, h, w = self.latent["samples"].shape
        return t * (h // 2) * (w // 2)


def lite():
    """head_dim 64 (model_dim 256, 4 heads), text-to-video: grid (5, 8, 8) = 320 tokens, 3 key blocks of 128."""
    return Case(tk.kandinsky5_model(tk.LITE), tk.kandinsky5_conditioning(seed=1), tk.kandinsky5_conditioning(seed=2),
                tk.video_latent(), 64)


def head128():
    """head_dim 128: model_dim 2560 (20 heads), the smallest width ComfyUI's detection gives axes_dims (32, 48, 48);
    grid (3, 8, 8) = 192 tokens (2 key blocks) and 3 steps, since 20 heads on 2 CPU cores are slow."""
    return Case(tk.kandinsky5_model(tk.HEAD128), tk.kandinsky5_conditioning(seed=1), tk.kandinsky5_conditioning(seed=2),
                tk.video_latent(frames=3), 128, steps=3)


def lite_i2v():
    """Image-to-video as ``Kandinsky5ImageToVideo`` builds it: the start image's latent replaces the first latent frame
    of the model input (``time_dim_replace``) and ``concat_mask`` marks it given; no tokens are added."""
    gen = torch.Generator().manual_seed(5)
    start = torch.randn(1, 16, 1, 16, 16, generator=gen) * 0.3
    mask = torch.ones(1, 1, 5, 16, 16)
    mask[:, :, :1] = 0.0
    extra = dict(time_dim_replace=start, concat_mask=mask)
    return Case(tk.kandinsky5_model(tk.LITE), tk.kandinsky5_conditioning(seed=1, **extra),
                tk.kandinsky5_conditioning(seed=2, **extra), tk.video_latent(), 64)


CONFIGS = {"lite-head64": lite, "head128": head128, "lite-i2v": lite_i2v}


@pytest.fixture(scope="module", params=list(CONFIGS))
def kandinsky(request, moga):
    return request.param, CONFIGS[request.param]()


@pytest.fixture(scope="module")
def lite_model(moga):
    return lite()


def test_detected_as_kandinsky5_with_the_expected_heads(moga, kandinsky):
    name, case = kandinsky
    model, head_dim = case.model, case.head_dim
    import comfy.ldm.kandinsky5.model as k5
    import comfy.model_base

    assert type(model.model) is comfy.model_base.Kandinsky5, name  # the video model, not Kandinsky5Image
    dm = model.model.diffusion_model
    assert type(dm) is k5.Kandinsky5
    adapter = moga.adapters.adapter_for(model)
    assert adapter.family == "kandinsky5" and adapter.display_name == "Kandinsky 5"
    attn = dm.visual_transformer_blocks[0].self_attention
    assert attn.head_dim == head_dim and attn.num_heads == dm.model_dim // head_dim, name
    assert adapter.hidden_size == adapter.attention_width(adapter.blocks()[0]) == dm.model_dim
    assert [(k.block_type, k.block_index, k.index) for k in adapter.blocks()] == [("double", 0, 0), ("double", 1, 1)]
    assert adapter.grid((1, 16, 5, 16, 16), {}) == (5, 8, 8)
    assert adapter.grid((1, 16, 5, 15, 17), {}) == (5, 8, 9)  # pad_to_patch_size rounds up
    assert adapter.ffn_paths() == ["diffusion_model.visual_transformer_blocks.0.feed_forward",
                                   "diffusion_model.visual_transformer_blocks.1.feed_forward"]
    assert adapter.attention_module("double", 1, True) is dm.visual_transformer_blocks[1].self_attention
    assert adapter.attention_module("double", 1, False) is dm.visual_transformer_blocks[1].cross_attention
    assert adapter.attention_module(None, None, True) is None  # the text encoder blocks: no block index yet


def test_union_with_one_group_equals_the_unpatched_model(moga, kandinsky):
    name, case = kandinsky
    model, pos, neg, latent, steps = case.model, case.pos, case.neg, case.latent, case.steps
    reference = ksample(model, pos, neg, latent, steps=steps)
    clone, patch = patched(moga, model, m=1, combine="union")
    out = ksample(clone, pos, neg, latent, steps=steps)
    stats = patch.last_run_stats
    assert sum(stats["sparse_calls"].values()) > 0, (name, stats["dense"])
    scale = reference.abs().max().item()
    assert (out - reference).abs().max().item() <= 1e-4 * max(scale, 1.0), name
    # the unpatched model is untouched, bit for bit
    assert torch.equal(ksample(model, pos, neg, latent, steps=steps), reference), name


def test_several_groups_change_the_sample_and_run_sparse_in_every_block(moga, kandinsky):
    name, case = kandinsky
    model, pos, neg, latent, steps = case.model, case.pos, case.neg, case.latent, case.steps
    reference = ksample(model, pos, neg, latent, steps=steps)
    for combine in ("union", "mean"):
        clone, patch = patched(moga, model, m=4, combine=combine)
        out = ksample(clone, pos, neg, latent, steps=steps)
        assert torch.isfinite(out).all(), (name, combine)
        assert not torch.allclose(out, reference, atol=1e-4), (name, combine)
        stats = patch.last_run_stats
        blocks = {(k.block_type, k.block_index) for k in patch.adapter.blocks()}
        assert set(stats["sparse_calls"]) == blocks, (name, stats)
        # every forward went through every visual block sparsely, and nothing else was taken or left dense
        assert set(stats["sparse_calls"].values()) == {stats["forwards"]}, (name, stats)
        assert stats["forwards"] in (steps, 2 * steps)
        assert not stats["dense"], (name, combine, stats["dense"])
        sparse = sum(stats["sparse_calls"].values())
        line = moga.patcher.summarize_run(stats)
        assert line.startswith(f"MoGA: {sparse} sparse / 0 dense attention calls"), line
        assert "density" in line and "largest group" in line


def test_run_summary_names_the_dense_calls(moga, lite_model):
    """A dense warm-up and a dense block: the summary counts the sparse calls and gives each dense reason."""
    model, pos, neg, latent = lite_model.model, lite_model.pos, lite_model.neg, lite_model.latent
    clone, patch = patched(moga, model, m=3, start_percent=0.5, dense_blocks="-1")
    ksample(clone, pos, neg, latent)
    stats = patch.last_run_stats
    sigma_start = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    sparse_forwards = sum(1 for s in stats["sigmas"] if s <= sigma_start + 1e-6)
    assert 0 < sparse_forwards < stats["forwards"]
    assert stats["sparse_calls"] == {("double", 0): sparse_forwards}  # block 1 (= -1) stays dense
    assert stats["dense"] == {"dense block": stats["forwards"],
                              "outside start/end percent": stats["forwards"] - sparse_forwards}
    line = moga.patcher.summarize_run(stats)
    dense = stats["forwards"] + stats["forwards"] - sparse_forwards
    assert line.startswith(f"MoGA: {sparse_forwards} sparse / {dense} dense attention calls; dense: "), line
    assert f"dense block {stats['forwards']}" in line
    assert f"outside start/end percent {stats['forwards'] - sparse_forwards}" in line


def test_kandinsky5_image_stays_dense_and_says_why(moga):
    """Kandinsky 5 Image (same diffusion class, model_base.Kandinsky5Image, Flux latents): its 4-D latents reach the
    model as (B, C, H, W), which has no video grid, so every visual block call stays dense with that reason and the
    sample is the unpatched model's exactly."""
    import comfy.model_base

    model = tk.kandinsky5_model(tk.IMAGE)
    assert type(model.model) is comfy.model_base.Kandinsky5Image
    assert moga.adapters.adapter_for(model).family == "kandinsky5"
    pos, neg = tk.kandinsky5_conditioning(seed=1), tk.kandinsky5_conditioning(seed=2)
    latent = tk.image_latent(16, 16)
    reference = ksample(model, pos, neg, latent, steps=3)
    assert reference.shape == (1, 16, 16, 16) and torch.isfinite(reference).all()
    clone, patch = patched(moga, model, m=4)
    out = ksample(clone, pos, neg, latent, steps=3)
    stats = patch.last_run_stats
    assert torch.equal(out, reference)
    assert not stats["sparse_calls"] and stats["forwards"] > 0
    assert stats["dense"] == {"no video grid": 2 * stats["forwards"]}  # 2 visual blocks per forward
    assert "dense: no video grid" in moga.patcher.summarize_run(stats)


def test_an_image_latent_on_the_video_model_is_one_frame_and_runs_sparse_and_right(moga, lite_model):
    """The video model's sampler turns a 4-D latent into one frame (fix_empty_latent_channels): a video of grid
    (1, 16, 16) that MoGA takes in every block. In one frame the frame branch holds every key, so union mode is the
    dense result for any number of groups, and mean mode (a mix of three branches) is not."""
    model, pos, neg = lite_model.model, lite_model.pos, lite_model.neg
    latent = tk.image_latent(32, 32)
    reference = ksample(model, pos, neg, latent)
    assert reference.shape == (1, 16, 1, 32, 32)
    scale = max(reference.abs().max().item(), 1.0)
    for m, combine in ((1, "union"), (4, "union"), (4, "mean")):
        clone, patch = patched(moga, model, m=m, combine=combine)
        out = ksample(clone, pos, neg, latent)
        stats = patch.last_run_stats
        assert set(stats["sparse_calls"].values()) == {stats["forwards"]} and len(stats["sparse_calls"]) == 2, \
            (m, combine, stats["dense"])
        assert torch.isfinite(out).all()
        error = (out - reference).abs().max().item()
        if combine == "union":
            assert error <= 1e-4 * scale, (m, error)
        else:
            assert error > 1e-3 * scale, (m, error)


def test_router_input_is_the_self_attention_input(moga, kandinsky):
    """The adapter's router input equals, bit for bit, what each visual block's self-attention module receives
    (read with forward hooks on the unpatched model: the block's own arguments and its self-attention's input)."""
    import nodes

    name, case = kandinsky
    model, pos, neg, latent = case.model, case.pos, case.neg, case.latent
    adapter = moga.adapters.adapter_for(model)
    dm = model.model.diffusion_model
    seen, calls = [], {}

    def block_args(index):
        def hook(module, args, kwargs):  # forward_orig: block(visual_embed, context, time_embed, freqs=..., ...)
            calls[index] = {"x": args[0], "context": args[1], "time_embed": args[2], "freqs": kwargs["freqs"],
                            "transformer_options": kwargs["transformer_options"]}
        return hook

    def attention_input(index):
        def hook(module, args):
            key = adapter.blocks()[index]
            block_call = calls.pop(index)
            span = adapter.video_span(key, block_call, block_call["x"].shape[1], {})
            seen.append((index, adapter.router_input(key, block_call, span), args[0]))
        return hook

    hooks = []
    for i, block in enumerate(dm.visual_transformer_blocks):
        hooks.append(block.register_forward_pre_hook(block_args(i), with_kwargs=True))
        hooks.append(block.self_attention.register_forward_pre_hook(attention_input(i)))
    try:
        nodes.common_ksampler(model, 0, 1, 5.0, "euler", "simple", pos, neg, latent)
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted({i for i, _, _ in seen}) == [0, 1]
    for index, routed, actual in seen:
        assert routed.shape == actual.shape == (actual.shape[0], case.video_tokens, dm.model_dim), name
        assert routed.dtype == actual.dtype == torch.float32
        assert torch.equal(routed, actual), (name, index)


def test_another_block_patch_that_calls_the_original_block_composes(moga, lite_model):
    """ComfyUI's block_wrap calls the block with keywords its forward does not take (``x=``, ``context=``); the
    patched clone's forward accepts them, so a block-replace patch installed before MoGA (which MoGA chains onto)
    and MoGA's own call of the original block both run, with the routed self-attention inside."""
    model, pos, neg, latent = lite_model.model, lite_model.pos, lite_model.neg, lite_model.latent
    ran = []

    def earlier(args, extra):
        ran.append(args["transformer_options"]["block_index"])
        return extra["original_block"](args)

    base = model.clone()
    for i in range(2):
        base.set_model_patch_replace(earlier, "dit", "double_block", i)
    clone, patch = patched(moga, base, m=1)
    reference = ksample(model, pos, neg, latent)
    out = ksample(clone, pos, neg, latent)
    stats = patch.last_run_stats
    assert ran.count(0) == ran.count(1) == stats["forwards"] > 0
    assert set(stats["sparse_calls"].values()) == {stats["forwards"]}
    assert (out - reference).abs().max().item() <= 1e-4 * max(reference.abs().max().item(), 1.0)


def test_calibrated_routers_fit_and_run_sparse(moga, lite_model):
    """The calibration pass (router inputs of a dense run) gives Kandinsky routers; patched with them every visual
    block runs sparse."""
    model, pos, neg, latent = lite_model.model, lite_model.pos, lite_model.neg, lite_model.latent
    routers = moga.calibrate.calibrate(model, pos, neg, latent, 2, 5.0, "euler", "simple", 3, 4, 256)
    assert routers.model_family == "kandinsky5" and routers.hidden_size == 256 and routers.num_blocks == 2
    assert sorted(routers.routers) == [0, 1] and routers.num_groups == 4
    clone = model.clone()
    patch = moga.patcher.install(clone, routers, moga.patcher.PatchOptions(
        start_percent=0.0, min_tokens=0, temporal_group=2, dense_if_slower=False))
    out = ksample(clone, pos, neg, latent)
    stats = patch.last_run_stats
    assert torch.isfinite(out).all() and len(stats["sparse_calls"]) == 2
    assert set(stats["sparse_calls"].values()) == {stats["forwards"]}


def test_text_layout_names_the_caption_calls(moga, lite_model):
    adapter = moga.adapters.adapter_for(lite_model.model)
    nv, text = 320, 36
    assert adapter.text_layout(nv, text, False, nv, text, {}) == ("cross", 0, 0)  # video queries, caption keys
    assert adapter.text_layout(text, text, True, nv, text, {}) == ("text", 0, 0)  # the text encoder blocks
    assert adapter.text_layout(nv, nv, True, nv, text, {}) is None  # the video self-attention
    assert adapter.text_layout(nv, 12, False, nv, text, {}) is None  # keys that are not exactly the captions
    # as many video tokens as caption tokens: the calls cannot be told apart, so none is restricted
    assert adapter.text_layout(text, text, True, text, text, {}) is None


def first_forward_block0(model, cond, latent):
    """Block 0's (context, output) in the first sampling step: the encoded captions (B, L, C) and the video
    tokens after block 0 (B, Nv, C), read with a forward hook (the block may be called positionally, unpatched,
    or with block_wrap's keywords, under the MoGA patch)."""
    import nodes

    captured = []

    def hook(module, args, kwargs, out):
        if not captured:
            context = kwargs["context"] if "context" in kwargs else args[1]
            out = out["x"] if isinstance(out, dict) else out  # called by block_wrap: the block-replace contract
            captured.append((context.clone(), out.clone()))

    block0 = model.model.diffusion_model.visual_transformer_blocks[0]
    handle = block0.register_forward_hook(hook, with_kwargs=True)
    try:
        nodes.common_ksampler(model, 0, 1, 1.0, "euler", "simple", cond, cond, latent)
    finally:
        handle.remove()
    return captured[0]


def test_shot_tokens_see_only_their_own_caption(moga, lite_model):
    """Two shots; b differs from a in shot 2's caption only. Each caption is encoded apart in the text encoder
    blocks (the global and shot 1 caption tokens are the same in a and b) and shot 1's frames read only the global
    and their own caption in the cross-attention (their tokens are the same after block 0), dense and under MoGA."""
    model = lite_model.model
    multishot = import_module(f"{moga.name}.nodes.multishot")
    clip = StandInTextEncoder(width=tk.TEXT_DIM, tokens=12, pooled=True)
    latent = tk.video_latent(frames=5, height=8, width=8)  # grid (5, 4, 4): 80 video tokens, 36 caption tokens
    a, plan = multishot.multishot_conditioning(clip, "5f | a fox runs\n12f | a blue cube", "snowy forest", 16)
    b, _ = multishot.multishot_conditioning(clip, "5f | a fox runs\n12f | a green pyramid", "snowy forest", 16)
    assert plan.latent_starts == (0, 2) and plan.text_tokens == 36 and plan.shot_tokens == ((12, 24), (24, 36))
    assert torch.equal(a[0][1]["pooled_output"], b[0][1]["pooled_output"])  # the global caption's, in both
    hw = 4 * 4
    shot1 = slice(0, 2 * hw)
    clone, patch = patched(moga, model, m=2)
    for m in (model, clone):
        (ca, xa), (cb, xb) = first_forward_block0(m, a, latent), first_forward_block0(m, b, latent)
        assert torch.equal(ca[:, :24], cb[:, :24]), "the text encoder mixed shot 2's caption into the others"
        assert not torch.allclose(ca[:, 24:], cb[:, 24:])
        assert torch.equal(xa[:, shot1], xb[:, shot1]), "shot 1's video tokens read shot 2's caption"
        assert not torch.allclose(xa[:, 2 * hw:], xb[:, 2 * hw:])
    assert len(patch.last_run_stats["sparse_calls"]) == 2  # the MoGA run took every visual block's self-attention
    # without the plan (one concatenated prompt) both would have read shot 2's caption
    plain_a, plain_b = ([[c[0][0], {"pooled_output": c[0][1]["pooled_output"]}]] for c in (a, b))
    (ca, xa), (cb, xb) = first_forward_block0(model, plain_a, latent), first_forward_block0(model, plain_b, latent)
    assert not torch.allclose(ca[:, :24], cb[:, :24])
    assert not torch.allclose(xa[:, shot1], xb[:, shot1])
