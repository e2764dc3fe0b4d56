"""Layouts, configs and the static local structure, checked against hand-written expectations."""

import numpy as np
import pytest

from moga_core import MogaConfig, VideoLayout
from moga_core.config import _warned_rounding, check_config_for_layout
from moga_core.plan import build_local_plan, temporal_groups, window_of_rows_cols


def test_layout_counts():
    layout = VideoLayout(grid=(4, 3, 5), shots=(0, 2), prefix=7, suffix=2)
    assert layout.num_video_tokens == 60
    assert layout.num_tokens == 69
    assert layout.tokens_per_frame == 15
    assert layout.shot_ranges() == [(0, 2), (2, 4)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(grid=(0, 2, 2)), "three positive sizes"),
        (dict(grid=(2, 2)), "3 entries"),
        (dict(grid=(4, 2, 2), shots=()), "at least one shot"),
        (dict(grid=(4, 2, 2), shots=(1, 2)), "start at latent frame 0"),
        (dict(grid=(4, 2, 2), shots=(0, 2, 2)), "strictly increasing"),
        (dict(grid=(4, 2, 2), shots=(0, 3, 1)), "strictly increasing"),
        (dict(grid=(4, 2, 2), shots=(0, 4)), "inside the video"),
        (dict(grid=(4, 2, 2), shots=(0, 1.5)), "integers"),
        (dict(grid=(4, 2, 2), prefix=-1), "non-negative"),
    ],
)
def test_layout_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoLayout(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_groups=0), "num_groups must be an int >= 1"),
        (dict(num_groups=2.0), "num_groups must be an int >= 1"),
        (dict(window=(0, 2)), "sizes >= 1"),
        (dict(window=(2,)), "2 entries"),
        (dict(temporal_group=0), "temporal_group must be >= 1"),
        (dict(neighbor_frames=-1), "neighbor_frames must be >= 0"),
        (dict(combine="sum"), "combine must be one of"),
        (dict(backend="triton9"), "backend must be one of"),
    ],
)
def test_config_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MogaConfig(**kwargs)


def test_config_against_layout():
    layout = VideoLayout(grid=(2, 3, 4))
    with pytest.raises(ValueError, match="exceeds the 24 video tokens"):
        check_config_for_layout(MogaConfig(num_groups=25), layout)
    with pytest.raises(ValueError, match=r"more windows than the frame has rows/columns \(H = 3, W = 4\)"):
        check_config_for_layout(MogaConfig(window=(4, 2)), layout)
    _warned_rounding.clear()  # the warning is said once per (window, frame) per process
    with pytest.warns(UserWarning, match=r"rows \[1, 2\] and columns \[2, 2\]"):
        check_config_for_layout(MogaConfig(window=(2, 2)), layout)


def test_windows_split_rows_and_columns_evenly():
    win = window_of_rows_cols(5, 4, (2, 2))
    # rows split at floor(5/2) = 2: rows 0-1 -> window row 0, rows 2-4 -> window row 1
    expected = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3], [2, 2, 3, 3]])
    assert (win == expected).all()


def test_temporal_groups_restart_at_cuts_and_take_neighbours():
    layout = VideoLayout(grid=(12, 2, 2), shots=(0, 5, 7))
    groups = temporal_groups(layout, temporal_group=3, neighbor_frames=2)
    got = [(g.frames, g.neighbors) for g in groups]
    assert got == [
        ((0, 3), ()),  # shot 0, first chunk: no previous shot
        ((3, 5), (5, 6)),  # shot 0, last chunk: first 2 frames of shot 1
        ((5, 7), (3, 4, 7, 8)),  # shot 1 is one chunk: last 2 of shot 0 and first 2 of shot 2
        ((7, 10), (5, 6)),  # shot 2, first chunk: last 2 frames of shot 1
        ((10, 12), ()),  # last chunk of the last shot
    ]
    # neighbour frames never exceed the adjacent shot
    short = temporal_groups(VideoLayout(grid=(4, 1, 1), shots=(0, 1, 3)), temporal_group=4, neighbor_frames=3)
    assert [(g.frames, g.neighbors) for g in short] == [((0, 1), (1, 2)), ((1, 3), (0, 3)), ((3, 4), (1, 2))]


def test_window_plan_partitions_queries_and_adds_neighbour_keys():
    layout = VideoLayout(grid=(4, 2, 2), shots=(0, 2))
    cfg = MogaConfig(window=(1, 2), temporal_group=2, neighbor_frames=1)
    plan = build_local_plan(layout, cfg)
    # 2 temporal groups x 2 windows; each block: 2 frames x 2 tokens
    assert plan.w_q_counts.tolist() == [4, 4, 4, 4]
    assert sorted(plan.w_q_order.tolist()) == list(range(16))
    # keys: own 4 tokens + 1 neighbour frame x 2 tokens of the same window
    assert plan.w_k_counts.tolist() == [6, 6, 6, 6]
    first_block_keys = plan.w_k_index[:6].tolist()
    # frames 0,1 window 0 (column 0: tokens t*4 + {0, 2}) and neighbour frame 2, window 0
    assert first_block_keys == [0, 2, 4, 6, 8, 10]
