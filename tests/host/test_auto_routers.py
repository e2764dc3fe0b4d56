"""Groups without a router — random (the default) and auto routers fitted to the video being made — and the second
group, on a tiny real WanModel (CPU, float32)."""

from __future__ import annotations

import math
from importlib import import_module

import pytest
import torch

import tiny_models as tm
from test_patch import STEPS, ksample, patched

pytestmark = pytest.mark.host

M = 3
START = 0.5


@pytest.fixture(scope="module")
def auto(moga):
    return import_module(f"{moga.name}.nodes.auto_routers")


@pytest.fixture(scope="module")
def wan(moga):
    return tm.load(tm.wan_state_dict()), tm.wan_conditioning(seed=1), tm.wan_conditioning(seed=2)


def recorder(moga):
    """A patch holder that records every block's router input with the call's sigma, in call order (dense)."""
    BlockPatch = moga.patcher.BlockPatch

    class Recorder(BlockPatch):
        def __init__(self, adapter):
            super().__init__(adapter)
            self.calls = []

        def takes_block(self, key):
            return True

        def before_block(self, key, args, to, info):
            found = self.video_tokens(key, args, to, info)
            if found is not None:
                x = self.adapter.router_input(key, args, found[1])
                self.calls.append((moga.wiring.sigma_of(to), key.index, x.detach().clone()))
            return None

    return Recorder


def auto_patched(moga, model, **options):
    clone = model.clone()
    defaults = dict(start_percent=START, min_tokens=0, temporal_group=2, dense_if_slower=False, auto_groups=M,
                    grouping="kmeans")
    defaults.update(options)
    patch = moga.patcher.install(clone, None, moga.patcher.PatchOptions(**defaults))
    patch.auto.tokens_per_block = 512  # below the 640 rows of a step (cond + uncond): the reservoir replaces rows
    return clone, patch


def expected_capture_sigma(model, start_percent):
    import comfy.samplers

    model_sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "simple", STEPS).tolist()
    sigma_start = float(model_sampling.percent_to_sigma(start_percent))
    steps = sigmas[:-1]
    first_sparse = next(i for i, s in enumerate(steps) if s <= sigma_start + 1e-6)
    assert first_sparse > 0
    return steps[first_sparse - 1], steps


def fit_like_auto(moga, auto, calls, sigma, capacity, index):
    """What `Router.fit` gives on block ``index``'s inputs of the step at ``sigma``, sampled as the patch does."""
    sample = auto.RouterInputSample(capacity, auto.AUTO_SEED)
    for s, i, x in calls:
        if math.isclose(s, sigma, rel_tol=1e-4):
            sample.add(i, x)
    rows = sample.sample(index)
    return moga.core.Router.fit(rows.float(), M, iters=auto.AUTO_ITERS, seed=auto.AUTO_SEED)


