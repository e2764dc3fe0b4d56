"""Text a user (or a downloaded workflow) types into the nodes: a clear ValueError or a correct reading, never a silent
loss; and MoGA Save Router never writes outside models/moga."""

from __future__ import annotations

import os
import random
import re
from importlib import import_module

import pytest

pytestmark = pytest.mark.host

FUZZ_ALPHABET = "0123456789 -,;:.|#sfx\t\n[]{}\"'/\\é東e"


def random_texts(seed: int, count: int = 400, longest: int = 40) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(0, longest))) for _ in range(count)]


@pytest.fixture(scope="module")
def shots(moga):
    return import_module(f"{moga.name}.nodes.shots")


def test_a_hash_inside_a_prompt_is_part_of_it(shots):
    specs = shots.parse_shots("3s | a sign reading #1 on the door\n  # the next shot\n2s | a #hashtag", 16.0)
    assert [s.prompt for s in specs] == ["a sign reading #1 on the door", "a #hashtag"]


@pytest.mark.parametrize("text, message", [
    ('[{"prompt": "a", "seconds": 1e12}]', r"shot 1: 1e\+12s is longer than a whole video may be \(100000 frames"),
    ("100001f | a", r"shot 1: 100001f is longer than a whole video may be"),
    ("60000f | a\n60000f | b", r"the shots add up to 120000 frames, more than a video may have \(100000 frames"),
])
def test_a_plan_longer_than_the_limit_is_refused(shots, text, message):
    with pytest.raises(ValueError, match=message):
        shots.plan_shots(shots.parse_shots(text, 16.0), 16.0)
    assert shots.plan_shots(shots.parse_shots(f"{shots.MAX_FRAMES}f | a", 16.0), 16.0).num_frames <= shots.MAX_FRAMES


def test_fuzzed_shot_text_is_read_whole_or_refused(shots):
    """Every prompt read is a whole line's prompt, as typed; nothing between the separator and the line end is lost."""
    rng = random.Random(7)
    texts = random_texts(1)
    # and texts that parse, with '#' and separators scattered through the prompts
    for _ in range(300):
        lines = [f"{rng.randint(1, 9)}{rng.choice(['s', 'f', ''])} {rng.choice('|:')} "
                 + "".join(rng.choice("ab #|:1") for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 4))]
        texts.append("\n".join(lines))
    parsed = 0
    for text in texts:
        try:
            specs = shots.parse_shots(text, 16.0)
        except ValueError as exc:
            assert str(exc), text
            continue
        parsed += 1
        if text.strip().startswith("["):
            continue
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert len(specs) == len(lines), text
        for spec, line in zip(specs, lines):
            assert spec.prompt == re.split(r"[|:]", line, maxsplit=1)[1].strip(), (text, spec)
    assert parsed > 250


def test_fuzzed_dense_blocks_are_read_whole_or_refused(moga):
    """Each comma/space-separated part of an accepted text starts with a block number that is in the result."""
    parsed = 0
    for text in random_texts(2, longest=16):
        try:
            blocks = moga.patcher.parse_block_list(text, 30)
        except ValueError as exc:
            assert "dense_blocks" in str(exc), text
            continue
        parsed += 1
        for part in re.split(r"[,\s;]+", text.strip()):
            if part:
                assert int(re.match(r"-?\d+", part).group()) % 30 in blocks, (text, part)
        assert all(0 <= b < 30 for b in blocks)
        if not re.search(r"\d", text):
            assert blocks == set(), text
    assert parsed > 20


@pytest.fixture()
def save_router(moga):
    return import_module(f"{moga.name}.nodes.save_router")


@pytest.mark.parametrize("filename", ["/tmp/abs", "//tmp/abs", "../up", "a/../../up", "a/..", "\\\\server\\share",
                                      "..", "", "   ", "a\x00b", "C:\\x", "~/home"])
def test_save_router_refuses_names_outside_models_moga(save_router, tmp_path, filename):
    root = tmp_path / "moga"
    root.mkdir()
    with pytest.raises(ValueError, match="filename"):
        save_router.new_router_path(str(root), filename)


