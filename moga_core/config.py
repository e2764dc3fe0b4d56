"""The two value objects every MoGA call takes: where the tokens are (`VideoLayout`) and how to attend (`MogaConfig`).

Both are frozen dataclasses so they can key caches (the static local-attention plans are built once per layout).
They validate on construction and raise `ValueError` naming what was expected and what came.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

COMBINE_MODES = ("union", "mean")  # the valid values of MogaConfig.combine (and of a router file's)
BACKENDS = ("auto", "flex", "varlen", "flash_attn", "cudnn_varlen", "torch_varlen", "sdpa", "loop")


def _as_int_tuple(value, name: str, length: int | None = None) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of integers, got {value!r}") from None
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(items)}: {value!r}")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            # numpy / torch integer scalars are fine; floats are not (a fractional frame is a bug upstream)
            if hasattr(item, "__index__"):
                item = item.__index__()
            else:
                raise ValueError(f"{name} must hold integers, got {item!r} in {value!r}")
        out.append(int(item))
    return tuple(out)


@dataclass(frozen=True)
class VideoLayout:
    """Where the video tokens sit in the attention sequence.

    Sequence order (what the model feeds attention): ``prefix`` global tokens, then the video tokens in row-major
    ``(t, h, w)`` order over ``grid = (T, H, W)`` (latent frames × patch rows × patch columns), then ``suffix``
    global tokens. Global tokens (HunyuanVideo's text in joint attention, Wan's reference-latent tokens) attend to
    every token and are attended by every token.

    ``shots`` lists the first latent frame of each shot; it starts at 0, is strictly increasing and stays < T.
    Local attention never crosses a shot cut (except for ``MogaConfig.neighbor_frames`` in keys/values).
    """

    grid: tuple[int, int, int]
    shots: tuple[int, ...] = (0,)
    prefix: int = 0
    suffix: int = 0

    def __post_init__(self) -> None:
        grid = _as_int_tuple(self.grid, "VideoLayout.grid (T, H, W)", 3)
        if any(g < 1 for g in grid):
            raise ValueError(f"VideoLayout.grid must be three positive sizes (T, H, W), got {grid}")
        shots = _as_int_tuple(self.shots, "VideoLayout.shots")
        if len(shots) == 0:
            raise ValueError("VideoLayout.shots must list at least one shot start (use (0,) for a single shot)")
        if shots[0] != 0:
            raise ValueError(f"VideoLayout.shots must start at latent frame 0, got {shots}")
        for a, b in zip(shots, shots[1:]):
            if b <= a:
                raise ValueError(f"VideoLayout.shots must be strictly increasing, got {shots}")
        if shots[-1] >= grid[0]:
            raise ValueError(
                f"VideoLayout.shots must be latent frames inside the video (< T = {grid[0]}), got {shots}"
            )
        for name in ("prefix", "suffix"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"VideoLayout.{name} must be a non-negative int, got {value!r}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "shots", shots)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[1] * self.grid[2]

    @property
    def num_video_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def num_global_tokens(self) -> int:
        return self.prefix + self.suffix

    @property
    def num_tokens(self) -> int:
        return self.prefix + self.num_video_tokens + self.suffix

    def shot_ranges(self) -> list[tuple[int, int]]:
        """``[(first_frame, end_frame), ...]`` per shot, end exclusive."""
        ends = self.shots[1:] + (self.grid[0],)
        return list(zip(self.shots, ends))


@dataclass(frozen=True)
class MogaConfig:
    """How MoGA attends.

    - ``num_groups`` (M): the router's groups; attention runs inside each group.
    - ``window``: number of spatial windows per latent frame along (H, W) for the spatio-temporal local branch
      (the paper's 2×2 for Wan); ``None`` turns the window branch off. Rows/columns that do not divide evenly are
      split as evenly as possible (window ``i`` spans rows ``floor(i·H/n) .. floor((i+1)·H/n)``).
    - ``temporal_group``: latent frames per temporal group of the window branch; groups restart at every shot cut.
    - ``neighbor_frames``: latent frames of the adjacent shot appended to the keys/values (never the queries) of the
      first and last temporal group of a shot, same spatial window (the paper's fix for flicker after a cut).
    - ``frame_branch``: per-frame attention (all tokens of the query's latent frame).
    - ``combine``: ``"mean"`` = (p·O_group + O_window + O_frame) / n_branches (the paper; for MoGA-trained
      weights). ``"union"`` = exact softmax attention over the union of the group keys and the local keys, each key
      once (training-free use on stock weights; with M = 1 it is dense attention).
    - ``capacity``: routing bound: no group holds more than ``ceil(capacity · N / M)`` of a sample's N video
      tokens (a token over capacity goes to its best group with room); ``None`` = plain top-1, unbounded.
    - ``balanced``: ``True`` is ``capacity = 1.0`` (every group the same size ±1); kept so older callers work.
    - ``backend``: ``auto`` picks from what is installed (see ``python -m moga_core info``): ``flex`` = one exact
      block-sparse FlexAttention kernel for the router-dependent keys (CUDA + Triton); ``varlen`` = the
      variable-length paths (what ``auto`` picks without Triton); the others force one varlen kernel.
    - ``second_group`` (union mode only): each video query also attends to every key of its second group (the
      router's best-scoring group other than its own, `moga_core.router.second_choice`), each key once; the calls
      then take ``groups2`` (B, Nv) beside ``groups``. A query whose second group equals its first sees nothing
      more. The training-free fidelity lever: density rises by about one group's share per query.
    """

    num_groups: int = 5
    window: tuple[int, int] | None = (2, 2)
    temporal_group: int = 10
    neighbor_frames: int = 2
    frame_branch: bool = True
    # "union" by default: it is exact softmax attention on any weights (M = 1 is dense), so it is right for the
    # stock weights and calibrated routers this pack is used with; "mean" is right only for weights trained with
    # MoGA, whose router files say so (RouterSet.combine), and the nodes' "router default" follows the file.
    combine: str = "union"
    balanced: bool = False
    backend: str = "auto"
    capacity: float | None = None
    second_group: bool = False

    def __post_init__(self) -> None:
        m = self.num_groups
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"MogaConfig.num_groups must be an int >= 1, got {m!r}")
        if self.window is not None:
            window = _as_int_tuple(self.window, "MogaConfig.window (windows along H, W)", 2)
            if any(w < 1 for w in window):
                raise ValueError(f"MogaConfig.window must be two sizes >= 1 (or None), got {window}")
            object.__setattr__(self, "window", window)
        for name in ("temporal_group", "neighbor_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"MogaConfig.{name} must be an int, got {value!r}")
        if self.temporal_group < 1:
            raise ValueError(f"MogaConfig.temporal_group must be >= 1 latent frame, got {self.temporal_group}")
        if self.neighbor_frames < 0:
            raise ValueError(f"MogaConfig.neighbor_frames must be >= 0, got {self.neighbor_frames}")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"MogaConfig.combine must be one of {COMBINE_MODES}, got {self.combine!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"MogaConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        object.__setattr__(self, "frame_branch", bool(self.frame_branch))
        if not isinstance(self.second_group, bool):
            raise ValueError(f"MogaConfig.second_group must be a bool, got {self.second_group!r}")
        if self.second_group and self.combine != "union":
            # the mean of branches has no place for a second group branch; weights trained with MoGA never saw one
            raise ValueError(f"MogaConfig.second_group needs combine='union' (exact attention over the union of "
                             f"key sets), got combine={self.combine!r}")
        capacity = self.capacity
        if self.balanced:
            if capacity is not None and capacity != 1.0:
                raise ValueError(f"MogaConfig.balanced=True means capacity=1.0; got capacity={capacity!r} as well")
            capacity = 1.0
        if capacity is not None:
            if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not capacity >= 1.0:
                raise ValueError(f"MogaConfig.capacity must be a number >= 1.0 (or None for unbounded groups), "
                                 f"got {capacity!r}")
            capacity = float(capacity)
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "balanced", capacity == 1.0)

    @property
    def num_branches(self) -> int:
        return 1 + (self.window is not None) + bool(self.frame_branch)


_warned_rounding: set = set()


def check_config_for_layout(cfg: MogaConfig, layout: VideoLayout) -> None:
    """Validate the parts of ``cfg`` that depend on the grid; warn once about uneven window rounding."""
    _, h, w = layout.grid
    if cfg.num_groups > layout.num_video_tokens:
        raise ValueError(
            f"MogaConfig.num_groups = {cfg.num_groups} exceeds the {layout.num_video_tokens} video tokens of grid "
            f"{layout.grid}; expected 1 <= num_groups <= tokens"
        )
    if cfg.window is None:
        return
    nh, nw = cfg.window
    if nh > h or nw > w:
        raise ValueError(
            f"MogaConfig.window = {cfg.window} asks for more windows than the frame has rows/columns "
            f"(H = {h}, W = {w}); expected at most ({h}, {w})"
        )
    key = (cfg.window, h, w)
    if (h % nh or w % nw) and key not in _warned_rounding:
        _warned_rounding.add(key)
        rows = [((i + 1) * h) // nh - (i * h) // nh for i in range(nh)]
        cols = [((i + 1) * w) // nw - (i * w) // nw for i in range(nw)]
        warnings.warn(
            f"MoGA window {cfg.window} does not divide the {h}x{w} frame evenly; windows are rounded to "
            f"rows {rows} and columns {cols}",
            stacklevel=3,
        )