def test_auto_routers_are_fitted_once_per_run_on_the_last_dense_step(moga, auto, wan):
    model, pos, neg = wan
    latent = tm.video_latent()
    rec_clone = model.clone()
    rec = moga.patcher.install_patch(rec_clone, recorder(moga)(moga.adapters.adapter_for(model)))
    dense = ksample(rec_clone, pos, neg, latent, seed=3)

    clone, patch = auto_patched(moga, model)
    out = ksample(clone, pos, neg, latent, seed=3)
    stats = patch.last_run_stats
    capture, steps = expected_capture_sigma(model, START)
    assert stats["auto_fits"] == 1 and patch.auto.fits == 1
    assert stats["auto_capture_sigma"] == pytest.approx(capture, rel=1e-5)
    assert stats["auto_fit_s"] > 0 and stats["auto_capture_s"] > 0
    assert "auto routers fitted in" in moga.patcher.summarize_run(stats)
    blocks = sorted(patch.auto.routers)
    assert blocks == [k.index for k in patch.adapter.blocks()]
    # the capture step's inputs are those of cond and uncond (320 video tokens each)
    assert sum(x.shape[0] * x.shape[1] for s, i, x in rec.calls
               if math.isclose(s, capture, rel_tol=1e-4) and i == 0) == 640
    for index in blocks:
        expected = fit_like_auto(moga, auto, rec.calls, capture, 512, index)
        got = patch.auto.routers[index]
        assert torch.equal(got.weight.cpu(), expected.weight) and torch.equal(got.bias.cpu(), expected.bias)
        # the step matters: the first step's inputs give another router
        other = fit_like_auto(moga, auto, rec.calls, steps[0], 512, index)
        assert not torch.allclose(other.weight, expected.weight)
    # MoGA ran on the steps after the capture step, and the dense steps before it are the unpatched model's
    assert stats["sparse_forwards"] == sum(1 for s in stats["sigmas"] if s < capture * (1 - 1e-4)) > 0
    assert sum(stats["sparse_calls"].values()) == len(blocks) * stats["sparse_forwards"]
    assert not torch.equal(out, dense)
    first = {i: (r.weight.clone(), r.bias.clone()) for i, r in patch.auto.routers.items()}
    as_set = patch.auto.router_set()  # the run's routers as a router file would hold them
    assert as_set.num_groups == M and sorted(as_set.routers) == blocks
    assert all(torch.equal(as_set.routers[i].weight, w) for i, (w, _) in first.items())

    # a new run refits (same seed: the same video, the same routers), another seed fits its own video
    again = ksample(clone, pos, neg, latent, seed=3)
    assert patch.auto.fits == 2 and patch.last_run_stats["auto_fits"] == 1
    assert torch.equal(again, out)
    assert all(torch.equal(patch.auto.routers[i].weight, w) for i, (w, _) in first.items())
    ksample(clone, pos, neg, latent, seed=4)
    assert patch.auto.fits == 3
    assert not all(torch.equal(patch.auto.routers[i].weight, w) for i, (w, _) in first.items())


def test_a_schedule_that_starts_in_the_sparse_range_runs_its_first_step_dense_to_fit(moga, wan):
    import nodes

    model, pos, neg = wan
    clone, patch = auto_patched(moga, model, start_percent=0.1)
    nodes.common_ksampler(clone, 0, STEPS, 5.0, "euler", "simple", pos, neg, tm.video_latent(), denoise=0.5)
    stats = patch.last_run_stats
    blocks = len(patch.routed_blocks())
    first = stats["sigmas"][0]
    forwards_first = sum(1 for s in stats["sigmas"] if s == first)
    assert stats["auto_fits"] == 1 and stats["auto_capture_sigma"] == pytest.approx(first)
    assert stats["dense"]["dense step to fit auto routers"] == blocks * forwards_first
    assert stats["sparse_forwards"] == len(stats["sigmas"]) - forwards_first
    assert sum(stats["sparse_calls"].values()) == blocks * stats["sparse_forwards"]


def option_values(moga, **changes):
    options = import_module(f"{moga.name}.nodes.options")
    values = {o.id: o.default_value() for o in options.OPTIONS}
    values.update(changes)
    return values


KMEANS = "k-means on this video"


def test_moga_apply_without_router_patches_with_auto_routers(moga, wan):
    model, pos, neg = wan
    apply = moga.NODES["MoGAApply"]
    with pytest.raises(ValueError, match="start_percent is 0"):
        apply.execute(model, None, **option_values(moga, start_percent=0.0, grouping=KMEANS))
    patched_model = apply.execute(model, **option_values(moga, auto_groups=4, min_tokens=0, grouping=KMEANS))[0]
    patch = moga.wiring.patch_of(patched_model)
    assert patch.auto is not None and patch.cfg.num_groups == 4 and patch.cfg.combine == "union"
    ksample(patched_model, pos, neg, tm.video_latent(), seed=0)
    assert patch.last_run_stats["auto_fits"] == 1
    assert all(r.num_groups == 4 for r in patch.auto.routers.values())
    # a connected router wins: no auto routers, the router's groups
    adapter = moga.adapters.adapter_for(model)
    from test_patch import routers_for

    given = routers_for(moga, adapter, 2)
    with_router = apply.execute(model, given, **option_values(moga, auto_groups=4, min_tokens=0, grouping=KMEANS))[0]
    patch = moga.wiring.patch_of(with_router)
    assert patch.auto is None and patch.random is None and patch.routers is given and patch.cfg.num_groups == 2
    # capacity: the pack's default for auto routers and for a file that names none; a file's own wins over it;
    # a value set on the node wins over the file
    assert moga.wiring.patch_of(patched_model).cfg.capacity == patch.cfg.capacity == 1.25
    given.capacity = 2.0
    from_file = apply.execute(model, given, **option_values(moga, min_tokens=0))[0]
    assert moga.wiring.patch_of(from_file).cfg.capacity == 2.0
    chosen = apply.execute(model, given, **option_values(moga, min_tokens=0, capacity=1.5))[0]
    assert moga.wiring.patch_of(chosen).cfg.capacity == 1.5


