"""MoGA on LTX-2 (ComfyUI's LTXAVModel) against the real ComfyUI: a tiny audio-video model, real sampling.

MoGA takes the video stream's self-attention (``attn1``) of every block; the audio self-attention, the text
cross-attentions and the audio↔video cross-attentions stay with ComfyUI's backend. Guide tokens (``LTXVAddGuide``)
are a global suffix of the video sequence; what cannot be served exactly (guide attention masks, blocks whose video
self-attention does not run) stays dense and the run summary says so.
"""

from __future__ import annotations

from importlib import import_module

import pytest
import torch

import tiny_ltx as tl
from test_patch import STEPS, ksample, patched

pytestmark = pytest.mark.host

VIDEO_WIDTH = tl.VIDEO_HEADS * tl.VIDEO_HEAD_DIM  # H·D of attn1 (64)
AUDIO_WIDTH = tl.AUDIO_HEADS * tl.AUDIO_HEAD_DIM  # H·D of audio_attn1 (32)


def parts(samples) -> list[torch.Tensor]:
    """The video (and audio) latents of a sample: a NestedTensor for the AV latent, a tensor for video only."""
    return list(samples.unbind()) if getattr(samples, "is_nested", False) else [samples]


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(parts(a), parts(b)))


def scale_of(a) -> float:
    return max(max(x.abs().max().item() for x in parts(a)), 1.0)


def all_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(parts(a), parts(b)))


# the patcher's reason when an adapter's video_span declines a block; a patcher that asks the adapter's
# `dense_reason` first would name the adapter's own reason instead: either is a stated reason
DECLINED = "token layout not understood"


def ltx_adapter_module(moga):
    return import_module(f"{moga.name}.nodes.adapters.ltx")


def assert_declined(stats, reason: str, calls: int):
    """Every routed block call ran on ComfyUI's backend for ``reason`` (or the patcher's generic decline)."""
    assert not stats["sparse_calls"], stats["sparse_calls"]
    assert set(stats["dense"]) <= {DECLINED, reason} and sum(stats["dense"].values()) == calls, stats["dense"]


@pytest.fixture(scope="module")
def ltx(moga):
    """(model, positive, negative, AV latent, video-only latent): 5 × 4 × 8 = 160 video tokens, 33 audio tokens."""
    model = tl.load_ltxav()
    pos, neg = tl.with_frame_rate(tl.ltx_conditioning(seed=1), tl.ltx_conditioning(seed=2))
    video = tl.video_latent()
    return model, pos, neg, tl.av_latent(video, tl.audio_latent()), video


def video_tokens(latent: dict) -> int:
    _, _, t, h, w = parts(latent["samples"])[0].shape
    return t * h * w


def attention_log(moga, monkeypatch):
    """Record every attention call: (q shape, k shape) of the calls MoGA computes (``taken``) and of the calls it
    passes on to the dense backend (``passed``, through an override installed under MoGA's)."""
    taken, passed = [], []
    real = moga.patcher.moga_attention

    def spy(q, k, v, *args, **kwargs):
        taken.append((tuple(q.shape), tuple(k.shape)))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(moga.patcher, "moga_attention", spy)

    def below(func, q, k, v, *args, **kwargs):
        passed.append((tuple(q.shape), tuple(k.shape)))
        return func(q, k, v, *args, **kwargs)

    return taken, passed, below


def test_the_adapter_knows_ltx2(moga, ltx):
    model = ltx[0]
    adapter = moga.adapters.adapter_for(model)
    assert type(adapter).__name__ == "LTXAVAdapter" and adapter.family == "ltxav"
    assert adapter.hidden_size == VIDEO_WIDTH and adapter.num_blocks == 2
    assert [adapter.attention_width(k) for k in adapter.blocks()] == [VIDEO_WIDTH] * 2
    assert adapter.text_layout(160, 1024, False, 160, 12, {}) is None  # captions stay global (connector mixes them)
    assert "LTX-2" in moga.adapters.SUPPORTED_FAMILIES


