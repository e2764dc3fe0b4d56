"""Builds the example workflows in workflows/: UI-format graphs exactly as ComfyUI's frontend (1.42) saves them.

    COMFYUI_PATH=/path/to/ComfyUI python3 -m devtools.build_workflows      # from the pack root

Each workflow below is a short function that places nodes on a grid (``(x, None)``: below what is already in that
column), wires them and sets the widgets that differ from the node's defaults. Input slots and ``widgets_values``
are laid out from the live node schemas of the ComfyUI it runs against (the same data as ``/object_info``), in the
frontend's order: sockets, then one slot per widget; the ``control_after_generate`` value after every seed; the
upload button of Load Image (the widget layout is `devtools.workflow_graph.widget_layout`, which the tests' UI -> API
conversion reads back). So they are right by construction, and frontend 1.42.11, loading these files and
saving them again, writes the same nodes, links and groups back. ``tests/host/test_workflows.py`` checks that the
committed JSON files equal this script's output and executes every one of them in ComfyUI's own executor.

Model files are the ones of ComfyUI's repackaged releases (the names the official templates use); the note on each
canvas says where to download them and which folder they go in.

The Wan 2.2 S2V workflow uses ComfyUI's audio nodes (Load Audio, Audio Encoder Loader / Encode), which ComfyUI only
has where torchaudio is installed (`TORCHAUDIO_NODE_TYPES`); on a ComfyUI without them the script leaves that file
as it is and says so. To write every file, run it on ComfyUI v0.19.3 with a Python that has torchaudio, e.g.

    COMFYUI_PATH=/tmp/moga-ci-host/ComfyUI /tmp/moga-ci-host-2/venv/bin/python -m devtools.build_workflows
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PACK_ROOT not in sys.path:  # run as a script
    sys.path.insert(0, PACK_ROOT)

from devtools import workflow_graph as wg  # noqa: E402

WORKFLOWS_DIR = os.path.join(PACK_ROOT, "workflows")
FRONTEND_VERSION = "1.42.11"
COMFY_CORE_VERSION = "0.19.3"
PACK_ID = "comfyui-moga"

# ---------------------------------------------------------------------------------------------------------------
# model files (ComfyUI's repackaged releases)

_WAN21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
_WAN22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
_HV = "https://huggingface.co/Comfy-Org/HunyuanVideo_repackaged/resolve/main/split_files"
_FLUX_TE = "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main"

#: file name -> (models/ folder, download url)
MODEL_FILES: dict[str, tuple[str, str]] = {
    name: (folder, f"{repo}/{folder}/{name}" if repo != _FLUX_TE else f"{repo}/{name}")
    for repo, folder, name in [
        (_WAN21, "diffusion_models", "wan2.1_t2v_1.3B_fp16.safetensors"),
        (_WAN21, "diffusion_models", "wan2.1_t2v_14B_fp8_scaled.safetensors"),
        (_WAN21, "diffusion_models", "wan2.1_i2v_480p_14B_fp16.safetensors"),
        (_WAN21, "text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
        (_WAN21, "vae", "wan_2.1_vae.safetensors"),
        (_WAN21, "clip_vision", "clip_vision_h.safetensors"),
        (_WAN22, "diffusion_models", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"),
        (_WAN22, "diffusion_models", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
        (_WAN22, "diffusion_models", "wan2.2_ti2v_5B_fp16.safetensors"),
        (_WAN22, "diffusion_models", "wan2.2_animate_14B_bf16.safetensors"),
        (_WAN22, "diffusion_models", "wan2.2_s2v_14B_fp8_scaled.safetensors"),
        (_WAN22, "audio_encoders", "wav2vec2_large_english_fp16.safetensors"),
        (_WAN22, "vae", "wan2.2_vae.safetensors"),
        (_HV, "diffusion_models", "hunyuan_video_t2v_720p_bf16.safetensors"),
        (_HV, "text_encoders", "llava_llama3_fp8_scaled.safetensors"),
        (_FLUX_TE, "text_encoders", "clip_l.safetensors"),
        (_HV, "vae", "hunyuan_video_vae_bf16.safetensors"),
    ]
}
MODEL_FILES.update({  # files outside the repackaged releases' split_files layout (the official templates' links)
    "kandinsky5lite_t2v_sft_5s.safetensors": (
        "diffusion_models", "https://huggingface.co/kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s/resolve/main/model/"
                            "kandinsky5lite_t2v_sft_5s.safetensors"),
    "qwen_2.5_vl_7b_fp8_scaled.safetensors": (
        "text_encoders", "https://huggingface.co/Comfy-Org/HunyuanVideo_1.5_repackaged/resolve/main/split_files/"
                         "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors"),
})

# routers written by moga_calibrate_router.json (MoGA Save Router numbers its files: <name>_00001.safetensors)
CALIBRATED_ROUTER_PREFIX = "wan2.1_t2v_1.3B_calibrated"
CALIBRATED_ROUTER = f"{CALIBRATED_ROUTER_PREFIX}_00001.safetensors"
START_IMAGE = "moga_first_frame.png"
# Wan 2.2 Animate's inputs: the character image, and the pose and face videos made from the driving video
ANIMATE_CHARACTER = "moga_animate_character.png"
ANIMATE_POSE_VIDEO = "moga_animate_pose.mp4"
ANIMATE_FACE_VIDEO = "moga_animate_face.mp4"
# Wan 2.2 S2V's inputs: the reference image and the speech (or song) the video follows
S2V_REFERENCE = "moga_s2v_reference.png"
S2V_AUDIO = "moga_s2v_speech.wav"

#: core nodes that ComfyUI only has where torchaudio imports (comfy_extras/nodes_audio.py and
#: nodes_audio_encoder.py import it at the top); a workflow using them is built and run only on such a ComfyUI
TORCHAUDIO_NODE_TYPES = frozenset({"LoadAudio", "AudioEncoderLoader", "AudioEncoderEncode"})

WAN_NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
                "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
                "杂乱的背景，三条腿，背景人很多，倒着走")
CALIBRATION_PROMPT = ("A busy city street at golden hour, people walking past shop windows, a cyclist crossing, a dog "
                      "on a leash, trees moving in the wind, the camera slowly pans right")

POSITIVE_COLORS = {"color": "#232", "bgcolor": "#353"}
NEGATIVE_COLORS = {"color": "#322", "bgcolor": "#533"}
MOGA_COLORS = {"color": "#223", "bgcolor": "#335"}
NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}

# ---------------------------------------------------------------------------------------------------------------
# the graph model: nodes, links, groups -> the frontend's JSON


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[float, float]
    widgets: dict[str, Any]
    title: str | None = None
    size: tuple[float, float] | None = None
    mode: int = 0
    colors: dict = field(default_factory=dict)
    control: str = "randomize"  # control_after_generate of the node's seed widget
    text: str | None = None  # notes


@dataclass
class Link:
    id: int
    src: Node
    output: int | str
    dst: Node
    input: str


class Graph:
    """A litegraph graph under construction. ``node()`` places a node, ``link()`` wires an output to an input."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[Node] = []
        self.links: list[Link] = []
        self.groups: list[tuple[str, list[Node], str]] = []

    def node(self, type_: str, pos, title=None, size=None, mode=0, colors=None, control="randomize",
             **widgets) -> Node:
        node = Node(len(self.nodes) + 1, type_, tuple(pos), widgets, title, size, mode, dict(colors or {}), control)
        self.nodes.append(node)
        return node

    def note(self, text: str, pos, size, title=None, markdown=True) -> Node:
        """A (Markdown) note; ``size`` (width, None) makes it as tall as its text needs."""
        width, height = size
        if height is None:
            per_line = int(width / 5.5)  # characters per line in the note's font
            lines = sum(max(1, -(-len(line) // per_line)) for line in text.splitlines())
            height = 60 + 12 * lines
        node = self.node("MarkdownNote" if markdown else "Note", pos, title=title, size=(width, height),
                         colors=NOTE_COLORS)
        node.text = text
        return node

    def link(self, src: Node, output: int | str, dst: Node, input_: str) -> None:
        self.links.append(Link(len(self.links) + 1, src, output, dst, input_))

    def wire(self, dst: Node, **sources: Node) -> None:
        """Link output 0 of each source to the input of ``dst`` named by its keyword, in the order given."""
        for input_, src in sources.items():
            self.link(src, 0, dst, input_)

    def group(self, title: str, nodes: list[Node], color: str = "#3f789e") -> None:
        self.groups.append((title, nodes, color))

    # ---- layout
    def _place(self, sizes: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
        """Positions; a node given ``(x, None)`` goes below the nodes already placed that share its columns."""
        group_of = {}
        for i, (_title, members, _color) in enumerate(self.groups):
            for member in members:
                group_of.setdefault(member.id, i)
        placed: dict[int, tuple[float, float]] = {}
        for node in self.nodes:
            x, y = node.pos
            w = sizes[node.id][0]
            if y is None:
                y = 0
                for other_id, (ox, oy) in placed.items():
                    if ox < x + w and x < ox + sizes[other_id][0]:
                        same = group_of.get(other_id) == group_of.get(node.id)
                        y = max(y, oy + sizes[other_id][1] + (60 if same else 130))
            placed[node.id] = (x, y)
        return placed

    # ---- serialisation
    def to_json(self, schemas: dict) -> dict:
        layouts = {n.id: _NodeLayout(n, schemas) for n in self.nodes if n.text is None}
        sizes = {n.id: tuple(n.size or layouts[n.id].default_size()) for n in self.nodes}
        positions = self._place(sizes)
        in_links: dict[int, list[tuple[Link, int]]] = {n.id: [] for n in self.nodes}
        out_links: dict[tuple[int, int], list[int]] = {}
        link_rows = []
        for link in self.links:  # [id, origin, origin slot, target, target slot, type], as litegraph saves links
            src, dst = layouts[link.src.id], layouts[link.dst.id]
            out_slot, out_type = src.output_slot(link.output)
            dst.connect(link.input, link.id)
            out_links.setdefault((link.src.id, out_slot), []).append(link.id)
            in_links[link.dst.id].append((link, out_slot))
            link_rows.append([link.id, link.src.id, out_slot, link.dst.id, dst.slot_of(link.input), out_type])
        order = _execution_order(self.nodes, in_links)
        nodes = []
        for node in self.nodes:
            entry: dict[str, Any] = {"id": node.id, "type": node.type, "pos": list(positions[node.id])}
            if node.text is not None:
                entry.update(size=list(sizes[node.id]), flags={}, order=order[node.id], mode=0, inputs=[],
                             outputs=[])
                if node.title:
                    entry["title"] = node.title
                entry.update(properties={}, widgets_values=[node.text])
            else:
                layout = layouts[node.id]
                entry.update(size=list(sizes[node.id]), flags={}, order=order[node.id],
                             mode=node.mode, inputs=layout.inputs_json(), outputs=layout.outputs_json(out_links))
                if node.title and node.title != layout.info.get("display_name"):  # the frontend omits the default
                    entry["title"] = node.title
                entry.update(properties=layout.properties(), widgets_values=layout.widgets_values())
            entry.update(node.colors)
            nodes.append(entry)
        groups = []
        for i, (title, members, color) in enumerate(self.groups, start=1):
            x0 = min(positions[n.id][0] for n in members) - 10
            y0 = min(positions[n.id][1] for n in members) - 80
            x1 = max(positions[n.id][0] + sizes[n.id][0] for n in members) + 10
            y1 = max(positions[n.id][1] + sizes[n.id][1] for n in members) + 10
            groups.append({"id": i, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": color,
                           "font_size": 24, "flags": {}})
        min_x = min(p[0] for p in positions.values())
        min_y = min(p[1] for p in positions.values())
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/moga-comfyui/ComfyUI-MoGA/{self.name}")),
            "revision": 0,
            "last_node_id": max(n.id for n in self.nodes),
            "last_link_id": max((link.id for link in self.links), default=0),
            "nodes": nodes,
            "links": link_rows,
            "groups": groups,
            "config": {},
            "extra": {"ds": {"scale": 0.7, "offset": [-min_x + 90, -min_y + 180]},
                      "frontendVersion": FRONTEND_VERSION, "workflowRendererVersion": "LG"},
            "version": 0.4,
        }


class _NodeLayout:
    """One node's input slots and widgets, from its schema, as the frontend (1.42) lays them out and saves them.

    ``inputs`` holds the sockets first (schema order, optional ones with ``shape`` 7), then one slot per widget
    (``widget: {name}``; a widget converted to an input is linked there), and the image-upload button of media
    loaders. Links address these slots by index. ``widgets`` is `workflow_graph.widget_layout`'s list.
    """

    def __init__(self, node: Node, schemas: dict):
        if node.type not in schemas:
            raise KeyError(f"{node.type} is not a node of this ComfyUI (is the pack loaded?)")
        self.node, self.info = node, schemas[node.type]
        sections = self.info.get("input") or {}
        self.widgets = wg.widget_layout(self.info, {"inputs": []}, lambda _pos, name: node.widgets.get(name),
                                        wg.LayoutVariant())
        values = {slot.name for slot in self.widgets if slot.kind == "value"}
        sockets: list[dict] = []
        widget_slots: list[dict] = []
        optional = set(sections.get("optional") or {})
        for name, spec, _ in wg.ordered_inputs(sections, self.info.get("input_order")):
            slot = {"localized_name": name, "name": name}
            if name in optional:
                slot["shape"] = 7
            slot["type"] = wg.spec_type(spec)
            if name in values:
                slot["widget"] = {"name": name}
            slot["link"] = None
            (widget_slots if name in values else sockets).append(slot)
        # the frontend's audio loaders (Comfy.AudioWidget, Comfy.UploadAudio) add an "audioUI" player and an
        # "upload" button, both saved as null; media loaders (image, video) an "upload" button saved as "image"
        self.audio_upload = bool(wg.spec_options((sections.get("required") or {}).get("audio")).get("audio_upload"))
        for slot in self.widgets:
            if slot.kind == "ui" and slot.name == "upload" and self.audio_upload:
                widget_slots.append({"localized_name": "audioUI", "name": "audioUI", "type": "AUDIO_UI",
                                     "widget": {"name": "audioUI"}, "link": None})
                widget_slots.append({"localized_name": "choose file to upload", "name": "upload",
                                     "type": "AUDIOUPLOAD", "widget": {"name": "upload"}, "link": None})
            elif slot.kind == "ui" and slot.name == "upload":
                widget_slots.append({"localized_name": "choose file to upload", "name": "upload",
                                     "type": "IMAGEUPLOAD", "widget": {"name": "upload"}, "link": None})
        self.slots = sockets + widget_slots
        unknown = set(node.widgets) - values
        if unknown:
            raise KeyError(f"{node.type} has no widget(s) {sorted(unknown)}; widgets: {sorted(values)}")

    def output_slot(self, output: int | str) -> tuple[int, str]:
        names, types = self.info["output_name"], self.info["output"]
        slot = output if isinstance(output, int) else names.index(output)
        return slot, types[slot]

    def connect(self, name: str, link_id: int) -> None:
        slot = self.slots[self.slot_of(name)]
        if slot["link"] is not None:
            raise ValueError(f"{self.node.type}.{name} is linked twice")
        slot["link"] = link_id

    def slot_of(self, name: str) -> int:
        for i, slot in enumerate(self.slots):
            if slot["name"] == name:
                return i
        raise KeyError(f"{self.node.type} has no input {name!r}")

    def inputs_json(self) -> list[dict]:
        return [dict(s) for s in self.slots]

    def outputs_json(self, out_links) -> list[dict]:
        outs = []
        for slot, (name, typ) in enumerate(zip(self.info["output_name"], self.info["output"])):
            outs.append({"localized_name": name, "name": name, "type": typ,
                         "links": out_links.get((self.node.id, slot)) or None})
        return outs

    def widgets_values(self) -> list:
        values = []
        for slot in self.widgets:
            if slot.kind == "control":
                values.append(self.node.control)
            elif slot.kind == "ui" and slot.name == "upload" and self.audio_upload:
                values += [None, None]  # audioUI and upload: not serialised (null), as the frontend saves them
            elif slot.kind == "ui" and slot.name == "upload":
                values.append("image")  # the upload button's value, as the frontend saves it
            elif slot.kind == "value":
                values.append(self._value(slot))
            else:
                raise ValueError(f"{self.node.type}: the builder does not write {slot.kind!r} widgets ({slot.name})")
        return values

    def _value(self, slot) -> Any:
        choices = wg.combo_choices(slot.spec) if wg.spec_type(slot.spec) == "COMBO" else None
        value = self.node.widgets.get(slot.name, wg.spec_options(slot.spec).get("default"))
        if value is None and choices:
            value = choices[0]
        if choices and value not in choices and not self._is_file_name(value):
            raise ValueError(f"{self.node.type}.{slot.name}: {value!r} is not one of {choices}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON.stringify(5.0) == "5"
        return value

    @staticmethod
    def _is_file_name(value) -> bool:  # model/image lists depend on the machine the script runs on
        return isinstance(value, str) and re.search(
            r"\.(safetensors|sft|ckpt|pt|pth|bin|gguf|png|jpe?g|webp|mp4|webm|mov|wav|mp3|flac)$", value) is not None

    def properties(self) -> dict:
        props = {"Node name for S&R": self.node.type}
        if self.node.type.startswith("MoGA"):
            props.update({"cnr_id": PACK_ID, "ver": _pack_version()})
        else:
            props.update({"cnr_id": "comfy-core", "ver": COMFY_CORE_VERSION})
        models = [v for v in self.node.widgets.values() if isinstance(v, str) and v in MODEL_FILES]
        if models:
            props["models"] = [{"name": m, "url": MODEL_FILES[m][1], "directory": MODEL_FILES[m][0]} for m in models]
        return props

    def default_size(self) -> tuple[int, int]:
        sockets = sum(1 for slot in self.slots if "widget" not in slot)
        height = 30 + 22 * max(sockets, len(self.info["output"]))
        width = 320
        for slot in self.widgets:
            if slot.kind == "value":
                height += 130 if wg.spec_options(slot.spec).get("multiline") else 26
                if wg.spec_type(slot.spec) == "COMBO":
                    width = 360
            elif slot.kind == "control":
                height += 26
        return width, height


def _execution_order(nodes: list[Node], in_links) -> dict[int, int]:
    """Litegraph's computeExecutionOrder: nodes without inputs first, then each node after all its sources."""
    pending = {n.id: len({link.src.id for link, _ in in_links[n.id]}) for n in nodes}
    consumers: dict[int, set[int]] = {}
    for n in nodes:
        for link, _ in in_links[n.id]:
            consumers.setdefault(link.src.id, set()).add(n.id)
    ready = [n.id for n in nodes if pending[n.id] == 0]
    order: dict[int, int] = {}
    while ready:
        nid = ready.pop(0)
        order[nid] = len(order)
        for c in sorted(consumers.get(nid, ())):
            pending[c] -= 1
            if pending[c] == 0:
                ready.append(c)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    return order


_VERSION: list[str] = []


def _pack_version() -> str:
    if not _VERSION:
        with open(os.path.join(PACK_ROOT, "pyproject.toml"), encoding="utf-8") as f:
            match = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        _VERSION.append(match.group(1) if match else "0.0.0")
    return _VERSION[0]


# ---------------------------------------------------------------------------------------------------------------
# notes


MODEL_DIRECTORIES = ("diffusion_models", "text_encoders", "audio_encoders", "clip_vision", "vae")


def files_note(files: list[str], extra: str = "") -> str:
    """'Model links' note: which files to download and where they go (the official templates' layout)."""
    by_dir: dict[str, list[str]] = {}
    for name in files:
        by_dir.setdefault(MODEL_FILES[name][0] if name in MODEL_FILES else "moga", []).append(name)
    lines = ["## Model links", ""]
    for directory in MODEL_DIRECTORIES:
        if directory in by_dir:
            lines.append(f"**{directory}**")
            lines.append("")
            lines += [f"- [{n}]({MODEL_FILES[n][1]})" for n in by_dir[directory]]
            lines.append("")
    if extra:
        lines += [extra, ""]
    lines += ["Model storage location", "", "```", "📂 ComfyUI/", "├── 📂 models/"]
    dirs = [d for d in MODEL_DIRECTORIES + ("moga",) if d in by_dir]
    for i, directory in enumerate(dirs):
        last_dir = i == len(dirs) - 1
        lines.append(f"│   {'└' if last_dir else '├'}── 📂 {directory}/")
        for j, name in enumerate(by_dir[directory]):
            branch = "└" if j == len(by_dir[directory]) - 1 else "├"
            lines.append(f"│   {' ' if last_dir else '│'}      {branch}── {name}")
    lines.append("```")
    return "\n".join(lines)


GROUPS_NOTE = """## MoGA groups (no router needed)

No router is connected: **MoGA Attention Patch** splits each block's video tokens into `auto_groups` equal groups
drawn at random (`grouping` = random (balanced); seeded, the same in every run). Each token attends to its own
group plus a local neighbourhood, so it sees an even sample of the far tokens. In the pack's quality study this was
the closest training-free grouping to full attention (docs/QUALITY.md).

To try routers instead: set `grouping` to `k-means on this video` (fitted at the end of the dense warm-up), or run
`moga_calibrate_router.json` once and connect **MoGA Router Loader** to `router` (see
`moga_load_saved_router.json`).

- **auto_groups** (M): 5 for clips up to ~30 s, 10–20 for a minute; a token sees about 1/M of the far tokens."""

MOGA_NOTE = """## MoGA settings

**MoGA Attention Patch** turns the video self-attention of the model sparse: every token attends to the tokens of
its own group plus a local neighbourhood.

- **combine** `router default`: without a router, and with calibrated routers, this is `union` (exact attention
  over group keys + local keys, for stock weights); `mean` is only for MoGA-trained checkpoints.
- **windows_h × windows_w**: spatial windows per latent frame of the local branch (2 × 2 as in the paper).
- **temporal_group**: latent frames per local window (1 latent frame = 4 video frames); restarts at every shot cut.
- **neighbor_frames**: latent frames of the neighbouring shot that a shot's first and last windows also see
  (against flicker at cuts).
- **start_percent 0.2**: the first 20 % of sampling stays dense, which keeps the composition of the stock model.
- **min_tokens 16384**: shorter sequences stay dense (MoGA pays off from ~5 s of 480p).
- **dense_blocks**: blocks that never go sparse, e.g. `0,-1`.

**MoGA Long Video Sampler**: the shot plan sets the length and the cut positions; `shift` 8 for 480p Wan,
5 for 720p; `ffn_chunk_tokens` 0 = automatic memory chunking; `context_frames` > 0 is a windowed fallback for
GPUs that cannot hold the whole sequence.

**VAE Decode (Tiled)** decodes in temporal tiles (`temporal_size` frames), so long videos fit; lower `tile_size`
if the decode runs out of memory."""

SHOTS_NOTE = """## Shots

One shot per line: `duration | prompt`. Durations in seconds (`3s`, `2.5`) or frames (`33f`). Each shot's frames
see only the global prompt and their own caption; cuts are moved to the nearest latent frame (4 video frames) and
the node's `plan` output reports where they ended up. The sum of the durations sets the video length."""


# ---------------------------------------------------------------------------------------------------------------
# building blocks shared by the workflows

COL = 440  # column pitch of the layout grid; a node placed at (x, None) goes below what is already in its column
NOTE_X = -620


def wan_loaders(g: Graph, unet: str, vae: str = "wan_2.1_vae.safetensors", x=0):
    unet_node = g.node("UNETLoader", (x, None), unet_name=unet, weight_dtype="default")
    clip = g.node("CLIPLoader", (x, None), clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan",
                  device="default")
    vae_node = g.node("VAELoader", (x, None), vae_name=vae)
    return unet_node, clip, vae_node


def calibration(g: Graph, model: Node, positive: Node, negative: Node, latent: Node, x, cfg: float,
                title="MoGA Calibrate Router", latent_output=0, positive_output=0, negative_output=0) -> Node:
    cal = g.node("MoGACalibrateRouter", (x, None), title=title, colors=MOGA_COLORS, control="fixed", steps=4, cfg=cfg,
                 sampler_name="euler", scheduler="simple", groups=5, seed=0, tokens_per_block=8192)
    g.link(model, 0, cal, "model")
    g.link(positive, positive_output, cal, "positive")
    g.link(negative, negative_output, cal, "negative")
    g.link(latent, latent_output, cal, "latent")
    return cal


def moga_apply(g: Graph, model: Node, router: Node | None, x, title=None, **options) -> Node:
    """MoGA Attention Patch on ``model``; ``router`` None: no router (the node's default grouping)."""
    node = g.node("MoGAApply", (x, None), title=title, colors=MOGA_COLORS, **options)
    g.link(model, 0, node, "model")
    if router is not None:
        g.link(router, 0, node, "router")
    return node


def text_encode(g: Graph, clip: Node, kind: str, text: str, size=(440, 200)) -> Node:
    """A positive or negative CLIP Text Encode in the prompt column, wired to ``clip``."""
    colors = POSITIVE_COLORS if kind == "positive" else NEGATIVE_COLORS
    node = g.node("CLIPTextEncode", (COL, None), title=f"CLIP Text Encode ({kind.capitalize()} Prompt)", size=size,
                  colors=colors, text=text)
    g.link(clip, 0, node, "clip")
    return node


def multishot_prompt(g: Graph, clip: Node, shots: str, global_prompt: str, fps: float) -> Node:
    """MoGA Multi-Shot Prompt in the prompt column, wired to ``clip``."""
    node = g.node("MoGAMultiShotPrompt", (COL, None), size=(520, 560), colors=POSITIVE_COLORS, shots=shots,
                  global_prompt=global_prompt, fps=fps)
    g.link(clip, 0, node, "clip")
    return node


def decode_and_save(g: Graph, latent: Node, vae: Node, x, fps: float, prefix: str, step: int,
                    latent_output=0) -> list[Node]:
    decode = g.node("VAEDecodeTiled", (x, None), tile_size=256, overlap=64, temporal_size=64, temporal_overlap=8)
    g.link(latent, latent_output, decode, "samples")
    g.link(vae, 0, decode, "vae")
    video = g.node("CreateVideo", (x, None), fps=fps)
    g.link(decode, 0, video, "images")
    save = g.node("SaveVideo", (x + 380, None), size=(640, 560), filename_prefix=prefix, format="auto", codec="auto")
    g.link(video, 0, save, "video")
    g.group(f"Step {step} - Decode and save", [decode, video, save])
    return [decode, video, save]


def long_video_sampler(g: Graph, model: Node, positive, negative: Node, x, shots=None, latent=None, steps=30,
                       cfg=6.0, shift=8.0, width=832, height=480, length=81, positive_output=0, latent_output=0,
                       negative_output=0, sampler_name="uni_pc", scheduler="simple") -> Node:
    sampler = g.node("MoGALongVideoSampler", (x, None), size=(340, 560), colors=MOGA_COLORS, width=width,
                     height=height, length=length, seed=0, steps=steps, cfg=cfg, sampler_name=sampler_name,
                     scheduler=scheduler, shift=shift, denoise=1.0, ffn_chunk_tokens=0, context_frames=0,
                     context_overlap=16)
    g.link(model, 0, sampler, "model")
    g.link(positive, positive_output, sampler, "positive")
    g.link(negative, negative_output, sampler, "negative")
    if shots is not None:
        g.link(shots, "shots", sampler, "shots")
    if latent is not None:
        g.link(latent, latent_output, sampler, "latent")
    return sampler


# ---------------------------------------------------------------------------------------------------------------
# the workflows


def wan21_t2v_multishot(name: str, unet: str, shots: str, global_prompt: str, hint: str, size=(832, 480),
                        prefix="video/MoGA_wan2.1_t2v") -> Graph:
    g = Graph(name)
    g.note(files_note([unet, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"]),
           (NOTE_X, None), (560, None), title="Model links")
    g.note(GROUPS_NOTE + "\n\n" + hint, (NOTE_X, None), (560, None), title="MoGA groups")
    unet_node, clip, vae = wan_loaders(g, unet)
    multishot = multishot_prompt(g, clip, shots, global_prompt, fps=16.0)
    negative = text_encode(g, clip, "negative", WAN_NEGATIVE, size=(520, 200))
    g.note(SHOTS_NOTE, (COL, None), (520, None), title="Shots")
    x = 2 * COL + 120
    patched = moga_apply(g, unet_node, None, x)
    sampler = long_video_sampler(g, patched, multishot, negative, x + 420, shots=multishot, width=size[0],
                                 height=size[1])
    decode_and_save(g, sampler, vae, x + 820, fps=16.0, prefix=prefix, step=5)
    g.note(MOGA_NOTE, (x, None), (880, None), title="MoGA settings")
    g.group("Step 1 - Load models", [unet_node, clip, vae])
    g.group("Step 2 - Shots and negative prompt", [multishot, negative])
    g.group("Step 3 - MoGA", [patched], color="#335")
    g.group("Step 4 - Sample", [sampler])
    return g


#: the two Wan 2.1 text-to-video examples: (workflow, model file, shots, global prompt, canvas hint, video prefix)
WAN21_T2V_EXAMPLES = [
    ("wan2.1_t2v_1.3B_multishot_moga", "wan2.1_t2v_1.3B_fp16.safetensors",
     "3s | Wide shot: Mara walks along a rain-soaked harbour pier at dawn, gulls circling above the fishing boats "
     "rocking in the grey water\n"
     "3s | Medium shot: Mara stops at a small coffee kiosk and orders, steam rising from the espresso machine, warm "
     "light inside the kiosk\n"
     "4s | Close-up: Mara holds the paper cup in both hands and smiles as the sun breaks through the clouds behind "
     "her",
     "Mara, a woman in her thirties with short red hair and a green wool coat. Cinematic, 35 mm film look, soft "
     "natural light, muted colours.",
     "This workflow: 3 shots, about 10 s (157 frames, 40 latent frames: 62,400 tokens at 480p; the multi-shot "
     "prompt's `plan` output lists them).",
     "video/MoGA_wan2.1_t2v_1.3B"),
    ("wan2.1_t2v_14B_multishot_moga", "wan2.1_t2v_14B_fp8_scaled.safetensors",
     "3s | Establishing shot: a white lighthouse on a rocky cliff at dusk, waves crashing below, the lamp starting "
     "to turn\n"
     "3s | Inside the lighthouse: the old keeper climbs the spiral staircase with an oil lantern, his shadow "
     "sliding along the curved wall\n"
     "3s | Close-up: the keeper wipes the great lens with a cloth, the light flaring through the glass\n"
     "3s | Aerial shot: the beam sweeps across the dark sea as a small fishing boat turns towards the harbour",
     "An old lighthouse keeper with a white beard, a navy pea coat and a knitted cap. Cinematic, moody blue-hour "
     "light, high detail, 35 mm film grain.",
     "This workflow: 4 shots, about 12 s (189 frames, 48 latent frames: 74,880 tokens at 480p). For 720p "
     "(1280 x 720) set the sampler's shift to 5.",
     "video/MoGA_wan2.1_t2v_14B"),
]


def wan21_i2v_14b() -> Graph:
    g = Graph("wan2.1_i2v_14B_moga")
    unet = "wan2.1_i2v_480p_14B_fp16.safetensors"
    g.note(files_note([unet, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "clip_vision_h.safetensors",
                       "wan_2.1_vae.safetensors"],
                      extra=f"**First frame**: load your own image in *Load Image* (`{START_IMAGE}` is a "
                            "placeholder name)."),
           (NOTE_X, None), (560, None), title="Model links")
    g.note(GROUPS_NOTE + "\n\nThis workflow: 121 frames of 480p, 48,360 tokens.", (NOTE_X, None), (560, None),
           title="MoGA groups")
    unet_node, clip, vae = wan_loaders(g, unet)
    clip_vision = g.node("CLIPVisionLoader", (0, None), clip_name="clip_vision_h.safetensors")
    image = g.node("LoadImage", (0, None), size=(360, 380), image=START_IMAGE)
    positive = text_encode(
        g, clip, "positive",
        "The woman in the picture turns towards the window and smiles, wind moving her hair, the camera "
        "slowly pushes in, soft morning light, cinematic")
    negative = text_encode(g, clip, "negative", WAN_NEGATIVE)
    vision = g.node("CLIPVisionEncode", (COL, None), crop="none")
    g.link(clip_vision, 0, vision, "clip_vision")
    g.link(image, 0, vision, "image")
    i2v = g.node("WanImageToVideo", (COL, None), width=832, height=480, length=121, batch_size=1)
    g.link(positive, 0, i2v, "positive")
    g.link(negative, 0, i2v, "negative")
    g.link(vae, 0, i2v, "vae")
    g.link(vision, 0, i2v, "clip_vision_output")
    g.link(image, 0, i2v, "start_image")
    x = 2 * COL + 40
    patched = moga_apply(g, unet_node, None, x)
    sampler = long_video_sampler(g, patched, i2v, i2v, x + 420, latent=i2v, steps=20, positive_output=0,
                                 negative_output=1, latent_output=2)
    decode_and_save(g, sampler, vae, x + 820, fps=16.0, prefix="video/MoGA_wan2.1_i2v_14B", step=6)
    g.note(MOGA_NOTE, (x, None), (880, None), title="MoGA settings")
    g.group("Step 1 - Load models", [unet_node, clip, vae, clip_vision])
    g.group("Step 2 - First frame", [image])
    g.group("Step 3 - Prompt and video size", [positive, negative, vision, i2v])
    g.group("Step 4 - MoGA", [patched], color="#335")
    g.group("Step 5 - Sample", [sampler])
    return g


def wan22_a14b_t2v() -> Graph:
    g = Graph("wan2.2_a14b_t2v_moga")
    high_name, low_name = ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                           "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors")
    g.note(files_note([high_name, low_name, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"]),
           (NOTE_X, None), (560, None), title="Model links")
    g.note(GROUPS_NOTE + "\n\nWan 2.2 A14B has two experts (high noise for the first half of the steps, low "
                              "noise for the second); each gets its own MoGA patch. This "
                              "workflow: 3 shots, about 9 s (141 frames, 56,160 tokens at 480p); the multi-shot "
                              "prompt's `frames` sets the latent's length.", (NOTE_X, None), (560, None),
           title="MoGA groups")
    high = g.node("UNETLoader", (0, None), title="Load Diffusion Model (high noise)", unet_name=high_name,
                  weight_dtype="default")
    low = g.node("UNETLoader", (0, None), title="Load Diffusion Model (low noise)", unet_name=low_name,
                 weight_dtype="default")
    clip = g.node("CLIPLoader", (0, None), clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan",
                  device="default")
    vae = g.node("VAELoader", (0, None), vae_name="wan_2.1_vae.safetensors")
    shots_text = ("3s | Wide shot: a red vintage convertible drives along a coastal road between cliffs and a "
                  "turquoise sea, late afternoon\n"
                  "3s | Inside the car: the driver, a young man with sunglasses, laughs and turns up the radio, his "
                  "passenger's scarf fluttering\n"
                  "3s | The car parks at a viewpoint; the two friends step out and look at the sunset over the sea")
    multishot = multishot_prompt(g, clip, shots_text, "Two friends in their twenties on a summer road trip. "
                                                      "Cinematic, warm golden light, 35 mm film look.", fps=16.0)
    negative = text_encode(g, clip, "negative", WAN_NEGATIVE, size=(520, 200))
    latent = g.node("EmptyHunyuanLatentVideo", (COL, None), width=832, height=480, length=81, batch_size=1)
    g.link(multishot, "frames", latent, "length")
    x = 2 * COL + 120
    experts = ((high, "high"), (low, "low"))
    applied, shifted = [], []
    for expert, which in experts:
        node = moga_apply(g, expert, None, x + 400, title=f"MoGA Attention Patch ({which} noise)")
        g.link(multishot, "shots", node, "shots")
        shift = g.node("ModelSamplingSD3", (x + 800, None), title=f"ModelSamplingSD3 ({which} noise)", shift=5.0)
        g.link(node, 0, shift, "model")
        applied.append(node)
        shifted.append(shift)
    first = g.node("KSamplerAdvanced", (x + 1180, None), title="KSampler (Advanced) - high noise", size=(340, 580),
                   add_noise="enable", noise_seed=0, steps=20, cfg=3.5, sampler_name="euler", scheduler="simple",
                   start_at_step=0, end_at_step=10, return_with_leftover_noise="enable")
    second = g.node("KSamplerAdvanced", (x + 1560, None), title="KSampler (Advanced) - low noise", size=(340, 580),
                    control="fixed", add_noise="disable", noise_seed=0, steps=20, cfg=3.5, sampler_name="euler",
                    scheduler="simple", start_at_step=10, end_at_step=10000, return_with_leftover_noise="disable")
    for sampler, model in ((first, shifted[0]), (second, shifted[1])):
        g.link(model, 0, sampler, "model")
        g.link(multishot, "positive", sampler, "positive")
        g.link(negative, 0, sampler, "negative")
    g.link(latent, 0, first, "latent_image")
    g.link(first, 0, second, "latent_image")
    decode_and_save(g, second, vae, x + 1940, fps=16.0, prefix="video/MoGA_wan2.2_t2v_A14B", step=5)
    g.note(MOGA_NOTE + "\n\nHere the shot plan also goes to both MoGA patches (`shots`), so the negative prompt's "
                       "local windows break at the cuts too.", (x, None), (1100, None), title="MoGA settings")
    g.group("Step 1 - Load models", [high, low, clip, vae])
    g.group("Step 2 - Shots, negative prompt, video size", [multishot, negative, latent])
    g.group("Step 3 - MoGA on both experts", applied + shifted, color="#335")
    g.group("Step 4 - Two-stage sampling", [first, second])
    return g


def wan22_ti2v_5b() -> Graph:
    g = Graph("wan2.2_ti2v_5B_moga")
    unet = "wan2.2_ti2v_5B_fp16.safetensors"
    g.note(files_note([unet, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan2.2_vae.safetensors"],
                      extra="**Image to video**: select *Load Image* and press Ctrl + B to enable it (bypassed = "
                            "text to video)."),
           (NOTE_X, None), (560, None), title="Model links")
    g.note(GROUPS_NOTE + "\n\nThis workflow: one 10 s shot at 24 fps (241 frames at 1280 x 704: 53,680 tokens; "
                              "the 5B model's latent has 48 channels and 16x spatial compression).",
           (NOTE_X, None), (560, None), title="MoGA groups")
    unet_node, clip, vae = wan_loaders(g, unet, vae="wan2.2_vae.safetensors")
    image = g.node("LoadImage", (0, None), size=(360, 380), mode=4, image=START_IMAGE)
    positive = text_encode(
        g, clip, "positive",
        "A street musician plays a cello in a snowy town square at night, warm light from the shop windows, "
        "passers-by stop to listen, snowflakes drifting, the camera slowly circles around him, cinematic",
        size=(440, 220))
    negative = text_encode(g, clip, "negative", WAN_NEGATIVE)
    latent = g.node("Wan22ImageToVideoLatent", (COL, None), width=1280, height=704, length=241, batch_size=1)
    g.link(vae, 0, latent, "vae")
    g.link(image, 0, latent, "start_image")
    x = 2 * COL + 40
    patched = moga_apply(g, unet_node, None, x)
    sampler = long_video_sampler(g, patched, positive, negative, x + 420, latent=latent, steps=20, cfg=5.0,
                                 width=1280, height=704, length=241)
    decode_and_save(g, sampler, vae, x + 820, fps=24.0, prefix="video/MoGA_wan2.2_ti2v_5B", step=5)
    g.note(MOGA_NOTE, (x, None), (880, None), title="MoGA settings")
    g.group("Step 1 - Load models", [unet_node, clip, vae])
    g.group("For image to video, Ctrl + B to enable", [image])
    g.group("Step 2 - Prompt and video size", [positive, negative, latent])
    g.group("Step 3 - MoGA", [patched], color="#335")
    g.group("Step 4 - Sample", [sampler])
    return g


def wan22_animate() -> Graph:
    g = Graph("wan2.2_animate_14B_moga")
    unet = "wan2.2_animate_14B_bf16.safetensors"
    g.note(files_note([unet, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "clip_vision_h.safetensors",
                       "wan_2.1_vae.safetensors"],
                      extra=f"**Inputs** (`input/`; the names here are placeholders): the character image in *Load "
                            f"Image* (`{ANIMATE_CHARACTER}`), and two videos made from your driving video: the pose "
                            f"video (`{ANIMATE_POSE_VIDEO}`: the skeletons of a pose estimator such as DWPose, one "
                            f"frame per video frame) and the face video (`{ANIMATE_FACE_VIDEO}`: the face cropped "
                            "from every frame; it is scaled to 512 x 512). The saved video takes the pose video's "
                            "frame rate."),
           (NOTE_X, None), (560, None), title="Model links")
    g.note(GROUPS_NOTE + "\n\nWan 2.2 Animate follows the pose video (its latents are added to the video tokens) "
                         "and the face video (through the face adapter, which stays dense). The character image "
                         "is one more latent frame in front of the video, which *TrimVideoLatent* removes before "
                         "decoding. This workflow: 161 frames of 480p in one pass (41 latent frames plus the "
                         "character's: 65,520 tokens); cfg 1, as the model's reference settings.",
           (NOTE_X, None), (560, None), title="MoGA groups")
    unet_node, clip, vae = wan_loaders(g, unet)
    clip_vision = g.node("CLIPVisionLoader", (0, None), clip_name="clip_vision_h.safetensors")
    image = g.node("LoadImage", (0, None), title="Load Image (character)", size=(360, 380), image=ANIMATE_CHARACTER)
    pose = g.node("LoadVideo", (0, None), title="Load Video (pose)", size=(360, 380), file=ANIMATE_POSE_VIDEO)
    pose_frames = g.node("GetVideoComponents", (0, None), title="Get Video Components (pose)")
    g.link(pose, 0, pose_frames, "video")
    face = g.node("LoadVideo", (0, None), title="Load Video (face)", size=(360, 380), file=ANIMATE_FACE_VIDEO)
    face_frames = g.node("GetVideoComponents", (0, None), title="Get Video Components (face)")
    g.link(face, 0, face_frames, "video")
    positive = text_encode(
        g, clip, "positive",
        "The character dances in a sunlit studio with wooden floors, natural movements, the camera is still, "
        "high detail, cinematic lighting")
    negative = text_encode(g, clip, "negative", WAN_NEGATIVE)
    vision = g.node("CLIPVisionEncode", (COL, None), crop="none")
    g.link(clip_vision, 0, vision, "clip_vision")
    g.link(image, 0, vision, "image")
    animate = g.node("WanAnimateToVideo", (COL, None), width=832, height=480, length=161, batch_size=1,
                     continue_motion_max_frames=5, video_frame_offset=0)
    g.wire(animate, positive=positive, negative=negative, vae=vae, clip_vision_output=vision, reference_image=image)
    g.link(face_frames, "images", animate, "face_video")
    g.link(pose_frames, "images", animate, "pose_video")
    x = 2 * COL + 40
    patched = moga_apply(g, unet_node, None, x)
    sampler = long_video_sampler(g, patched, animate, animate, x + 420, latent=animate, steps=20, cfg=1.0, shift=5.0,
                                 length=161, positive_output=0, negative_output=1, latent_output=2)
    trim = g.node("TrimVideoLatent", (x + 420, None), trim_amount=1)
    g.link(sampler, 0, trim, "samples")
    g.link(animate, "trim_latent", trim, "trim_amount")
    _, video, _ = decode_and_save(g, trim, vae, x + 820, fps=16.0, prefix="video/MoGA_wan2.2_animate_14B", step=6)
    g.link(pose_frames, "fps", video, "fps")
    g.note(MOGA_NOTE + "\n\nHere the sampler takes WanAnimateToVideo's latent (`latent`), which sets the size and "
                       "length; `shift` 5 as in Wan-Animate's reference settings.", (x, None), (880, None),
           title="MoGA settings")
    g.group("Step 1 - Load models", [unet_node, clip, vae, clip_vision])
    g.group("Step 2 - Character image, pose and face videos", [image, pose, pose_frames, face, face_frames])
    g.group("Step 3 - Prompt and video size", [positive, negative, vision, animate])
    g.group("Step 4 - MoGA", [patched], color="#335")
    g.group("Step 5 - Sample", [sampler, trim])
    return g


def wan22_s2v() -> Graph:
    g = Graph("wan2.2_s2v_14B_moga")
    unet = "wan2.2_s2v_14B_fp8_scaled.safetensors"
    g.note(files_note([unet, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wav2vec2_large_english_fp16.safetensors",
                       "wan_2.1_vae.safetensors"],
                      extra=f"**Inputs** (`input/`; the names here are placeholders): the reference image in *Load "
                            f"Image* (`{S2V_REFERENCE}`) and the speech or song in *Load Audio* (`{S2V_AUDIO}`); the "
                            "video lasts `length` frames at 16 fps (audio past its end is not used, a shorter audio "
                            "leaves the rest silent). The audio nodes need torchaudio (part of ComfyUI's "
                            "requirements)."),
           (NOTE_X, None), (560, None), title="Model links")
    g.note(GROUPS_NOTE + "\n\nWan 2.2 S2V appends the reference image's tokens after the video tokens (every token "
                         "sees them); the audio enters through the audio injectors, which stay dense. This workflow: "
                         "10 s in one pass (161 frames at 640 x 640: 41 latent frames, 65,600 tokens, plus the "
                         "reference image's 1,600), instead of the template's 77-frame chunks.",
           (NOTE_X, None), (560, None), title="MoGA groups")
    unet_node, clip, vae = wan_loaders(g, unet)
    audio_encoder = g.node("AudioEncoderLoader", (0, None),
                           audio_encoder_name="wav2vec2_large_english_fp16.safetensors")
    image = g.node("LoadImage", (0, None), title="Load Image (reference)", size=(360, 380), image=S2V_REFERENCE)
    audio = g.node("LoadAudio", (0, None), size=(360, 140), audio=S2V_AUDIO)
    positive = text_encode(
        g, clip, "positive",
        "The woman sings on a small stage in a jazz club, warm spotlight, she moves gently with the music and "
        "looks into the camera, the band blurred behind her, cinematic")
    negative = text_encode(g, clip, "negative", WAN_NEGATIVE)
    encode = g.node("AudioEncoderEncode", (COL, None))
    g.wire(encode, audio_encoder=audio_encoder, audio=audio)
    s2v = g.node("WanSoundImageToVideo", (COL, None), width=640, height=640, length=161, batch_size=1)
    g.wire(s2v, positive=positive, negative=negative, vae=vae, audio_encoder_output=encode, ref_image=image)
    x = 2 * COL + 40
    patched = moga_apply(g, unet_node, None, x)
    sampler = long_video_sampler(g, patched, s2v, s2v, x + 420, latent=s2v, steps=20, cfg=6.0, shift=8.0, width=640,
                                 height=640, length=161, positive_output=0, negative_output=1, latent_output=2)
    _, video, _ = decode_and_save(g, sampler, vae, x + 820, fps=16.0, prefix="video/MoGA_wan2.2_s2v_14B", step=5)
    g.link(audio, 0, video, "audio")
    g.note(MOGA_NOTE + "\n\nHere the sampler takes WanSoundImageToVideo's latent (`latent`), which sets the size "
                       "and length; *Create Video* puts the audio under the frames.", (x, None), (880, None),
           title="MoGA settings")
    g.group("Step 1 - Load models", [unet_node, clip, vae, audio_encoder])
    g.group("Step 2 - Reference image and audio", [image, audio])
    g.group("Step 3 - Prompt, audio features, video size", [positive, negative, encode, s2v])
    g.group("Step 4 - MoGA", [patched], color="#335")
    g.group("Step 5 - Sample", [sampler])
    return g


def hunyuan_t2v_multishot() -> Graph:
    g = Graph("hunyuanvideo_t2v_multishot_moga")
    unet = "hunyuan_video_t2v_720p_bf16.safetensors"
    g.note(files_note([unet, "clip_l.safetensors", "llava_llama3_fp8_scaled.safetensors",
                       "hunyuan_video_vae_bf16.safetensors"],
                      extra="Select an fp8 `weight_dtype` in *Load Diffusion Model* if you run out of memory."),
           (NOTE_X, None), (560, None), title="Model links")
    g.note(GROUPS_NOTE + "\n\nHunyuanVideo is guidance-distilled: cfg 1 (the negative is not used), guidance 6 "
                         "through FluxGuidance. This workflow: 3 shots, about 6 s at 24 fps (141 frames, "
                         "57,240 tokens at 848 x 480).", (NOTE_X, None), (560, None), title="MoGA groups")
    unet_node = g.node("UNETLoader", (0, None), unet_name=unet, weight_dtype="default")
    clip = g.node("DualCLIPLoader", (0, None), clip_name1="clip_l.safetensors",
                  clip_name2="llava_llama3_fp8_scaled.safetensors", type="hunyuan_video", device="default")
    vae = g.node("VAELoader", (0, None), vae_name="hunyuan_video_vae_bf16.safetensors")
    shots_text = ("2s | A small wooden rowing boat glides across a misty mountain lake at sunrise, wide shot\n"
                  "2s | Medium shot: the girl in the boat pulls the oars, ripples spreading on the calm water\n"
                  "2s | Close-up: she lets go of the oars and watches a heron take off from the reeds")
    multishot = multishot_prompt(g, clip, shots_text, "A girl of about ten with a yellow raincoat and braided "
                                                      "hair. Cinematic, soft diffuse light, high detail.", fps=24.0)
    guidance = g.node("FluxGuidance", (COL, None), colors=POSITIVE_COLORS, guidance=6.0)
    g.link(multishot, "positive", guidance, "conditioning")
    negative = g.node("ConditioningZeroOut", (COL, None), title="Negative (unused at cfg 1)")
    g.link(multishot, "positive", negative, "conditioning")
    latent = g.node("EmptyHunyuanLatentVideo", (COL, None), width=848, height=480, length=73, batch_size=1)
    g.link(multishot, "frames", latent, "length")
    x = 2 * COL + 120
    patched = moga_apply(g, unet_node, None, x)
    shift = g.node("ModelSamplingSD3", (x + 420, None), shift=7.0)
    g.link(patched, 0, shift, "model")
    guider = g.node("MoGALongVideoGuider", (x + 420, None), colors=MOGA_COLORS, cfg=1.0, ffn_chunk_tokens=0,
                    context_frames=0, context_overlap=16)
    g.link(shift, 0, guider, "model")
    g.link(guidance, 0, guider, "positive")
    g.link(negative, 0, guider, "negative")
    g.link(multishot, "shots", guider, "shots")
    noise = g.node("RandomNoise", (x + 420, None), colors={"color": "#2a363b", "bgcolor": "#3f5159"}, noise_seed=1)
    sampler_select = g.node("KSamplerSelect", (x + 420, None), sampler_name="euler")
    scheduler = g.node("BasicScheduler", (x + 420, None), scheduler="simple", steps=20, denoise=1.0)
    g.link(shift, 0, scheduler, "model")
    sample = g.node("SamplerCustomAdvanced", (x + 820, None), size=(320, 160))
    g.wire(sample, noise=noise, guider=guider, sampler=sampler_select, sigmas=scheduler, latent_image=latent)
    decode_and_save(g, sample, vae, x + 1200, fps=24.0, prefix="video/MoGA_hunyuan_video", step=5)
    g.note(MOGA_NOTE + "\n\nHere the sampler is split as in the HunyuanVideo template: **MoGA Long Video Guider** "
                       "(CFG, memory chunking, shot plan) plugs into SamplerCustomAdvanced.",
           (x, None), (1100, None), title="MoGA settings")
    g.group("Step 1 - Load models", [unet_node, clip, vae])
    g.group("Step 2 - Shots and video size", [multishot, guidance, negative, latent])
    g.group("Step 3 - MoGA", [patched], color="#335")
    g.group("Step 4 - Custom sampler", [shift, guider, noise, sampler_select, scheduler, sample])
    return g


def kandinsky5_lite_t2v() -> Graph:
    g = Graph("kandinsky5_lite_t2v_moga")
    unet = "kandinsky5lite_t2v_sft_5s.safetensors"
    g.note(files_note([unet, "qwen_2.5_vl_7b_fp8_scaled.safetensors", "clip_l.safetensors",
                       "hunyuan_video_vae_bf16.safetensors"],
                      extra="For 10 s clips (241 frames), Kandinsky's `kandinsky5lite_t2v_sft_10s` checkpoint "
                            "(kandinskylab/Kandinsky-5.0-T2V-Lite-sft-10s) goes in the same folder."),
           (NOTE_X, None), (560, None), title="Model links")
    g.note(GROUPS_NOTE + "\n\nKandinsky 5 runs its captions through text encoder blocks of its own (dense) before "
                         "the visual blocks, whose self-attention MoGA makes sparse. This workflow: 5 s at 24 fps "
                         "(121 frames at 768 x 512: 31 latent frames, 47,616 tokens), the official template's "
                         "settings (50 steps, cfg 5, euler_ancestral / beta, shift 5).",
           (NOTE_X, None), (560, None), title="MoGA groups")
    unet_node = g.node("UNETLoader", (0, None), unet_name=unet, weight_dtype="default")
    clip = g.node("DualCLIPLoader", (0, None), clip_name1="qwen_2.5_vl_7b_fp8_scaled.safetensors",
                  clip_name2="clip_l.safetensors", type="kandinsky5", device="default")
    vae = g.node("VAELoader", (0, None), vae_name="hunyuan_video_vae_bf16.safetensors")
    positive = text_encode(
        g, clip, "positive",
        "Rim light, soft light, medium close-up, dusk, warm tones with low saturation. An old fisherman mends a net "
        "on a wooden pier, the sea glittering behind him; he looks up and smiles as a boat sails past, the camera "
        "slowly dollies in", size=(440, 220))
    negative = text_encode(g, clip, "negative",
                           "Static, 2D cartoon, cartoon, 2d animation, paintings, images, worst quality, low quality, "
                           "ugly, deformed, walking backwards")
    latent = g.node("Kandinsky5ImageToVideo", (COL, None), width=768, height=512, length=121, batch_size=1)
    g.wire(latent, positive=positive, negative=negative, vae=vae)
    x = 2 * COL + 40
    patched = moga_apply(g, unet_node, None, x)
    sampler = long_video_sampler(g, patched, latent, latent, x + 420, latent=latent, steps=50, cfg=5.0, shift=5.0,
                                 width=768, height=512, length=121, positive_output=0, negative_output=1,
                                 latent_output=2, sampler_name="euler_ancestral", scheduler="beta")
    decode_and_save(g, sampler, vae, x + 820, fps=24.0, prefix="video/MoGA_kandinsky5_lite_t2v", step=5)
    g.note(MOGA_NOTE + "\n\nHere the sampler takes Kandinsky5ImageToVideo's latent (`latent`), which sets the size "
                       "and length; `shift` 5 as in the Kandinsky 5 template.", (x, None), (880, None),
           title="MoGA settings")
    g.group("Step 1 - Load models", [unet_node, clip, vae])
    g.group("Step 2 - Prompt and video size", [positive, negative, latent])
    g.group("Step 3 - MoGA", [patched], color="#335")
    g.group("Step 4 - Sample", [sampler])
    return g


def calibrate_router() -> Graph:
    g = Graph("moga_calibrate_router")
    unet = "wan2.1_t2v_1.3B_fp16.safetensors"
    g.note(files_note([unet, "umt5_xxl_fp8_e4m3fn_scaled.safetensors"]), (NOTE_X, None), (560, None),
           title="Model links")
    unet_node = g.node("UNETLoader", (0, None), unet_name=unet, weight_dtype="default")
    clip = g.node("CLIPLoader", (0, None), clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan",
                  device="default")
    positive = g.node("CLIPTextEncode", (COL, None), title="Calibration prompt", size=(440, 200),
                      colors=POSITIVE_COLORS, text=CALIBRATION_PROMPT)
    g.link(clip, 0, positive, "clip")
    negative = text_encode(g, clip, "negative", WAN_NEGATIVE)
    latent = g.node("EmptyHunyuanLatentVideo", (COL, None), width=832, height=480, length=33, batch_size=1)
    x = 2 * COL + 60
    router = calibration(g, unet_node, positive, negative, latent, x, cfg=6.0)
    save = g.node("MoGASaveRouter", (x, None), colors=MOGA_COLORS, filename=CALIBRATED_ROUTER_PREFIX)
    g.link(router, 0, save, "router")
    g.note(f"""## Calibrate once, load later

This workflow fits MoGA routers for **Wan 2.1 T2V 1.3B** and saves them as
`models/moga/{CALIBRATED_ROUTER}` (MoGA Save Router numbers its files, so a second run writes `_00002`).
`moga_load_saved_router.json` loads that file.

For another model, load it in *Load Diffusion Model* (and its text encoder) and change `filename`, e.g.
`wan2.1_t2v_14B_calibrated`; routers only fit the model they were calibrated on (the loader checks width and
block count).

- **steps**: sampling steps of the dense calibration pass; tokens of all steps are used.
- **groups** (M): 5 for clips up to ~30 s, 10–20 for a minute.
- **tokens_per_block**: tokens per block kept for k-means (CPU memory: tokens x width x 2 bytes per block).
- The calibration latent can be shorter than your videos: the routers do not depend on the length.""",
           (x + 420, None), (600, None), title="MoGA routers")
    g.group("Step 1 - Load models", [unet_node, clip])
    g.group("Step 2 - Calibration prompt and size", [positive, negative, latent])
    g.group("Step 3 - Calibrate and save", [router, save], color="#335")
    return g


def load_saved_router() -> Graph:
    g = Graph("moga_load_saved_router")
    unet = "wan2.1_t2v_1.3B_fp16.safetensors"
    g.note(files_note([unet, "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors",
                       CALIBRATED_ROUTER],
                      extra=f"**moga**: `{CALIBRATED_ROUTER}` is written by `moga_calibrate_router.json` (run it "
                            "once)."),
           (NOTE_X, None), (560, None), title="Model links")
    unet_node, clip, vae = wan_loaders(g, unet)
    router = g.node("MoGALoadRouter", (0, None), colors=MOGA_COLORS, router_name=CALIBRATED_ROUTER)
    positive = text_encode(
        g, clip, "positive",
        "A fox trots through a snowy birch forest in the morning, sunbeams between the trees, tracking shot, "
        "cinematic")
    negative = text_encode(g, clip, "negative", WAN_NEGATIVE)
    latent = g.node("EmptyHunyuanLatentVideo", (COL, None), width=832, height=480, length=161, batch_size=1)
    x = 2 * COL + 60
    patched = moga_apply(g, unet_node, router, x)
    shift = g.node("ModelSamplingSD3", (x, None), shift=8.0)
    g.link(patched, 0, shift, "model")
    sampler = g.node("KSampler", (x + 420, None), size=(340, 480), seed=0, steps=30, cfg=6.0,
                     sampler_name="uni_pc", scheduler="simple", denoise=1.0)
    g.wire(sampler, model=shift, positive=positive, negative=negative, latent_image=latent)
    decode_and_save(g, sampler, vae, x + 820, fps=16.0, prefix="video/MoGA_wan2.1_t2v_1.3B", step=5)
    g.note(MOGA_NOTE + "\n\n**MoGA Router Loader** reads routers from `models/moga/`; MoGA works with the stock "
                       "KSampler as well (here: 10 s, one prompt, 63,960 tokens at 480p).", (x, None), (880, None),
           title="MoGA settings")
    g.group("Step 1 - Load models and routers", [unet_node, clip, vae, router])
    g.group("Step 2 - Prompt and video size", [positive, negative, latent])
    g.group("Step 3 - MoGA", [patched, shift], color="#335")
    g.group("Step 4 - Sample", [sampler])
    return g


WORKFLOWS = {
    **{name: functools.partial(wan21_t2v_multishot, name, unet, shots, global_prompt, hint, prefix=prefix)
       for name, unet, shots, global_prompt, hint, prefix in WAN21_T2V_EXAMPLES},
    "wan2.1_i2v_14B_moga": wan21_i2v_14b,
    "wan2.2_a14b_t2v_moga": wan22_a14b_t2v,
    "wan2.2_ti2v_5B_moga": wan22_ti2v_5b,
    "wan2.2_animate_14B_moga": wan22_animate,
    "wan2.2_s2v_14B_moga": wan22_s2v,
    "hunyuanvideo_t2v_multishot_moga": hunyuan_t2v_multishot,
    "kandinsky5_lite_t2v_moga": kandinsky5_lite_t2v,
    "moga_calibrate_router": calibrate_router,
    "moga_load_saved_router": load_saved_router,
}


def missing_node_types(name: str, schemas: dict) -> set[str]:
    """The node types of workflow ``name`` that this ComfyUI lacks (`TORCHAUDIO_NODE_TYPES` without torchaudio)."""
    return {n.type for n in WORKFLOWS[name]().nodes if n.text is None and n.type not in schemas}


def build_all(schemas: dict, names=None) -> dict[str, dict]:
    """{file name: workflow JSON} for every example workflow (or those in ``names``)."""
    return {f"{name}.json": make().to_json(schemas) for name, make in WORKFLOWS.items()
            if names is None or name in names}


def dumps(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def _load_host_schemas() -> dict:
    """Node schemas of a real ComfyUI with this pack loaded (as custom_nodes/ComfyUI-MoGA)."""
    import asyncio
    import tempfile

    nodes = wg.init_comfyui(wg.find_comfyui(PACK_ROOT))
    link_dir = tempfile.mkdtemp(prefix="moga_build_")
    link = os.path.join(link_dir, "ComfyUI-MoGA")
    os.symlink(PACK_ROOT, link, target_is_directory=True)
    if not asyncio.run(nodes.load_custom_node(link)):
        raise RuntimeError("ComfyUI could not load the pack")
    return wg.node_schemas_from_comfy()


def main() -> None:
    schemas = _load_host_schemas()
    buildable = []
    for name in WORKFLOWS:
        missing = missing_node_types(name, schemas)
        if missing:  # e.g. the audio nodes of a ComfyUI whose Python has no torchaudio: the file is left as it is
            print(f"skipped workflows/{name}.json: this ComfyUI has no {', '.join(sorted(missing))} "
                  f"(ComfyUI imports {'them' if len(missing) > 1 else 'it'} only with torchaudio installed)"
                  if missing <= TORCHAUDIO_NODE_TYPES else
                  f"skipped workflows/{name}.json: this ComfyUI has no {', '.join(sorted(missing))}")
            continue
        buildable.append(name)
    for file_name, workflow in build_all(schemas, buildable).items():
        path = os.path.join(WORKFLOWS_DIR, file_name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(dumps(workflow))
        print(f"wrote {os.path.relpath(path, PACK_ROOT)} ({len(workflow['nodes'])} nodes, "
              f"{len(workflow['links'])} links)")


if __name__ == "__main__":
    main()
