"""web/shot_plan.js mirrors nodes/shots.py; the web folder is what ComfyUI expects.

- the JSON fixture (cases and what nodes/shots.py makes of them) is up to date with the Python module;
- node's test runner checks web/shot_plan.js against the same fixture (tests/web/shot_plan.test.mjs);
- static checks of web/: help pages for every node, extension modules that import the frontend from the right place.
"""

from __future__ import annotations

import glob
import os
import posixpath
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.web

WEB_TESTS = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(os.path.dirname(WEB_TESTS))
WEB = os.path.join(PACK_ROOT, "web")
if WEB_TESTS not in sys.path:
    sys.path.insert(0, WEB_TESTS)

import make_shot_fixture  # noqa: E402


def test_fixture_is_current():
    """Regenerate the cases from nodes/shots.py: the stored fixture must be identical (else run the script)."""
    with open(make_shot_fixture.FIXTURE, encoding="utf-8") as f:
        stored = f.read()
    fresh = make_shot_fixture.render(make_shot_fixture.build_cases())
    assert stored == fresh, ("tests/web/fixtures/shot_plan_cases.json is stale: nodes/shots.py changed. Run "
                             "`python3 tests/web/make_shot_fixture.py` and mirror the change in web/shot_plan.js")


def test_fixture_covers_both_outcomes():
    import json

    with open(make_shot_fixture.FIXTURE, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    assert sum(c["ok"] for c in cases) > 100
    assert sum(not c["ok"] for c in cases) > 20
    assert any(c["ok"] and c["plan"]["notes"] for c in cases)


def test_js_shot_plan_matches_python(node_bin):
    run = subprocess.run([node_bin, "--test", os.path.join(WEB_TESTS, "shot_plan.test.mjs")], cwd=WEB_TESTS,
                         capture_output=True, text=True, timeout=120)
    summary = "\n".join(line for line in run.stdout.splitlines() if line.startswith("# "))
    if run.returncode != 0:
        failures = "\n".join(line for line in run.stdout.splitlines() if "not ok" in line)
        pytest.fail(f"node --test failed ({run.returncode}):\n{failures}\n{summary}\n{run.stdout[-6000:]}\n"
                    f"{run.stderr[-2000:]}", pytrace=False)
    assert "# fail 0" in summary, summary


def node_ids() -> list[str]:
    ids = []
    for path in glob.glob(os.path.join(PACK_ROOT, "nodes", "*.py")):
        with open(path, encoding="utf-8") as f:
            ids += re.findall(r'node_id="(\w+)"', f.read())
    return sorted(ids)


def test_every_node_has_a_help_page():
    ids = node_ids()
    assert len(ids) >= 8, ids
    for node_id in ids:
        path = os.path.join(WEB, "docs", f"{node_id}.md")
        assert os.path.isfile(path), f"no help page web/docs/{node_id}.md"
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert text.startswith("# "), f"{path}: starts with its title"
        assert "## Inputs" in text or "## Input" in text, f"{path}: has an inputs section"


def test_extension_modules_import_the_frontend_correctly():
    """ComfyUI serves web/<file> at /extensions/<pack>/<file> and imports every .js there as a module."""
    files = sorted(glob.glob(os.path.join(WEB, "**", "*.js"), recursive=True))
    assert files, "no JavaScript in web/"
    registering = []
    for path in files:
        rel = os.path.relpath(path, WEB).replace(os.sep, "/")
        url = f"/extensions/ComfyUI-MoGA/{rel}"
        with open(path, encoding="utf-8") as f:
            source = f.read()
        for spec in re.findall(r'from\s+"([^"]+)"', source):
            if spec.startswith("."):
                target = posixpath.normpath(posixpath.join(posixpath.dirname(url), spec))
                if "scripts/" in spec:
                    assert target.startswith("/scripts/"), f"{rel}: {spec!r} resolves to {target}, not /scripts/"
                else:
                    inside = target[len("/extensions/ComfyUI-MoGA/"):]
                    assert os.path.isfile(os.path.join(WEB, inside)), f"{rel}: {spec!r} -> {target} is missing"
        if "registerExtension(" in source:
            registering.append(rel)
            # the pack's web folder can be listed twice (module folder name and pyproject name): register once
            assert "Symbol.for(" in source and "globalThis[" in source, f"{rel}: guard against a second load"
    assert "moga_timeline.js" in registering
