"""MoGA Patch (Ray) without a Ray cluster: the node in ComfyUI, and its worker function in fresh worker processes.

- the node registers with MoGAApply's options and, without ray/raylight, says what to install;
- serialization: the function the node sends and its payload are pickled with cloudpickle (Ray's serializer) and run
  in a fresh process that has ComfyUI but not this pack on sys.path (tests/host/ray_worker_process.py), on a tiny
  real ComfyUI WanModel: the worker's model samples exactly as MoGAApply's patched model; an unpatched clone samples
  exactly as the original;
- sequence parallel (2 CPU processes, gloo): the same function with real xfuser process groups, raylight's USP
  injection replaced by a STAND-IN (see ray_worker_process.py's docstring: raylight's xdit attention does not
  construct on CPU here): the sequence-parallel MoGA run samples as MoGAApply on one process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import tiny_models as tm

pytestmark = pytest.mark.host

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "ray_worker_process.py")
M = 3
OPTIONS = dict(start_percent=0.0, min_tokens=0, temporal_group=2, dense_if_slower=False, combine="union")


def option_values(options_module, **chosen):
    values = {o.id: o.default_value() for o in options_module.OPTIONS}
    values.update(OPTIONS)
    values.update(chosen)
    return values


def routers(moga, model):
    adapter = moga.adapters.adapter_for(model)
    gen = torch.Generator().manual_seed(3)
    found = {key.index: moga.core.Router.from_weights(torch.randn(M, adapter.hidden_size, generator=gen) * 4,
                                                      torch.zeros(M)) for key in adapter.blocks()}
    return moga.routers.RouterSet(found, adapter.family, adapter.hidden_size, adapter.num_blocks)


@pytest.fixture(scope="module")
def ray_patch(moga):
    return importlib.import_module(f"{moga.name}.nodes.ray_patch")


@pytest.fixture(scope="module")
def options_module(moga):
    return importlib.import_module(f"{moga.name}.nodes.options")


def test_the_node_has_moga_apply_options_and_returns_the_actors(moga, options_module):
    info = moga.NODES["MoGAApplyRay"].GET_NODE_INFO_V1()
    apply_info = moga.NODES["MoGAApply"].GET_NODE_INFO_V1()
    assert info["display_name"] == "MoGA Patch (Ray)"
    assert info["input"]["required"]["ray_actors"][0] == "RAY_ACTORS"
    assert info["input"]["optional"]["router"][0] == "MOGA_ROUTER"
    option_ids = [o.id for o in options_module.OPTIONS]
    for section in ("required", "optional"):
        mine = [n for n in info["input_order"].get(section, []) if n in option_ids]
        assert mine == [n for n in apply_info["input_order"].get(section, []) if n in option_ids], section
    assert info["output"] == ["RAY_ACTORS"]


def test_without_ray_the_node_says_what_to_install(moga, options_module):
    if importlib.util.find_spec("ray") is not None and importlib.util.find_spec("raylight") is not None:
        pytest.skip("ray and raylight are installed here")
    node = moga.NODES["MoGAApplyRay"]
    values = option_values(options_module)
    with pytest.raises(RuntimeError) as err:
        node.execute(ray_actors={"workers": []}, router=None, **dict(values, start_percent=0.2))
    text = str(err.value)
    for needed in ("raylight", "github.com/komikndr/raylight", "ray>=", "xfuser"):
        assert needed in text, text
    # bad option values fail before ray is even looked for, with the input's name
    with pytest.raises(ValueError, match="combine must be one of"):
        node.execute(ray_actors={"workers": []}, **dict(values, combine="average"))
    # auto routers need a dense warm-up, as on MoGAApply; random groups have no second-best group
    with pytest.raises(ValueError, match="start_percent"):
        node.execute(ray_actors={"workers": []}, **dict(values, grouping="k-means on this video"))
    with pytest.raises(ValueError, match="random groups have no second-best group"):
        node.execute(ray_actors={"workers": []}, **dict(values, second_group=True))


def test_bad_ray_actors_are_a_clear_error(ray_patch):
    with pytest.raises(ValueError, match="RAY_ACTORS"):
        ray_patch.workers_of({"nodes": []})
    with pytest.raises(ValueError, match="RAY_ACTORS"):
        ray_patch.workers_of(None)
    assert ray_patch.workers_of({"workers": ["a", "b"]}) == ["a", "b"]


# ---------------------------------------------------------------------------------------------------------------
# the worker function in fresh processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_case(moga, ray_patch, options_module, folder, with_router: bool) -> dict:
    """A tiny Wan model, its conditioning, a router set (or none: the default random groups), the payload and the
    pickled (function, payload) in ``folder``."""
    cloudpickle = pytest.importorskip("cloudpickle")
    sd = tm.wan_state_dict()
    data = {"sd": sd, "pos": tm.wan_conditioning(seed=1), "neg": tm.wan_conditioning(seed=2),
            "latent": tm.video_latent(frames=5, height=14, width=18)}  # 5·7·9 = 315 tokens: odd, padded over 2
    torch.save(data, folder / "data.pt")
    model = tm.load(dict(sd))  # the loader empties the dict it is given
    rs = routers(moga, model) if with_router else None
    values = option_values(options_module) if with_router else option_values(options_module, auto_groups=M)
    payload = ray_patch.build_payload(rs, values, pack_rel=ray_patch.pack_relative_path())
    with open(folder / "fn.pkl", "wb") as f:
        cloudpickle.dump((ray_patch.worker_function(), payload), f)
    shutil.copy(SCRIPT, folder / "worker.py")  # run from outside the pack
    return dict(folder=folder, data=data, routers=rs, values=values, payload=payload)


@pytest.fixture(scope="module")
def case(moga, ray_patch, options_module, tmp_path_factory):
    return make_case(moga, ray_patch, options_module, tmp_path_factory.mktemp("ray_worker"), with_router=True)


@pytest.fixture(scope="module")
def random_case(moga, ray_patch, options_module, tmp_path_factory):
    """No router: the nodes' default grouping, random groups."""
    return make_case(moga, ray_patch, options_module, tmp_path_factory.mktemp("ray_worker_random"), with_router=False)


