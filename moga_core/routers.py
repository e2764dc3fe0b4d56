"""A model's set of MoGA routers (one per patched block) and its safetensors file format.

File: one entry per block, ``blocks.{i}.router.weight`` (M, C) and ``blocks.{i}.router.bias`` (M,), plus metadata
(all JSON strings): ``moga_format_version``, ``model_family``, ``hidden_size``, ``num_blocks``, ``num_groups``,
``combine`` ("mean" if trained with the model, "union" if calibrated), ``router_input``, ``source``
(calibrated | trained | converted), and optionally ``capacity`` (the routing bound these routers are meant to run
with: a number >= 1, or 0 for no bound; absent = the user's tool decides). Block indices are the model's block order; for HunyuanVideo the double
blocks come first, then the single blocks (index = num_double + j).

A *MoGA checkpoint* is a diffusion-model state dict with extra ``…blocks.{i}[.self_attn].router.{weight,bias}``
keys; `split_checkpoint` takes those out so the rest loads as the stock model.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field

import torch

from .config import COMBINE_MODES
from .router import Router

FORMAT_VERSION = 1
ROUTER_INPUT = "self_attn_input"  # the block's self-attention input: norm(x) after the timestep modulation
SOURCES = ("calibrated", "trained", "converted")
_KEY = re.compile(r"^(?:.*?\.)?(?:double_blocks|single_blocks|blocks)\.(\d+)\.(?:self_attn\.|attn\.)?router\.(weight|bias)$")
_FILE_KEY = re.compile(r"^blocks\.(\d+)\.router\.(weight|bias)$")


ROUTER_FILE = ("a MoGA router file (safetensors: blocks.N.router.weight/bias with moga_format_version metadata) or "
               "a MoGA checkpoint (a diffusion model with ...router.weight keys)")


def _safetensors_error() -> tuple[type, ...]:
    try:
        from safetensors import SafetensorError

        return (SafetensorError,)
    except ImportError:  # older safetensors: its Rust error under another path
        try:
            from safetensors._safetensors_rust import SafetensorError

            return (SafetensorError,)
        except ImportError:
            return ()


# what reading a damaged file raises: safetensors' own error (e.g. "Error while deserializing header: header too
# large"), and from readers that parse the header themselves struct / JSON / Unicode / key errors. Not OSError (a
# missing file is named by its own message) and not RuntimeError (out of memory is not a damaged file).
UNREADABLE_FILE_ERRORS = _safetensors_error() + (ValueError, KeyError, TypeError, EOFError, struct.error)


def unreadable_file(path: str, exc: BaseException, expected: str) -> ValueError:
    """The error for a file that cannot be read: names the file, says what was expected and what to do."""
    lines = str(exc).strip().splitlines()
    cause = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return ValueError(f"{path} cannot be read ({cause}); expected {expected}. The file is truncated, corrupt or not "
                      "a safetensors file (e.g. a web page saved under this name, or a .ckpt renamed): download or "
                      "save it again")


def read_safetensors(path: str, expected: str = ROUTER_FILE) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, raw metadata) of a safetensors file; a damaged file raises a ValueError that names it
    (`unreadable_file`)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except UNREADABLE_FILE_ERRORS as exc:
        raise unreadable_file(path, exc, expected) from exc


def read_safetensors_header(path: str, expected: str = ROUTER_FILE) -> tuple[list[str], dict[str, str]]:
    """(tensor names, raw metadata) of a safetensors file without reading its tensors; errors as `read_safetensors`."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys()), f.metadata() or {}
    except UNREADABLE_FILE_ERRORS as exc:
        raise unreadable_file(path, exc, expected) from exc


