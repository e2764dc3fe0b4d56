"""MoGA's options on a node: one table from which the inputs of MoGAApply and MoGALoadModel and `PatchOptions` derive.

`moga_core.config.MogaConfig` is the source of every attention option, its default and its valid values
(``COMBINE_MODES``, ``BACKENDS``); this file only says how each one is shown (widget, range, tooltip, advanced or
not). The options of *when and where* MoGA runs (start/end percent, dense blocks, min tokens) are not attention
options; their defaults are `PatchOptions`'s.

To surface a new `MogaConfig` field on the nodes: add one `Option` at the END of `OPTIONS` (``widgets_values`` in
saved workflows are positional, so existing inputs keep their order and ids), as ``capacity`` is.

`PACK_DEFAULTS`: where the pack's default differs from the library's (`MogaConfig` stays the paper's method:
unbounded groups), with the measurement that chose it.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from comfy_api.latest import io

from ..moga_core.config import BACKENDS, COMBINE_MODES, MogaConfig

ROUTER_DEFAULT = "router default"  # combine: what the router file says ("mean" if trained, "union" if calibrated)
COMBINE_CHOICES = [ROUTER_DEFAULT, *COMBINE_MODES]
_CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(MogaConfig)}
_ATTENTION_FIELDS = set(_CONFIG_FIELDS) - {"num_groups"}  # num_groups is the router's
# capacity 1.25: on an H200 (bench/results/h200_union_kernel.json, 187,200 tokens, M = 5, union, k-means routers)
# it ran 2.94x dense against 2.61x unbounded and 3.09x balanced, with error vs dense 0.061 (unbounded 0.057, balanced
# 0.072); and it keeps a router that does not fit the video (one group for most tokens) from making MoGA slower
# than dense. docs/PERFORMANCE.md has the table.
PACK_DEFAULTS = {"capacity": 1.25}
# the capacity input's "router default" (its default): the router file's capacity when it names one, else
# PACK_DEFAULTS' (files from calibration name none; a trained model's file may say 0 = no bound)
ROUTER_CAPACITY = -1.0
# how tokens are grouped when no router is connected (the `grouping` input): shown label -> PatchOptions value.
# "random": `moga_core.RandomGroups`, balanced and content-free; "kmeans": routers fitted to each video (auto_routers).
# Random is the default: in the study at length (docs/QUALITY.md, H200) it was the most faithful training-free
# grouping at every matched density (35.6 dB PSNR to the dense sample at density 0.35 against 22.3 dB for k-means on
# the video; attention error 0.10 vs 0.37), and it needs no dense capture step or fit.
GROUPINGS = {"random (balanced)": "random", "k-means on this video": "kmeans"}
_UNSET = object()  # an option value that leaves its field to the router file / the defaults


class PatchOptions:
    """What the user chose on the node.

    ``config``: the `MogaConfig` fields the user set (a field left out keeps MogaConfig's default; ``num_groups``
    always comes from the routers; ``combine`` left out or None takes the router file's own). The other attributes
    say when and where MoGA runs; their defaults are the ones the node shows. ``PatchOptions(start_percent=0,
    temporal_group=2)`` sets both kinds at once.
    """

    def __init__(self, start_percent: float = 0.2, end_percent: float = 1.0, dense_blocks: str = "",
                 min_tokens: int = 16384, dense_if_slower: bool = True, auto_groups: int = 5,
                 grouping: str = "random", **config: Any):
        # start_percent 0.2: a dense warm-up keeps the composition of stock models; min_tokens 16384: shorter
        # sequences stay dense, MoGA pays off on long videos
        unknown = sorted(set(config) - _ATTENTION_FIELDS)
        if unknown:
            raise ValueError(f"PatchOptions: unknown option(s) {unknown}; attention options are the fields of "
                             f"MogaConfig except num_groups: {sorted(_ATTENTION_FIELDS)}")
        self.config = {name: value for name, value in config.items() if not (name == "combine" and value is None)}
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self.dense_blocks = dense_blocks
        self.min_tokens = int(min_tokens)
        # a layer whose groups are too unequal for the sparse kernel to beat dense attention runs densely (union)
        self.dense_if_slower = bool(dense_if_slower)
        # groups of the routers fitted to each video when no router is given (5: the paper's M for 30 s videos)
        if isinstance(auto_groups, bool) or not isinstance(auto_groups, int) or auto_groups < 1:
            raise ValueError(f"auto_groups must be an int >= 1, got {auto_groups!r}")
        self.auto_groups = auto_groups
        # with no router: "random" (balanced random groups of auto_groups) or "kmeans" (fitted to each video)
        if grouping not in GROUPINGS.values():
            raise ValueError(f"grouping must be one of {sorted(GROUPINGS.values())}, got {grouping!r}")
        self.grouping = grouping
        if not (0.0 <= self.start_percent <= 1.0 and 0.0 <= self.end_percent <= 1.0) or \
                self.end_percent < self.start_percent:
            raise ValueError(f"end_percent ({end_percent}) must not be below start_percent ({start_percent}), and "
                             "both must lie in 0..1")
        self.moga_config(num_groups=1, router_combine=COMBINE_MODES[0])  # MogaConfig checks every value now

    def __repr__(self) -> str:
        return (f"PatchOptions(start_percent={self.start_percent}, end_percent={self.end_percent}, "
                f"dense_blocks={self.dense_blocks!r}, min_tokens={self.min_tokens}, "
                f"dense_if_slower={self.dense_if_slower}, auto_groups={self.auto_groups}, "
                f"grouping={self.grouping!r}, config={self.config})")

    def moga_config(self, num_groups: int, router_combine: str, router_capacity: float | None = None) -> MogaConfig:
        """The attention config for routers of ``num_groups`` groups whose file says ``router_combine`` and
        ``router_capacity`` (`RouterSet.capacity`: None = names none, 0 = no bound). Precedence: what the user set,
        then the router file, then `PACK_DEFAULTS`, then `MogaConfig`'s own defaults."""
        config = {"combine": router_combine, **PACK_DEFAULTS}
        if router_capacity is not None:
            config["capacity"] = None if router_capacity == 0 else float(router_capacity)
        config.update(self.config)
        config["num_groups"] = num_groups
        if config.get("balanced"):
            config["capacity"] = None  # balanced (older workflows) is capacity 1.0, whatever the capacity input says
        return MogaConfig(**config)


@dataclass(frozen=True)
class Option:
    """How one option is shown on the nodes.

    ``field``: the `MogaConfig` (or `PatchOptions`) field it sets; ``part``: which entry of a tuple field (the window
    counts); ``to_field``: node value -> field value (e.g. 0 -> None); ``default``: the node's default when the field's
    own cannot be shown as is (None: the field's default); ``optional``: an input added after the first release —
    optional, so that API-format prompts saved before it still run (a missing value takes ``legacy``, what such a
    prompt meant, else the default).
    """

    id: str
    widget: type
    tooltip: str
    field: str
    part: int | None = None
    advanced: bool = False
    default: Any = None
    to_field: Callable[[Any], Any] | None = None
    widget_args: dict = dataclasses.field(default_factory=dict)
    optional: bool = False
    # what a prompt saved before this input existed meant (None: the default): an old prompt keeps its behaviour
    legacy: Any = None

    def default_value(self) -> Any:
        if self.default is not None:
            return self.default
        source = _CONFIG_FIELDS.get(self.field) or _PATCH_FIELDS[self.field]
        value = source.default
        return value[self.part] if self.part is not None else value

    def input(self) -> io.Input:
        return self.widget.Input(self.id, default=self.default_value(), tooltip=self.tooltip,
                                 advanced=self.advanced or None, optional=self.optional, **self.widget_args)


# the defaults of the when-and-where options are PatchOptions'
_PATCH_FIELDS = {name: param for name, param in inspect.signature(PatchOptions.__init__).parameters.items()
                 if param.kind is param.POSITIONAL_OR_KEYWORD and name != "self"}


OPTIONS: list[Option] = [
    Option("combine", io.Combo, field="combine", default=ROUTER_DEFAULT,
           to_field=lambda v: None if v == ROUTER_DEFAULT else v, widget_args={"options": COMBINE_CHOICES},
           tooltip="How the group attention and the local windows combine. 'union': exact attention over group keys "
                   "plus local keys (for stock weights and calibrated routers). 'mean': the paper's average of "
                   "branches (only for MoGA-trained weights). 'router default' uses what the router file says."),
    Option("windows_h", io.Int, field="window", part=0, advanced=True, widget_args={"min": 0, "max": 64},
           tooltip="Spatial windows per latent frame along the height for the local branch (the paper: 2). 0 turns "
                   "the window branch off."),
    Option("windows_w", io.Int, field="window", part=1, advanced=True, widget_args={"min": 0, "max": 64},
           tooltip="Spatial windows per latent frame along the width (the paper: 2). 0 turns the window branch off."),
    Option("temporal_group", io.Int, field="temporal_group", advanced=True, widget_args={"min": 1, "max": 1024},
           tooltip="Latent frames per temporal group of the window branch; groups restart at every shot cut "
                   "(1 latent frame = 4 video frames)."),
    Option("neighbor_frames", io.Int, field="neighbor_frames", advanced=True, widget_args={"min": 0, "max": 64},
           tooltip="Latent frames of the adjacent shot that the first/last window of a shot also sees (keys only), "
                   "against flicker at cuts."),
    Option("frame_branch", io.Boolean, field="frame_branch", advanced=True,
           tooltip="Also attend to every token of the query's own latent frame."),
    Option("balanced", io.Boolean, field="balanced", advanced=True,
           tooltip="Force equal group sizes: the same as capacity 1.0 (and it wins over the capacity input). "
                   "Fastest, least faithful."),
    Option("start_percent", io.Float, field="start_percent", widget_args={"min": 0.0, "max": 1.0, "step": 0.01},
           tooltip="Sampling progress before which attention stays dense (a dense warm-up keeps the composition of "
                   "stock models; 0 = MoGA from the first step)."),
    Option("end_percent", io.Float, field="end_percent", widget_args={"min": 0.0, "max": 1.0, "step": 0.01},
           tooltip="Sampling progress after which attention is dense again (1 = MoGA to the end)."),
    Option("dense_blocks", io.String, field="dense_blocks",
           tooltip="Blocks that stay dense, e.g. '0,1,-1' or '0-2' (negative counts from the end; HunyuanVideo "
                   "numbers double blocks first, then single blocks)."),
    Option("min_tokens", io.Int, field="min_tokens", advanced=True, widget_args={"min": 0, "max": 1 << 24},
           tooltip="Sequences shorter than this stay dense (MoGA pays off on long videos; 32,760 tokens = 5 s of "
                   "480p Wan)."),
    Option("backend", io.Combo, field="backend", advanced=True, widget_args={"options": list(BACKENDS)},
           tooltip="Attention kernel for the grouped calls; 'auto' picks the fastest installed: 'flex' (one exact "
                   "block-sparse kernel, CUDA with Triton), else 'varlen' (see `python -m moga_core info`)."),
    # added after the first release: optional inputs (see Option.optional)
    Option("capacity", io.Float, field="capacity", default=ROUTER_CAPACITY, advanced=True, optional=True,
           to_field=lambda v: _UNSET if v < 0 else (None if v == 0 else v),
           widget_args={"min": ROUTER_CAPACITY, "max": 64.0, "step": 0.05},
           tooltip="No group takes more than capacity x (tokens / groups) tokens; a token over the bound goes to "
                   "its best group with room. Keeps a router that does not fit the video (one group for most "
                   f"tokens) from making MoGA slower than dense. 1 = equal groups; 0 = no bound; -1 = the router "
                   f"file's own capacity, or {PACK_DEFAULTS['capacity']} when it names none."),
    Option("dense_if_slower", io.Boolean, field="dense_if_slower", advanced=True, optional=True,
           tooltip="Union mode: a layer whose groups are so unequal that MoGA would not beat dense attention runs "
                   "densely instead (the run's summary counts it). Off = always sparse (for studies)."),
    Option("auto_groups", io.Int, field="auto_groups", optional=True, widget_args={"min": 1, "max": 256},
           tooltip="With no router connected: the number of groups M (see grouping). A token attends to about 1/M "
                   "of the far keys, so M sets the cost. A connected router wins and this is ignored."),
    Option("second_group", io.Boolean, field="second_group", advanced=True, optional=True,
           tooltip="Union mode: each token also attends to its second-best group (by router score), exactly "
                   "(each key once). More faithful, denser: about one more group's share of the keys per token. "
                   "The capacity bound applies to the first group only (the second moves no token)."),
    Option("grouping", io.Combo, field="grouping", default=next(iter(GROUPINGS)), optional=True,
           to_field=GROUPINGS.get, widget_args={"options": list(GROUPINGS)}, legacy="k-means on this video",
           tooltip="With no router connected: how tokens are grouped. 'random (balanced)': equal groups drawn at "
                   "random (seeded, one partition per block), so each token sees an even sample of the far keys; "
                   "no fitting, works from the first step. 'k-means on this video': routers fitted to the video "
                   "being made at the last dense step before start_percent (needs start_percent > 0). On stock "
                   "weights random was the more faithful of the two in the pack's study (docs/QUALITY.md). A "
                   "connected router wins and this is ignored."),
]


def option_inputs() -> list[io.Input]:
    """The V3 inputs of the options, in `OPTIONS` order (ids and order are stable: saved workflows rely on them)."""
    return [option.input() for option in OPTIONS]


def options_from_inputs(**values: Any) -> PatchOptions:
    """The node's option values (keyword per input id) -> `PatchOptions`; a bad value raises a `ValueError` that
    names the input."""
    missing = sorted({o.id for o in OPTIONS if not o.optional} - set(values))
    unknown = sorted(set(values) - {o.id for o in OPTIONS})
    if missing or unknown:
        raise ValueError(f"options: missing {missing}, unknown {unknown}")
    fields: dict[str, Any] = {}
    for option in OPTIONS:
        value = values.get(option.id)
        if value is None:  # an optional input a prompt saved before it existed does not carry
            value = option.legacy if option.legacy is not None else option.default_value()
        if option.widget is io.Combo and value not in option.widget_args["options"]:
            raise ValueError(f"{option.id} must be one of {option.widget_args['options']}, got {value!r}")
        if option.to_field is not None:
            value = option.to_field(value)
        if value is _UNSET:
            continue
        if option.part is not None:
            parts = fields.setdefault(option.field, [None, None])
            parts[option.part] = value
        else:
            fields[option.field] = value
    windows = fields.get("window")
    if windows is not None:
        if (windows[0] == 0) != (windows[1] == 0):
            raise ValueError(f"windows_h and windows_w must both be 0 (window branch off) or both >= 1; got "
                             f"{windows[0]} and {windows[1]}")
        fields["window"] = None if windows[0] == 0 else tuple(windows)
    return PatchOptions(**fields)
