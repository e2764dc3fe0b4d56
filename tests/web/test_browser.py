"""The frontend extension in a real browser: headless Chromium (Playwright) against a real ComfyUI server.

One run of browser_checks.mjs does every check in one browser session and writes a report; each check is one test
here. Failing checks leave screenshots in tests/web/.artifacts/. The timeline screenshots for the docs are written
to tests/web/.artifacts/img/ and copied to docs/img/ when that file is missing or MOGA_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

pytestmark = pytest.mark.web

WEB_TESTS = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(os.path.dirname(WEB_TESTS))
ARTIFACTS = os.path.join(WEB_TESTS, ".artifacts")
SCREENSHOTS = ("shot_timeline.png", "shot_timeline_editor.png")
CHECKS = ["frontend_loads", "workflows_load", "timeline_renders", "timeline_follows_typing",
          "timeline_add_and_resize", "timeline_edit_move_delete", "save_and_reload", "queue_runs", "help_pages",
          "group_map", "screenshots"]


# ComfyUI's audio nodes (comfy_extras/nodes_audio*.py) import torchaudio: a server without it has none of them, so a
# workflow that needs them (Wan 2.2 S2V) cannot load there; tests/host/test_workflows.py skips it for the same reason
AUDIO_NODES = {"AudioEncoderLoader", "LoadAudio", "AudioEncoderEncode"}


def _needs_absent_audio_nodes(path) -> bool:
    import importlib.util
    import json

    if importlib.util.find_spec("torchaudio") is not None:
        return False
    with open(path) as f:
        types = {n.get("type") for n in json.load(f).get("nodes", [])}
    return bool(types & AUDIO_NODES)


def workflow_files() -> list[str]:
    """The example workflows users get (workflows/*.json) and the test's own fixture."""
    return sorted(glob.glob(os.path.join(PACK_ROOT, "workflows", "*.json"))) + \
        sorted(glob.glob(os.path.join(WEB_TESTS, "fixtures", "*.json")))


def _is_workflow(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


@pytest.fixture(scope="module")
def browser_report(node_bin, playwright_ready, chromium_path, comfy_server):
    os.makedirs(ARTIFACTS, exist_ok=True)
    report_path = os.path.join(ARTIFACTS, "report.json")
    if os.path.exists(report_path):
        os.remove(report_path)
    shots_dir = os.path.join(ARTIFACTS, "img")
    cmd = [node_bin, os.path.join(WEB_TESTS, "browser_checks.mjs"), "--url", comfy_server, "--report", report_path,
           "--artifacts", ARTIFACTS, "--screenshots", shots_dir, "--chromium", chromium_path]
    for path in workflow_files():
        if _is_workflow(path) and not _needs_absent_audio_nodes(path):
            cmd += ["--workflow", path]
    try:
        run = subprocess.run(cmd, cwd=WEB_TESTS, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"browser_checks.mjs ran past 300 s:\n{exc.stdout}\n{exc.stderr}", pytrace=False)
    output = f"{run.stdout}\n{run.stderr}"
    if not os.path.exists(report_path):
        pytest.fail(f"browser_checks.mjs wrote no report (exit {run.returncode}):\n{output[-6000:]}", pytrace=False)
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    report["_output"] = output
    # docs screenshots: refresh them on request, or put them there the first time
    update = os.environ.get("MOGA_UPDATE_SCREENSHOTS") == "1"
    for name in SCREENSHOTS:
        src, dst = os.path.join(shots_dir, name), os.path.join(PACK_ROOT, "docs", "img", name)
        if os.path.exists(src) and (update or not os.path.exists(dst)):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
    return report


@pytest.mark.parametrize("name", CHECKS)
def test_browser_check(browser_report, name):
    check = browser_report["checks"].get(name)
    if check is None:
        pytest.fail(f"the check {name} did not run:\n{browser_report['_output'][-4000:]}", pytrace=False)
    if not check["ok"]:
        console = "\n".join(line for line in browser_report.get("console", []) if "404" not in line)[-3000:]
        pytest.fail(f"{check['error']}\n\nbrowser console (errors and warnings):\n{console}\n"
                    f"screenshot: tests/web/.artifacts/{name}-failed.png", pytrace=False)


def test_every_workflow_was_loaded(browser_report):
    loaded = sorted(r["file"] for r in (browser_report["checks"]["workflows_load"].get("data") or []))
    # every workflow, except those whose nodes this server cannot have (no torchaudio: the audio nodes)
    expected = sorted(os.path.basename(p) for p in workflow_files()
                      if _is_workflow(p) and not _needs_absent_audio_nodes(p))
    if not browser_report["checks"]["workflows_load"]["ok"]:
        pytest.skip("workflows_load failed (reported there)")
    assert loaded == expected


def _shots_module():
    spec = importlib.util.spec_from_file_location("_moga_shots_for_web", os.path.join(PACK_ROOT, "nodes", "shots.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_timeline_numbers_are_the_nodes_numbers(browser_report):
    """What the timeline showed after the mouse edits is what nodes/shots.py computes from the text it wrote."""
    check = browser_report["checks"]["timeline_add_and_resize"]
    if not check["ok"]:
        pytest.skip("timeline_add_and_resize failed (reported there)")
    data = check["data"]
    shots = _shots_module()
    plan = shots.plan_shots(shots.parse_shots(data["text"], data["fps"]), data["fps"])
    expected_totals = (f"{plan.num_shots} shots · {plan.num_frames / plan.fps:.2f} s · {plan.num_frames} frames · "
                       f"{plan.num_latent_frames} latent frames")
    assert data["totals"] == expected_totals
    cuts = [4 * latent - 3 for latent in plan.latent_starts[1:]]
    shown = [int(re.match(r"cut before shot \d+: frame (\d+), latent frame (\d+)", t).group(1)) for t in data["ticks"]]
    assert shown == cuts
    latents = [int(re.search(r"latent frame (\d+)", t).group(1)) for t in data["ticks"]]
    assert latents == list(plan.latent_starts[1:])
    assert data["labels"][-1] == f"{plan.num_frames} f"


def _png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_screenshots_for_the_docs(browser_report):
    if not browser_report["checks"]["screenshots"]["ok"]:
        pytest.skip("screenshots failed (reported there)")
    for name in SCREENSHOTS:
        for path in (os.path.join(ARTIFACTS, "img", name), os.path.join(PACK_ROOT, "docs", "img", name)):
            assert os.path.exists(path), path
            width, height = _png_size(path)
            assert width >= 900 and height >= 600, f"{path}: {width}x{height}"
