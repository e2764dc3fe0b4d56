"""Multi-shot prompts and the long-video sampler on tiny Wan and HunyuanVideo models (real ComfyUI, CPU)."""

from __future__ import annotations

import hashlib
from importlib import import_module

import pytest
import torch

import tiny_models as tm

pytestmark = pytest.mark.host


class StandInTextEncoder:
    """The least we must substitute: UMT5-XXL / LLaVA are multi-GB. Same interface and output shapes as ComfyUI's
    CLIP object (tokenize -> encode_from_tokens_scheduled -> [[(1, L, width), extras]]), deterministic per text."""

    def __init__(self, width=4096, tokens=16, pooled=False, pad=0):
        self.width, self.tokens, self.pooled, self.pad = width, tokens, pooled, pad
        self.encoded = []

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        self.encoded.append(tokens)
        seed = int(hashlib.sha256(tokens.encode()).hexdigest()[:8], 16)
        gen = torch.Generator().manual_seed(seed)
        extras = {}
        if self.pooled:
            extras["pooled_output"] = torch.randn(1, 768, generator=gen)
        mask = torch.ones(1, self.tokens, dtype=torch.long)
        if self.pad:
            mask[:, -self.pad:] = 0
        extras["attention_mask"] = mask
        return [[torch.randn(1, self.tokens, self.width, generator=gen), extras]]


@pytest.fixture(scope="module")
def shots(moga):
    return import_module(f"{moga.name}.nodes.shots")


# ---------------------------------------------------------------------------------------------------------------
# shot plan arithmetic


def test_durations_to_frames_to_latent_frames(shots):
    # only a line starting with '#' is a comment; a '#' after the prompt's start is the prompt's own
    specs = shots.parse_shots("3s | a cat\n# a comment\n2.5 s | a dog   # no comment\n33f | a bird", 16)
    assert [(s.prompt, s.frames, s.seconds) for s in specs] == [("a cat", 48, 3.0), ("a dog   # no comment", 40, 2.5),
                                                                ("a bird", 33, None)]
    plan = shots.plan_shots(specs, 16)
    assert plan.frame_starts == (0, 48, 88)
    assert plan.num_latent_frames == (121 - 1) // 4 + 1 == 31
    assert plan.num_frames == 121
    # 48 and 88 are not 4k+1: both cuts move one frame later, to latent frames 13 and 23
    assert plan.latent_starts == (0, 13, 23)
    assert any("moved from frame 48 to frame 49" in n for n in plan.notes)
    assert plan.shot_of_latent_frame(12) == 0 and plan.shot_of_latent_frame(13) == 1
    assert plan.latent_ranges() == [(0, 13), (13, 23), (23, 31)]


def test_clean_cuts_and_total_rounding(shots):
    plan = shots.plan_shots(shots.parse_shots("17f | a\n16f | b\n16f | c", 16), 16)
    assert plan.latent_starts == (0, 5, 9) and not any("moved" in n for n in plan.notes)
    assert plan.num_frames == 49 and plan.num_latent_frames == 13
    odd = shots.plan_shots(shots.parse_shots("20f | a\n20f | b", 16), 16)
    assert odd.num_frames == 37 and any("not 4k+1" in n for n in odd.notes)
    as_json = shots.parse_shots('[{"prompt": "x", "seconds": 1}, {"prompt": "y", "frames": 9}]', 24)
    assert [s.frames for s in as_json] == [24, 9]


@pytest.mark.parametrize("text, message", [
    ("", "no shots"),
    ("# only a comment", "no shots"),
    ("0s | a", "duration must be positive"),
    ("-2s | a", "expected 'duration | prompt'"),
    ("3s | ", "prompt is empty"),
    ("three seconds | a", "expected 'duration | prompt'"),
    ("2.5f | a", "frame count must be whole"),
    ('[{"prompt": "x"}]', "give its duration"),
    ("[oops", "do not parse"),
])
def test_bad_shots_are_clear_errors(shots, text, message):
    with pytest.raises(ValueError, match=message):
        shots.parse_shots(text, 16)


def test_more_shots_than_latent_frames_or_too_short(shots):
    with pytest.raises(ValueError, match="3 shots do not fit in 2 latent frames"):
        shots.plan_shots(shots.parse_shots("1f | a\n2f | b\n2f | c", 16), 16)
    with pytest.raises(ValueError, match="too short"):
        shots.plan_shots(shots.parse_shots("17f | a\n1f | b\n16f | c", 16), 16)
    with pytest.raises(ValueError, match="fps must be positive"):
        shots.parse_shots("1s | a", 0)


