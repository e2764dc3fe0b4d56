"""Where the attention calls MoGA does not take go, next to what newer ComfyUI adds around attention.

- (a) Newer ComfyUI (0.3x) keeps a per-layer attention choice from the checkpoint (``<layer>.comfy_attention.function``,
  e.g. INT8 attention) and skips it whenever any attention override is installed. MoGA installs one, so every call it
  declines (cross-attention, dense warm-up steps, dense blocks) must still reach that layer's chosen function.
- (b) Core's multi-GPU work split (MultiGPU CFG Split, ComfyUI >= 0.2x) runs per-GPU copies of the model at once;
  MoGA refuses it with a clear message, in either node order.
- (c) Core's "Model Sparse Attention" node (comfy-kitchen's Sol-Attn) on the same model. The composition: MoGA's
  override is always outermost (its DIFFUSION_MODEL wrapper puts it back on top each forward); it takes the
  self-attention call of each routed block inside its sparse range; every other call goes down to the sparse node,
  which applies its own rules. The run summary names it. Tested with a stand-in of the node's shape (an override
  chained over the previous one, installed on the clone and again from ON_PREPARE_STATE every step, as core does).

Neither newer ComfyUI nor comfy-kitchen's kernels run here (no GPU; v0.19.3 / v0.27.0 hosts), so the per-layer
choice and the sparse node are stand-ins with the same interfaces; the attention itself is ComfyUI's own.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import tiny_models as tm

pytestmark = pytest.mark.host

STEPS = 4
OPTIONS = dict(start_percent=0.5, min_tokens=0, dense_if_slower=False, temporal_group=2, dense_blocks="1",
               grouping="random", auto_groups=2)


def sample(model, steps=STEPS):
    import nodes

    pos, neg = tm.wan_conditioning(seed=1), tm.wan_conditioning(seed=2)
    latent = tm.video_latent(frames=5, height=8, width=8)
    return nodes.common_ksampler(model, 0, steps, 5.0, "euler", "simple", pos, neg, latent)[0]["samples"]


def moga_patched(moga, model):
    patched = model.clone()
    patch = moga.patcher.install(patched, None, moga.patcher.PatchOptions(**OPTIONS))
    return patched, patch


class LayerChoice:
    """What newer ComfyUI's ``ComfyAttention`` is to a layer: ``.function`` is the attention the checkpoint chose."""

    def __init__(self, calls: Counter):
        import comfy.ldm.modules.attention as attention

        def chosen(q, k, v, heads, **kwargs):
            to = kwargs.get("transformer_options") or {}
            calls[(to.get("block_index"), "self" if q.shape == k.shape else "cross")] += 1
            return attention.attention_basic(q, k, v, heads, **kwargs)

        self.function = chosen


def test_layers_keep_their_chosen_attention_for_the_calls_moga_declines(moga):
    model = tm.load(tm.wan_state_dict())
    reference = sample(model.clone())
    calls = Counter()
    for block in model.model.diffusion_model.blocks:
        block.self_attn.comfy_attention = LayerChoice(calls)
        block.cross_attn.comfy_attention = LayerChoice(calls)
    try:
        patched, patch = moga_patched(moga, model)
        out = sample(patched)
    finally:
        for block in model.model.diffusion_model.blocks:
            del block.self_attn.comfy_attention, block.cross_attn.comfy_attention
    stats = patch.last_run_stats
    forwards = stats["forwards"]  # cond and uncond, every step
    sparse = sum(stats["sparse_calls"].values())
    assert sparse > 0 and stats["sparse_calls"] == Counter({("double", 0): sparse})
    # every cross-attention call and every self-attention call MoGA declined went to the layer's choice
    assert calls[(0, "cross")] == calls[(1, "cross")] == forwards
    assert calls[(1, "self")] == forwards  # the dense block
    assert calls[(0, "self")] == forwards - sparse  # block 0 in the dense warm-up
    assert torch.isfinite(out).all() and out.shape == reference.shape
    # an unpatched clone of the same model never reaches the choice (ComfyUI's own attention decides there)
    calls.clear()
    sample(model.clone())
    assert not calls


def test_an_override_installed_before_moga_gets_the_declined_calls_not_the_layer_choice(moga):
    model = tm.load(tm.wan_state_dict())
    seen, chosen = Counter(), Counter()

    def earlier(func, q, k, v, heads, **kwargs):
        seen["calls"] += 1
        return func(q, k, v, heads, **kwargs)

    base = model.clone()
    base.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = earlier
    for block in model.model.diffusion_model.blocks:
        block.self_attn.comfy_attention = LayerChoice(chosen)
    try:
        patched, patch = moga_patched(moga, base)
        sample(patched)
    finally:
        for block in model.model.diffusion_model.blocks:
            del block.self_attn.comfy_attention
    stats = patch.last_run_stats
    # as in ComfyUI: with another override installed, the layer's choice is not used; that override decides
    assert not chosen
    assert seen["calls"] == 4 * stats["forwards"] - sum(stats["sparse_calls"].values())
    assert "earlier" in moga.patcher.summarize_run(stats)


