"""The quality study's parts that need no ComfyUI: the synthetic multi-shot task, its metrics, the SVG2-style baseline
(bench/quality_data.py, bench/quality_metrics.py, bench/quality_model.py). CPU, seconds."""

import copy
import dataclasses
import math
import os
import sys

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from quality_data import SyntheticMultiShot, TaskSpec, caption_ids, render  # noqa: E402
from quality_metrics import (GaussianBaseline, adherence, fidelity, identity_score,  # noqa: E402
                             subject_instances)
from quality_model import AttentionMode, svg2_attention  # noqa: E402

SPEC = TaskSpec(frames=12, height=16, width=24, min_shots=3, max_shots=4, min_shot_frames=3, num_subjects=5,
                num_backgrounds=5, cast=3)


@pytest.fixture(scope="module")
def task():
    return SyntheticMultiShot(SPEC)


def test_batches_are_deterministic_by_seed(task):
    a, b, c = task.batch(5, 3), task.batch(5, 3), task.batch(6, 3)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.labels, b.labels) and torch.equal(a.context, b.context)
    assert a.shots == b.shots
    assert not torch.equal(a.latents, c.latents)
    assert a.latents.shape == (3, SPEC.channels, SPEC.frames, SPEC.height, SPEC.width)
    assert a.context.shape == (3, 3 * len(a.shots), SPEC.text_dim)
    assert int(a.labels.min()) >= 0 and int(a.labels.max()) < SPEC.num_classes
    assert 0.5 < float(a.latents.std()) < 2.0


def test_videos_are_multi_shot_with_recurring_subjects(task):
    for seed in range(20):
        batch = task.batch(seed, 2)
        assert SPEC.min_shots <= len(batch.shots) <= SPEC.max_shots and batch.shots[0] == 0
        ends = list(batch.shots[1:]) + [SPEC.frames]
        assert all(e - s >= SPEC.min_shot_frames for s, e in zip(batch.shots, ends))
        for plan in batch.plans:
            shots = plan.shots
            assert all(len(s.subjects) <= 2 for s in shots)
            assert all(len({x.side for x in s.subjects}) == len(s.subjects) for s in shots)
            present = [any(x.cast_index == 0 for x in s.subjects) for s in shots]
            assert present[0] and present[-1], "the protagonist opens and closes the video"
            assert not all(present), "and leaves in between"
            # the caption names what is rendered, per shot and side
            for ids, shot in zip(caption_ids(plan, SPEC), shots):
                assert ids[0] == shot.background
                for side, (subj_id, _) in enumerate(((ids[2], ids[3]), (ids[4], ids[5]))):
                    who = shot.on_side(side)
                    assert subj_id == (who.subject if who else -1)
        # shot k's caption differs from shot k+1's somewhere (each shot has its own caption)
        ctx = batch.context[0].view(len(batch.shots), 3, -1)
        assert all(not torch.allclose(ctx[k], ctx[k + 1]) for k in range(len(batch.shots) - 1))


def _with_new_identities(batch, task, seed):
    plans = copy.deepcopy(batch.plans)
    gen = torch.Generator().manual_seed(seed)
    for p in plans:
        p.identity = SPEC.identity_std * torch.randn(p.identity.shape, generator=gen)
    latents, _ = render(plans, SPEC, task.world, "cpu", noise_seed=seed)
    return latents


def test_identity_metric_sees_consistency_and_its_absence(task):
    batches = [task.batch(100 + i, 4) for i in range(3)]
    consistent, broken = [], []
    for bi, b in enumerate(batches):
        found, _ = subject_instances(b.latents, b.labels, b, task, video_offset=100 * bi)
        consistent += found
        # every shot after the first from other individuals of the same subjects: no cross-shot identity left
        other = _with_new_identities(b, task, seed=bi)
        spliced = other.clone()
        first_end = b.shots[1]
        spliced[:, :, :first_end] = b.latents[:, :, :first_end]
        found, _ = subject_instances(spliced, b.labels, b, task, video_offset=100 * bi)
        broken += found
    good, bad = identity_score(consistent), identity_score(broken)
    assert good["identity_pairs"] > 10 and good["identity"] > 0.85 and good["identity_far"] > 0.85
    assert bad["identity_pairs"] > 0 and bad["identity"] < 0.6
    # a model that paints every subject in its class colour (no individual) scores about 0, not 1
    class_colour = []
    for inst in consistent:
        class_colour.append(dict(inst, mean=task.world.subject_mean()[inst["subject"]] + 0.01 * torch.randn(16)))
    assert abs(identity_score(class_colour)["identity"]) < 0.5


