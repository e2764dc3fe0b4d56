"""Test-wide setup: the pack root on sys.path, and the `cuda` marker skipped where no GPU is present."""

import os
import sys

import pytest

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(PACK_ROOT, "tests")
for path in (PACK_ROOT, TESTS_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (on a machine with one: python -m pytest -m cuda tests)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