@pytest.mark.parametrize("combine", ["union", "mean"])
def test_several_groups_run_the_video_self_attention_sparse_and_leave_audio_dense(moga, ltx, combine, monkeypatch):
    model, pos, neg, latent, _ = ltx
    reference = ksample(model, pos, neg, latent)
    taken, passed, below = attention_log(moga, monkeypatch)
    base = model.clone()
    base.model_options["transformer_options"]["optimized_attention_override"] = below
    clone, patch = patched(moga, base, m=4, combine=combine)
    out = ksample(clone, pos, neg, latent)
    assert all(torch.isfinite(x).all() for x in parts(out))
    assert max_diff(out, reference) > 1e-4
    stats = patch.last_run_stats
    assert set(stats["sparse_calls"]) == {("double", 0), ("double", 1)}
    assert set(stats["sparse_calls"].values()) == {stats["forwards"]}  # every block, every forward
    assert stats["forwards"] in (STEPS, 2 * STEPS) and not stats["dense"]
    nv = video_tokens(latent)
    # MoGA computed video self-attention only: (B, Nv, H, D) with the video heads
    assert len(taken) == 2 * stats["forwards"]
    assert {(q[1:], k[1:]) for q, k in taken} == {((nv, tl.VIDEO_HEADS, tl.VIDEO_HEAD_DIM),) * 2}
    # every audio self-attention went to the dense backend, one per block and forward; no video one did
    na = parts(latent["samples"])[1].shape[2]
    audio_self = [q for q, k in passed if q == k and q[1:] == (na, AUDIO_WIDTH)]
    assert len(audio_self) == 2 * stats["forwards"]
    assert not [q for q, k in passed if q == k and q[1] == nv]
    line = moga.patcher.summarize_run(stats)
    assert line.startswith(f"MoGA: {2 * stats['forwards']} sparse / 0 dense attention calls"), line


def test_one_group_union_equals_the_unpatched_model(moga, ltx):
    model, pos, neg, latent, _ = ltx
    reference = ksample(model, pos, neg, latent)
    clone, patch = patched(moga, model, m=1)
    out = ksample(clone, pos, neg, latent)
    stats = patch.last_run_stats
    # one group: every video token sees every key through MoGA's own path, in every block and forward
    assert set(stats["sparse_calls"].values()) == {stats["forwards"]} and not stats["dense"], stats["dense"]
    assert max_diff(out, reference) <= 1e-4 * scale_of(reference)
    assert all_equal(ksample(model, pos, neg, latent), reference)  # the unpatched model, bit for bit


def test_random_groups_take_the_video_stream(moga, ltx):
    """Without a router the groups are content-free: the patch sizes them from the block's video stream."""
    model, pos, neg, latent, _ = ltx
    reference = ksample(model, pos, neg, latent)
    clone = model.clone()
    patch = moga.patcher.install(clone, None, moga.patcher.PatchOptions(
        start_percent=0.0, min_tokens=0, temporal_group=2, dense_if_slower=False, auto_groups=4))
    out = ksample(clone, pos, neg, latent)
    stats = patch.last_run_stats
    assert set(stats["sparse_calls"].values()) == {stats["forwards"]} and len(stats["sparse_calls"]) == 2
    assert max_diff(out, reference) > 1e-4 and all(torch.isfinite(x).all() for x in parts(out))


def test_video_only_latent(moga, ltx):
    """LTXAV without an audio latent (the sampler hands the model [vx]; the audio stream is empty and never runs)."""
    model, pos, neg, _, video = ltx
    reference = ksample(model, pos, neg, video)
    clone, patch = patched(moga, model, m=1)
    assert (ksample(clone, pos, neg, video) - reference).abs().max().item() <= 1e-4 * scale_of(reference)
    clone, patch = patched(moga, model, m=4)
    out = ksample(clone, pos, neg, video)
    stats = patch.last_run_stats
    assert torch.isfinite(out).all() and not torch.allclose(out, reference, atol=1e-4)
    assert set(stats["sparse_calls"].values()) == {stats["forwards"]} and len(stats["sparse_calls"]) == 2
    assert not stats["dense"]