def test_teacher_forced_identity_of_an_exact_denoiser_is_the_true_videos(task):
    """bench/quality.py's teacher-forced identity: x̂0 = x_t − t·v̂ read at the true pixels. A denoiser that returns
    the exact velocity (x_t − x0)/t gives back x0, so the score is the true videos' own."""
    import quality
    from quality_model import AttentionMode

    cfg = dataclasses.replace(quality.preset("tiny"), task=SPEC, identity_ts=(0.9,), far_shots=2)
    eval_set = [(task.batch(300 + i, 3), None) for i in range(2)]
    calls = []

    class Exact(torch.nn.Module):
        def forward(self, x, timestep, context, transformer_options=None):
            x0 = eval_set[len(calls) % len(eval_set)][0].latents
            calls.append(float(timestep[0]))
            return (x - x0) / (timestep.view(-1, 1, 1, 1, 1) / 1000.0)

    class Ctrl:
        mode = AttentionMode("dense")

        def set(self, *args, **kw):
            pass

        def options(self):
            return {}

    got = quality.teacher_forced_identity(Exact(), Ctrl(), cfg, task, eval_set, autocast=False)
    insts = []
    for bi, (b, _) in enumerate(eval_set):
        insts += subject_instances(b.latents, b.labels, b, task, video_offset=1000 * bi)[0]
    want = identity_score(insts, far=2)
    assert calls == [pytest.approx(900.0)] * 2
    assert got["identity_tf_pairs"] == want["identity_pairs"] > 5
    assert got["identity_tf"] == pytest.approx(want["identity"], abs=1e-5) and got["identity_tf"] > 0.85
    assert quality.teacher_forced_identity(Exact(), Ctrl(), dataclasses.replace(cfg, identity_ts=()), task,
                                           eval_set, autocast=False) == {}


def test_adherence_reads_the_caption(task):
    b = task.batch(7, 3)
    perfect = adherence(b.labels, b, task)
    assert perfect["score"] == 1.0 and perfect["side"] == 1.0
    assert perfect["decisions"] == 2 * sum(len(p.shots) for p in b.plans)
    flipped = adherence(b.labels.flip(-1), b, task)  # every subject in the other half of the frame
    assert flipped["subjects"] == 1.0 and flipped["side"] == 0.0
    blank = torch.full_like(b.labels, 0)  # background 0 everywhere, no subjects
    worse = adherence(blank, b, task)
    assert worse["score"] < 0.8 and worse["subjects"] < 1.0


def test_fidelity_and_trivial_baseline(task):
    b = task.batch(3, 2)
    same = fidelity(b.latents, b.latents)
    assert same["psnr"] == math.inf and same["cosine"] == pytest.approx(1.0)
    noisy = fidelity(b.latents + 0.1 * torch.randn_like(b.latents), b.latents)
    assert 20 < noisy["psnr"] < 60
    data = task.batch(4, 4)
    base = GaussianBaseline([data])
    x0 = data.latents
    for t in (0.2, 0.5, 0.8):
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        xt = (1 - t) * x0 + t * eps
        pred = base.predict(xt, torch.full((x0.shape[0],), t))
        err = float((pred - (eps - x0)).pow(2).mean())
        assert err < float((eps - x0).pow(2).mean())  # better than predicting zero
        assert err < float((1.1 * pred - (eps - x0)).pow(2).mean())  # and than a rescaled version of itself


def test_svg2_baseline_is_exact_at_top_p_one_and_sparse_below():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 96, 2, 16, generator=gen) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                           v.transpose(1, 2)).transpose(1, 2)
    out, density = svg2_attention(q, k, v, {}, 0, AttentionMode("svg2", svg2_q_clusters=6, svg2_k_clusters=8,
                                                               svg2_top_p=1.0))
    assert density == pytest.approx(1.0) and torch.allclose(out, ref, atol=1e-5)
    state = {}
    out, density = svg2_attention(q, k, v, state, 0, AttentionMode("svg2", svg2_q_clusters=6, svg2_k_clusters=8,
                                                                   svg2_top_p=0.5))
    assert 0 < density < 1 and torch.isfinite(out).all()
    assert (0, "q") in state and state[(0, "k")].shape == (2 * 2, 8, 16)  # warm start for the next step


