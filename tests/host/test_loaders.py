"""Router files, MoGA checkpoints, calibration and the loader nodes, through ComfyUI's real loaders."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

import tiny_models as tm

pytestmark = pytest.mark.host

OPTIONS = dict(combine="router default", windows_h=2, windows_w=2, temporal_group=2, neighbor_frames=1,
               frame_branch=True, balanced=False, start_percent=0.0, end_percent=1.0, dense_blocks="",
               min_tokens=0, backend="auto", capacity=1.25,
               dense_if_slower=False, auto_groups=5, second_group=False)


def sample(model, steps=3, seed=0):
    import nodes

    pos, neg = tm.wan_conditioning(seed=1), tm.wan_conditioning(seed=2)
    return nodes.common_ksampler(model, seed, steps, 5.0, "euler", "simple", pos, neg, tm.video_latent())[0]["samples"]


def trained_routers(moga, m=3, seed=0, width=256, blocks=2):
    gen = torch.Generator().manual_seed(seed)
    routers = {i: moga.core.Router.from_weights(torch.randn(m, width, generator=gen), torch.randn(m, generator=gen))
               for i in range(blocks)}
    return moga.routers.RouterSet(routers, "wan", width, blocks, combine="mean", source="trained")


def test_moga_checkpoint_loads_like_unet_loader_plus_router_plus_apply(moga, models_dir, caplog):
    import nodes

    model_sd = tm.wan_state_dict(seed=3)
    routers = trained_routers(moga)
    checkpoint = dict(model_sd)
    for key, tensor in routers.state_dict().items():  # MoGA checkpoint: router keys beside the model's own
        index, rest = key.split(".")[1], key.split(".", 2)[2]
        checkpoint[f"blocks.{index}.self_attn.{rest}"] = tensor
    save_file(checkpoint, str(models_dir / "diffusion_models" / "tiny_moga.safetensors"))
    save_file(model_sd, str(models_dir / "diffusion_models" / "tiny_wan.safetensors"))
    routers.save(str(models_dir / "moga" / "tiny_router.safetensors"))

    with caplog.at_level(logging.WARNING):
        result = moga.NODES["MoGALoadModel"].execute(
            unet_name="tiny_moga.safetensors", weight_dtype="default",
            router_name=moga.load_model.FILE_OR_GROUPING, **OPTIONS)
    one_node, loaded_routers = result.args
    assert not [r for r in caplog.records if "router" in r.getMessage()], "router keys must not be reported"
    assert loaded_routers.source == "trained" and loaded_routers.combine == "mean"
    assert "the routers inside tiny_moga.safetensors" in result.ui["text"][0]
    # a prompt saved before: the old default's string reads the file's routers too
    legacy_routers = moga.NODES["MoGALoadModel"].execute(
        unet_name="tiny_moga.safetensors", weight_dtype="default", router_name="(routers inside the model file)",
        **OPTIONS).args[1]
    assert torch.equal(legacy_routers.routers[0].weight, loaded_routers.routers[0].weight)

    unet = nodes.UNETLoader().load_unet("tiny_wan.safetensors", "default")[0]
    router = moga.NODES["MoGALoadRouter"].execute(router_name="tiny_router.safetensors").args[0]
    three_nodes = moga.NODES["MoGAApply"].execute(model=unet, router=router, **OPTIONS).args[0]

    a, b = sample(one_node), sample(three_nodes)
    assert torch.equal(a, b)
    assert not torch.allclose(a, sample(unet))
    # the router file through the loader's own router_name input is the same again
    via_file = moga.NODES["MoGALoadModel"].execute(unet_name="tiny_wan.safetensors", weight_dtype="default",
                                                   router_name="tiny_router.safetensors", **OPTIONS).args[0]
    assert torch.equal(sample(via_file), a)


RANDOM = "random (balanced)"  # the grouping input's default (OPTIONS, like a prompt saved before it, has none)


def test_default_router_choice_works_on_a_stock_model_and_says_what_it_did(moga, models_dir, caplog):
    """No MoGA checkpoint exists yet: the default router_name on a stock file groups as the grouping input says
    (random balanced groups by default), and the node's text and the log say so. Prompts saved before this default
    pass the old strings, which keep working."""
    save_file(tm.wan_state_dict(), str(models_dir / "diffusion_models" / "plain.safetensors"))
    node = moga.NODES["MoGALoadModel"]
    schema = node.define_schema()
    router_input = next(i for i in schema.inputs if i.id == "router_name")
    assert router_input.default == moga.load_model.FILE_OR_GROUPING
    old_strings = ["(routers inside the model file)", "(none: groups as the grouping input says)",
                   "(auto: fitted to each video)"]
    for choice in [router_input.default] + old_strings:
        assert node.validate_inputs(router_name=choice) is True, choice

    with caplog.at_level(logging.INFO, logger="moga"):
        result = node.execute(unet_name="plain.safetensors", weight_dtype="default",
                              router_name=router_input.default, **dict(OPTIONS, auto_groups=3, grouping=RANDOM))
    model, routers = result.args
    patch = moga.wiring.patch_of(model)
    assert routers is None and patch.random is not None and patch.auto is None and patch.cfg.num_groups == 3
    text = result.ui["text"][0]
    assert "plain.safetensors has no MoGA routers" in text and "3 random balanced groups per block" in text
    assert any(text in r.getMessage() for r in caplog.records)
    sample(model)
    assert sum(patch.last_run_stats["sparse_calls"].values()) > 0

    # the old default string (saved prompts, the UI's saved widgets) now does the same instead of refusing
    legacy = node.execute(unet_name="plain.safetensors", weight_dtype="default",
                          router_name="(routers inside the model file)",
                          **dict(OPTIONS, auto_groups=3, grouping=RANDOM))
    assert legacy.args[1] is None and moga.wiring.patch_of(legacy.args[0]).random is not None
    assert legacy.ui["text"] == result.ui["text"]
    # grouping "k-means on this video" is followed too
    kmeans = node.execute(unet_name="plain.safetensors", weight_dtype="default", router_name=router_input.default,
                          **dict(OPTIONS, start_percent=0.5, grouping="k-means on this video"))
    assert moga.wiring.patch_of(kmeans.args[0]).auto is not None and "k-means" in kmeans.ui["text"][0]


def test_loader_patcher_can_rebuild_itself_for_a_non_dynamic_delegate(moga, models_dir):
    """ComfyUI with dynamic VRAM swaps in a delegate built by ``cached_patcher_init[0](*args, disable_dynamic=True)``
    when a conditioning carries hooks; the loader's patcher (the MoGA-patched clone it returns) carries one that
    reloads the same file without its router keys, with the same weight dtype."""
    import inspect

    import comfy.model_patcher
    import comfy.sd

    model_sd = tm.wan_state_dict(seed=6)
    checkpoint = dict(model_sd)
    for key, tensor in trained_routers(moga).state_dict().items():
        index, rest = key.split(".")[1], key.split(".", 2)[2]
        checkpoint[f"blocks.{index}.self_attn.{rest}"] = tensor
    save_file(checkpoint, str(models_dir / "diffusion_models" / "tiny_moga.safetensors"))
    assert "disable_dynamic" in inspect.signature(comfy.sd.load_diffusion_model_state_dict).parameters

    for weight_dtype, dtype in (("default", None), ("fp8_e4m3fn", torch.float8_e4m3fn)):
        patched, routers = moga.NODES["MoGALoadModel"].execute(
            unet_name="tiny_moga.safetensors", weight_dtype=weight_dtype,
            router_name=moga.load_model.FILE_OR_GROUPING, **OPTIONS).args
        assert routers is not None and moga.wiring.patch_of(patched) is not None
        assert patched.cached_patcher_init is not None
        fn, args = patched.cached_patcher_init[:2]
        assert fn is moga.load_model.reload_diffusion_model
        fresh = fn(*args, disable_dynamic=True)
        assert type(fresh) is comfy.model_patcher.ModelPatcher  # plain: not dynamic, not a subclass
        assert type(fresh.model) is type(patched.model) and fresh.model is not patched.model
        assert moga.wiring.patch_of(fresh) is None  # the loader's own file, unpatched: the patch rides on clones
        ours, theirs = patched.model.diffusion_model.state_dict(), fresh.model.diffusion_model.state_dict()
        assert not [k for k in theirs if "router" in k]
        assert sorted(ours) == sorted(theirs)
        for key in ours:
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key].float(), theirs[key].float()), key
        if dtype is not None:
            assert theirs["blocks.0.self_attn.q.weight"].dtype == dtype
        # the delegate rebuilds itself the same way, and ComfyUI's clone keeps the factory
        assert fresh.cached_patcher_init == patched.cached_patcher_init
        assert patched.clone().cached_patcher_init == patched.cached_patcher_init
        # the multi-GPU deep clone calls it without the keyword
        assert isinstance(fn(*args), comfy.model_patcher.ModelPatcher)


def test_model_loader_can_fit_routers_to_each_video(moga, models_dir):
    save_file(tm.wan_state_dict(), str(models_dir / "diffusion_models" / "plain.safetensors"))
    auto = moga.load_model.AUTO_ROUTERS
    assert moga.NODES["MoGALoadModel"].validate_inputs(router_name=auto) is True
    model, routers = moga.NODES["MoGALoadModel"].execute(unet_name="plain.safetensors", weight_dtype="default",
                                                         router_name=auto,
                                                         **dict(OPTIONS, start_percent=0.5, auto_groups=3)).args
    patch = moga.wiring.patch_of(model)
    assert routers is None and patch.auto is not None and patch.cfg.num_groups == 3
    sample(model)
    assert patch.last_run_stats["auto_fits"] == 1 and sum(patch.last_run_stats["sparse_calls"].values()) > 0


def test_model_loader_without_router_groups_as_the_grouping_input_says(moga, models_dir):
    save_file(tm.wan_state_dict(), str(models_dir / "diffusion_models" / "plain.safetensors"))
    none = moga.load_model.NO_ROUTER
    assert moga.NODES["MoGALoadModel"].validate_inputs(router_name=none) is True
    load = moga.NODES["MoGALoadModel"].execute
    model, routers = load(unet_name="plain.safetensors", weight_dtype="default", router_name=none,
                          **dict(OPTIONS, auto_groups=3, grouping="random (balanced)")).args
    patch = moga.wiring.patch_of(model)
    assert routers is None and patch.auto is None and patch.random is not None and patch.cfg.num_groups == 3
    sample(model)  # start_percent 0: random groups need no dense step
    assert sum(patch.last_run_stats["sparse_calls"].values()) > 0 and not patch.last_run_stats.get("auto_fits")
    # 'auto' is routers fitted to each video whatever grouping says
    model, _ = load(unet_name="plain.safetensors", weight_dtype="default", router_name=moga.load_model.AUTO_ROUTERS,
                    **dict(OPTIONS, start_percent=0.5, grouping="random (balanced)")).args
    assert moga.wiring.patch_of(model).auto is not None


def test_router_loader_splits_a_full_checkpoint(moga, models_dir):
    model_sd = tm.wan_state_dict(seed=4)
    routers = trained_routers(moga, seed=5)
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in model_sd.items()}
    for key, tensor in routers.state_dict().items():
        checkpoint[f"model.diffusion_model.{key}"] = tensor
    save_file(checkpoint, str(models_dir / "moga" / "full_checkpoint.safetensors"))
    loaded = moga.NODES["MoGALoadRouter"].execute(router_name="full_checkpoint.safetensors").args[0]
    assert loaded.model_family == "wan" and loaded.num_blocks == 2 and loaded.hidden_size == 256
    for i in range(2):
        assert torch.equal(loaded.routers[i].weight, routers.routers[i].weight)
        assert torch.equal(loaded.routers[i].bias, routers.routers[i].bias)


def test_empty_router_folder_is_a_clear_message(moga, models_dir):
    message = moga.NODES["MoGALoadRouter"].validate_inputs(router_name="anything.safetensors")
    assert isinstance(message, str) and "no router files found in models/moga/" in message
    assert str(models_dir / "moga") in message


def test_wrong_router_file_for_the_model_names_both_sides(moga, models_dir):
    import nodes

    save_file(tm.wan_state_dict(), str(models_dir / "diffusion_models" / "tiny_wan.safetensors"))
    unet = nodes.UNETLoader().load_unet("tiny_wan.safetensors", "default")[0]
    other = trained_routers(moga, width=512, blocks=2)
    with pytest.raises(ValueError, match="hidden size 512 vs the model's 256"):
        moga.NODES["MoGAApply"].execute(model=unet, router=other, **OPTIONS)
    save_file({"foo": torch.zeros(2)}, str(models_dir / "moga" / "not_a_router.safetensors"))
    with pytest.raises(ValueError, match="holds no MoGA routers"):
        moga.NODES["MoGALoadRouter"].execute(router_name="not_a_router.safetensors")


def test_calibrate_save_load_round_trip_gives_identical_routing(moga, models_dir):
    model = tm.load(tm.wan_state_dict(seed=7))
    pos, neg = tm.wan_conditioning(seed=1), tm.wan_conditioning(seed=2)
    calibrated = moga.NODES["MoGACalibrateRouter"].execute(
        model=model, positive=pos, negative=neg, latent=tm.video_latent(), steps=2, cfg=5.0, sampler_name="euler",
        scheduler="simple", groups=4, seed=11, tokens_per_block=256).args[0]
    assert calibrated.combine == "union" and calibrated.source == "calibrated"
    assert sorted(calibrated.routers) == [0, 1] and calibrated.num_groups == 4
    # deterministic under its seed
    again = moga.calibrate.calibrate(model, pos, neg, tm.video_latent(), 2, 5.0, "euler", "simple", 11, 4, 256)
    assert all(torch.equal(calibrated.routers[i].weight, again.routers[i].weight) for i in range(2))

    path = moga.NODES["MoGASaveRouter"].execute(router=calibrated, filename="calib/tiny").args[0]
    assert path.endswith("calib/tiny_00001.safetensors")
    second = moga.NODES["MoGASaveRouter"].execute(router=calibrated, filename="calib/tiny").args[0]
    assert second.endswith("calib/tiny_00002.safetensors")  # never overwrites
    loaded = moga.NODES["MoGALoadRouter"].execute(router_name="calib/tiny_00001.safetensors").args[0]
    x = torch.randn(1, 300, 256)
    for i in range(2):
        g1, p1 = calibrated.routers[i](x)
        g2, p2 = loaded.routers[i](x)
        assert torch.equal(g1, g2) and torch.equal(p1, p2)
    assert loaded.extra.get("calibration", {}).get("seed") == 11

    patched = moga.NODES["MoGAApply"].execute(model=model, router=loaded, **OPTIONS).args[0]
    out = sample(patched)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="filename"):
        moga.NODES["MoGASaveRouter"].execute(router=calibrated, filename="../escape")
