"""ComfyUI's workflow formats in Python, for the example-workflow builder and the tests.

ComfyUI's backend only understands the *API* ("prompt") format::

    {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "model": ["4", 0]}}}

while the frontend saves and loads the *UI* format (``nodes[]``, ``links[]``,
``groups``, ``extra``, ``definitions.subgraphs`` ...).  The conversion between
the two normally happens in the browser (``graphToPrompt``).  This module
re-implements that conversion in Python so tests can take a workflow exactly as
a user would save it and run it through ``execution.validate_prompt`` /
``execution.PromptExecutor``.

Public helpers
--------------
``init_comfyui(path)``
    Put ComfyUI on ``sys.path`` in CPU mode and load its nodes (idempotent).
``node_schemas_from_comfy()``
    The same information the server's ``/object_info`` route returns.
``ui_to_api(workflow, schemas)``
    UI workflow -> API prompt.
``find_link_problems`` / ``validate_links(workflow, schemas)``
    Type-check every link of a UI workflow.
``validate_api_prompt(prompt)`` / ``run_api_prompt(prompt)``
    Validate, or validate-and-execute, an API prompt in this process
    (``PromptExecutor`` with classic caching; ``ClassicCacheArgs`` gives it
    cache arguments any ComfyUI version accepts).

``widget_layout(info, node, value_at)``
    The widgets the frontend creates for a node, in ``widgets_values`` order
    (the workflow builder writes them, ``ui_to_api`` reads them).

This module imports nothing from pytest: devtools/build_workflows.py and the
tests share it.  Everything that touches ComfyUI imports it lazily, after
``init_comfyui`` has prepared ``sys.path``.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import importlib
import json
import logging
import os
import sys
import uuid
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

__all__ = [
    "ClassicCacheArgs",
    "ComfyUINotFound",
    "PromptRunResult",
    "StubServer",
    "find_comfyui",
    "init_comfyui",
    "node_schemas_from_comfy",
    "ui_to_api",
    "find_link_problems",
    "validate_links",
    "validate_api_prompt",
    "validation_error_messages",
    "run_api_prompt",
    "types_compatible",
]

# ---------------------------------------------------------------------------
# Constants describing frontend behaviour
# ---------------------------------------------------------------------------

#: LiteGraph node modes (``node.mode`` in the UI format).
MODE_ALWAYS = 0
MODE_NEVER = 2  # "muted": the node and everything it feeds is left out
MODE_BYPASS = 4  # "bypassed": consumers are wired to a matching input instead

#: Pseudo node ids used inside subgraph definitions for the IO nodes.
SUBGRAPH_INPUT_NODE_ID = "-10"
SUBGRAPH_OUTPUT_NODE_ID = "-20"

#: Frontend-only node types that never reach the backend.
NOTE_NODE_TYPES = frozenset({"Note", "MarkdownNote"})
REROUTE_NODE_TYPES = frozenset({"Reroute"})
PRIMITIVE_NODE_TYPES = frozenset({"PrimitiveNode"})
VIRTUAL_NODE_TYPES = NOTE_NODE_TYPES | REROUTE_NODE_TYPES | PRIMITIVE_NODE_TYPES

#: Values of the extra "control_after_generate" combo the frontend adds.
CONTROL_AFTER_GENERATE_VALUES = frozenset(
    {"fixed", "increment", "decrement", "randomize", "increment-wrap"}
)

#: Input types the frontend draws as a widget whose value is serialised into
#: ``widgets_values`` *and* sent to the backend.
VALUE_WIDGET_TYPES = frozenset(
    {
        "INT",
        "FLOAT",
        "BOOLEAN",
        "STRING",
        "COMBO",
        "MARKDOWN",
        "COLOR",
        "IMAGECOMPARE",
        "BOUNDING_BOX",
        "CHART",
        "GALLERIA",
        "PAINTER",
        "TEXTAREA",
        "CURVE",
        "WEBCAM",
        "AUDIO_RECORD",
        "LOAD_3D",
        "LOAD3D_CAMERA",
        "PREVIEW_3D",
        "COMFY_DYNAMICCOMBO_V3",
    }
)

#: Widget types that take a slot in ``widgets_values`` but are UI-only (their
#: value is not meaningful to the backend, so it is not sent).
UI_ONLY_WIDGET_TYPES = frozenset({"AUDIO_UI", "IMAGEUPLOAD", "AUDIOUPLOAD"})

DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
AUTOGROW = "COMFY_AUTOGROW_V3"
MATCHTYPE = "COMFY_MATCHTYPE_V3"

#: Option keys that make the frontend append an "upload" widget to a combo.
_MEDIA_UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")

#: Custom widget types whose constructor first adds some UI-only widgets
#: (buttons) that are serialised into ``widgets_values`` before its own value.
_LEADING_UI_WIDGETS = {"LOAD_3D": 3}  # "upload 3d model", "upload extra resources", "clear"

#: Nodes to which frontend extensions append display-only widgets (text
#: previews, 3D viewers, dynamic option lists...).  Up to this many surplus
#: trailing values are accepted and ignored; ``None`` means any number.
#: Surplus values that are all ``null`` are accepted for any node.
FRONTEND_TRAILING_WIDGETS: dict[str, Optional[int]] = {
    "PreviewAny": 3,
    "SaveGLB": 1,
    "Preview3D": 1,
    "GetImageSize": 1,
    "CustomCombo": None,
}

# ---------------------------------------------------------------------------
# Locating and initialising ComfyUI
# ---------------------------------------------------------------------------


class ComfyUINotFound(RuntimeError):
    """Raised when no usable ComfyUI checkout can be located."""


def _looks_like_comfyui(path: Optional[str]) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "comfy", "model_patcher.py"))


def find_comfyui(pack_root: Optional[str] = None) -> str:
    """Return the ComfyUI directory to test against.

    Order: ``$COMFYUI_PATH``; then ``<pack_root>/../..`` (the layout of a pack
    installed as ``ComfyUI/custom_nodes/<pack>``).  Raises
    :class:`ComfyUINotFound` with the reason when neither works.
    """
    env_path = os.environ.get("COMFYUI_PATH")
    if env_path:
        env_path = os.path.abspath(os.path.expanduser(env_path))
        if _looks_like_comfyui(env_path):
            return env_path
        raise ComfyUINotFound(
            f"COMFYUI_PATH={env_path!r} is not a ComfyUI checkout "
            "(no comfy/model_patcher.py there)"
        )
    if pack_root is None:
        pack_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidate = os.path.abspath(os.path.join(pack_root, "..", ".."))
    if _looks_like_comfyui(candidate):
        return candidate
    raise ComfyUINotFound(
        "ComfyUI not found: set COMFYUI_PATH to a ComfyUI checkout, or install "
        f"this pack under ComfyUI/custom_nodes/ (looked at {candidate!r})"
    )


class _NoopReplaceManager:
    """Stand-in for ``NodeReplaceManager`` when the real one can't be imported."""

    def register(self, *args: Any, **kwargs: Any) -> None:
        pass