def test_identity_span_and_far_threshold(task):
    found, broken = [], []
    for i in range(3):
        b = task.batch(100 + i, 4)
        found += subject_instances(b.latents, b.labels, b, task, video_offset=100 * i)[0]
        spliced = _with_new_identities(b, task, seed=5 + i)
        spliced[:, :, :b.shots[1]] = b.latents[:, :, :b.shots[1]]  # the first shot: other individuals than the rest
        broken += subject_instances(spliced, b.labels, b, task, video_offset=100 * i)[0]
    good, bad = identity_score(found, far=2), identity_score(broken, far=2)
    assert good["identity_span_pairs"] > 0 and good["identity_span"] > 0.85
    assert bad["identity_span"] < good["identity_span"] - 0.3
    # a larger threshold keeps a subset of the far pairs
    far3 = identity_score(found, far=3)
    assert far3["identity_far_pairs"] <= good["identity_far_pairs"] and far3["identity_far_shots"] == 3
    with pytest.raises(ValueError, match="far must be an int >= 1"):
        identity_score(found, far=0)


def test_svg2_query_chunks_change_nothing(monkeypatch):
    import quality_model

    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 80, 2, 16, generator=gen) for _ in range(3))
    mode = AttentionMode("svg2", svg2_q_clusters=5, svg2_k_clusters=7, svg2_top_p=0.6)
    whole, d1 = svg2_attention(q, k, v, {}, 0, mode)
    monkeypatch.setattr(quality_model, "SVG2_MASK_ELEMENTS", 2 * 80 * 7)  # chunks of 7 queries
    chunked, d2 = svg2_attention(q, k, v, {}, 0, mode)
    assert d1 == d2 and torch.allclose(whole, chunked, atol=1e-6)


def _captured(layout, blocks=2, batch=2, forwards=2, dim=12, heads=2, seed=0):
    """A calibration capture as quality_model.capture returns it, from random router inputs with cluster structure."""
    gen = torch.Generator().manual_seed(seed)
    n = layout.num_tokens
    out = {}
    for i in range(blocks):
        centres = 3 * torch.randn(6, dim, generator=gen)
        entries = []
        for _ in range(forwards):
            x = centres[torch.randint(6, (batch, n), generator=gen)] + torch.randn(batch, n, dim, generator=gen)
            q, k = (torch.randn(batch, n, heads, 8, generator=gen) for _ in range(2))
            entries.append({"x": x, "q": q, "k": k, "v": k, "layout": layout})
        out[i] = entries
    return out


def test_matched_density_tuning_hits_the_targets_and_picks_the_closest():
    from moga_core import MogaConfig, VideoLayout
    from quality_tune import MODES, closest_is_chosen, keyset_density, search_groups, tune

    layout = VideoLayout(grid=(8, 6, 8), shots=(0, 3, 5))
    base = MogaConfig(num_groups=2, window=(2, 2), temporal_group=2, neighbor_frames=1)
    # M = 1 is dense attention
    assert keyset_density(layout, MogaConfig(num_groups=1), torch.zeros(2, 384, dtype=torch.int64)) == 1.0
    with pytest.raises(ValueError, match="groups must be"):
        keyset_density(layout, base, torch.zeros(2, 10, dtype=torch.int64))
    # the search: exact on a monotone function, closest among the visited
    m, d, tried = search_groups(lambda m: 1.0 / m, 0.26, 64)
    assert m == 4 and d == 0.25 and all(abs(d - 0.26) <= abs(x - 0.26) for _, x in tried)
    targets = (0.2, 0.3, 0.45)
    tuned = tune(_captured(layout), base, targets, MODES, capacity=1.25, max_groups=40, seed=0,
                 svg2=AttentionMode("svg2", svg2_q_clusters=6, svg2_k_clusters=12))
    assert [(t.mode, t.target) for t in tuned] == [(m, t) for m in MODES for t in targets]
    for t in tuned:
        assert closest_is_chosen(t), t
        assert abs(t.density - t.target) < 0.05, (t.mode, t.target, t.density)
        if t.mode == "svg2":
            assert 0 <= t.params["svg2_top_p"] <= 1
        else:
            assert t.params["second_group"] == (t.mode == "union_auto_g2")
    # higher targets need fewer groups (or a larger top-p)
    for mode in MODES:
        knobs = [t.params.get("num_groups", -t.params.get("svg2_top_p", 0)) for t in tuned if t.mode == mode]
        assert knobs == sorted(knobs, reverse=True), (mode, knobs)
    # refining with the capacity bound (and M ± 1) never lands farther from the target, and says what it chose
    refined = tune(_captured(layout), base, targets, ("union_auto", "union_calibrated"), capacity=1.25,
                   capacities=(1.0, 1.25, 2.0), max_groups=40, seed=0)
    plain = {(t.mode, t.target): t for t in tuned}
    for t in refined:
        assert closest_is_chosen(t) and t.params["capacity"] in (1.0, 1.25, 2.0)
        assert abs(t.density - t.target) <= abs(plain[(t.mode, t.target)].density - t.target) + 1e-12
    with pytest.raises(ValueError, match="unknown tuning modes"):
        tune(_captured(layout), base, targets, ("union_mean",))
    with pytest.raises(ValueError, match="targets must be densities"):
        tune(_captured(layout), base, (1.5,))


