"""Tests for devtools/workflow_graph.py against a real ComfyUI (CPU mode, in-process).

Three groups:

* real UI workflows from the installed ``comfyui_workflow_templates`` packages, converted and
  checked with ComfyUI's own ``execution.validate_prompt`` (no model files are installed, so
  "model file not in list" / "invalid image file" are the only errors allowed);
* tiny hand-written UI workflows, one per frontend behaviour (control_after_generate, linked
  widgets, mute, bypass, reroute, primitive, notes, subgraphs, dict widgets_values) plus the
  error cases;
* one workflow that is converted and actually executed with ``PromptExecutor``.
"""

import json
import os

import pytest

from devtools import workflow_graph as wt

MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


@pytest.fixture(scope="module")
def schemas(comfyui):
    return wt.node_schemas_from_comfy()


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def load_template(template_id):
    """A UI workflow shipped in the comfyui_workflow_templates packages (skip if absent)."""
    templates = pytest.importorskip("comfyui_workflow_templates")
    try:
        path = templates.get_asset_path(template_id, f"{template_id}.json")
    except Exception as exc:  # KeyError for an unknown template, missing bundle, ...
        pytest.skip(f"template {template_id!r} not installed: {exc}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def unexpected_validation_errors(validation):
    """validate_prompt errors other than the ones caused by absent model / input files."""
    ok, error, _good, node_errors = validation
    unexpected = []
    for node_id, entry in node_errors.items():
        for err in entry["errors"]:
            info = err.get("extra_info") or {}
            received = str(info.get("received_value", ""))
            if err["type"] == "value_not_in_list" and received.lower().endswith(MODEL_FILE_SUFFIXES):
                continue  # model file not installed
            if err["type"] == "custom_validation_failed" and "Invalid" in err.get("details", "") \
                    and entry["class_type"] in ("LoadImage", "LoadVideo"):
                continue  # example input image/video not in input/
            unexpected.append((node_id, entry["class_type"], err["type"], err.get("details")))
    if not node_errors and not ok:
        unexpected.append(("-", "-", error["type"], error.get("details")))
    return unexpected


class UIWorkflow:
    """Builds small UI-format (LiteGraph 0.4) workflows for tests.

    ``node()`` takes inputs as ``(name, type)`` for sockets or ``(name, type, True)`` for a widget
    input shown as a socket (how current frontends save them), and outputs as ``(name, type)``.
    """

    def __init__(self):
        self.nodes = []
        self.links = []
        self.by_id = {}

    def node(self, node_id, node_type, widgets=None, *, inputs=(), outputs=(), mode=0, title=None):
        ui_inputs = []
        for entry in inputs:
            name, typ = entry[0], entry[1]
            slot = {"name": name, "type": typ, "link": None}
            if len(entry) > 2 and entry[2]:
                slot["widget"] = {"name": name}
            ui_inputs.append(slot)
        node = {
            "id": node_id,
            "type": node_type,
            "pos": [0, 0],
            "size": [200, 100],
            "flags": {},
            "order": len(self.nodes),
            "mode": mode,
            "inputs": ui_inputs,
            "outputs": [{"name": n, "type": t, "links": []} for n, t in outputs],
            "properties": {},
        }
        if widgets is not None:
            node["widgets_values"] = widgets
        if title:
            node["title"] = title
        self.nodes.append(node)
        self.by_id[node_id] = node
        return node

    def link(self, src, src_slot, dst, dst_input, link_type=None):
        link_id = len(self.links) + 1
        target = self.by_id[dst]
        slot = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == dst_input)
        target["inputs"][slot]["link"] = link_id
        source = self.by_id[src]
        source["outputs"][src_slot]["links"].append(link_id)
        typ = link_type or source["outputs"][src_slot]["type"]
        self.links.append([link_id, src, src_slot, dst, slot, typ])
        return link_id

    def build(self, **extra):
        workflow = {
            "last_node_id": max(self.by_id, default=0),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {},
            "version": 0.4,
        }
        workflow.update(extra)
        return workflow