class StandInSparseNode:
    """The shape of core's "Model Sparse Attention" patch: an override chained over whatever override the options
    hold, taking the self-attention calls it wants (here: every unmasked one of enough tokens) and passing the rest
    down; installed on the clone and again from ON_PREPARE_STATE each step. It computes the same dense attention
    (``func``), so only who took which call differs."""

    def __init__(self, min_tokens=0):
        self.min_tokens = min_tokens
        self.taken = Counter()
        self.installed = set()

    def make_override(self, previous):
        def override(func, q, k, v, heads, **kwargs):
            to = kwargs.get("transformer_options") or {}
            tokens = q.shape[2] if kwargs.get("skip_reshape") else q.shape[1]
            if kwargs.get("mask") is None and q.shape == k.shape and tokens >= self.min_tokens:
                self.taken[to.get("block_index")] += 1
                return func(q, k, v, heads, **kwargs)
            if previous is not None:
                return previous(func, q, k, v, heads, **kwargs)
            return func(q, k, v, heads, **kwargs)

        # the run summary recognises core's node by the module its override comes from
        override.__module__ = "comfy_extras.nodes_sparse_attention"
        return override

    def install(self, to):
        current = to.get("optimized_attention_override")
        if current in self.installed:
            return
        override = self.make_override(current)
        self.installed.add(override)
        to["optimized_attention_override"] = override

    def apply(self, model):
        import comfy.patcher_extension

        m = model.clone()
        self.install(m.model_options.setdefault("transformer_options", {}))

        def on_prepare_state(patcher, timestep, *rest):  # (patcher, timestep[, model_options]) by version
            options = rest[0] if rest and isinstance(rest[0], dict) else patcher.model_options
            self.install(options.setdefault("transformer_options", {}))

        m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_PREPARE_STATE, "block_sparse_attention",
                                on_prepare_state)
        return m


@pytest.mark.parametrize("order", ["sparse node, then MoGA", "MoGA, then sparse node"])
def test_core_sparse_attention_gets_what_moga_declines_in_either_order(moga, order):
    model = tm.load(tm.wan_state_dict())
    node = StandInSparseNode()
    if order == "sparse node, then MoGA":
        patched, patch = moga_patched(moga, node.apply(model))
    else:
        moga_model, patch = moga_patched(moga, model)
        patched = node.apply(moga_model)
    out = sample(patched)
    stats = patch.last_run_stats
    forwards = stats["forwards"]
    sparse = sum(stats["sparse_calls"].values())
    assert sparse > 0 and torch.isfinite(out).all()
    # MoGA took block 0's self-attention in its sparse range; the sparse node got every other self-attention call
    assert node.taken[0] == forwards - sparse
    assert node.taken[1] == forwards
    summary = moga.patcher.summarize_run(stats)
    assert "calls MoGA did not take went to ComfyUI's Model Sparse Attention" in summary, summary
    # the same model through MoGA alone reports no other attention
    alone, alone_patch = moga_patched(moga, model)
    sample(alone)
    assert "did not take" not in moga.patcher.summarize_run(alone_patch.last_run_stats)


def test_multigpu_work_split_is_refused_in_either_order(moga, models_dir, monkeypatch):
    import comfy.model_management
    import comfy.patcher_extension
    import nodes
    from safetensors.torch import save_file

    if not hasattr(comfy.patcher_extension.CallbacksMP, "ON_MATCH_MULTIGPU_CLONES"):
        pytest.skip("this ComfyUI has no multi-GPU work split (it came with v0.2x)")
    import comfy.multigpu

    save_file(tm.wan_state_dict(), str(models_dir / "diffusion_models" / "wan.safetensors"))
    model = nodes.UNETLoader().load_unet("wan.safetensors", "default")[0]
    # a second device for the split to copy the model to (the CPU under another index: nothing runs there)
    monkeypatch.setattr(comfy.model_management, "get_all_torch_devices",
                        lambda exclude_current=False: [model.load_device, torch.device("cpu", 1)])
    patched, _ = moga_patched(moga, model)
    with pytest.raises(ValueError, match="MoGA does not run under ComfyUI's multi-GPU work split"):
        comfy.multigpu.create_multigpu_deepclones(patched, 2)
    split = comfy.multigpu.create_multigpu_deepclones(model, 2)
    assert split.get_additional_models_with_key("multigpu")
    with pytest.raises(ValueError, match="Remove the MultiGPU CFG Split node"):
        moga_patched(moga, split)