def run_workers(comfyui, case, mode, world=1, extra_path=None, timeout=600):
    folder = case["folder"]
    out = folder / f"out_{mode}"
    out.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    if extra_path:
        env["PYTHONPATH"] = extra_path
    port = _free_port()
    procs = []
    for rank in range(world):
        args = {"comfyui": str(comfyui), "data": str(folder / "data.pt"), "blob": str(folder / "fn.pkl"),
                "out": str(out), "mode": mode, "rank": rank, "world": world, "port": port}
        procs.append(subprocess.Popen([sys.executable, str(folder / "worker.py"), json.dumps(args)], cwd=str(folder),
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"worker {rank} failed ({p.returncode}):\n{log[-6000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def sample_reference(moga, case) -> dict:
    """MoGAApply's patched model and the unpatched model, sampled in this process."""
    from ray_worker_process import ksample

    data = case["data"]
    model = tm.load(dict(data["sd"]))
    patched = moga.NODES["MoGAApply"].execute(model=model, router=case["routers"], **case["values"]).args[0]
    return {"moga": ksample(patched, data["pos"], data["neg"], data["latent"]),
            "dense": ksample(model, data["pos"], data["neg"], data["latent"])}


@pytest.fixture(scope="module")
def reference(moga, case):
    return sample_reference(moga, case)


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_payload_is_plain_data(moga, case):
    blob = pickle.dumps(case["payload"])  # the standard pickler: no class of the pack can be inside
    assert moga.name.encode() not in blob and b"moga_core" not in blob


def test_worker_function_in_a_fresh_process_patches_as_moga_apply(comfyui, case, reference):
    (out,) = run_workers(comfyui, case, "single")
    assert len(out["pack_modules"]) == 1  # the pack was loaded by path, under its private name
    assert out["holder"] == f"{out['pack_modules'][0]}.nodes.patcher.MogaPatch", out["holder"]
    assert sum(out["stats"]["sparse_calls"].values()) > 0, out["stats"]
    assert rel_err(out["patched"], reference["moga"]) <= 1e-6, rel_err(out["patched"], reference["moga"])
    assert torch.equal(out["clone"], out["base"])  # the unpatched clone is the original, bit for bit
    assert torch.equal(out["base"], reference["dense"])
    assert rel_err(out["patched"], out["base"]) > 1e-3  # MoGA is in effect


def _xfuser_path():
    path = os.environ.get("MOGA_XFUSER_PATH")
    found = importlib.util.find_spec("xfuser") is not None
    if not found and not path:
        if os.environ.get("MOGA_REQUIRE_XFUSER") == "1":
            pytest.fail("MOGA_REQUIRE_XFUSER=1 but xfuser is not importable (see requirements-sp-test.txt)")
        pytest.skip("xfuser is not installed (pip install --no-deps -r requirements-sp-test.txt, or set "
                    "MOGA_XFUSER_PATH to a folder holding xfuser, yunchang, diffusers and distvae)")
    return path


def check_sequence_parallel_run(comfyui, case, reference):
    outs = run_workers(comfyui, case, "sp", world=2, extra_path=_xfuser_path())
    for rank, out in enumerate(outs):
        assert out["holder"].endswith("nodes.sequence_parallel.SequenceParallelMogaPatch"), out["holder"]
        stats = out["stats"]
        assert sum(stats["sparse_calls"].values()) > 0 and not stats["dense"], stats
        assert out["stand_in_loads"] >= 1  # the engine's ON_LOAD injection ran (our rewire runs after it)
    # the all-gathered output is the same on both ranks
    assert torch.equal(outs[0]["patched"], outs[1]["patched"])
    sp = outs[0]
    # harness check: the stand-in engine without MoGA samples as the unpatched model on one process
    assert rel_err(sp["clone"], reference["dense"]) <= 1e-5, rel_err(sp["clone"], reference["dense"])
    assert torch.equal(sp["clone"], sp["base"])
    # the claim: MoGA across 2 processes samples as MoGAApply on one
    err = rel_err(sp["patched"], reference["moga"])
    assert err <= 1e-5, err
    assert rel_err(sp["patched"], reference["dense"]) > 1e-3  # MoGA is in effect


def test_sequence_parallel_worker_samples_as_moga_apply(comfyui, case, reference):
    """2 gloo processes, real xfuser groups, STAND-IN for raylight's USP injection (module docstring)."""
    check_sequence_parallel_run(comfyui, case, reference)


def test_sequence_parallel_random_groups_sample_as_moga_apply(moga, comfyui, random_case):
    """No router, the default grouping: each rank routes its shard by the partition of the whole video (random
    groups as router scores), so 2 processes sample as MoGAApply's random groups on one."""
    check_sequence_parallel_run(comfyui, random_case, sample_reference(moga, random_case))


def test_what_sequence_parallel_does_not_support_yet_is_refused(moga, options_module):
    """HunyuanVideo, auto routers and second_group under sequence parallelism: clear errors, never a silent
    wrong run (the checks come before any collective, so no process group is needed here)."""
    sp = importlib.import_module(f"{moga.name}.nodes.sequence_parallel")
    hunyuan = tm.load(tm.hunyuan_state_dict())
    wan = tm.load(tm.wan_state_dict())
    options = options_module.options_from_inputs(**option_values(options_module))
    adapter = moga.adapters.adapter_for(hunyuan)
    with pytest.raises(ValueError, match="HunyuanVideo under raylight's sequence parallelism is not supported yet"):
        sp.SequenceParallelMogaPatch(adapter, routers(moga, hunyuan), options, None, 2)
    adapter = moga.adapters.adapter_for(wan)
    kmeans = options_module.options_from_inputs(**option_values(options_module, start_percent=0.2,
                                                                grouping="k-means on this video"))
    with pytest.raises(ValueError, match="auto routers .* not supported under sequence parallelism"):
        sp.SequenceParallelMogaPatch(adapter, None, kmeans, None, 2)
    second = options_module.options_from_inputs(**option_values(options_module, second_group=True))
    with pytest.raises(ValueError, match="second_group is not supported under sequence parallelism"):
        sp.SequenceParallelMogaPatch(adapter, routers(moga, wan), second, None, 2)


def test_the_rewire_wraps_only_an_engine_forward_and_only_once(moga):
    sp = importlib.import_module(f"{moga.name}.nodes.sequence_parallel")
    model = tm.load(tm.wan_state_dict()).model.diffusion_model
    assert sp.rewire_wan_self_attention(model) == 0  # the class's own forward: not sharded, left alone
    calls = []

    def engine_forward(self, x, freqs, transformer_options={}, **kwargs):
        calls.append(transformer_options)
        return x

    import types

    for block in model.blocks:
        block.self_attn.forward = types.MethodType(engine_forward, block.self_attn)
    assert sp.rewire_wan_self_attention(model) == len(model.blocks)
    assert sp.rewire_wan_self_attention(model) == 0  # idempotent: ours keeps the engine's forward it wraps
    x = torch.randn(1, 4, 256)
    assert model.blocks[0].self_attn(x, None, transformer_options={"moga_route": None}) is x  # delegated
    assert len(calls) == 1