# ---------------------------------------------------------------------------------------------------------------
# the caption restriction inside the model


def first_forward_capture(model, cond, latent, cfg=1.0, where="attn2"):
    """Run one sampling step and return the residual stream right after block 0's caption attention."""
    import nodes

    captured = []
    m = model.clone()
    if where == "attn2":  # Wan: after block 0's cross-attention
        def attn2(args):
            if args["transformer_options"].get("block_index") == 0 and not captured:
                captured.append(args["x"].clone())
            return args["x"]

        m.set_model_attn2_patch(attn2)
    else:  # HunyuanVideo: block 0's output (joint attention + MLP)
        def block0(args, extra):
            out = extra["original_block"](args)
            if not captured:
                captured.append(out["img"].clone())
            return out

        m.set_model_patch_replace(block0, "dit", "double_block", 0)
    nodes.common_ksampler(m, 0, 1, cfg, "euler", "simple", cond, cond, latent)
    return captured[0]


def wan_conditioning(moga, text, clip):
    multishot = import_module(f"{moga.name}.nodes.multishot")
    return multishot.multishot_conditioning(clip, text, "a red ball, studio light", 16)


def test_wan_shot_tokens_see_only_their_own_caption(moga):
    model = tm.load(tm.wan_state_dict())
    clip = StandInTextEncoder()
    latent = tm.video_latent(frames=5, height=8, width=8)
    a, plan = wan_conditioning(moga, "5f | the ball rolls left\n12f | a blue cube", clip)
    b, _ = wan_conditioning(moga, "5f | the ball rolls left\n12f | a green pyramid", clip)
    assert plan.latent_starts == (0, 2) and plan.num_latent_frames == 5
    assert a[0][0].shape == (1, 3 * 16, 4096) and plan.shot_tokens == ((16, 32), (32, 48))
    xa, xb = first_forward_capture(model, a, latent), first_forward_capture(model, b, latent)
    hw = 4 * 4
    shot1, shot2 = slice(0, 2 * hw), slice(2 * hw, 5 * hw)
    assert torch.equal(xa[:, shot1], xb[:, shot1])  # shot 1 never reads shot 2's caption
    assert not torch.allclose(xa[:, shot2], xb[:, shot2])  # shot 2 does
    # and without the plan (one concatenated prompt) shot 1 would have read it
    plain_a, plain_b = [[a[0][0], {}]], [[b[0][0], {}]]
    pa, pb = first_forward_capture(model, plain_a, latent), first_forward_capture(model, plain_b, latent)
    assert not torch.allclose(pa[:, shot1], pb[:, shot1])


def test_wan_restriction_holds_through_moga_patch_and_context_windows(moga):
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    model = tm.load(tm.wan_state_dict())
    adapter = moga.adapters.adapter_for(model)
    routers = moga.routers.RouterSet({i: moga.core.Router(256, 2) for i in range(2)}, "wan", 256, 2)
    patched = model.clone()
    moga.patcher.install(patched, routers, moga.patcher.PatchOptions(
        start_percent=0.0, min_tokens=0, dense_if_slower=False, temporal_group=2))
    clip = StandInTextEncoder()
    latent = tm.video_latent(frames=9, height=8, width=8)
    a, plan = wan_conditioning(moga, "9f | the ball rolls left\n24f | a blue cube", clip)
    b, _ = wan_conditioning(moga, "9f | the ball rolls left\n24f | a green pyramid", clip)
    assert plan.latent_starts == (0, 3)
    for m in (patched, ContextWindowsManualNode.execute(patched, 5, 2, "standard_static", 1, False, "pyramid", 2,
                                                         False)[0]):
        xa, xb = first_forward_capture(m, a, latent), first_forward_capture(m, b, latent)
        assert torch.equal(xa[:, :3 * 16], xb[:, :3 * 16])
        assert not torch.allclose(xa[:, 3 * 16:5 * 16], xb[:, 3 * 16:5 * 16])
    assert adapter.family == "wan"