class StubServer:
    """The bits of ``server.PromptServer`` that execution code touches.

    Every event sent through :meth:`send_sync` is recorded in :attr:`events`
    as ``(event, data, sid)``.
    """

    def __init__(self) -> None:
        self.client_id: Optional[str] = None
        self.last_node_id: Optional[str] = None
        self.last_prompt_id: Optional[str] = None
        self.sockets_metadata: dict = {}
        self.events: list[tuple[Any, Any, Any]] = []
        try:
            from app.node_replace_manager import NodeReplaceManager  # type: ignore

            self.node_replace_manager: Any = NodeReplaceManager()
        except Exception:  # pragma: no cover - depends on ComfyUI version
            self.node_replace_manager = _NoopReplaceManager()

    def send_sync(self, event: Any, data: Any, sid: Any = None) -> None:
        self.events.append((event, data, sid))

    def send_progress_text(self, text: Any, node_id: Any, sid: Any = None) -> None:
        self.events.append(("progress_text", {"text": text, "node": node_id}, sid))

    def queue_updated(self) -> None:
        pass


_initialised: dict[str, Any] = {}


def init_comfyui(
    comfy_path: Optional[str] = None,
    *,
    init_custom_nodes: bool = False,
    init_api_nodes: bool = True,
) -> Any:
    """Import ComfyUI from ``comfy_path`` in CPU mode and load all its nodes.

    Safe to call repeatedly; only the first call does work (a second call with
    a different path raises, since one process can only host one ComfyUI).
    Returns ComfyUI's ``nodes`` module.
    """
    comfy_path = os.path.abspath(comfy_path or find_comfyui())
    if _initialised:
        if _initialised["path"] != comfy_path:
            raise RuntimeError(
                f"ComfyUI already initialised from {_initialised['path']!r}; "
                f"cannot switch to {comfy_path!r} in the same process"
            )
        return _initialised["nodes"]
    if not _looks_like_comfyui(comfy_path):
        raise ComfyUINotFound(f"{comfy_path!r} is not a ComfyUI checkout")

    # ComfyUI's top-level modules (nodes, server, execution, utils, ...) must
    # win over same-named ones elsewhere on sys.path -- this pack has its own
    # ``nodes`` package, for instance.
    for name in ("nodes", "utils", "server", "execution", "folder_paths"):
        module = sys.modules.get(name)
        origin = os.path.abspath(getattr(module, "__file__", None) or "") if module else ""
        if module is not None and not origin.startswith(comfy_path + os.sep):
            raise RuntimeError(
                f"a module named {name!r} from {origin or module!r} is already imported, so "
                f"ComfyUI's own {name!r} cannot be loaded in this process; run these tests "
                "in a separate pytest process")
    while comfy_path in sys.path:
        sys.path.remove(comfy_path)
    sys.path.insert(0, comfy_path)

    # CPU mode has to be chosen before comfy.model_management is imported.
    # comfy.cli_args parses an empty argv unless enable_args_parsing() was
    # called, so pytest's own arguments never reach ComfyUI's parser.
    import comfy.options  # noqa: F401
    import comfy.cli_args

    if "comfy.model_management" in sys.modules:
        if not comfy.cli_args.args.cpu:
            log.warning("comfy.model_management was imported before init_comfyui(); "
                        "CPU mode could not be forced")
    else:
        comfy.cli_args.args.cpu = True

    # nodes.py puts ComfyUI/comfy/ at the front of sys.path, after which
    # "import utils" finds comfy/utils.py instead of the ComfyUI/utils package.
    # main.py avoids that by importing the package first; so do we.
    importlib.import_module("utils.install_util")
    importlib.import_module("utils.extra_config")

    try:
        import server

        if getattr(server.PromptServer, "instance", None) is None:
            server.PromptServer.instance = StubServer()
    except Exception as exc:  # pragma: no cover - depends on ComfyUI version
        log.warning("could not install a PromptServer stub: %s", exc)

    import nodes

    if init_custom_nodes:
        import hook_breaker_ac10a0

        hook_breaker_ac10a0.save_functions()
    try:
        asyncio.run(
            nodes.init_extra_nodes(
                init_custom_nodes=init_custom_nodes, init_api_nodes=init_api_nodes
            )
        )
    finally:
        if init_custom_nodes:
            hook_breaker_ac10a0.restore_functions()

    _initialised.update(path=comfy_path, nodes=nodes)
    return nodes


# ---------------------------------------------------------------------------
# /object_info equivalent
# ---------------------------------------------------------------------------


def _v1_node_info(name: str, cls: Any, display_names: dict) -> dict:
    """Describe a classic (V1) node class the way ``/object_info`` does."""
    input_types = cls.INPUT_TYPES()
    return_types = list(cls.RETURN_TYPES)
    info = {
        "input": input_types,
        "input_order": {section: list(spec) for section, spec in input_types.items()},
        "is_input_list": getattr(cls, "INPUT_IS_LIST", False),
        "output": return_types,
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(return_types))),
        "output_name": list(getattr(cls, "RETURN_NAMES", return_types)),
        "name": name,
        "display_name": display_names.get(name, name),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
        "has_intermediate_output": getattr(cls, "HAS_INTERMEDIATE_OUTPUT", False) is True,
        "search_aliases": getattr(cls, "SEARCH_ALIASES", []),
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
    for flag, key in (("DEPRECATED", "deprecated"), ("EXPERIMENTAL", "experimental"),
                      ("DEV_ONLY", "dev_only")):
        if getattr(cls, flag, False):
            info[key] = True
    if hasattr(cls, "API_NODE"):
        info["api_node"] = cls.API_NODE
    if hasattr(cls, "ESSENTIALS_CATEGORY"):
        info["essentials_category"] = cls.ESSENTIALS_CATEGORY
    return info