def guided(ltx, strength=1.0, drop_guide=0, drop_video=0):
    """An AV latent with one image guide (``LTXVAddGuide`` on the video latent, then ``LTXVConcatAVLatent``).
    ``drop_guide`` / ``drop_video``: how many tokens of the guide frame / of the first video frame get a negative
    noise mask (as IC-LoRA's dilated guides do), which the model filters out before its blocks."""
    model, pos, neg, _, video = ltx
    pos, neg, guided_video = tl.add_guide(pos, neg, video, frame_idx=0, strength=strength)
    mask = guided_video["noise_mask"]
    if drop_guide or drop_video:
        _, _, t, h, w = guided_video["samples"].shape
        mask = mask.expand(-1, -1, -1, h, w).clone()
        mask[:, :, -1].view(-1)[:drop_guide] = -1.0
        mask[:, :, 0].view(-1)[:drop_video] = -1.0
        guided_video = dict(guided_video, noise_mask=mask)
    return model, pos, neg, tl.av_latent(guided_video, tl.audio_latent())


@pytest.mark.parametrize("drop_guide", [0, 5])
def test_guide_tokens_are_a_global_suffix(moga, ltx, drop_guide, monkeypatch):
    """A strength-1 guide: its surviving tokens follow the video tokens in attn1 and are served as global tokens."""
    model, pos, neg, latent = guided(ltx, drop_guide=drop_guide)
    _, _, t, h, w = parts(latent["samples"])[0].shape
    assert t == 6  # 5 video frames + 1 guide frame appended by LTXVAddGuide
    reference = ksample(model, pos, neg, latent)
    spans = []
    adapter_cls = type(moga.adapters.adapter_for(model))
    original = adapter_cls.video_span
    monkeypatch.setattr(adapter_cls, "video_span",
                        lambda self, *a: spans.append((a[2], original(self, *a))) or spans[-1][1])
    clone, patch = patched(moga, model, m=1)
    out = ksample(clone, pos, neg, latent)
    assert max_diff(out, reference) <= 1e-4 * scale_of(reference)
    assert {s for s in spans} == {(5 * h * w, (0, h * w - drop_guide))}
    clone, patch = patched(moga, model, m=4)
    out = ksample(clone, pos, neg, latent)
    stats = patch.last_run_stats
    assert set(stats["sparse_calls"].values()) == {stats["forwards"]} and not stats["dense"]
    assert max_diff(out, reference) > 1e-4 and all(torch.isfinite(x).all() for x in parts(out))


def test_a_guide_attention_mask_stays_dense_and_the_run_says_so(moga, ltx):
    """A guide with strength < 1 makes ComfyUI attenuate noisy↔guide attention with a soft bias: MoGA cannot serve
    it, so every video self-attention runs on ComfyUI's backend (v0.19: the (1, 1, N, N) bias reaches the patch,
    "attention mask"; newer: a GuideAttentionMask the adapter declines before routing)."""
    import comfy.ldm.lightricks.model as ltx_model

    model, pos, neg, latent = guided(ltx, strength=0.5)
    reference = ksample(model, pos, neg, latent)
    clone, patch = patched(moga, model, m=4)
    out = ksample(clone, pos, neg, latent)
    stats = patch.last_run_stats
    if hasattr(ltx_model, "GuideAttentionMask"):  # newer ComfyUI: declined by the adapter before routing
        assert_declined(stats, ltx_adapter_module(moga).GUIDE_MASK, 2 * stats["forwards"])
        reason = next(iter(stats["dense"]))
    else:  # v0.19: the (1, 1, N, N) soft bias reaches MoGA's attention call, which leaves it to ComfyUI
        reason = "attention mask"
        assert not stats["sparse_calls"] and stats["dense"] == {reason: 2 * stats["forwards"]}
    assert max_diff(out, reference) <= 1e-5 * scale_of(reference)
    line = moga.patcher.summarize_run(stats)
    assert line.startswith("MoGA: 0 sparse / ") and f"dense: {reason} {2 * stats['forwards']}" in line, line