def test_hunyuan_shot_tokens_see_only_their_own_caption(moga):
    model = tm.load(tm.hunyuan_state_dict())
    clip = StandInTextEncoder(width=64, tokens=10, pooled=True, pad=2)
    latent = tm.video_latent(frames=5, height=8, width=8)
    multishot = import_module(f"{moga.name}.nodes.multishot")
    a, plan = multishot.multishot_conditioning(clip, "5f | a fox\n12f | a blue cube", "snowy forest", 16)
    b, _ = multishot.multishot_conditioning(clip, "5f | a fox\n12f | a green pyramid", "snowy forest", 16)
    assert "attention_mask" in a[0][1] and a[0][1]["attention_mask"].shape == (1, 30)
    hw = 16
    long_video = import_module(f"{moga.name}.nodes.long_video")
    sampler_clone = long_video.prepare_model(model, plan, -1, 0, 0)[0]
    # through the MoGA patch (sparse joint attention) and through the long-video sampler's clone (dense)
    for m in (_hv_patched(moga, model), sampler_clone):
        xa = first_forward_capture(m, a, latent, where="block")
        xb = first_forward_capture(m, b, latent, where="block")
        assert torch.equal(xa[:, :2 * hw], xb[:, :2 * hw]), "shot 1's video tokens read shot 2's caption"
        assert not torch.allclose(xa[:, 2 * hw:], xb[:, 2 * hw:])
    # a bare model refines all captions together (the refiner pools them): shot 1 is affected there
    xa = first_forward_capture(model, a, latent, where="block")
    xb = first_forward_capture(model, b, latent, where="block")
    assert not torch.equal(xa[:, :2 * hw], xb[:, :2 * hw])


def _hv_patched(moga, model):
    adapter = moga.adapters.adapter_for(model)
    routers = moga.routers.RouterSet({k.index: moga.core.Router(256, 2) for k in adapter.blocks()}, "hunyuan_video",
                                     256, adapter.num_blocks)
    patched = model.clone()
    moga.patcher.install(patched, routers, moga.patcher.PatchOptions(
        start_percent=0.0, min_tokens=0, dense_if_slower=False, temporal_group=2))
    return patched


# ---------------------------------------------------------------------------------------------------------------
# the long-video sampler


SAMPLER_ARGS = dict(width=64, height=64, length=17, seed=3, steps=3, cfg=5.0, sampler_name="euler",
                    scheduler="simple", shift=0.0, denoise=1.0, ffn_chunk_tokens=-1, context_frames=0,
                    context_overlap=0)


def three_shot_setup(moga):
    model = tm.load(tm.wan_state_dict())
    routers = moga.routers.RouterSet({i: moga.core.Router(256, 3) for i in range(2)}, "wan", 256, 2)
    patched = model.clone()
    patch = moga.patcher.install(patched, routers, moga.patcher.PatchOptions(
        start_percent=0.0, min_tokens=0, dense_if_slower=False, temporal_group=2))
    clip = StandInTextEncoder()
    multishot = moga.NODES["MoGAMultiShotPrompt"]
    pos, plan, frames, report = multishot.execute(clip=clip, shots="9f | a ball\n8f | a cube\n8f | a cone",
                                                  global_prompt="studio", fps=16).args
    neg = tm.wan_conditioning(seed=9)
    return model, patched, patch, pos, neg, plan, frames, report


def test_three_shot_run_through_long_video_sampler_and_ksampler(moga):
    import nodes

    model, patched, patch, pos, neg, plan, frames, report = three_shot_setup(moga)
    assert frames == 25 and plan.latent_starts == (0, 3, 5) and "3 shots" in report
    sampler = moga.NODES["MoGALongVideoSampler"]
    steps_seen = []
    import latent_preview

    original = latent_preview.prepare_callback

    def counting(model_, steps, x0_output_dict=None):
        inner = original(model_, steps, x0_output_dict)

        def cb(step, x0, x, total):
            steps_seen.append(step)
            return inner(step, x0, x, total)

        return cb

    latent_preview.prepare_callback = counting
    try:
        result = sampler.execute(model=patched, positive=pos, negative=neg, shots=plan, **SAMPLER_ARGS)
        out = result.args[0]
    finally:
        latent_preview.prepare_callback = original
    # the group map of one latent frame (first frame of shot 2) for the web view
    group_map = result.ui["moga_group_map"][0]
    assert (group_map["frame"], group_map["height"], group_map["width"], group_map["num_groups"]) == (3, 4, 4, 3)
    assert len(group_map["groups"]) == 16 and set(group_map["groups"]) <= {0, 1, 2} and group_map["step"] == 3
    samples = out["samples"]
    assert samples.shape == (1, 16, 7, 8, 8) and torch.isfinite(samples).all()
    assert steps_seen == [0, 1, 2]
    stats = patch.last_run_stats
    assert sum(stats["sparse_calls"].values()) == 2 * 2 * 3  # 2 blocks x (cond + uncond, unbatched) x 3 steps
    # the stock KSampler on the same patched model and conditioning also runs (local windows break at the cuts
    # for the positive prompt, whose plan rides in the conditioning)
    latent = {"samples": torch.zeros(1, 16, 7, 8, 8)}
    ks = nodes.common_ksampler(patched, 3, 3, 5.0, "euler", "simple", pos, neg, latent)[0]["samples"]
    assert torch.isfinite(ks).all()