def test_moga_apply_without_router_uses_random_groups_by_default(moga, wan):
    """The default grouping with no router: balanced random groups (seeded per block), no capture step, MoGA from the
    first step if asked; the same groups in every run; an unpatched clone stays bit-identical."""
    model, pos, neg = wan
    apply = moga.NODES["MoGAApply"]
    latent = tm.video_latent()
    before = ksample(model.clone(), pos, neg, latent, seed=3)
    values = option_values(moga, auto_groups=3, min_tokens=0, start_percent=0.0, dense_if_slower=False)
    patched_model = apply.execute(model, **values)[0]
    patch = moga.wiring.patch_of(patched_model)
    assert patch.auto is None and patch.routers is None and patch.cfg.combine == "union"
    blocks = patch.routed_blocks()
    assert blocks == sorted(range(len(model.model.diffusion_model.blocks)))
    assert [patch.random[i].seed for i in blocks] == [moga.patcher.RANDOM_SEED + i for i in blocks]
    first = ksample(patched_model, pos, neg, latent, seed=3)
    stats = patch.last_run_stats
    # every step sparse (start_percent 0 is fine without a fit), nothing fitted
    assert stats["sparse_forwards"] == stats["forwards"] > 0 and not stats.get("auto_fits")
    assert sum(stats["sparse_calls"].values()) == len(blocks) * stats["sparse_forwards"]
    # content-free: no block computes its router input (a norm and modulation over all tokens) for random groups
    computed = []
    original = patch.adapter.router_input
    patch.adapter.router_input = lambda *a, **k: computed.append(1) or original(*a, **k)
    try:
        again = ksample(patched_model, pos, neg, latent, seed=3)
    finally:
        del patch.adapter.router_input
    assert torch.equal(first, again) and not computed
    assert not torch.equal(first, before)
    assert torch.equal(ksample(model.clone(), pos, neg, latent, seed=3), before)
    # the partition a block uses is RandomGroups' (balanced), on the tokens of the call
    groups, _ = patch.random[blocks[0]](torch.zeros(2, 30, 4))
    sizes = torch.bincount(groups[0], minlength=3)
    assert int(sizes.max() - sizes.min()) <= 1
    # random groups have no second-best group: a clear error when the patch is made
    with pytest.raises(ValueError, match="random groups have no second-best group"):
        apply.execute(model, **option_values(moga, second_group=True))
    with pytest.raises(ValueError, match="grouping must be one of"):
        moga.patcher.PatchOptions(grouping="spectral")


def test_second_group_runs_in_the_patch_and_adds_keys(moga, wan):
    model, pos, neg = wan
    latent = tm.video_latent()
    outs, density = {}, {}
    for second in (False, True):
        clone, patch = patched(moga, model, m=4, second_group=second)
        outs[second] = ksample(clone, pos, neg, latent, seed=1)
        stats = patch.last_run_stats
        sparse = sum(stats["sparse_calls"].values())
        assert sparse == len(patch.routed_blocks()) * stats["sparse_forwards"] > 0
        density[second] = stats["density_sum"] / sparse
    assert density[True] > density[False] + 0.05
    assert not torch.equal(outs[True], outs[False])
    with pytest.raises(ValueError, match="combine='union'"):
        patched(moga, model, m=4, second_group=True, combine="mean")


