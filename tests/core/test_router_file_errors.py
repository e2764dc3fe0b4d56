"""A damaged router file: the error names the file and what it should have been (safetensors alone says "Error while
deserializing header: header too large" and no name)."""

import pytest
import torch

from moga_core import Router
from moga_core.routers import RouterSet, read_safetensors_header


def saved(tmp_path):
    path = tmp_path / "routers.safetensors"
    RouterSet({0: Router.from_weights(torch.randn(4, 32), torch.randn(4))}, "wan", 32, 1).save(str(path))
    return path


@pytest.mark.parametrize("damage", [lambda b: b[:len(b) // 2], lambda b: b[:5], lambda b: b"",
                                    lambda b: b"<html><body>Not Found</body></html>" * 3],
                         ids=["truncated", "cut in the header", "empty", "a web page"])
def test_damaged_router_file_is_named(tmp_path, damage):
    path = saved(tmp_path)
    assert RouterSet.load(str(path)).num_groups == 4
    path.write_bytes(damage(path.read_bytes()))
    for read in (RouterSet.load, read_safetensors_header):
        with pytest.raises(ValueError) as exc_info:
            read(str(path))
        message = str(exc_info.value)
        assert str(path) in message and "expected a MoGA router file" in message, message
        assert "truncated, corrupt or not a safetensors file" in message


def test_a_missing_file_keeps_its_own_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        RouterSet.load(str(tmp_path / "nothing.safetensors"))