def test_save_router_refuses_a_link_that_leads_outside(save_router, tmp_path):
    root, outside = tmp_path / "moga", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="leads outside models/moga"):
        save_router.new_router_path(str(root), "linked/router")
    # a dangling link in place of the file itself is skipped, never written through
    (root / "mine_00001.safetensors").symlink_to(outside / "victim.safetensors")
    path = save_router.new_router_path(str(root), "mine")
    assert path == os.path.join(os.path.realpath(root), "mine_00002.safetensors")
    assert save_router.new_router_path(str(root), "sub/dir/name") == os.path.join(
        os.path.realpath(root), "sub", "dir", "name_00001.safetensors")


def test_fuzzed_router_names_stay_inside_models_moga(save_router, tmp_path):
    root = tmp_path / "moga"
    root.mkdir()
    real_root = os.path.realpath(root)
    accepted = 0
    for name in random_texts(3, longest=12) + ["/" + t for t in random_texts(4, count=50, longest=8)]:
        try:
            path = save_router.new_router_path(str(root), name)
        except ValueError as exc:
            assert "filename" in str(exc), name
            continue
        accepted += 1
        assert os.path.commonpath([real_root, os.path.realpath(path)]) == real_root, name
    assert accepted > 5


def test_fuzzed_router_names_to_load_are_found_or_refused(moga, models_dir):
    """MoGA Router Loader / Model Loader accept exactly the files in models/moga; any other name gets a message."""
    (models_dir / "moga" / "mine.safetensors").write_bytes(b"")
    import folder_paths

    folder_paths.filename_list_cache.clear()
    loader, model_loader = moga.NODES["MoGALoadRouter"], moga.NODES["MoGALoadModel"]
    assert loader.validate_inputs("mine.safetensors") is True
    for name in random_texts(5, count=200, longest=20) + ["../mine.safetensors", "/mine.safetensors", "mine"]:
        for node in (loader, model_loader):
            verdict = node.validate_inputs(router_name=name)
            assert verdict is not True and "models/moga" in verdict, (node, name)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_file_is_named_with_what_was_expected(moga, models_dir, damage):
    """safetensors alone says "Error while deserializing header: header too large" and no file name: the loaders
    name the file, say what it should have been, and what to do."""
    import folder_paths
    import torch
    from safetensors.torch import save_file

    import tiny_models as tm

    def damaged(path, good):
        data = path.read_bytes() if good else b""
        if damage == "truncated":
            path.write_bytes(data[:len(data) // 2])
        elif damage == "garbage":
            path.write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n" * 4)
        else:
            path.write_bytes(b"")

    router_path = models_dir / "moga" / "broken_router.safetensors"
    routers = moga.routers.RouterSet({0: moga.core.Router.from_weights(torch.randn(3, 256), torch.randn(3))},
                                     "wan", 256, 2)
    routers.save(str(router_path))
    damaged(router_path, True)
    model_path = models_dir / "diffusion_models" / "broken_model.safetensors"
    save_file(tm.wan_state_dict(), str(model_path))
    damaged(model_path, True)
    save_file(tm.wan_state_dict(), str(models_dir / "diffusion_models" / "plain.safetensors"))
    folder_paths.filename_list_cache.clear()

    def check(exc_info, path, expected):
        message = str(exc_info.value)
        assert str(path) in message and expected in message and "download or save it again" in message, message

    with pytest.raises(ValueError) as exc_info:
        moga.NODES["MoGALoadRouter"].execute(router_name="broken_router.safetensors")
    check(exc_info, router_path, "expected a MoGA router file")
    with pytest.raises(ValueError) as exc_info:
        moga.routers.RouterSet.load(str(router_path))
    check(exc_info, router_path, "expected a MoGA router file")
    options = dict(combine="router default", windows_h=2, windows_w=2, temporal_group=2, neighbor_frames=1,
                   frame_branch=True, balanced=False, start_percent=0.0, end_percent=1.0, dense_blocks="",
                   min_tokens=0, backend="auto", capacity=1.25, dense_if_slower=False, auto_groups=5,
                   second_group=False, grouping="random (balanced)")
    with pytest.raises(ValueError) as exc_info:
        moga.NODES["MoGALoadModel"].execute(unet_name="plain.safetensors", weight_dtype="default",
                                            router_name="broken_router.safetensors", **options)
    check(exc_info, router_path, "expected a MoGA router file")
    with pytest.raises(ValueError) as exc_info:
        moga.NODES["MoGALoadModel"].execute(unet_name="broken_model.safetensors", weight_dtype="default",
                                            router_name=moga.load_model.FILE_OR_GROUPING, **options)
    check(exc_info, model_path, "expected a Wan or HunyuanVideo diffusion model")
