"""MoGA's options on the nodes: one table (nodes/options.py) over MogaConfig; stable ids; what the default view shows;
every module of the pack imports inside ComfyUI."""

from __future__ import annotations

from importlib import import_module

import pytest

pytestmark = pytest.mark.host

# saved workflows store widget values by position: these ids, in this order, must never change
OPTION_IDS = ["combine", "windows_h", "windows_w", "temporal_group", "neighbor_frames", "frame_branch", "balanced",
              "start_percent", "end_percent", "dense_blocks", "min_tokens", "backend", "capacity",
              "dense_if_slower", "auto_groups", "second_group", "grouping"]


@pytest.fixture(scope="module")
def options(moga):
    return import_module(f"{moga.name}.nodes.options")


def schema_inputs(node_class) -> dict:
    info = node_class.GET_NODE_INFO_V1()
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}, info["input_order"]


# added after the first release: optional, so that API-format prompts saved before them still run
LATER_IDS = ["capacity", "dense_if_slower", "auto_groups", "second_group", "grouping"]


def test_option_ids_and_order_are_stable(moga):
    for node_id in ("MoGAApply", "MoGALoadModel", "MoGAApplyRay"):
        _, order = schema_inputs(moga.NODES[node_id])
        # the frontend lays widgets out required first, then optional: the positions of saved widget values
        names = order["required"] + order.get("optional", [])
        assert [n for n in names if n in OPTION_IDS] == OPTION_IDS, node_id
        assert [n for n in order.get("optional", []) if n in OPTION_IDS] == LATER_IDS, node_id


def test_a_prompt_saved_before_the_later_options_still_runs(moga, options):
    """An API-format prompt from before `capacity` & co. carries none of them: the node takes their defaults."""
    values = {o.id: o.default_value() for o in options.OPTIONS if o.id not in LATER_IDS}
    patch = options.options_from_inputs(**values)
    full = options.options_from_inputs(**{o.id: o.default_value() for o in options.OPTIONS})
    assert patch.moga_config(3, "union") == full.moga_config(3, "union")
    assert (patch.dense_if_slower, patch.auto_groups) == (full.dense_if_slower, full.auto_groups)
    # grouping: what such a prompt meant (no router = routers fitted to each video); a new node: random groups
    assert (patch.grouping, full.grouping) == ("kmeans", "random")
    with pytest.raises(ValueError, match=r"missing \['backend'\]"):
        options.options_from_inputs(**{k: v for k, v in values.items() if k != "backend"})


def test_the_default_view_of_moga_apply_shows_what_a_user_decides(moga):
    inputs, _ = schema_inputs(moga.NODES["MoGAApply"])
    shown = {name for name, spec in inputs.items() if not (len(spec) > 1 and spec[1].get("advanced"))}
    assert shown == {"model", "router", "combine", "start_percent", "end_percent", "dense_blocks", "auto_groups",
                     "grouping", "shots"}
    assert "router" in moga.NODES["MoGAApply"].GET_NODE_INFO_V1()["input"]["optional"]  # empty: auto routers


def test_defaults_come_from_moga_config_and_patch_options(moga, options):
    inputs, _ = schema_inputs(moga.NODES["MoGAApply"])
    config = moga.core.MogaConfig()
    assert (inputs["windows_h"][1]["default"], inputs["windows_w"][1]["default"]) == config.window
    for name in ("temporal_group", "neighbor_frames", "frame_branch", "balanced", "backend", "second_group"):
        assert inputs[name][1]["default"] == getattr(config, name), name
    patch = options.PatchOptions()
    assert inputs["start_percent"][1]["default"] == patch.start_percent == 0.2
    assert inputs["min_tokens"][1]["default"] == patch.min_tokens
    assert inputs["auto_groups"][1]["default"] == patch.auto_groups == 5
    assert inputs["grouping"][1]["options"] == list(options.GROUPINGS) and patch.grouping == "random"
    assert options.GROUPINGS[inputs["grouping"][1]["default"]] == patch.grouping
    assert inputs["combine"][1]["options"] == ["router default", *moga.core.config.COMBINE_MODES]
    assert inputs["backend"][1]["options"] == list(moga.core.config.BACKENDS)