def test_ffn_chunking_matches_unchunked_and_shrinks_the_largest_activation(moga):
    model, patched, patch, pos, neg, plan, frames, report = three_shot_setup(moga)
    sampler = moga.NODES["MoGALongVideoSampler"]
    widest = []

    def hook(module, inputs, output):
        widest.append(output.numel() * output.element_size())

    first_linear = model.model.diffusion_model.blocks[0].ffn[0]
    handle = first_linear.register_forward_hook(hook)
    try:
        full = sampler.execute(model=patched, positive=pos, negative=neg, shots=plan, **SAMPLER_ARGS).args[0]
        peak_full = max(widest)
        widest.clear()
        chunked = sampler.execute(model=patched, positive=pos, negative=neg, shots=plan,
                                  **dict(SAMPLER_ARGS, ffn_chunk_tokens=64)).args[0]
        peak_chunked = max(widest)
    finally:
        handle.remove()
    assert torch.allclose(full["samples"], chunked["samples"], atol=1e-5, rtol=1e-5)
    tokens = 7 * 4 * 4
    assert peak_full == tokens * 512 * 4 and peak_chunked == 64 * 512 * 4  # FFN hidden: tokens x 512 x fp32


def test_interrupt_stops_the_run_cleanly(moga):
    import comfy.model_management

    model, patched, patch, pos, neg, plan, frames, report = three_shot_setup(moga)
    sampler = moga.NODES["MoGALongVideoSampler"]
    calls = []

    def interrupt_in_second_step(args, extra):
        calls.append(1)
        if len(calls) == 5:  # in the middle of the second step's forwards
            comfy.model_management.interrupt_current_processing(True)
        return extra["original_block"](args)

    m = patched.clone()
    # wrap block 1 of the MoGA patch chain: a later patch replacing block 1 (MoGA's stays on block 0)
    m.set_model_patch_replace(interrupt_in_second_step, "dit", "double_block", 1)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sampler.execute(model=m, positive=pos, negative=neg, shots=plan, **SAMPLER_ARGS)
    comfy.model_management.interrupt_current_processing(False)
    assert 5 <= len(calls) < 12
    # nothing is left behind: the same model samples again, and the unpatched model is untouched
    out = sampler.execute(model=patched, positive=pos, negative=neg, shots=plan, **SAMPLER_ARGS).args[0]
    assert torch.isfinite(out["samples"]).all()


def test_windowed_fallback_aligns_windows_to_cuts(moga):
    from importlib import import_module as im

    long_video = im(f"{moga.name}.nodes.long_video")
    model, patched, patch, pos, neg, plan, frames, report = three_shot_setup(moga)
    schedule = long_video.shot_aligned_windows(plan)

    class Handler:
        context_length, context_overlap = 2, 1

    windows = schedule.func(7, Handler())
    assert windows == [[0, 1], [1, 2], [3, 4], [5, 6]]  # none crosses the cuts at 3 and 5
    out = moga.NODES["MoGALongVideoSampler"].execute(
        model=patched, positive=pos, negative=neg, shots=plan,
        **dict(SAMPLER_ARGS, context_frames=5, context_overlap=1)).args[0]
    assert torch.isfinite(out["samples"]).all()
    assert patch.last_run_stats["forwards"] > 2 * 3  # several windows per step