# ---------------------------------------------------------------------------------------------------------------
# Sol-Attn (comfy-kitchen, what ComfyUI core's "Model Sparse Attention" node runs) as a row of the study


@pytest.mark.parametrize("tau, topk", [(1.0, 0.0), (1.3, 0.0), (2.0, 0.0), (0.0, 0.1), (0.0, 0.2)])
def test_sol_rows_density_is_the_reference_routing(tau, topk):
    """The study's Sol density counts the blocks the eager reference attends exactly: its output without the pooled
    tail (tail=False) is softmax attention over exactly the blocks `sol_exact_blocks` names, and the row's output
    is the reference's."""
    eager_mod = pytest.importorskip("comfy_kitchen.backends.eager.sol_attn")
    from quality_model import SOL_BLOCK, sol_attention, sol_exact_blocks

    gen = torch.Generator().manual_seed(3)
    b, t, h, d = 2, 5 * SOL_BLOCK + 17, 2, 32  # a ragged last block
    structure = torch.randn(b, t, 1, d, generator=gen) * 2.0  # shared structure: routing is not uniform
    q, k, v = (structure + torch.randn(b, t, h, d, generator=gen) for _ in range(3))
    scale = d ** -0.5
    exact = sol_exact_blocks(q, k, tau, topk, scale)
    n = exact.shape[-1]
    assert exact.shape == (b, h, n, n) and 0 < float(exact.float().mean()) < 1
    mask = exact.repeat_interleave(SOL_BLOCK, dim=2)[:, :, :t].repeat_interleave(SOL_BLOCK, dim=3)[..., :t]
    qh, kh, vh = (x.double().transpose(1, 2) for x in (q, k, v))
    scores = (qh @ kh.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    expected = (torch.softmax(scores, -1) @ vh).transpose(1, 2)
    routed_only = eager_mod.sol_attn(q, k, v, tau=tau, topk_ratio=topk, scale=scale, tail=False)
    assert float((routed_only.double() - expected).abs().max()) < 1e-4
    out, density = sol_attention(q, k, v, AttentionMode("sol", sol_tau=tau, sol_topk=topk))
    assert torch.allclose(out, eager_mod.sol_attn(q, k, v, tau=tau, topk_ratio=topk, scale=scale), atol=1e-6)
    assert float(exact.float().mean()) < density < 1.0


def test_sol_rows_name_what_is_missing(monkeypatch):
    """Without comfy-kitchen's Sol-Attn the row's error says so (the study keeps its other rows)."""
    import builtins

    from quality_model import sol_kernels

    real_import = builtins.__import__

    def no_sol(name, *args, **kwargs):
        if name.startswith("comfy_kitchen.backends.eager.sol_attn"):
            raise ImportError("no module named sol_attn")
        return real_import(name, *args, **kwargs)

    pytest.importorskip("comfy_kitchen")
    monkeypatch.setattr(builtins, "__import__", no_sol)
    with pytest.raises(RuntimeError, match=r"comfy-kitchen \S+ has no Sol-Attn"):
        sol_kernels()