def test_a_denoise_mask_that_drops_video_tokens_stays_dense(moga, ltx):
    """Guides plus a negative mask on video tokens: the guides are no longer a suffix of a whole grid."""
    model, pos, neg, latent = guided(ltx, drop_video=3)
    reference = ksample(model, pos, neg, latent)
    clone, patch = patched(moga, model, m=4)
    out = ksample(clone, pos, neg, latent)
    stats = patch.last_run_stats
    assert_declined(stats, "the denoise mask drops video tokens", 2 * stats["forwards"])
    assert max_diff(out, reference) <= 1e-5 * scale_of(reference)
    info = moga.adapters.adapter_for(model).forward_info(
        ([parts(latent["samples"])[0]], None, None, None, 25, {}, torch.zeros(1, 3, 32, 2)),
        {"denoise_mask": latent["noise_mask"].unbind()[0]})
    assert info["layout_error"] == "the denoise mask drops video tokens"


def test_blocks_whose_video_part_does_not_run_stay_dense(moga, ltx):
    """``run_vx`` False (the block skips its video stream): there is no video self-attention to route."""
    model, pos, neg, latent, _ = ltx
    base = model.clone()
    base.model_options["transformer_options"]["run_vx"] = False
    reference = ksample(base, pos, neg, latent)
    clone, patch = patched(moga, base, m=4)
    out = ksample(clone, pos, neg, latent)
    stats = patch.last_run_stats
    assert_declined(stats, ltx_adapter_module(moga).VIDEO_NOT_RUN, 2 * stats["forwards"])
    assert all_equal(out, reference)


def test_spatio_temporal_guidance_leaves_no_routing_for_the_text_cross_attention(moga, monkeypatch):
    """Newer ComfyUI's STG turns a flagged block's self-attention into a value passthrough (no attention call), via
    ``transformer_options["stg_skip_self_attn"]``. The next call of the block is the text cross-attention, which has
    attn1's width and, at 1,024 video tokens, as many keys (the connector pads captions to 1,024): a routing left
    behind would run MoGA on it. The adapter declines such blocks. The passthrough is emulated on the tested
    ComfyUI versions (which lack STG) by a stand-in for CrossAttention.forward."""
    from comfy.ldm.lightricks.model import CrossAttention

    original = CrossAttention.forward

    def forward(self, x, context=None, mask=None, pe=None, k_pe=None, transformer_options={}):
        if context is None and transformer_options.get("stg_skip_self_attn", False):
            return self.to_out(self.to_v(x))  # upstream: out = v (no gated attention in the tiny model)
        return original(self, x, context=context, mask=mask, pe=pe, k_pe=k_pe,
                        transformer_options=transformer_options)

    monkeypatch.setattr(CrossAttention, "forward", forward)
    model = tl.load_ltxav()
    pos, neg = tl.with_frame_rate(tl.ltx_conditioning(seed=1), tl.ltx_conditioning(seed=2))
    latent = tl.av_latent(tl.video_latent(width=512, height=512, length=25), tl.audio_latent(length=25))
    assert video_tokens(latent) == 1024
    base = model.clone()
    base.model_options["transformer_options"]["stg_skip_self_attn"] = True
    reference = ksample(base, pos, neg, latent, steps=2)
    clone, patch = patched(moga, base, m=4)
    out = ksample(clone, pos, neg, latent, steps=2)
    stats = patch.last_run_stats
    assert_declined(stats, ltx_adapter_module(moga).STG_SKIPPED, 2 * stats["forwards"])
    assert all_equal(out, reference)
    # without the adapter's check, the routing scope (taken inside attn1 only) still keeps the cross-attention
    # dense: the block routes, attn1 makes no attention call, and the run says so
    adapter_cls = type(patch.adapter)
    monkeypatch.setattr(adapter_cls, "dense_reason", lambda self, *a: None)
    clone, patch = patched(moga, base, m=4)
    out = ksample(clone, pos, neg, latent, steps=2)
    stats = patch.last_run_stats
    assert sum(stats["sparse_calls"].values()) == 0
    assert stats["dense"][moga.patcher.UNTAKEN] == 2 * stats["forwards"]
    assert all_equal(out, reference)
    # without either, the width and token-count checks would not have caught it: MoGA runs on the cross-attention
    monkeypatch.setattr(adapter_cls, "scoped_self_attention", lambda self, key: None)
    clone, patch = patched(moga, base, m=4)
    out = ksample(clone, pos, neg, latent, steps=2)
    assert sum(patch.last_run_stats["sparse_calls"].values()) == 2 * patch.last_run_stats["forwards"]
    assert max_diff(out, reference) > 1e-4