@dataclass
class RouterSet:
    """Routers of one model. ``routers[i]`` routes block ``i``; blocks without one stay dense."""

    routers: dict[int, Router]
    model_family: str
    hidden_size: int
    num_blocks: int
    combine: str = "union"  # how the routers are meant to be used: "union" (calibrated), "mean" (trained)
    source: str = "calibrated"
    router_input: str = ROUTER_INPUT
    extra: dict = field(default_factory=dict)
    # the routing capacity these routers are meant to run with (`MogaConfig.capacity`): None = the file names none,
    # 0 = no bound (e.g. routers trained with a balancing loss), else a number >= 1
    capacity: float | None = None

    def __post_init__(self) -> None:
        if not self.routers:
            raise ValueError("a RouterSet needs at least one router")
        sizes = {(r.num_groups, r.in_features) for r in self.routers.values()}
        if len(sizes) != 1:
            raise ValueError(f"all routers of a set must share (num_groups, width); got {sorted(sizes)}")
        m, c = next(iter(sizes))
        if c != self.hidden_size:
            raise ValueError(f"routers read width {c} but hidden_size is {self.hidden_size}")
        bad = [i for i in self.routers if not 0 <= i < self.num_blocks]
        if bad:
            raise ValueError(f"router block indices {bad} outside the model's {self.num_blocks} blocks")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {self.combine!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.capacity is not None:
            cap = self.capacity
            if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not (cap == 0 or cap >= 1.0):
                raise ValueError(f"capacity must be None (not named), 0 (no bound) or a number >= 1, got {cap!r}")
            self.capacity = float(cap)

    @property
    def num_groups(self) -> int:
        return next(iter(self.routers.values())).num_groups

    def metadata(self) -> dict[str, str]:
        meta = {
            "moga_format_version": FORMAT_VERSION,
            "model_family": self.model_family,
            "hidden_size": self.hidden_size,
            "num_blocks": self.num_blocks,
            "num_groups": self.num_groups,
            "combine": self.combine,
            "router_input": self.router_input,
            "source": self.source,
        }
        if self.capacity is not None:
            meta["capacity"] = self.capacity
        meta.update(self.extra)
        return {k: json.dumps(v) for k, v in meta.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = {}
        for i, r in sorted(self.routers.items()):
            sd[f"blocks.{i}.router.weight"] = r.weight.detach().float().cpu().contiguous()
            if r.bias is not None:
                sd[f"blocks.{i}.router.bias"] = r.bias.detach().float().cpu().contiguous()
        return sd

    def to_plain(self) -> dict:
        """Plain data (CPU float32 tensors, str metadata) that pickles without this package: ``{"state_dict":
        {blocks.{i}.router.weight (M, C), …}, "metadata": {name: JSON string}}`` — the file's content.
        `from_plain` reads it back."""
        return {"state_dict": self.state_dict(), "metadata": self.metadata()}

    @classmethod
    def from_plain(cls, data: dict, name: str = "router data") -> "RouterSet":
        """Inverse of `to_plain`."""
        if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict) or \
                not isinstance(data.get("metadata"), dict):
            raise ValueError(f"{name}: expected {{'state_dict': {{…}}, 'metadata': {{…}}}} (RouterSet.to_plain), "
                             f"got {type(data).__name__} with keys {sorted(data) if isinstance(data, dict) else []}")
        return cls.from_state_dict(data["state_dict"], _decode_metadata(data["metadata"]), name=name)

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        save_file(self.state_dict(), path, metadata=self.metadata())

    @classmethod
    def load(cls, path: str) -> "RouterSet":
        sd, raw_meta = read_safetensors(path, "a MoGA router file (safetensors: blocks.N.router.weight/bias with "
                                              "moga_format_version metadata)")
        if "moga_format_version" not in raw_meta:
            raise ValueError(f"{path} is not a MoGA router file (no 'moga_format_version' metadata); if it is a "
                             "diffusion model with router keys, load it as a MoGA checkpoint")
        return cls.from_state_dict(sd, _decode_metadata(raw_meta), name=path)

    @classmethod
    def from_state_dict(cls, sd: dict, meta: dict, name: str = "state dict") -> "RouterSet":
        weights: dict[int, dict] = {}
        for key, tensor in sd.items():
            m = _FILE_KEY.match(key)
            if not m:
                raise ValueError(f"{name}: unexpected key {key!r}; a router file holds blocks.{{i}}.router.weight/bias")
            weights.setdefault(int(m.group(1)), {})[m.group(2)] = tensor
        routers = {}
        for i, parts in weights.items():
            if "weight" not in parts:
                raise ValueError(f"{name}: block {i} has a router bias but no weight")
            routers[i] = Router.from_weights(parts["weight"], parts.get("bias"))
        try:
            version = int(meta.get("moga_format_version", FORMAT_VERSION))
            if version > FORMAT_VERSION:
                raise ValueError(f"{name} has router format version {version}; this pack reads up to "
                                 f"{FORMAT_VERSION} (update the pack)")
            known = {"moga_format_version", "model_family", "hidden_size", "num_blocks", "num_groups", "combine",
                     "router_input", "source", "capacity"}
            capacity = meta.get("capacity")
            if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, (int, float))):
                raise ValueError(f"{name}: metadata 'capacity' must be a number (0 = no bound, else >= 1), got "
                                 f"{capacity!r}")
            width = next(iter(routers.values())).in_features if routers else 0
            rs = cls(routers, str(meta.get("model_family", "unknown")), int(meta.get("hidden_size", width)),
                     int(meta.get("num_blocks", max(routers, default=-1) + 1)), str(meta.get("combine", "union")),
                     str(meta.get("source", "converted")), str(meta.get("router_input", ROUTER_INPUT)),
                     {k: v for k, v in meta.items() if k not in known}, capacity)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"{name}: malformed router metadata ({exc})") from None
        if "num_groups" in meta and int(meta["num_groups"]) != rs.num_groups:
            raise ValueError(f"{name}: metadata says num_groups = {meta['num_groups']} but the weights have "
                             f"{rs.num_groups} rows")
        return rs


def _decode_metadata(raw: dict) -> dict:
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def split_checkpoint(sd: dict, num_double_blocks: int | None = None) -> tuple[dict, dict[int, dict]]:
    """Split a MoGA checkpoint state dict -> (model state dict without router keys, {block: {weight, bias}}).

    HunyuanVideo-style ``single_blocks.{j}`` router keys map to block ``num_double_blocks + j``.
    """
    model_sd, routers = {}, {}
    for key, tensor in sd.items():
        m = _KEY.match(key)
        if m is None:
            model_sd[key] = tensor
            continue
        index = int(m.group(1))
        if ".single_blocks." in f".{key}":
            if num_double_blocks is None:
                raise ValueError(f"router key {key!r} names a single block; the number of double blocks is needed")
            index += num_double_blocks
        routers.setdefault(index, {})[m.group(2)] = tensor
    return model_sd, routers


def routers_from_split(parts: dict[int, dict], name: str) -> dict[int, Router]:
    out = {}
    for i, p in parts.items():
        if "weight" not in p:
            raise ValueError(f"{name}: block {i} has a router bias but no router weight")
        out[i] = Router.from_weights(p["weight"], p.get("bias"))
    return out