def node_schemas_from_comfy(node_class_mappings: Optional[dict] = None) -> dict:
    """Build ``{class_type: info}`` like the server's ``GET /object_info``.

    V3 nodes describe themselves through ComfyUI's own ``GET_NODE_INFO_V1()``;
    classic nodes are described from their class attributes, with the same keys
    the server uses.  Nodes whose description raises are logged and skipped,
    just like the server does.
    """
    import nodes

    mappings = nodes.NODE_CLASS_MAPPINGS if node_class_mappings is None else node_class_mappings
    try:
        from comfy_api.internal import _ComfyNodeInternal  # type: ignore
    except Exception:  # pragma: no cover - very old ComfyUI
        _ComfyNodeInternal = ()  # type: ignore[assignment]

    schemas: dict[str, dict] = {}
    for name, cls in mappings.items():
        try:
            if _ComfyNodeInternal and isinstance(cls, type) and issubclass(cls, _ComfyNodeInternal):
                info = cls.GET_NODE_INFO_V1()
            else:
                info = _v1_node_info(name, cls, nodes.NODE_DISPLAY_NAME_MAPPINGS)
            # Go through JSON like the HTTP route does: tuples become lists and
            # str-based enums (used as V3 combo options) become plain strings.
            schemas[name] = json.loads(json.dumps(info, default=str))
        except Exception:
            log.exception("could not describe node %r", name)
    return schemas


# ---------------------------------------------------------------------------
# Small helpers on schema specs
# ---------------------------------------------------------------------------


