"""Host tests: run against a real ComfyUI checkout, in CPU mode, inside the pytest process.

ComfyUI is found at ``$COMFYUI_PATH``, else at ``<pack root>/../..`` (the pack installed as
``ComfyUI/custom_nodes/<pack>``).  Without one the tests that need it are skipped, unless
``MOGA_REQUIRE_COMFYUI=1`` is set, in which case they fail.
"""

import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_ROOT = os.path.dirname(TESTS_DIR)
for path in (PACK_ROOT, TESTS_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)

from devtools import workflow_graph as workflow_tools  # noqa: E402  (needs PACK_ROOT on sys.path)


@pytest.fixture(scope="session")
def comfyui():
    """Path of an initialised ComfyUI: on ``sys.path``, CPU mode, core and API nodes loaded."""
    try:
        path = workflow_tools.find_comfyui(PACK_ROOT)
    except workflow_tools.ComfyUINotFound as exc:
        if os.environ.get("MOGA_REQUIRE_COMFYUI") == "1":
            pytest.fail(f"MOGA_REQUIRE_COMFYUI=1 but {exc}", pytrace=False)
        pytest.skip(str(exc))
    workflow_tools.init_comfyui(path)
    return path


@pytest.fixture(scope="session")
def moga(comfyui, tmp_path_factory):
    """The pack, loaded by ComfyUI's own custom-node loader (as `custom_nodes/ComfyUI-MoGA`).

    Returns a namespace with the pack's modules (``moga.patcher``, ``moga.core`` …) and the node classes; the pack's
    nodes are registered in ComfyUI's NODE_CLASS_MAPPINGS.
    """
    import asyncio
    import importlib
    import types

    import nodes

    root = tmp_path_factory.mktemp("custom_nodes")
    link = root / "ComfyUI-MoGA"
    link.symlink_to(PACK_ROOT, target_is_directory=True)
    ok = asyncio.run(nodes.load_custom_node(str(link)))
    assert ok, "ComfyUI failed to load the pack (see the log above)"
    name = str(link).replace(".", "_x_")
    ns = types.SimpleNamespace(name=name, module=sys.modules[name])
    for attr, sub in (("core", "moga_core"), ("routers", "moga_core.routers"), ("patcher", "nodes.patcher"), ("wiring", "nodes.wiring"),
                      ("adapters", "nodes.adapters"), ("calibrate", "nodes.calibrate"),
                      ("load_model", "nodes.load_model"), ("router_files", "nodes.router_files")):
        setattr(ns, attr, importlib.import_module(f"{name}.{sub}"))
    ns.NODES = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("MoGA")}
    return ns


@pytest.fixture()
def models_dir(comfyui, tmp_path, monkeypatch):
    """A private models/ tree (diffusion_models, moga) for loader tests."""
    import folder_paths

    for sub in ("diffusion_models", "moga"):
        (tmp_path / sub).mkdir()
    saved = {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()}
    folder_paths.folder_names_and_paths["diffusion_models"] = ([str(tmp_path / "diffusion_models")],
                                                               folder_paths.supported_pt_extensions)
    folder_paths.folder_names_and_paths["moga"] = ([str(tmp_path / "moga")], {".safetensors"})
    folder_paths.filename_list_cache.clear()
    yield tmp_path
    folder_paths.folder_names_and_paths.clear()
    folder_paths.folder_names_and_paths.update(saved)
    folder_paths.filename_list_cache.clear()
