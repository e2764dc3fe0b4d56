"""The router file format and MoGA-checkpoint splitting (plain safetensors, no ComfyUI)."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moga_core import Router
from moga_core.routers import RouterSet, split_checkpoint


def make_set(m=3, width=16, blocks=(0, 2), num_blocks=4, **kw):
    gen = torch.Generator().manual_seed(0)
    routers = {i: Router.from_weights(torch.randn(m, width, generator=gen), torch.randn(m, generator=gen))
               for i in blocks}
    return RouterSet(routers, "wan", width, num_blocks, **kw)


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    rs = make_set(combine="mean", source="trained")
    path = str(tmp_path / "r.safetensors")
    rs.save(path)
    with safe_open(path, framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
        assert sorted(f.keys()) == ["blocks.0.router.bias", "blocks.0.router.weight", "blocks.2.router.bias",
                                    "blocks.2.router.weight"]
    assert meta == {"moga_format_version": 1, "model_family": "wan", "hidden_size": 16, "num_blocks": 4,
                    "num_groups": 3, "combine": "mean", "router_input": "self_attn_input", "source": "trained"}
    back = RouterSet.load(path)
    assert (back.model_family, back.hidden_size, back.num_blocks, back.combine, back.source) == \
        ("wan", 16, 4, "mean", "trained")
    for i in (0, 2):
        assert torch.equal(back.routers[i].weight, rs.routers[i].weight)
        assert torch.equal(back.routers[i].bias, rs.routers[i].bias)


def test_plain_data_round_trip_pickles_without_the_package():
    """What the Ray node sends to workers: plain tensors and strings only (pickled, no moga_core class inside)."""
    import pickle

    rs = make_set(combine="mean", source="trained", extra={"note": "x"})
    data = pickle.loads(pickle.dumps(rs.to_plain()))
    assert b"moga_core" not in pickle.dumps(data)
    back = RouterSet.from_plain(data)
    assert (back.model_family, back.num_blocks, back.combine, back.source, back.extra) == \
        ("wan", 4, "mean", "trained", {"note": "x"})
    for i in (0, 2):
        assert torch.equal(back.routers[i].weight, rs.routers[i].weight)
        assert torch.equal(back.routers[i].bias, rs.routers[i].bias)
    with pytest.raises(ValueError, match="RouterSet.to_plain"):
        RouterSet.from_plain({"state_dict": {}})


def test_bad_files_and_sets_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="share"):
        RouterSet({0: Router(16, 3), 1: Router(16, 4)}, "wan", 16, 2)
    with pytest.raises(ValueError, match="read width 16 but hidden_size is 32"):
        RouterSet({0: Router(16, 3)}, "wan", 32, 2)
    with pytest.raises(ValueError, match=r"indices \[5\] outside the model's 2 blocks"):
        RouterSet({5: Router(16, 3)}, "wan", 16, 2)
    plain = str(tmp_path / "plain.safetensors")
    save_file({"blocks.0.router.weight": torch.zeros(3, 16)}, plain)
    with pytest.raises(ValueError, match="not a MoGA router file"):
        RouterSet.load(plain)
    future = str(tmp_path / "future.safetensors")
    save_file({"blocks.0.router.weight": torch.zeros(3, 16)}, future,
              metadata={"moga_format_version": "9", "num_groups": "3"})
    with pytest.raises(ValueError, match="format version 9"):
        RouterSet.load(future)
    lying = str(tmp_path / "lying.safetensors")
    save_file({"blocks.0.router.weight": torch.zeros(3, 16)}, lying,
              metadata={"moga_format_version": "1", "num_groups": "5"})
    with pytest.raises(ValueError, match="num_groups = 5 but the weights have 3"):
        RouterSet.load(lying)
    stray = str(tmp_path / "stray.safetensors")
    save_file({"blocks.0.router.weight": torch.zeros(3, 16), "oops": torch.zeros(1)}, stray,
              metadata={"moga_format_version": "1"})
    with pytest.raises(ValueError, match="unexpected key 'oops'"):
        RouterSet.load(stray)


def test_capacity_in_the_file(tmp_path):
    """A file may name the capacity its routers are meant to run with (0 = no bound); absent, it names none."""
    path = str(tmp_path / "r.safetensors")
    make_set().save(path)
    with safe_open(path, framework="pt") as f:
        assert "capacity" not in f.metadata()
    assert RouterSet.load(path).capacity is None
    for capacity in (0, 1.0, 2.5):
        make_set(capacity=capacity).save(path)
        back = RouterSet.load(path)
        assert back.capacity == float(capacity) and back.extra == {}
        assert RouterSet.from_plain(make_set(capacity=capacity).to_plain()).capacity == float(capacity)
    for bad in (0.5, -1, "1.25", True):
        with pytest.raises(ValueError, match="capacity must be None"):
            make_set(capacity=bad)
    save_file({"blocks.0.router.weight": torch.zeros(3, 16)}, path,
              metadata={"moga_format_version": "1", "capacity": json.dumps("lots")})
    with pytest.raises(ValueError, match="metadata 'capacity' must be a number"):
        RouterSet.load(path)
    save_file({"blocks.0.router.weight": torch.zeros(3, 16)}, path,
              metadata={"moga_format_version": "1", "capacity": "0.5"})
    with pytest.raises(ValueError, match="capacity must be None"):
        RouterSet.load(path)


def test_split_checkpoint_takes_router_keys_out():
    sd = {
        "double_blocks.0.img_attn.qkv.weight": torch.zeros(1),
        "double_blocks.1.router.weight": torch.ones(2, 4),
        "single_blocks.0.router.weight": torch.full((2, 4), 2.0),
        "single_blocks.0.router.bias": torch.zeros(2),
        "blocks.3.self_attn.router.weight": torch.full((2, 4), 3.0),
    }
    model_sd, routers = split_checkpoint(sd, num_double_blocks=2)
    assert list(model_sd) == ["double_blocks.0.img_attn.qkv.weight"]
    assert sorted(routers) == [1, 2, 3]
    assert torch.equal(routers[2]["weight"], sd["single_blocks.0.router.weight"])
    assert set(routers[2]) == {"weight", "bias"}
    with pytest.raises(ValueError, match="number of double blocks is needed"):
        split_checkpoint({"single_blocks.0.router.weight": torch.zeros(1)})
