"""Bench-only custom node folder (no nodes): the VAE-width stand-in of tests/host/test_workflows.py, in a real server.

``comfy.sd.VAE`` hard-codes the widths of the Wan 2.2 VAE (160 / 256) and of the HunyuanVideo VAE (128), so the
narrow stand-in VAE files that bench/server/make_models.py writes (the tests' own state dicts, real key layout) only
load if those two constructors build the narrower width. The workflow tests do that with a monkeypatch
(``narrow_vae_constructors``); bench/server/run_workflows.py installs this folder as
``ComfyUI/custom_nodes/moga_standin_vae_width`` so the server process gets the same patch at start-up, imported from
the tests (not copied). Nothing else changes: the Wan 2.1 VAE reads its width from the file.
"""

from __future__ import annotations

import logging
import os
import sys

_HERE = os.path.dirname(os.path.realpath(__file__))
_PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))
for _path in (_PACK_ROOT, os.path.join(_PACK_ROOT, "tests", "host")):
    if _path not in sys.path:
        sys.path.append(_path)  # appended: ComfyUI's own top-level modules (nodes, utils ...) stay first

import pytest  # noqa: E402  (MonkeyPatch outside a test: never undone in this process)

import test_workflows  # noqa: E402

_PATCH = pytest.MonkeyPatch()
test_workflows.narrow_vae_constructors(_PATCH)
logging.info("MoGA server bench: Wan 2.2 VAE built at width %d, HunyuanVideo VAE at %d (stand-in VAE files)",
             test_workflows.WAN22_VAE_DIM, test_workflows.HV_VAE_CH)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