def test_guider_plugs_into_sampler_custom_advanced(moga):
    from comfy_extras.nodes_custom_sampler import BasicScheduler, KSamplerSelect, RandomNoise, SamplerCustomAdvanced

    model, patched, patch, pos, neg, plan, frames, report = three_shot_setup(moga)
    guider = moga.NODES["MoGALongVideoGuider"].execute(model=patched, positive=pos, negative=neg, cfg=5.0,
                                                       ffn_chunk_tokens=64, context_frames=0, context_overlap=0,
                                                       shots=plan).args[0]
    sigmas = BasicScheduler.execute(patched, "simple", 3, 1.0)[0]
    latent = {"samples": torch.zeros(1, 16, 7, 8, 8)}
    out = SamplerCustomAdvanced.execute(RandomNoise.execute(3)[0], guider, KSamplerSelect.execute("euler")[0],
                                        sigmas, latent)[0]["samples"]
    assert torch.isfinite(out).all()
    wrong = {"samples": torch.zeros(1, 16, 5, 8, 8)}
    with pytest.raises(ValueError, match="the latent has 5 latent frames but the shot plan needs 7"):
        SamplerCustomAdvanced.execute(RandomNoise.execute(3)[0], guider, KSamplerSelect.execute("euler")[0],
                                      sigmas, wrong)


# ---------------------------------------------------------------------------------------------------------------
# checked when the prompt is queued


def multishot_prompt(shots_text, fps=16.0, clip_file="umt5_xxl_fp8_e4m3fn_scaled.safetensors"):
    """An API prompt: CLIPLoader -> MoGA Multi-Shot Prompt -> Preview Any (an output node, so validation reaches it)."""
    return {
        "1": {"class_type": "CLIPLoader", "inputs": {"clip_name": clip_file, "type": "wan", "device": "default"}},
        "2": {"class_type": "MoGAMultiShotPrompt",
              "inputs": {"clip": ["1", 0], "shots": shots_text, "global_prompt": "", "fps": fps}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 3]}},
    }


def multishot_errors(prompt):
    from devtools.workflow_graph import validate_api_prompt

    ok, _error, _outputs, node_errors = validate_api_prompt(prompt)
    return ok, [e.get("details", "") for e in node_errors.get("2", {}).get("errors", [])]


@pytest.mark.parametrize("text, fps, message", [
    ("3s | a cat\nthree seconds | a dog", 16.0, "line 2: expected 'duration | prompt'"),
    ("3s | a cat\n2s | ", 16.0, "shot 2: the prompt is empty"),
    ("", 16.0, "no shots"),
    ("1f | a\n2f | b\n2f | c", 16.0, "3 shots do not fit in 2 latent frames"),
    ("0.01s | a", 16.0, "less than one frame"),
    ("3s | a cat", 0.5, "fps must be between 1 and 120"),
    ("3s | a cat", 500, "fps must be between 1 and 120"),
])
def test_bad_shot_text_is_refused_when_the_prompt_is_queued(moga, text, fps, message):
    """execution.validate_prompt (what the server runs on /prompt) refuses bad shots before any model loads or
    text encodes, with the parser's own message on the node."""
    ok, errors = multishot_errors(multishot_prompt(text, fps))
    assert not ok
    assert any(message in e for e in errors), errors


def test_good_shot_text_passes_and_linked_inputs_wait_for_the_run(moga):
    # good shots: the only error left in the graph is the absent text-encoder file (CLIPLoader's, not ours)
    ok, errors = multishot_errors(multishot_prompt("3s | a cat\n33f | a dog"))
    assert errors == []
    # fps from another node: only what holds at every frame rate is checked ("0.01s" may be a frame at 120 fps)
    prompt = multishot_prompt("0.01s | a cat")
    prompt["4"] = {"class_type": "PrimitiveFloat", "inputs": {"value": 120.0}}
    prompt["2"]["inputs"]["fps"] = ["4", 0]
    assert multishot_errors(prompt)[1] == []
    prompt["2"]["inputs"]["shots"] = "0.01s | a cat\nnot a shot"
    assert any("line 2: expected 'duration | prompt'" in e for e in multishot_errors(prompt)[1])
    # the shots text from another node is checked when the node runs
    prompt["5"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "nonsense"}}
    prompt["2"]["inputs"]["shots"] = ["5", 0]
    assert multishot_errors(prompt)[1] == []