def image_chain(mode_invert=0):
    """EmptyImage(1) -> ImageInvert(2) -> SaveImage(3)."""
    wf = UIWorkflow()
    wf.node(1, "EmptyImage", [64, 48, 1, 0], outputs=[("IMAGE", "IMAGE")])
    wf.node(2, "ImageInvert", [], inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")], mode=mode_invert)
    wf.node(3, "SaveImage", ["test"], inputs=[("images", "IMAGE")])
    wf.link(1, 0, 2, "image")
    wf.link(2, 0, 3, "images")
    return wf


# ---------------------------------------------------------------------------
# node_schemas_from_comfy
# ---------------------------------------------------------------------------


def test_schemas_look_like_object_info(schemas):
    ksampler = schemas["KSampler"]
    assert ksampler["input_order"]["required"][:2] == ["model", "seed"]
    assert ksampler["output"] == ["LATENT"]
    assert ksampler["output_node"] is False
    assert schemas["SaveImage"]["output_node"] is True
    assert ksampler["input"]["required"]["seed"][1]["control_after_generate"] is True
    # V3 nodes come from ComfyUI's own GET_NODE_INFO_V1, JSON-normalised like the HTTP route.
    resize = schemas["ResizeImageMaskNode"]["input"]["required"]["resize_type"]
    assert resize[0] == "COMFY_DYNAMICCOMBO_V3"
    assert "scale dimensions" in [opt["key"] for opt in resize[1]["options"]]
    json.dumps(schemas)  # serialisable, like the real response


def test_types_compatible():
    assert wt.types_compatible("IMAGE", "IMAGE")
    assert wt.types_compatible("*", "LATENT")
    assert wt.types_compatible("IMAGE,MASK", "MASK")
    assert wt.types_compatible("FLOAT,INT", "int")
    assert not wt.types_compatible("IMAGE", "LATENT")
    assert not wt.types_compatible("IMAGE,MASK", "LATENT,MODEL")


# ---------------------------------------------------------------------------
# Real workflows from the template packages
# ---------------------------------------------------------------------------


def test_template_sd15_default(schemas):
    """The frontend's default SD1.5 txt2img workflow, converted exactly."""
    workflow = load_template("default")
    assert wt.validate_links(workflow, schemas) == len(workflow["links"])
    prompt = wt.ui_to_api(workflow, schemas)

    assert {k: v["class_type"] for k, v in prompt.items()} == {
        "3": "KSampler", "4": "CheckpointLoaderSimple", "5": "EmptyLatentImage",
        "6": "CLIPTextEncode", "7": "CLIPTextEncode", "8": "VAEDecode", "9": "SaveImage",
    }  # the four MarkdownNotes are gone
    assert prompt["3"]["inputs"] == {
        "seed": 685468484323813,  # followed by "randomize" in widgets_values, which is dropped
        "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
    }
    assert prompt["4"]["inputs"] == {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}
    assert prompt["5"]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}
    assert prompt["6"]["inputs"]["clip"] == ["4", 1]
    assert prompt["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}
    assert prompt["9"]["inputs"] == {"filename_prefix": "SD1.5", "images": ["8", 0]}

    validation = wt.validate_api_prompt(prompt)
    assert unexpected_validation_errors(validation) == []
    # and the only error is indeed the missing checkpoint
    assert [e["type"] for e in validation[3]["4"]["errors"]] == ["value_not_in_list"]


def test_template_wan21_text_to_video(schemas):
    workflow = load_template("text_to_video_wan")
    wt.validate_links(workflow, schemas)
    prompt = wt.ui_to_api(workflow, schemas)
    classes = {v["class_type"] for v in prompt.values()}
    assert {"UNETLoader", "CLIPLoader", "VAELoader", "ModelSamplingSD3", "EmptyHunyuanLatentVideo",
            "KSampler", "VAEDecode", "CreateVideo", "SaveVideo"} <= classes
    ks = next(v for v in prompt.values() if v["class_type"] == "KSampler")
    assert set(ks["inputs"]) == {"seed", "steps", "cfg", "sampler_name", "scheduler", "denoise",
                                 "model", "positive", "negative", "latent_image"}
    assert prompt[ks["inputs"]["model"][0]]["class_type"] == "ModelSamplingSD3"
    latent = prompt[ks["inputs"]["latent_image"][0]]
    assert latent["class_type"] == "EmptyHunyuanLatentVideo"
    assert set(latent["inputs"]) == {"width", "height", "length", "batch_size"}
    save = next(v for v in prompt.values() if v["class_type"] == "SaveVideo")
    assert set(save["inputs"]) == {"filename_prefix", "format", "codec", "video"}
    assert unexpected_validation_errors(wt.validate_api_prompt(prompt)) == []


def test_template_with_primitive_nodes(schemas):
    """sdxl_simple_example feeds prompts and step counts from PrimitiveNodes."""
    workflow = load_template("sdxl_simple_example")
    primitives = {n["id"]: n for n in workflow["nodes"] if n["type"] == "PrimitiveNode"}
    assert primitives
    wt.validate_links(workflow, schemas)
    prompt = wt.ui_to_api(workflow, schemas)
    assert "PrimitiveNode" not in {v["class_type"] for v in prompt.values()}

    # every input fed by a primitive now holds the primitive's value
    checked = 0
    for link_id, src, _slot, dst, dst_slot, _type in workflow["links"]:
        if src in primitives and str(dst) in prompt:
            target = next(n for n in workflow["nodes"] if n["id"] == dst)
            name = target["inputs"][dst_slot]["name"]
            assert prompt[str(dst)]["inputs"][name] == primitives[src]["widgets_values"][0]
            checked += 1
    assert checked >= 2
    assert unexpected_validation_errors(wt.validate_api_prompt(prompt)) == []


def test_template_with_reroute(schemas):
    workflow = load_template("hidream_e1_full")
    reroutes = [n for n in workflow["nodes"] if n["type"] == "Reroute"]
    assert reroutes
    wt.validate_links(workflow, schemas)
    prompt = wt.ui_to_api(workflow, schemas)
    reroute_ids = {str(n["id"]) for n in reroutes}
    for entry in prompt.values():
        assert entry["class_type"] != "Reroute"
        for value in entry["inputs"].values():
            if isinstance(value, list):
                assert value[0] not in reroute_ids and value[0] in prompt
    # the reroute carried the UNETLoader's MODEL to the guider and the scheduler
    unet = next(k for k, v in prompt.items() if v["class_type"] == "UNETLoader")
    for cls in ("DualCFGGuider", "BasicScheduler"):
        node = next(v for v in prompt.values() if v["class_type"] == cls)
        assert node["inputs"]["model"] == [unet, 0]
    assert unexpected_validation_errors(wt.validate_api_prompt(prompt)) == []


def test_template_with_bypassed_node(schemas):
    """video_wan2.1_alpha_t2v_14B has a bypassed LoraLoaderModelOnly (59) in the model path."""
    workflow = load_template("video_wan2.1_alpha_t2v_14B")
    bypassed = [n for n in workflow["nodes"] if n["mode"] == wt.MODE_BYPASS]
    assert [n["type"] for n in bypassed] == ["LoraLoaderModelOnly"]
    prompt = wt.ui_to_api(workflow, schemas)
    bypassed_id = str(bypassed[0]["id"])
    assert bypassed_id not in prompt
    # whatever consumed the LoRA's MODEL now reads the LoRA's own model input
    lora_in = next(l for l in workflow["links"] if l[3] == bypassed[0]["id"] and l[5] == "MODEL")
    lora_out = [l for l in workflow["links"] if l[1] == bypassed[0]["id"]]
    assert lora_out
    for _id, _src, _slot, dst, dst_slot, _type in lora_out:
        target = next(n for n in workflow["nodes"] if n["id"] == dst)
        name = target["inputs"][dst_slot]["name"]
        assert prompt[str(dst)]["inputs"][name] == [str(lora_in[1]), lora_in[2]]
    assert unexpected_validation_errors(wt.validate_api_prompt(prompt)) == []


def test_template_with_muted_node(schemas):
    workflow = load_template("hunyuan_video_text_to_video")
    muted = [str(n["id"]) for n in workflow["nodes"] if n["mode"] == wt.MODE_NEVER]
    assert muted
    prompt = wt.ui_to_api(workflow, schemas)
    assert not set(muted) & set(prompt)
    for entry in prompt.values():
        for value in entry["inputs"].values():
            assert not (isinstance(value, list) and value[0] in muted)
    assert unexpected_validation_errors(wt.validate_api_prompt(prompt)) == []


def test_template_with_subgraph(schemas):
    """image_z_image_turbo wraps the whole pipeline in a subgraph with promoted widgets."""
    workflow = load_template("image_z_image_turbo")
    assert workflow["definitions"]["subgraphs"]
    wt.validate_links(workflow, schemas)
    prompt = wt.ui_to_api(workflow, schemas)
    instance = next(n for n in workflow["nodes"] if n["type"] == workflow["definitions"]["subgraphs"][0]["id"])
    prefix = f"{instance['id']}:"
    inner = {k: v for k, v in prompt.items() if k.startswith(prefix)}
    assert {v["class_type"] for v in inner.values()} >= {"UNETLoader", "CLIPLoader", "VAELoader", "KSampler",
                                                         "CLIPTextEncode", "VAEDecode"}
    # links inside the subgraph use the flattened ids
    ks = next(v for v in inner.values() if v["class_type"] == "KSampler")
    assert all(v[0].startswith(prefix) for v in ks["inputs"].values() if isinstance(v, list))
    # the root SaveImage reads the subgraph output, i.e. the inner VAEDecode
    save = next(v for v in prompt.values() if v["class_type"] == "SaveImage")
    assert prompt[save["inputs"]["images"][0]]["class_type"] == "VAEDecode"
    # the prompt text is what the subgraph node's promoted "prompt" widget shows, and it reaches the inner
    # CLIPTextEncode that the subgraph input feeds
    definition = workflow["definitions"]["subgraphs"][0]
    target_id, target_name, shown = promoted_widget_value(instance, definition, "text")
    target = next(n for n in definition["nodes"] if str(n["id"]) == target_id)
    assert target["type"] == "CLIPTextEncode" and target_name == "text"
    assert isinstance(shown, str) and shown.strip()
    assert inner[f"{prefix}{target_id}"]["inputs"]["text"] == shown
    assert unexpected_validation_errors(wt.validate_api_prompt(prompt)) == []


def promoted_widget_value(instance, definition, input_name):
    """``(inner node id, inner input name, value)`` of the widget a subgraph node promotes for ``input_name``.

    The value the frontend shows there, from the saved file as it stands (not through the converter): the
    instance's own saved value where the file holds one (``widgets_values`` parallel to
    ``properties.proxyWidgets``, whose entries are ``["-1", input]`` or ``[inner node id, widget]``, as in the
    workflow templates 0.9), else the inner widget's own value (the templates 0.11 save none on the instance).
    """
    slot = next(i for i in definition["inputs"] if i["name"] == input_name)
    (link_id,) = slot["linkIds"]
    link = next(l for l in definition["links"] if l["id"] == link_id)
    target_id = str(link["target_id"])
    target = next(n for n in definition["nodes"] if str(n["id"]) == target_id)
    target_name = target["inputs"][link["target_slot"]]["name"]
    values = instance.get("widgets_values") or []
    for pos, entry in enumerate((instance.get("properties") or {}).get("proxyWidgets") or []):
        if tuple(map(str, entry[:2])) in (("-1", input_name), (target_id, target_name)) \
                and pos < len(values) and values[pos] is not None:
            return target_id, target_name, values[pos]
    widget_inputs = [i["name"] for i in target["inputs"] if i.get("widget")]
    return target_id, target_name, target["widgets_values"][widget_inputs.index(target_name)]


# ---------------------------------------------------------------------------
# Hand-written workflows, one frontend behaviour each
# ---------------------------------------------------------------------------


def test_seed_with_control_after_generate(schemas):
    wf = UIWorkflow()
    wf.node(1, "KSampler", [42, "fixed", 12, 6.5, "euler", "karras", 0.75],
            inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                    ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")])
    wf.node(2, "RandomNoise", [7, "randomize"], outputs=[("NOISE", "NOISE")])
    prompt = wt.ui_to_api(wf.build(), schemas)
    assert prompt["1"]["inputs"] == {"seed": 42, "steps": 12, "cfg": 6.5, "sampler_name": "euler",
                                     "scheduler": "karras", "denoise": 0.75}
    assert prompt["2"]["inputs"] == {"noise_seed": 7}


def test_linked_widget_input_keeps_its_saved_value_slot(schemas):
    """A widget converted to a socket still has its value in widgets_values; the link wins."""
    wf = UIWorkflow()
    wf.node(1, "PrimitiveInt", [1234, "increment"], outputs=[("INT", "INT")])
    wf.node(2, "KSampler", [42, "fixed", 12, 6.5, "euler", "karras", 0.75],
            inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                    ("latent_image", "LATENT"), ("seed", "INT", True), ("steps", "INT", True)],
            outputs=[("LATENT", "LATENT")])
    wf.link(1, 0, 2, "seed")
    workflow = wf.build()
    wt.validate_links(workflow, schemas)
    prompt = wt.ui_to_api(workflow, schemas)
    assert prompt["1"]["class_type"] == "PrimitiveInt"
    assert prompt["1"]["inputs"] == {"value": 1234}  # control_after_generate value dropped
    inputs = prompt["2"]["inputs"]
    assert inputs["seed"] == ["1", 0]
    assert inputs["steps"] == 12  # unlinked widget socket: saved value, and no misalignment
    assert inputs["denoise"] == 0.75


def test_muted_node_is_dropped_and_consumers_lose_the_input(schemas):
    prompt = wt.ui_to_api(image_chain(mode_invert=wt.MODE_NEVER).build(), schemas)
    assert set(prompt) == {"1", "3"}
    assert prompt["3"]["inputs"] == {"filename_prefix": "test"}


def test_bypassed_node_is_skipped(schemas):
    prompt = wt.ui_to_api(image_chain(mode_invert=wt.MODE_BYPASS).build(), schemas)
    assert set(prompt) == {"1", "3"}
    assert prompt["3"]["inputs"]["images"] == ["1", 0]


def test_bypass_picks_an_input_of_the_matching_type(schemas):
    wf = UIWorkflow()
    wf.node(1, "SolidMask", [1.0, 32, 32], outputs=[("MASK", "MASK")])
    wf.node(2, "EmptyImage", [32, 32, 1, 0], outputs=[("IMAGE", "IMAGE")])
    # inputs: mask first, image second; the IMAGE output must map to the IMAGE input
    wf.node(3, "JoinImageWithAlpha", [], inputs=[("alpha", "MASK"), ("image", "IMAGE")],
            outputs=[("IMAGE", "IMAGE")], mode=wt.MODE_BYPASS)
    wf.node(4, "ImageToMask", ["red"], inputs=[("image", "IMAGE")], outputs=[("MASK", "MASK")],
            mode=wt.MODE_BYPASS)
    wf.node(5, "PreviewImage", [], inputs=[("images", "IMAGE")])
    wf.node(6, "MaskToImage", [], inputs=[("mask", "MASK")], outputs=[("IMAGE", "IMAGE")])
    wf.node(7, "PreviewImage", [], inputs=[("images", "IMAGE")])
    wf.link(1, 0, 3, "alpha")
    wf.link(2, 0, 3, "image")
    wf.link(3, 0, 5, "images")
    wf.link(2, 0, 4, "image")
    wf.link(4, 0, 6, "mask")  # bypassed ImageToMask has no MASK input: nothing to forward
    wf.link(6, 0, 7, "images")
    prompt = wt.ui_to_api(wf.build(), schemas)
    assert prompt["5"]["inputs"] == {"images": ["2", 0]}
    assert prompt["6"]["inputs"] == {}
    assert "3" not in prompt and "4" not in prompt


def test_chained_bypass_and_reroutes(schemas):
    wf = UIWorkflow()
    wf.node(1, "EmptyImage", [64, 48, 1, 0], outputs=[("IMAGE", "IMAGE")])
    wf.node(2, "Reroute", None, inputs=[("", "*")], outputs=[("", "IMAGE")])
    wf.node(3, "ImageInvert", [], inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")],
            mode=wt.MODE_BYPASS)
    wf.node(4, "Reroute", None, inputs=[("", "*")], outputs=[("", "IMAGE")])
    wf.node(5, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    wf.link(1, 0, 2, "")
    wf.link(2, 0, 3, "image")
    wf.link(3, 0, 4, "")
    wf.link(4, 0, 5, "images")
    workflow = wf.build()
    assert wt.validate_links(workflow, schemas) == 4
    prompt = wt.ui_to_api(workflow, schemas)
    assert set(prompt) == {"1", "5"}
    assert prompt["5"]["inputs"]["images"] == ["1", 0]


def test_primitive_node_value_flows_into_the_target_widget(schemas):
    wf = UIWorkflow()
    prim = wf.node(1, "PrimitiveNode", [256, "fixed"], outputs=[("INT", "INT")], title="Width")
    prim["outputs"][0]["widget"] = {"name": "width"}
    wf.node(2, "EmptyImage", [64, 48, 1, 0], inputs=[("width", "INT", True)], outputs=[("IMAGE", "IMAGE")])
    wf.node(3, "PreviewImage", [], inputs=[("images", "IMAGE")])
    wf.link(1, 0, 2, "width")
    wf.link(2, 0, 3, "images")
    workflow = wf.build()
    wt.validate_links(workflow, schemas)
    prompt = wt.ui_to_api(workflow, schemas)
    assert set(prompt) == {"2", "3"}
    assert prompt["2"]["inputs"] == {"width": 256, "height": 48, "batch_size": 1, "color": 0}


def test_notes_are_dropped(schemas):
    wf = image_chain()
    wf.node(10, "Note", ["remember the milk"])
    wf.node(11, "MarkdownNote", ["# heading"])
    prompt = wt.ui_to_api(wf.build(), schemas)
    assert set(prompt) == {"1", "2", "3"}


def test_dict_widgets_values_are_read_by_name(schemas):
    wf = UIWorkflow()
    wf.node(1, "EmptyImage", {"height": 48, "width": 64, "batch_size": 2, "color": 255,
                              "some_ui_only_thing": True}, outputs=[("IMAGE", "IMAGE")])
    prompt = wt.ui_to_api(wf.build(), schemas)
    assert prompt["1"]["inputs"] == {"width": 64, "height": 48, "batch_size": 2, "color": 255}


def test_list_widget_values_are_boxed(schemas):
    wf = UIWorkflow()
    wf.node(1, "StringConcatenate", [["not", "a", "link"], "b", "-"], outputs=[("STRING", "STRING")])
    prompt = wt.ui_to_api(wf.build(), schemas)
    assert prompt["1"]["inputs"]["string_a"] == {"__value__": ["not", "a", "link"]}


def test_dynamic_combo_sub_widgets(schemas):
    wf = UIWorkflow()
    wf.node(1, "ResizeImageMaskNode", ["scale dimensions", 320, 240, "center", "lanczos"],
            inputs=[("input", "IMAGE,MASK")], outputs=[("IMAGE", "IMAGE")])
    wf.node(2, "ResizeImageMaskNode", ["scale by multiplier", 0.5, "area"],
            inputs=[("input", "IMAGE,MASK")], outputs=[("IMAGE", "IMAGE")])
    prompt = wt.ui_to_api(wf.build(), schemas)
    assert prompt["1"]["inputs"] == {"resize_type": "scale dimensions", "resize_type.width": 320,
                                     "resize_type.height": 240, "resize_type.crop": "center",
                                     "scale_method": "lanczos"}
    assert prompt["2"]["inputs"] == {"resize_type": "scale by multiplier",
                                     "resize_type.multiplier": 0.5, "scale_method": "area"}


def test_media_loader_upload_widget_is_skipped(schemas):
    wf = UIWorkflow()
    wf.node(1, "LoadImage", ["example.png", "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")])
    prompt = wt.ui_to_api(wf.build(), schemas)
    assert prompt["1"]["inputs"] == {"image": "example.png"}


def _subgraph_workflow(instance_mode=0, promoted_width=None):
    """Root: subgraph node 10 (width input) -> SaveImage 20.  Inside: EmptyImage 1 -> ImageInvert 2."""
    sub_id = "0d7e3c9a-1111-4222-8333-944455556666"
    definition = {
        "id": sub_id, "version": 1, "name": "make image", "state": {}, "revision": 0, "config": {},
        "inputNode": {"id": -10, "bounding": [0, 0, 10, 10]},
        "outputNode": {"id": -20, "bounding": [0, 0, 10, 10]},
        "inputs": [{"id": "in-w", "name": "width", "type": "INT", "linkIds": [1]}],
        "outputs": [{"id": "out-img", "name": "IMAGE", "type": "IMAGE", "linkIds": [3]}],
        "widgets": [],
        "nodes": [
            {"id": 1, "type": "EmptyImage", "mode": 0,
             "inputs": [{"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 1}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}],
             "widgets_values": [64, 48, 1, 0]},
            {"id": 2, "type": "ImageInvert", "mode": 0,
             "inputs": [{"name": "image", "type": "IMAGE", "link": 2}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [3]}],
             "widgets_values": []},
        ],
        "links": [
            {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "INT"},
            {"id": 2, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "IMAGE"},
            {"id": 3, "origin_id": 2, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"},
        ],
        "groups": [], "extra": {},
    }
    instance = {
        "id": 10, "type": sub_id, "mode": instance_mode,
        "inputs": [{"name": "width", "type": "INT", "widget": {"name": "width"}, "link": None}],
        "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [7]}],
        "properties": {"proxyWidgets": [["-1", "width"]]},
        "widgets_values": [promoted_width] if promoted_width is not None else [],
    }
    save = {"id": 20, "type": "SaveImage", "mode": 0,
            "inputs": [{"name": "images", "type": "IMAGE", "link": 7}], "outputs": [],
            "widgets_values": ["sub"]}
    return {"last_node_id": 20, "last_link_id": 7, "nodes": [instance, save],
            "links": [[7, 10, 0, 20, 0, "IMAGE"]], "groups": [], "config": {}, "extra": {},
            "version": 0.4, "definitions": {"subgraphs": [definition]}}


def test_subgraph_is_flattened(schemas):
    workflow = _subgraph_workflow(promoted_width=128)
    assert wt.validate_links(workflow, schemas) == 4
    prompt = wt.ui_to_api(workflow, schemas)
    assert set(prompt) == {"10:1", "10:2", "20"}
    assert prompt["10:1"]["inputs"]["width"] == 128  # promoted widget value of the instance
    assert prompt["10:2"]["inputs"] == {"image": ["10:1", 0]}
    assert prompt["20"]["inputs"]["images"] == ["10:2", 0]


def test_subgraph_without_promoted_value_uses_inner_widget(schemas):
    prompt = wt.ui_to_api(_subgraph_workflow(promoted_width=None), schemas)
    assert prompt["10:1"]["inputs"]["width"] == 64


def test_subgraph_promoting_an_inner_widget_without_saved_values(schemas):
    """Newer frontends (the workflow templates 0.11) point proxyWidgets at the inner node's widget and save no
    value on the instance: the inner node's own value is what the promoted widget shows and what runs."""
    workflow = _subgraph_workflow(promoted_width=None)
    workflow["nodes"][0]["properties"]["proxyWidgets"] = [["1", "width"]]
    prompt = wt.ui_to_api(workflow, schemas, strict=True)
    assert prompt["10:1"]["inputs"]["width"] == 64


def test_muted_subgraph_drops_its_contents(schemas):
    prompt = wt.ui_to_api(_subgraph_workflow(instance_mode=wt.MODE_NEVER), schemas)
    assert set(prompt) == {"20"}
    assert prompt["20"]["inputs"] == {"filename_prefix": "sub"}


def test_bypassed_subgraph_node_without_matching_input(schemas):
    # the instance's only input is an INT, so nothing can stand in for its IMAGE output
    prompt = wt.ui_to_api(_subgraph_workflow(instance_mode=wt.MODE_BYPASS), schemas)
    assert set(prompt) == {"20"}
    assert prompt["20"]["inputs"] == {"filename_prefix": "sub"}


FAKE_SCHEMAS = {
    "FakePicker": {
        "input": {
            "required": {
                "choice": [["a", "b", "c"], {"control_after_generate": True}],
                "text": ["STRING", {"forceInput": True}],
                "amount": ["FLOAT", {"default": 0.5}],
            },
            "optional": {"extra": ["INT", {"default": 3}]},
            "hidden": {"unique_id": "UNIQUE_ID"},
        },
        "input_order": {"required": ["choice", "text", "amount"], "optional": ["extra"]},
        "output": ["STRING"],
        "output_name": ["STRING"],
        "output_node": False,
        "display_name": "Fake picker",
    }
}


@pytest.mark.parametrize("values", [
    ["b", "randomize", "", 0.25, 7],      # current frontend: control + filter-list widgets
    ["b", "randomize", 0.25, 7],          # older frontend: no filter list
    ["b", "randomize", "", "hi", 0.25, 7],  # legacy: forceInput input still had a widget
])
def test_widget_layout_variants_of_older_frontends(values):
    wf = UIWorkflow()
    wf.node(1, "FakePicker", values, inputs=[("text", "STRING")], outputs=[("STRING", "STRING")])
    prompt = wt.ui_to_api(wf.build(), FAKE_SCHEMAS)
    assert prompt["1"]["inputs"] == {"choice": "b", "amount": 0.25, "extra": 7}


def test_trailing_display_widgets_are_ignored(schemas):
    wf = UIWorkflow()
    wf.node(1, "EmptyImage", [64, 48, 1, 0], outputs=[("IMAGE", "IMAGE")])
    wf.node(2, "PreviewAny", [None, None, None], inputs=[("source", "*")], outputs=[("STRING", "STRING")])
    wf.link(1, 0, 2, "source")
    prompt = wt.ui_to_api(wf.build(), schemas)
    assert prompt["2"]["inputs"] == {"source": ["1", 0]}


# ---------------------------------------------------------------------------
# Widget count handling and error cases
# ---------------------------------------------------------------------------


def test_too_many_widget_values_is_an_error(schemas):
    wf = UIWorkflow()
    wf.node(1, "EmptyImage", [64, 48, 1, 0, 99], outputs=[("IMAGE", "IMAGE")])
    with pytest.raises(ValueError, match=r"widget count mismatch.*#1 EmptyImage.*5 widgets_values for 4"):
        wt.ui_to_api(wf.build(), schemas)


@pytest.mark.parametrize("strict", [False, True])
def test_missing_trailing_widget_values_get_their_defaults(schemas, caplog, strict):
    """Like the frontend, widgets the saved list does not reach keep their defaults, with a warning."""
    wf = UIWorkflow()
    wf.node(1, "EmptyImage", [64, 48], outputs=[("IMAGE", "IMAGE")])
    prompt = wt.ui_to_api(wf.build(), schemas, strict=strict)
    defaults = {name: schemas["EmptyImage"]["input"]["required"][name][1]["default"]
                for name in ("batch_size", "color")}
    assert prompt["1"]["inputs"] == {"width": 64, "height": 48, **defaults}
    assert "#1 EmptyImage: 2 widgets_values for 4 widgets" in caplog.text
    assert "using the default of batch_size=1, color=0" in caplog.text


def test_node_that_gained_a_widget_since_the_workflow_was_saved(schemas):
    """A CreateVideo saved with its fps widget only (before ComfyUI added ``bit_depth``) converts on any ComfyUI:
    every widget it has now beyond the saved ones holds its default, as the frontend fills it."""
    wf = UIWorkflow()
    wf.node(1, "CreateVideo", [24], inputs=[("images", "IMAGE"), ("audio", "AUDIO")],
            outputs=[("VIDEO", "VIDEO")])
    info = schemas["CreateVideo"]
    layout = wt.widget_layout(info, {}, lambda _pos, _name: None, wt.LayoutVariant())
    assert [slot.name for slot in layout][:1] == ["fps"]
    expected = {"fps": 24, **{slot.name: wt.spec_options(slot.spec)["default"] for slot in layout[1:]}}
    for strict in (False, True):
        assert wt.ui_to_api(wf.build(), schemas, strict=strict)["1"]["inputs"] == expected
    # the same with a node that does have the newer widget (what ComfyUI v0.27 describes)
    newer = {"CreateVideo": dict(FAKE_CREATE_VIDEO)}
    for strict in (False, True):
        assert wt.ui_to_api(wf.build(), newer, strict=strict)["1"]["inputs"] == {"fps": 24, "bit_depth": 8}


FAKE_CREATE_VIDEO = {
    "input": {
        "required": {"images": ["IMAGE", {}], "fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0}]},
        "optional": {"audio": ["AUDIO", {}], "bit_depth": ["INT", {"default": 8, "min": 8, "max": 10, "step": 2}]},
    },
    "input_order": {"required": ["images", "fps"], "optional": ["audio", "bit_depth"]},
    "output": ["VIDEO"], "output_name": ["VIDEO"], "output_node": False, "display_name": "Create Video",
}

FAKE_NO_DEFAULTS = {
    "FakeCounter": {
        "input": {
            "required": {"start": ["INT", {"default": 1}], "count": ["INT", {"min": 0}]},
            "optional": {"label": ["STRING", {}], "mode": [["a", "b"], {}]},
        },
        "input_order": {"required": ["start", "count"], "optional": ["label", "mode"]},
        "output": ["INT"], "output_name": ["INT"], "output_node": False, "display_name": "Fake counter",
    }
}


def test_missing_widget_values_without_declared_defaults():
    """The frontend fills any widget (0, "", the first option); strict mode only fills declared defaults, leaves
    optional inputs without one out, and says which required widget has no value and no default."""
    wf = UIWorkflow()
    wf.node(1, "FakeCounter", [5], outputs=[("INT", "INT")])
    assert wt.ui_to_api(wf.build(), FAKE_NO_DEFAULTS)["1"]["inputs"] == \
        {"start": 5, "count": 0, "label": "", "mode": "a"}
    with pytest.raises(ValueError, match=r"widget count mismatch: node #1 FakeCounter: 1 widgets_values for "
                                         r"4 widgets.*required widget\(s\) \['count'\] declare no default"):
        wt.ui_to_api(wf.build(), FAKE_NO_DEFAULTS, strict=True)
    wf = UIWorkflow()
    wf.node(1, "FakeCounter", [5, 3], outputs=[("INT", "INT")])
    assert wt.ui_to_api(wf.build(), FAKE_NO_DEFAULTS, strict=True)["1"]["inputs"] == {"start": 5, "count": 3}
    wf = UIWorkflow()
    wf.node(1, "FakeCounter", {"start": 5}, outputs=[("INT", "INT")])  # dict widgets_values: the same rules
    with pytest.raises(ValueError, match=r"no entry for widget\(s\) \['count', 'label', 'mode'\].*\['count'\]"):
        wt.ui_to_api(wf.build(), FAKE_NO_DEFAULTS, strict=True)
    assert wt.ui_to_api(wf.build(), FAKE_NO_DEFAULTS)["1"]["inputs"] == \
        {"start": 5, "count": 0, "label": "", "mode": "a"}


def test_too_many_widget_values_is_an_error_in_both_modes(schemas):
    wf = UIWorkflow()
    wf.node(1, "CreateVideo", [24, 8, 8, 8], inputs=[("images", "IMAGE")], outputs=[("VIDEO", "VIDEO")])
    for strict in (False, True):
        with pytest.raises(ValueError, match=r"widget count mismatch: node #1 CreateVideo: 4 widgets_values"):
            wt.ui_to_api(wf.build(), schemas, strict=strict)


def test_unknown_node_type(schemas):
    wf = image_chain()
    wf.node(9, "SomeCustomNodeThatIsNotInstalled", [1], title="Fancy")
    with pytest.raises(ValueError, match=r"unknown node type 'SomeCustomNodeThatIsNotInstalled'.*Fancy"):
        wt.ui_to_api(wf.build(), schemas)


def test_unknown_node_type_is_fine_when_muted(schemas):
    wf = image_chain()
    wf.node(9, "SomeCustomNodeThatIsNotInstalled", [1], mode=wt.MODE_NEVER)
    assert set(wt.ui_to_api(wf.build(), schemas)) == {"1", "2", "3"}


def test_input_referring_to_missing_link(schemas):
    workflow = image_chain().build()
    workflow["links"] = [l for l in workflow["links"] if l[0] != 2]
    with pytest.raises(ValueError, match=r"dangling link.*'images'.*#3 SaveImage.*link 2"):
        wt.ui_to_api(workflow, schemas)


def test_link_from_missing_node(schemas):
    workflow = image_chain().build()
    workflow["nodes"] = [n for n in workflow["nodes"] if n["id"] != 1]
    with pytest.raises(ValueError, match=r"dangling link 1 .*node 1 .*does not exist"):
        wt.ui_to_api(workflow, schemas)
    assert any("source node 1 does not exist" in p for p in wt.find_link_problems(workflow, schemas))


def test_reroute_cycle_is_reported(schemas):
    wf = UIWorkflow()
    wf.node(1, "Reroute", None, inputs=[("", "*")], outputs=[("", "*")])
    wf.node(2, "Reroute", None, inputs=[("", "*")], outputs=[("", "*")])
    wf.node(3, "PreviewImage", [], inputs=[("images", "IMAGE")])
    wf.link(1, 0, 2, "")
    wf.link(2, 0, 1, "")
    wf.link(2, 0, 3, "images")
    with pytest.raises(ValueError, match="cycle"):
        wt.ui_to_api(wf.build(), schemas)


def test_not_a_ui_workflow(schemas):
    with pytest.raises(ValueError, match="not a UI-format workflow"):
        wt.ui_to_api({"3": {"class_type": "KSampler", "inputs": {}}}, schemas)


def test_validate_links_reports_type_mismatches(schemas):
    wf = UIWorkflow()
    wf.node(1, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT")])
    wf.node(2, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    wf.link(1, 0, 2, "images", link_type="LATENT")
    workflow = wf.build()
    problems = wt.find_link_problems(workflow, schemas)
    assert len(problems) == 1 and "'LATENT' vs 'IMAGE'" in problems[0]
    with pytest.raises(ValueError, match="invalid links"):
        wt.validate_links(workflow, schemas)


def test_validate_links_accepts_wildcards_and_type_lists(schemas):
    wf = UIWorkflow()
    wf.node(1, "EmptyImage", [64, 64, 1, 0], outputs=[("IMAGE", "IMAGE")])
    wf.node(2, "ResizeImageMaskNode", ["scale by multiplier", 0.5, "area"],
            inputs=[("input", "IMAGE,MASK")], outputs=[("IMAGE", "IMAGE")])
    wf.node(3, "PreviewAny", [], inputs=[("source", "*")], outputs=[("STRING", "STRING")])
    wf.link(1, 0, 2, "input")
    wf.link(2, 0, 3, "source", link_type="*")
    assert wt.validate_links(wf.build(), schemas) == 2


def test_stale_links_are_ignored_unless_asked_for(schemas):
    workflow = image_chain().build()
    workflow["links"].append([99, 1, 0, 42, 0, "IMAGE"])  # target node 42 was deleted
    assert wt.find_link_problems(workflow, schemas) == []
    assert wt.ui_to_api(workflow, schemas)  # the frontend ignores such leftovers too
    assert "stale" in wt.find_link_problems(workflow, schemas, include_stale=True)[0]


# ---------------------------------------------------------------------------
# Executing a converted workflow in-process
# ---------------------------------------------------------------------------


@pytest.fixture
def output_dir(tmp_path, comfyui):
    import folder_paths

    previous = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        yield tmp_path
    finally:
        folder_paths.set_output_directory(previous)


def test_run_converted_workflow(schemas, output_dir):
    """EmptyImage -> ImageScale -> SaveImage, with a primitive, reroute, bypass, mute and a note."""
    wf = UIWorkflow()
    prim = wf.node(1, "PrimitiveNode", [40, "fixed"], outputs=[("INT", "INT")], title="target width")
    prim["outputs"][0]["widget"] = {"name": "width"}
    wf.node(2, "EmptyImage", [64, 48, 1, 0xFF0000], outputs=[("IMAGE", "IMAGE")])
    wf.node(3, "ImageScale", ["nearest-exact", 512, 24, "disabled"],
            inputs=[("image", "IMAGE"), ("width", "INT", True)], outputs=[("IMAGE", "IMAGE")])
    wf.node(4, "Reroute", None, inputs=[("", "*")], outputs=[("", "IMAGE")])
    wf.node(5, "ImageInvert", [], inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")],
            mode=wt.MODE_BYPASS)
    wf.node(6, "SaveImage", ["moga_wt"], inputs=[("images", "IMAGE")])
    wf.node(7, "PreviewImage", [], inputs=[("images", "IMAGE")], mode=wt.MODE_NEVER)
    wf.node(8, "Note", ["a note"])
    wf.link(1, 0, 3, "width")
    wf.link(2, 0, 3, "image")
    wf.link(3, 0, 4, "")
    wf.link(4, 0, 5, "image")
    wf.link(5, 0, 6, "images")
    wf.link(3, 0, 7, "images")
    workflow = wf.build()
    wt.validate_links(workflow, schemas)
    prompt = wt.ui_to_api(workflow, schemas)
    assert set(prompt) == {"2", "3", "6"}
    assert prompt["3"]["inputs"]["width"] == 40
    assert prompt["6"]["inputs"]["images"] == ["3", 0]

    result = wt.run_api_prompt(prompt)
    assert result.errors == []
    assert result.success is True
    images = result.outputs["6"]["images"]
    assert len(images) == 1 and images[0]["type"] == "output"
    path = os.path.join(str(output_dir), images[0]["subfolder"], images[0]["filename"])
    from PIL import Image

    with Image.open(path) as img:
        assert img.size == (40, 24)
        assert img.getpixel((0, 0))[:3] == (255, 0, 0)  # not inverted: ImageInvert was bypassed
    assert any(event == "execution_success" for event, _data in result.messages)


def test_executor_cache_args_read_unknown_keys_as_zero():
    """PromptExecutor reads cache arguments by key, and ComfyUI adds keys (v0.27: "ram_inactive")."""
    args = wt.ClassicCacheArgs(lru=0, ram=0)
    assert args["lru"] == 0 and args["ram"] == 0
    assert args["ram_inactive"] == 0 and args["some_future_headroom"] == 0
    assert args.defaulted == {"ram_inactive", "some_future_headroom"}
    assert args.get("ram", 16.0) == 0 and args.get("unset", 16.0) == 16.0  # .get keeps the caller's default


def test_run_reports_validation_errors_without_executing(comfyui):
    prompt = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}
    success, outputs, errors = wt.run_api_prompt(prompt)
    assert success is False and outputs == {}
    assert any("required_input_missing" in e for e in errors)


def test_run_reports_execution_errors(comfyui, output_dir):
    # an RGB image has no alpha channel, so ImageToMask fails while executing
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "alpha"}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "never"}},
    }
    result = wt.run_api_prompt(prompt)
    assert result.success is False
    assert len(result.errors) == 1 and result.errors[0].startswith("node 2 (ImageToMask)")
    assert "4" not in result.outputs
    assert not list(output_dir.iterdir())