def spec_type(spec: Any) -> str:
    """The type of an input spec (``["INT", {...}]``); legacy combo lists -> COMBO."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return "*"
    head = spec[0]
    if isinstance(head, (list, tuple)):
        return "COMBO"
    return str(head)


def spec_options(spec: Any) -> dict:
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def combo_choices(spec: Any) -> list:
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], (list, tuple)):
        return list(spec[0])
    return list(spec_options(spec).get("options") or [])


def ordered_inputs(input_section: dict, input_order: Optional[dict] = None) -> list[tuple[str, Any, bool]]:
    """``(name, spec, optional)`` for required then optional inputs.

    Follows ``input_order`` when given (as the frontend does), then appends any
    input missing from it.  Hidden inputs never get a widget or socket.
    """
    result: list[tuple[str, Any, bool]] = []
    seen: set[str] = set()
    for section, optional in (("required", False), ("optional", True)):
        specs = input_section.get(section) or {}
        names = list((input_order or {}).get(section) or []) or list(specs)
        for name in names:
            if name in specs and name not in seen:
                result.append((name, specs[name], optional))
                seen.add(name)
        for name, spec in specs.items():
            if name not in seen:
                result.append((name, spec, optional))
                seen.add(name)
    return result


def default_widget_value(spec: Any) -> Any:
    """The value a freshly created frontend widget would hold."""
    opts = spec_options(spec)
    if "default" in opts:
        return copy.deepcopy(opts["default"])
    typ = spec_type(spec)
    if typ == DYNAMIC_COMBO:
        choices = [o.get("key") for o in opts.get("options") or []]
        return choices[0] if choices else None
    if typ == "COMBO":
        choices = combo_choices(spec)
        return choices[0] if choices else None
    return {"INT": 0, "FLOAT": 0, "BOOLEAN": False, "STRING": ""}.get(typ)


def types_compatible(a: Any, b: Any) -> bool:
    """LiteGraph-style type check: ``*``/empty match anything; ``A,B`` lists intersect."""
    if not a or not b or a == "*" or b == "*":
        return True
    a_set = {t.strip().lower() for t in str(a).split(",") if t.strip()}
    b_set = {t.strip().lower() for t in str(b).split(",") if t.strip()}
    return bool(a_set & b_set) or "*" in a_set or "*" in b_set


def _lookup_input_spec(info: dict, name: str) -> Optional[Any]:
    """Find the spec of input ``name``, including V3 dynamic names.

    ``"resize_type.width"`` is a sub-input of a DynamicCombo, and
    ``"images.image0"`` a slot grown from an Autogrow template.
    """
    sections = info.get("input") or {}
    for section in ("required", "optional", "hidden"):
        spec = (sections.get(section) or {}).get(name)
        if spec is not None:
            return spec
    if "." not in name:
        return None
    parent, rest = name.split(".", 1)
    parent_spec = _lookup_input_spec(info, parent)
    if parent_spec is None:
        return None
    typ, opts = spec_type(parent_spec), spec_options(parent_spec)
    if typ == DYNAMIC_COMBO:
        for option in opts.get("options") or []:
            found = _lookup_input_spec({"input": option.get("inputs") or {}}, rest)
            if found is not None:
                return found
    if typ == AUTOGROW:
        template_inputs = (opts.get("template") or {}).get("input") or {}
        specs = [s for sec in ("required", "optional") for s in (template_inputs.get(sec) or {}).values()]
        if len(specs) == 1:
            return specs[0]
    return None


def _input_type_for_link(spec: Any) -> str:
    typ = spec_type(spec)
    if typ == MATCHTYPE:
        return str((spec_options(spec).get("template") or {}).get("allowed_types") or "*")
    return typ


# ---------------------------------------------------------------------------
# Widget value mapping
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WidgetSlot:
    """One entry of a node's ``widgets_values`` list.

    ``kind`` is ``"value"`` (sent to the backend as input ``name``),
    ``"control"`` (control_after_generate), ``"filter"`` (combo filter list),
    ``"legacy"`` (a forceInput widget kept by old frontends) or ``"ui"``.
    ``optional``: the widget's input is in the schema's ``optional`` section.
    """

    name: str
    kind: str
    spec: Any = None
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class LayoutVariant:
    """Frontend behaviours that changed between versions.

    ``combo_filter``: combos with control_after_generate also get a
    "control_filter_list" widget (current frontends do).
    ``upload_widget``: media-upload combos get a trailing "upload" widget.
    ``legacy_force_input``: old frontends kept a widget for forceInput inputs.
    ``refresh_button``: remote combos with ``refresh_button`` get a button
    widget right after them (not seen in any shipped template; a guess).
    """

    combo_filter: bool = True
    upload_widget: bool = True
    legacy_force_input: bool = False
    refresh_button: bool = True


#: Tried in this order; the first layout whose length matches wins.
_VARIANTS = [
    LayoutVariant(cf, up, lf, rb)
    for lf in (False, True)
    for rb in (True, False)
    for cf in (True, False)
    for up in (True, False)
]


def has_control_widget(name: str, typ: str, opts: dict) -> bool:
    """Whether the frontend adds a control_after_generate widget after this one."""
    explicit = opts.get("control_after_generate")
    if typ == "INT":
        if explicit is None:
            return name in ("seed", "noise_seed")
        return bool(explicit)
    if typ == "COMBO":
        return bool(explicit)
    return False


def widget_layout(info: dict, node: dict, value_at: Callable[[int, str], Any],
                   variant: LayoutVariant) -> list[WidgetSlot]:
    """The list of widgets the frontend creates for ``node``, in order.

    ``value_at(position, name)`` returns the saved value of a widget (needed
    because a DynamicCombo's sub-widgets depend on the selected option).
    """
    slots: list[WidgetSlot] = []
    ui_input_names = [str(i.get("name")) for i in node.get("inputs") or [] if isinstance(i, dict)]

    def visit(inputs: list[tuple[str, Any, bool]], prefix: str, parent_optional: bool = False) -> None:
        for raw_name, spec, optional in inputs:
            name = prefix + raw_name
            optional = optional or parent_optional
            typ, opts = spec_type(spec), spec_options(spec)
            if typ == AUTOGROW:
                template = (opts.get("template") or {}).get("input") or {}
                tspecs = [s for sec in ("required", "optional") for s in (template.get(sec) or {}).values()]
                if len(tspecs) == 1 and spec_type(tspecs[0]) in VALUE_WIDGET_TYPES:
                    for ui_name in ui_input_names:
                        if ui_name.startswith(name + "."):
                            slots.append(WidgetSlot(ui_name, "value", tspecs[0], optional))
                continue
            if typ == MATCHTYPE:
                continue
            widget_type = str(opts.get("widgetType") or typ)
            if widget_type in UI_ONLY_WIDGET_TYPES:
                slots.append(WidgetSlot(name, "ui", spec))
                continue
            if widget_type not in VALUE_WIDGET_TYPES:
                continue  # plain socket
            for _ in range(_LEADING_UI_WIDGETS.get(widget_type, 0)):
                slots.append(WidgetSlot(name, "ui"))
            if opts.get("forceInput"):
                if variant.legacy_force_input:
                    slots.append(WidgetSlot(name, "legacy", spec))
                    if has_control_widget(name, typ, opts):
                        slots.append(WidgetSlot(name, "control"))
                continue
            slots.append(WidgetSlot(name, "value", spec, optional))
            if typ == DYNAMIC_COMBO:
                chosen = value_at(len(slots) - 1, name)
                if chosen is None:
                    chosen = default_widget_value(spec)
                for option in opts.get("options") or []:
                    if str(option.get("key")) == str(chosen):
                        visit(ordered_inputs(option.get("inputs") or {}), name + ".", optional)
                        break
                continue
            remote = opts.get("remote")
            if typ == "COMBO" and isinstance(remote, dict) and remote.get("refresh_button") \
                    and variant.refresh_button:
                slots.append(WidgetSlot(name, "ui"))
            if has_control_widget(name, typ, opts):
                slots.append(WidgetSlot(name, "control"))
                if typ == "COMBO" and variant.combo_filter:
                    slots.append(WidgetSlot(name, "filter"))

    sections = info.get("input") or {}
    ordered = ordered_inputs(sections, info.get("input_order"))
    visit(ordered, "")

    if variant.upload_widget:
        media = any(
            spec_type(spec) == "COMBO" and any(spec_options(spec).get(k) for k in _MEDIA_UPLOAD_OPTIONS)
            for _, spec, optional in ordered if not optional
        )
        audio = bool(spec_options((sections.get("required") or {}).get("audio")).get("audio_upload"))
        if (media or audio) and not any(s.name == "upload" for s in slots):
            slots.append(WidgetSlot("upload", "ui"))
    return slots


def _describe(node: dict, exec_id: Optional[str] = None) -> str:
    title = node.get("title")
    label = f"#{exec_id or node.get('id')} {node.get('type')!s}"
    return f"{label} ({title!r})" if title and title != node.get("type") else label


def _missing_widget_values(node: dict, exec_id: str, missing: list[WidgetSlot], strict: bool,
                           why: str) -> dict[str, Any]:
    """Values for value widgets a saved workflow has no entry for.

    Such widgets were usually added to the node after the workflow was saved (CreateVideo's ``bit_depth``, say).
    The frontend keeps what a freshly created widget holds, i.e. the input's default, and so does this function,
    logging a warning. With ``strict`` only a *declared* default is used: an optional input without one is left
    out of the prompt (the node then applies its own default, as for any optional input not given), and a
    required one raises :class:`ValueError` naming the widget.
    """
    out: dict[str, Any] = {}
    filled: list[str] = []
    undefined: list[str] = []
    for slot in missing:
        opts = spec_options(slot.spec)
        if "default" in opts or not strict:
            out[slot.name] = default_widget_value(slot.spec)
            filled.append(f"{slot.name}={out[slot.name]!r}")
        elif not slot.optional:
            undefined.append(slot.name)
    if undefined:
        raise ValueError(f"widget count mismatch: node {_describe(node, exec_id)}: {why}, and the required "
                         f"widget(s) {undefined} declare no default to fill in")
    if filled:
        log.warning("node %s: %s; using the default of %s (as the frontend does for widgets added to a node "
                    "after the workflow was saved)", _describe(node, exec_id), why, ", ".join(filled))
    return out


def _map_widget_values(node: dict, info: dict, exec_id: str, strict: bool) -> dict[str, Any]:
    """Turn ``widgets_values`` into ``{input_name: value}`` for ``node``.

    Values the saved list does not reach get the input's default (see :func:`_missing_widget_values`); more
    values than the node has widgets is an error, except for the display-only widgets frontend extensions add.
    """
    saved = node.get("widgets_values")

    if isinstance(saved, dict):
        # Some (mostly V3/custom) nodes save a name -> value mapping.
        layout = widget_layout(info, node, lambda _pos, name: saved.get(name), LayoutVariant())
        out: dict[str, Any] = {}
        missing: list[WidgetSlot] = []
        for slot in layout:
            if slot.kind != "value":
                continue
            if slot.name in saved:
                out[slot.name] = saved[slot.name]
            else:
                missing.append(slot)
        if missing:
            out.update(_missing_widget_values(
                node, exec_id, missing, strict,
                f"widgets_values has no entry for widget(s) {[slot.name for slot in missing]}"))
        return out

    values = list(saved or [])

    def value_at(pos: int, _name: str) -> Any:
        return values[pos] if pos < len(values) else None

    layouts: list[list[WidgetSlot]] = []
    for variant in _VARIANTS:
        layout = widget_layout(info, node, value_at, variant)
        if layout not in layouts:
            layouts.append(layout)
    chosen = next((lay for lay in layouts if len(lay) == len(values)), None)
    if chosen is None:
        allowed = FRONTEND_TRAILING_WIDGETS.get(str(node.get("type")), 0)
        for lay in layouts:
            surplus = values[len(lay):]
            if surplus and (all(v is None for v in surplus) or allowed is None
                            or len(surplus) <= allowed):
                chosen = lay  # the surplus belongs to display-only widgets
                break
    if chosen is None:
        default = layouts[0]
        names = [s.name if s.kind == "value" else f"<{s.kind}:{s.name}>" for s in default]
        shown = [v if not isinstance(v, str) or len(v) <= 40 else v[:37] + "..." for v in values]
        detail = f"{len(values)} widgets_values for {len(default)} widgets {names}; values={shown!r}"
        if len(values) > len(default):
            raise ValueError(f"widget count mismatch: node {_describe(node, exec_id)}: {detail}")
        # Fewer values than widgets: the saved list ends early (typically inputs added to the node after the
        # workflow was saved); the widgets it does not reach keep their defaults, as in the frontend.
        chosen = default
        missing = [slot for slot in chosen[len(values):] if slot.kind == "value"]
        filled = _missing_widget_values(node, exec_id, missing, strict, detail)
    else:
        filled = {}

    out = {}
    for pos, slot in enumerate(chosen[:len(values)]):
        if slot.kind == "value":
            out[slot.name] = values[pos]
    out.update(filled)
    return out


def _wrap_value(value: Any) -> Any:
    """Lists are links in the API format; the frontend boxes list values."""
    if isinstance(value, (list, tuple)):
        return {"__value__": list(value)}
    return value


# ---------------------------------------------------------------------------
# Graph model
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Link:
    id: str
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: Any


def _parse_link(raw: Any, where: str) -> Optional[_Link]:
    if raw is None:
        return None
    try:
        if isinstance(raw, dict):
            return _Link(str(raw["id"]), str(raw["origin_id"]), int(raw["origin_slot"]),
                         str(raw["target_id"]), int(raw["target_slot"]), raw.get("type"))
        link_id, origin_id, origin_slot, target_id, target_slot = raw[:5]
        link_type = raw[5] if len(raw) > 5 else None
        return _Link(str(link_id), str(origin_id), int(origin_slot), str(target_id),
                     int(target_slot), link_type)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed link {raw!r} in {where}: {exc}") from None


class _Graph:
    """One graph level: the root workflow or a subgraph definition."""

    def __init__(self, data: dict, where: str, definition: Optional[dict] = None):
        self.where = where
        self.definition = definition
        self.nodes: dict[str, dict] = {}
        for node in data.get("nodes") or []:
            node_id = str(node.get("id"))
            if node_id in self.nodes:
                raise ValueError(f"duplicate node id {node_id} in {where}")
            self.nodes[node_id] = node
        self.links: dict[str, _Link] = {}
        for raw in data.get("links") or []:
            link = _parse_link(raw, where)
            if link is not None:
                self.links[link.id] = link


@dataclasses.dataclass
class _Ctx:
    """A node placed in the flattened graph (inside zero or more subgraphs)."""

    graph: _Graph
    node: dict
    path: tuple[str, ...]
    instance: Optional["_Ctx"]  # the subgraph node this node lives in
    mode: int
    definition: Optional[_Graph] = None  # set when this node is a subgraph instance

    @property
    def node_id(self) -> str:
        return str(self.node.get("id"))

    @property
    def exec_id(self) -> str:
        return ":".join(self.path + (self.node_id,))

    @property
    def type(self) -> str:
        return str(self.node.get("type"))

    @property
    def inputs(self) -> list[dict]:
        return [i for i in self.node.get("inputs") or []]

    def describe(self) -> str:
        where = f" in subgraph {self.graph.where}" if self.instance else ""
        return _describe(self.node, self.exec_id) + where


class _Resolver:
    """Follows links through reroutes, bypassed nodes and subgraph boundaries."""

    def __init__(self, workflow: dict):
        if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
            raise ValueError("not a UI-format workflow: expected a dict with a 'nodes' list")
        self.root = _Graph(workflow, "root graph")
        self.definitions: dict[str, _Graph] = {}
        for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:
            sub_id = str(sub.get("id"))
            self.definitions[sub_id] = _Graph(sub, f"{sub.get('name') or sub_id!r}", definition=sub)
        self.ctxs: dict[str, _Ctx] = {}
        self._collect(self.root, (), None, None, [])

    # -- flattening ---------------------------------------------------------

    def _collect(self, graph: _Graph, path: tuple[str, ...], instance: Optional[_Ctx],
                 forced_mode: Optional[int], stack: list[str]) -> None:
        for node in graph.nodes.values():
            mode = int(node.get("mode") or MODE_ALWAYS)
            if forced_mode is not None:
                mode = forced_mode
            ctx = _Ctx(graph, node, path, instance, mode)
            self.ctxs[ctx.exec_id] = ctx
            definition = self.definitions.get(ctx.type)
            if definition is None:
                continue
            if ctx.type in stack:
                raise ValueError(f"subgraph {definition.where} contains itself (via node {ctx.describe()})")
            ctx.definition = definition
            # Everything inside a muted or bypassed subgraph node is left out;
            # a bypassed one is then skipped over by its consumers.
            inner_mode = MODE_NEVER if mode in (MODE_NEVER, MODE_BYPASS) else forced_mode
            self._collect(definition, path + (ctx.node_id,), ctx, inner_mode, stack + [ctx.type])

    def lookup(self, path: tuple[str, ...], node_id: str, link: _Link, graph: _Graph) -> _Ctx:
        ctx = self.ctxs.get(":".join(path + (node_id,)))
        if ctx is None:
            raise ValueError(
                f"dangling link {link.id} in {graph.where}: node {node_id} "
                f"(link {link.origin_id}:{link.origin_slot} -> {link.target_id}:{link.target_slot}) "
                "does not exist")
        return ctx

    # -- resolution ---------------------------------------------------------
    # Results: None (nothing connected), ("link", exec_id, slot) or ("value", v)

    def resolve_input(self, ctx: _Ctx, slot: int, visited: set, want_type: Any = None):
        key = (ctx.exec_id, "in", slot)
        if key in visited:
            raise ValueError(f"link cycle through input {slot} of node {ctx.describe()}")
        visited.add(key)
        inputs = ctx.inputs
        if not 0 <= slot < len(inputs):
            raise ValueError(f"node {ctx.describe()} has no input slot {slot}")
        ui_input = inputs[slot]
        link_id = ui_input.get("link")
        if link_id is None:
            return None
        link = ctx.graph.links.get(str(link_id))
        if link is None:
            raise ValueError(
                f"dangling link: input {ui_input.get('name')!r} of node {ctx.describe()} "
                f"refers to link {link_id}, which is not in the links list")
        if link.origin_id == SUBGRAPH_INPUT_NODE_ID:
            if ctx.instance is None:
                raise ValueError(f"link {link.id} comes from a subgraph input but node "
                                 f"{ctx.describe()} is not inside a subgraph")
            return self.resolve_subgraph_input(ctx.instance, link.origin_slot, visited)
        origin = self.lookup(ctx.path, link.origin_id, link, ctx.graph)
        return self.resolve_output(origin, link.origin_slot, want_type or ui_input.get("type"), visited)

    def resolve_output(self, ctx: _Ctx, slot: int, want_type: Any, visited: set):
        key = (ctx.exec_id, "out", slot)
        if key in visited:
            raise ValueError(f"link cycle through output {slot} of node {ctx.describe()}")
        visited.add(key)

        if ctx.mode == MODE_BYPASS:
            index = _bypass_input_index(ctx.node, slot, want_type)
            if index < 0:
                return None
            return self.resolve_input(ctx, index, visited)
        if ctx.definition is not None:
            return self.resolve_subgraph_output(ctx, slot, want_type, visited)
        if ctx.type in REROUTE_NODE_TYPES:
            if not ctx.inputs:
                return None
            return self.resolve_input(ctx, min(slot, len(ctx.inputs) - 1), visited, want_type)
        if ctx.type in PRIMITIVE_NODE_TYPES:
            # The frontend copies the primitive's value into the target widget.
            values = ctx.node.get("widgets_values")
            if isinstance(values, list) and values:
                return ("value", values[0])
            return None
        if ctx.type in NOTE_NODE_TYPES:
            return None
        # A real node (muted ones too: their consumers are pruned later).
        return ("link", ctx.exec_id, slot)

    def resolve_subgraph_output(self, ctx: _Ctx, slot: int, want_type: Any, visited: set):
        definition = ctx.definition
        assert definition is not None
        inner = _inner_output_link(definition, slot)
        if inner is None:
            return None
        if inner.origin_id == SUBGRAPH_INPUT_NODE_ID:  # input passed straight through
            return self.resolve_subgraph_input(ctx, inner.origin_slot, visited)
        origin = self.lookup(ctx.path + (ctx.node_id,), inner.origin_id, inner, definition)
        return self.resolve_output(origin, inner.origin_slot, want_type, visited)

    def resolve_subgraph_input(self, instance: _Ctx, def_slot: int, visited: set):
        """Value of input ``def_slot`` of a subgraph *definition*, seen from ``instance``."""
        definition = instance.definition
        assert definition is not None
        def_inputs = (definition.definition or {}).get("inputs") or []
        index = _instance_input_index(instance.node, def_inputs, def_slot)
        if index is not None and instance.inputs[index].get("link") is not None:
            return self.resolve_input(instance, index, visited)
        found, value = _promoted_widget_value(instance.node, def_inputs, def_slot, index)
        if found:
            return ("value", value)
        return None  # inner node keeps its own widget value


def _bypass_input_index(node: dict, out_slot: int, want_type: Any) -> int:
    """Which input a bypassed node forwards to its output ``out_slot``.

    Same preference order as the frontend: the input at the same index if its
    type fits, else the first input of exactly the wanted type, else the first
    compatible one.  ``-1`` when nothing fits.
    """
    inputs = [i for i in node.get("inputs") or [] if isinstance(i, dict)]
    outputs = node.get("outputs") or []
    if not inputs:
        return -1
    out_type = outputs[out_slot].get("type") if 0 <= out_slot < len(outputs) else "*"
    if want_type in (None, "", "*"):
        return out_slot if out_slot < len(inputs) else 0
    if out_slot < len(inputs):
        same = inputs[out_slot].get("type")
        if types_compatible(same, out_type) and types_compatible(same, want_type):
            return out_slot
    for i, inp in enumerate(inputs):
        if inp.get("type") == want_type:
            return i
    for i, inp in enumerate(inputs):
        if types_compatible(inp.get("type"), out_type) and types_compatible(inp.get("type"), want_type):
            return i
    return -1


def _inner_output_link(definition: _Graph, slot: int) -> Optional[_Link]:
    """The link inside ``definition`` that feeds its output ``slot``."""
    outputs = (definition.definition or {}).get("outputs") or []
    if 0 <= slot < len(outputs):
        for link_id in outputs[slot].get("linkIds") or []:
            link = definition.links.get(str(link_id))
            if link is not None:
                return link
    for link in definition.links.values():
        if link.target_id == SUBGRAPH_OUTPUT_NODE_ID and link.target_slot == slot:
            return link
    return None


def _instance_input_index(instance_node: dict, def_inputs: list, def_slot: int) -> Optional[int]:
    """Index in the instance node's ``inputs`` matching definition input ``def_slot``.

    The frontend rebuilds a subgraph node's inputs from its definition and
    re-attaches the saved ones by name (and type), so saved instances may list
    fewer inputs, in another order.
    """
    if not 0 <= def_slot < len(def_inputs):
        return None
    wanted = def_inputs[def_slot]
    inputs = [i for i in instance_node.get("inputs") or []]
    for i, inp in enumerate(inputs):
        if inp.get("name") == wanted.get("name") and inp.get("type") == wanted.get("type"):
            return i
    for i, inp in enumerate(inputs):
        if inp.get("name") == wanted.get("name"):
            return i
    if len(inputs) == len(def_inputs):
        return def_slot
    return None


def _promoted_widget_value(instance_node: dict, def_inputs: list, def_slot: int,
                           index: Optional[int]) -> tuple[bool, Any]:
    """The value a subgraph node's promoted widget holds for an unlinked input.

    Newer frontends list promoted widgets in ``properties.proxyWidgets`` as
    ``[source_node_id, widget_name]`` pairs (``"-1"`` = the subgraph input of
    that name) parallel to ``widgets_values``; older ones save one value per
    input that carries a ``widget``.  A missing or ``null`` value means the
    widget was never changed on the instance, so the inner node's own value
    applies.
    """
    values = instance_node.get("widgets_values")
    if not isinstance(values, list) or not values or not 0 <= def_slot < len(def_inputs):
        return False, None
    name = def_inputs[def_slot].get("name")
    proxies = (instance_node.get("properties") or {}).get("proxyWidgets")
    if isinstance(proxies, list) and proxies:
        for pos, entry in enumerate(proxies):
            if (isinstance(entry, (list, tuple)) and len(entry) >= 2 and str(entry[0]) == "-1"
                    and entry[1] == name and pos < len(values) and values[pos] is not None):
                return True, values[pos]
        return False, None
    widget_inputs = [i for i in instance_node.get("inputs") or [] if i.get("widget")]
    if index is None or len(widget_inputs) != len(values):
        return False, None
    target = (instance_node.get("inputs") or [])[index]
    for pos, inp in enumerate(widget_inputs):
        if inp is target and values[pos] is not None:
            return True, values[pos]
    return False, None


# ---------------------------------------------------------------------------
# UI -> API conversion
# ---------------------------------------------------------------------------


def ui_to_api(workflow: dict, schemas: dict, *, strict: bool = False) -> dict:
    """Convert a UI-format workflow into an API prompt, like the frontend does.

    ``schemas`` is ``/object_info``-shaped (see :func:`node_schemas_from_comfy`).

    * Widget values are matched to input names in schema order, skipping the
      extra ``control_after_generate`` (and combo filter) widgets and the
      "upload" widget of media loaders.  A dict ``widgets_values`` is read by
      name.  List values are boxed as ``{"__value__": [...]}``.
    * A widget whose input is linked still has a saved value; the link wins.
    * Muted nodes (mode 2) are dropped and their consumers lose that input;
      bypassed nodes (mode 4) are skipped by wiring each consumer to the
      bypassed node's input of a matching type.
    * Reroute, PrimitiveNode, Note and MarkdownNote nodes are dropped;
      a PrimitiveNode's value is written into the inputs it feeds.
    * Subgraph nodes are expanded; inner nodes get ids ``"<outer>:<inner>"``.

    A node that saved fewer widget values than it now has widgets (a workflow
    saved before the node gained an input) gets the inputs' defaults for the
    rest, as in the frontend, and a warning is logged.  With ``strict=False``
    (the frontend's behaviour) an input without a declared default gets what
    a fresh widget holds (0, "", the first option); ``strict=True`` uses only
    declared defaults, leaves out optional inputs without one and raises for
    required ones.  Unknown node types, dangling links and surplus widget
    values always raise :class:`ValueError`.
    """
    resolver = _Resolver(workflow)
    prompt: dict[str, dict] = {}

    for exec_id, ctx in resolver.ctxs.items():
        if ctx.definition is not None or ctx.type in VIRTUAL_NODE_TYPES:
            continue
        if ctx.mode in (MODE_NEVER, MODE_BYPASS):
            continue
        info = schemas.get(ctx.type)
        if info is None:
            raise ValueError(
                f"unknown node type {ctx.type!r} (node {ctx.describe()}): no such node is loaded "
                "in ComfyUI (custom node pack missing or failed to import?), and it is neither "
                "a frontend-only node nor a subgraph in definitions.subgraphs")

        inputs: dict[str, Any] = {}
        for name, value in _map_widget_values(ctx.node, info, exec_id, strict).items():
            inputs[name] = _wrap_value(value)

        for slot, ui_input in enumerate(ctx.inputs):
            name = ui_input.get("name")
            if not name:
                continue
            resolved = resolver.resolve_input(ctx, slot, set())
            if resolved is None:
                continue
            if resolved[0] == "value":
                inputs[name] = _wrap_value(resolved[1])
            else:
                inputs[name] = [resolved[1], resolved[2]]

        prompt[exec_id] = {
            "inputs": inputs,
            "class_type": ctx.type,
            "_meta": {"title": ctx.node.get("title") or info.get("display_name") or ctx.type},
        }

    # Inputs fed by nodes that were left out (muted, or a bypass that found
    # nothing) disappear, exactly like in the frontend.
    for entry in prompt.values():
        for name in [n for n, v in entry["inputs"].items()
                     if isinstance(v, list) and len(v) == 2 and v[0] not in prompt]:
            del entry["inputs"][name]
    return prompt


# ---------------------------------------------------------------------------
# Link validation
# ---------------------------------------------------------------------------


def _output_type(node: dict, slot: int, schemas: dict, definitions: dict) -> Any:
    node_type = str(node.get("type"))
    info = schemas.get(node_type)
    if info is not None and node_type not in VIRTUAL_NODE_TYPES and node_type not in definitions:
        outputs = info.get("output") or []
        if 0 <= slot < len(outputs):
            out = outputs[slot]
            if isinstance(out, (list, tuple)):
                return "COMBO"
            # A V3 MatchType output takes the type of whatever is connected.
            return "*" if out == MATCHTYPE else out
        return None
    ui_outputs = node.get("outputs") or []
    if 0 <= slot < len(ui_outputs):
        return ui_outputs[slot].get("type")
    return None


def _target_type(node: dict, slot: int, schemas: dict, definitions: dict) -> tuple[Any, Optional[str]]:
    ui_inputs = node.get("inputs") or []
    ui_input = ui_inputs[slot]
    name = ui_input.get("name")
    node_type = str(node.get("type"))
    info = schemas.get(node_type)
    if info is not None and node_type not in VIRTUAL_NODE_TYPES and node_type not in definitions:
        spec = _lookup_input_spec(info, str(name))
        if spec is not None:
            return _input_type_for_link(spec), name
    return ui_input.get("type"), name


def find_link_problems(workflow: dict, schemas: dict, *, include_stale: bool = False) -> list[str]:
    """Describe every link whose type disagrees with its endpoints.

    Checks the link's declared type, the source output type and the target
    input type pairwise (``*`` matches anything, ``A,B`` means either).  Types
    come from ``schemas`` when the node is a known backend node, else from
    the UI slot.  Links from missing nodes or slots are reported too.

    A link that no input refers to (e.g. its target node was deleted) is a
    harmless leftover the frontend ignores; it is only reported with
    ``include_stale=True``.  As in the frontend, the target slot is taken
    from the input that refers to the link, not from the link record.
    """
    problems: list[str] = []
    root = _Graph(workflow, "root graph")
    graphs = [root]
    definitions: dict[str, dict] = {}
    for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:
        definitions[str(sub.get("id"))] = sub
        graphs.append(_Graph(sub, f"subgraph {sub.get('name') or sub.get('id')!r}", definition=sub))

    for graph in graphs:
        io = graph.definition or {}
        for link in graph.links.values():
            label = f"link {link.id} ({link.origin_id}:{link.origin_slot} -> " \
                    f"{link.target_id}:{link.target_slot}, {link.type}) in {graph.where}"
            if link.origin_id == SUBGRAPH_INPUT_NODE_ID:
                def_inputs = io.get("inputs") or []
                if not 0 <= link.origin_slot < len(def_inputs):
                    problems.append(f"{label}: subgraph has no input {link.origin_slot}")
                    continue
                src_type = def_inputs[link.origin_slot].get("type")
            else:
                origin = graph.nodes.get(link.origin_id)
                if origin is None:
                    problems.append(f"{label}: source node {link.origin_id} does not exist")
                    continue
                src_type = _output_type(origin, link.origin_slot, schemas, definitions)
                if src_type is None:
                    problems.append(f"{label}: source node {_describe(origin)} has no output "
                                    f"{link.origin_slot}")
                    continue
            if link.target_id == SUBGRAPH_OUTPUT_NODE_ID:
                def_outputs = io.get("outputs") or []
                if not 0 <= link.target_slot < len(def_outputs):
                    problems.append(f"{label}: subgraph has no output {link.target_slot}")
                    continue
                dst_type, dst_name = def_outputs[link.target_slot].get("type"), "subgraph output"
            else:
                target = graph.nodes.get(link.target_id)
                slots = [i for i, inp in enumerate((target or {}).get("inputs") or [])
                         if str(inp.get("link")) == link.id]
                if not slots:
                    if include_stale:
                        problems.append(f"{label}: stale link, no input of node "
                                        f"{link.target_id} refers to it")
                    continue
                dst_type, dst_name = _target_type(target, slots[0], schemas, definitions)
            for what, a, b in (("link type vs source output", link.type, src_type),
                               ("link type vs target input", link.type, dst_type),
                               ("source output vs target input", src_type, dst_type)):
                if not types_compatible(a, b):
                    problems.append(f"{label}: {what} mismatch ({a!r} vs {b!r}; "
                                    f"target input {dst_name!r})")
                    break
    return problems


def validate_links(workflow: dict, schemas: dict, *, include_stale: bool = False) -> int:
    """Raise :class:`ValueError` listing all bad links; return how many links there are."""
    problems = find_link_problems(workflow, schemas, include_stale=include_stale)
    if problems:
        raise ValueError("invalid links:\n  " + "\n  ".join(problems))
    count = len([l for l in workflow.get("links") or [] if l is not None])
    for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:
        count += len([l for l in sub.get("links") or [] if l is not None])
    return count


# ---------------------------------------------------------------------------
# Validating and running API prompts in-process
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class PromptRunResult:
    """Outcome of :func:`run_api_prompt`.

    ``success``: validation passed and the executor reported success.
    ``outputs``: the history "outputs" (``{node_id: ui_dict}``) of output nodes.
    ``errors``: human-readable validation / execution error messages.
    ``validation``: the raw ``execution.validate_prompt`` tuple.
    ``messages``: the executor's ``status_messages`` (``(event, data)``).
    ``events``: everything sent to the stub server.
    """

    success: bool
    outputs: dict
    errors: list[str]
    validation: Any = None
    messages: list = dataclasses.field(default_factory=list)
    events: list = dataclasses.field(default_factory=list)

    def __iter__(self):  # allows ``success, outputs, errors = run_api_prompt(...)``
        return iter((self.success, self.outputs, self.errors))


class ClassicCacheArgs(dict):
    """``cache_args`` for an in-process ``PromptExecutor`` with classic caching, on any ComfyUI version.

    ``PromptExecutor`` reads its cache arguments by key (``cache_args["ram"]``), and ComfyUI adds keys now and then
    (``"lru"`` and ``"ram"`` in v0.19, ``"ram_inactive"`` by v0.27), each filled in by its own ``main.py``. Every
    one so far is a cache size or a RAM headroom in GiB for which 0 means "none", which is what classic caching
    (keep the last run's outputs, nothing else) means too; so a key this module does not set reads as 0 instead
    of raising ``KeyError``. The keys read that way are recorded in :attr:`defaulted`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.defaulted: set = set()

    def __missing__(self, key: Any) -> int:
        if key not in self.defaulted:
            log.debug("PromptExecutor read cache argument %r, which run_api_prompt does not set: 0", key)
            self.defaulted.add(key)
        return 0


def validate_api_prompt(prompt: dict, prompt_id: Optional[str] = None):
    """Run ``execution.validate_prompt`` synchronously.

    Returns ComfyUI's tuple ``(ok, error, good_output_ids, node_errors)``.
    """
    import execution

    return asyncio.run(execution.validate_prompt(prompt_id or str(uuid.uuid4()), prompt, None))


def validation_error_messages(validation: Any) -> list[str]:
    """Flatten a ``validate_prompt`` result into readable strings."""
    ok, error, _outputs, node_errors = validation
    messages: list[str] = []
    if error and not ok:
        messages.append(f"{error.get('type')}: {error.get('message')}: {error.get('details', '')}".rstrip(": "))
    for node_id, entry in (node_errors or {}).items():
        for err in entry.get("errors", []):
            messages.append(f"node {node_id} ({entry.get('class_type')}): {err.get('type')}: "
                            f"{err.get('message')}: {err.get('details', '')}")
    return messages


def run_api_prompt(prompt: dict, *, prompt_id: Optional[str] = None,
                   extra_data: Optional[dict] = None) -> PromptRunResult:
    """Validate ``prompt`` and, if valid, execute it with ``PromptExecutor``.

    ComfyUI must already be initialised (:func:`init_comfyui`).  Runs
    synchronously (the executor drives its own event loop), so don't call it
    from inside a running asyncio loop.  Nothing is raised for bad prompts:
    inspect ``result.success`` and ``result.errors``.
    """
    import execution

    prompt_id = prompt_id or str(uuid.uuid4())
    prompt = copy.deepcopy(prompt)
    validation = validate_api_prompt(prompt, prompt_id)
    if not validation[0]:
        return PromptRunResult(False, {}, validation_error_messages(validation) or ["invalid prompt"],
                               validation=validation)

    server = StubServer()
    server.last_prompt_id = prompt_id
    executor = execution.PromptExecutor(
        server, cache_type=execution.CacheType.CLASSIC, cache_args=ClassicCacheArgs(lru=0, ram=0)
    )
    executor.execute(prompt, prompt_id, dict(extra_data or {}), validation[2])

    errors: list[str] = []
    for event, data in executor.status_messages:
        if event == "execution_error":
            errors.append(f"node {data.get('node_id')} ({data.get('node_type')}): "
                          f"{data.get('exception_type')}: {data.get('exception_message')}")
        elif event == "execution_interrupted":
            errors.append(f"execution interrupted at node {data.get('node_id')}")
    history = getattr(executor, "history_result", None) or {}
    return PromptRunResult(
        success=bool(executor.success) and not errors,
        outputs=dict(history.get("outputs") or {}),
        errors=errors,
        validation=validation,
        messages=list(executor.status_messages),
        events=server.events,
    )