def test_node_values_become_the_config(moga, options):
    def moga_config_defaults(**fields):
        return moga.core.MogaConfig(**fields)

    values = {o.id: o.default_value() for o in options.OPTIONS}
    patch = options.options_from_inputs(**values)
    # the pack's own defaults where they differ from the library's (capacity), MogaConfig's everywhere else
    assert patch.moga_config(num_groups=3, router_combine="union") == \
        moga_config_defaults(num_groups=3, **options.PACK_DEFAULTS)
    # balanced (older workflows) wins over the capacity input; 0 means no bound
    assert options.options_from_inputs(**dict(values, balanced=True)).moga_config(3, "union").capacity == 1.0
    assert options.options_from_inputs(**dict(values, capacity=0.0)).moga_config(3, "union").capacity is None
    # capacity: the input's default (-1) takes the router file's capacity when it names one, else the pack's
    assert values["capacity"] == options.ROUTER_CAPACITY == -1.0
    assert patch.moga_config(3, "union", router_capacity=2.0).capacity == 2.0
    assert patch.moga_config(3, "union", router_capacity=0.0).capacity is None  # the file says: no bound
    assert patch.moga_config(3, "union", router_capacity=None).capacity == options.PACK_DEFAULTS["capacity"]
    chosen = options.options_from_inputs(**dict(values, capacity=1.5))  # what the user sets wins over the file
    assert chosen.moga_config(3, "union", router_capacity=2.0).capacity == 1.5
    assert options.options_from_inputs(**dict(values, capacity=0.0)).moga_config(3, "union", 2.0).capacity is None
    assert options.options_from_inputs(**dict(values, balanced=True)).moga_config(3, "union", 2.0).capacity == 1.0
    assert patch.moga_config(num_groups=3, router_combine="mean").combine == "mean"  # 'router default'
    chosen = options.options_from_inputs(**dict(values, combine="union", windows_h=0, windows_w=0, balanced=True))
    cfg = chosen.moga_config(num_groups=3, router_combine="mean")
    assert (cfg.combine, cfg.window, cfg.balanced, cfg.num_groups) == ("union", None, True, 3)
    with pytest.raises(ValueError, match="combine must be one of"):
        options.options_from_inputs(**dict(values, combine="average"))
    with pytest.raises(ValueError, match="unknown option"):
        options.PatchOptions(num_groups=4)
    with pytest.raises(ValueError, match="MogaConfig.temporal_group must be >= 1"):
        options.PatchOptions(temporal_group=0)


def test_calibration_seed_is_fixed_by_default(moga):
    inputs, _ = schema_inputs(moga.NODES["MoGACalibrateRouter"])
    assert inputs["seed"][1]["control_after_generate"] == "fixed"


def test_every_module_of_the_pack_imports_inside_comfyui(moga):
    """Each module on its own, as ComfyUI's loader sees the pack (the static cycle check: tests/core)."""
    import pkgutil
    import sys

    pack = sys.modules[moga.name]
    names = []
    for sub in ("nodes", "moga_core"):
        package = import_module(f"{moga.name}.{sub}")
        names += [info.name for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")]
    assert f"{moga.name}.nodes.wiring" in names and f"{moga.name}.nodes.adapters.hunyuan" in names
    for name in names:
        assert import_module(name).__name__ == name
    assert pack.comfy_entrypoint is not None


def test_the_grouping_default_is_what_docs_quality_recommends(moga, options):
    """docs/QUALITY.md's "Which mode to pick" (written by bench/quality_doc.py from the study's numbers) names the
    node defaults the numbers support; the nodes must have them."""
    import os
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                        "QUALITY.md")
    text = open(path, encoding="utf-8").read()
    found = re.search(r"\*\*Node defaults this supports\*\*: with no router connected, grouping `([^`]+)`, combine "
                      r"`union`, `second_group` (on|off)", text)
    assert found, "docs/QUALITY.md names no grouping default"
    inputs, _ = schema_inputs(moga.NODES["MoGAApply"])
    assert inputs["grouping"][1]["default"] == found.group(1)
    assert options.PatchOptions().grouping == options.GROUPINGS[found.group(1)]
    assert inputs["second_group"][1]["default"] is (found.group(2) == "on")