def test_capture_step_rules(moga, auto, wan):
    sparse_at = lambda sigma: sigma <= 0.5  # noqa: E731
    assert auto.capture_sigma_of([1.0, 0.8, 0.5, 0.2], sparse_at) == (0.8, False)
    assert auto.capture_sigma_of([0.5, 0.2], sparse_at) == (0.5, True)  # no dense step: the first runs dense
    assert auto.capture_sigma_of([1.0, 0.8], sparse_at) == (None, False)  # never sparse: nothing to fit
    # a run that does not say its sigmas: every dense step is sampled, the latest one kept
    adapter = moga.adapters.adapter_for(wan[0])
    routers = auto.AutoRouters(adapter, 2, {0}, tokens_per_block=64).bind(sparse_at)
    stats, gen = {}, torch.Generator().manual_seed(0)
    rows = {}
    for sigma in (1.0, 0.8):
        assert routers.begin_forward(sigma, {}, sparse_at(sigma), stats) == (False, "last dense step")
        rows[sigma] = torch.randn(1, 40, 256, generator=gen)
        routers.add(0, rows[sigma], stats)
        routers.add(1, rows[sigma], stats)  # not a routed block: ignored
    assert routers.begin_forward(0.5, {}, True, stats) == (True, None)
    assert routers.fits == 1 and stats["auto_fits"] == 1 and sorted(routers.routers) == [0]
    replay = auto.RouterInputSample(64, auto.AUTO_SEED)
    replay.add(0, rows[0.8])
    expected = moga.core.Router.fit(replay.sample(0).float(), 2, iters=auto.AUTO_ITERS, seed=auto.AUTO_SEED)
    assert torch.equal(routers.routers[0].weight, expected.weight)
    assert routers.begin_forward(0.2, {}, True, stats) == (True, None) and routers.fits == 1  # once per run


@pytest.mark.parametrize("kind", ["wan-context-windows", "hunyuanvideo"])
def test_auto_routers_fit_on_every_forward_of_the_capture_step(moga, auto, kind):
    """Context windows (several forwards per step, each a window of the video) and HunyuanVideo (joint attention
    with text tokens, cfg 1): the routers are fitted on the video tokens of every forward at the capture step."""
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    if kind == "hunyuanvideo":
        model = tm.load(tm.hunyuan_state_dict())
        pos, neg, cfg, latent = tm.hunyuan_conditioning(seed=1), tm.hunyuan_conditioning(seed=2), 1.0, \
            tm.video_latent()
        wrap = lambda m: m  # noqa: E731
    else:
        model = tm.load(tm.wan_state_dict())
        pos, neg, cfg, latent = tm.wan_conditioning(seed=1), tm.wan_conditioning(seed=2), 5.0, \
            tm.video_latent(frames=9, height=8, width=8)
        wrap = lambda m: ContextWindowsManualNode.execute(m, 5, 2, "standard_static", 1, False, "pyramid", 2,  # noqa
                                                          False)[0]
    rec_clone = model.clone()
    rec = moga.patcher.install_patch(rec_clone, recorder(moga)(moga.adapters.adapter_for(model)))
    ksample(wrap(rec_clone), pos, neg, latent, seed=2, cfg=cfg)
    clone, patch = auto_patched(moga, model)
    ksample(wrap(clone), pos, neg, latent, seed=2, cfg=cfg)
    stats = patch.last_run_stats
    capture, _ = expected_capture_sigma(model, START)
    assert stats["auto_fits"] == 1 and stats["auto_capture_sigma"] == pytest.approx(capture, rel=1e-5)
    at_capture = [x for s, i, x in rec.calls if math.isclose(s, capture, rel_tol=1e-4) and i == 0]
    if kind == "wan-context-windows":
        assert len(at_capture) > 1 and all(x.shape[1] < 9 * 16 for x in at_capture)  # windows, not the video
    for index in sorted(patch.auto.routers):
        expected = fit_like_auto(moga, auto, rec.calls, capture, 512, index)
        assert torch.equal(patch.auto.routers[index].weight.cpu(), expected.weight)
    assert sum(stats["sparse_calls"].values()) > 0
