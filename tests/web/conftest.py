"""Fixtures of the web tests: Node.js, Playwright, Chromium and a real ComfyUI server with this pack loaded.

What they need: ``node`` (>= 20), ``tests/web/node_modules`` (``npm ci`` in tests/web), Debian's Chromium
(``/usr/bin/chromium``, or ``$MOGA_CHROMIUM``) and a ComfyUI tree (``$COMFYUI_PATH``). ``bash .ci/setup-browser.sh``
installs the first three. Without them the tests are skipped with the reason, unless ``MOGA_REQUIRE_BROWSER=1`` is
set (CI), in which case they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

WEB_TESTS = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(os.path.dirname(WEB_TESTS))
if PACK_ROOT not in sys.path:
    sys.path.insert(0, PACK_ROOT)

from devtools import workflow_graph as workflow_tools  # noqa: E402

SETUP_HINT = ("run `bash .ci/setup-browser.sh` once (installs Chromium, Node.js >= 20 and playwright-core), "
              "then run the tests again")
# browser settings for the test profile: no minimap over the canvas, no first-run tour, validate loaded workflows
# (the frontend then reports broken links, which the workflow check asserts against)
TEST_SETTINGS = {
    "Comfy.Minimap.Visible": False,
    "Comfy.TutorialCompleted": True,
    "Comfy.Validation.Workflows": True,
}


def unavailable(reason: str):
    """Skip, or fail where the browser tests are required (MOGA_REQUIRE_BROWSER=1)."""
    if os.environ.get("MOGA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MOGA_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_bin() -> str:
    node = shutil.which("node")
    if not node:
        unavailable(f"Node.js (`node`) is not installed; {SETUP_HINT}")
    out = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    try:
        major = int(out.lstrip("v").split(".")[0])
    except ValueError:
        major = 0
    if major < 20:
        unavailable(f"Node.js >= 20 is needed (node --test, playwright-core), found {out or 'nothing'}")
    return node


@pytest.fixture(scope="session")
def playwright_ready(node_bin) -> str:
    marker = os.path.join(WEB_TESTS, "node_modules", "playwright-core", "package.json")
    if not os.path.isfile(marker):
        unavailable(f"tests/web/node_modules has no playwright-core; {SETUP_HINT}")
    return marker


@pytest.fixture(scope="session")
def chromium_path() -> str:
    for candidate in (os.environ.get("MOGA_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    unavailable(f"Chromium is not installed (looked for $MOGA_CHROMIUM, /usr/bin/chromium); {SETUP_HINT}")


@pytest.fixture(scope="session")
def comfyui_path() -> str:
    try:
        return workflow_tools.find_comfyui(PACK_ROOT)
    except workflow_tools.ComfyUINotFound as exc:
        if os.environ.get("MOGA_REQUIRE_COMFYUI") == "1":
            pytest.fail(f"MOGA_REQUIRE_COMFYUI=1 but {exc}", pytrace=False)
        unavailable(str(exc))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


@pytest.fixture(scope="session")
def comfy_server(comfyui_path, tmp_path_factory):
    """A ComfyUI server (CPU) on a free port, with this pack as custom_nodes/ComfyUI-MoGA; yields its URL."""
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-MoGA").symlink_to(PACK_ROOT, target_is_directory=True)
    user = base / "user" / "default"
    user.mkdir(parents=True)
    (user / "comfy.settings.json").write_text(json.dumps(TEST_SETTINGS))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = base / "server.log"
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--disable-api-nodes", "--database-url", f"sqlite:///{base}/comfyui.db"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=comfyui_path, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)

    def tail() -> str:
        log.flush()
        return "".join(open(log_path, errors="replace").readlines()[-40:])

    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the ComfyUI server exited with {proc.returncode}:\n{tail()}", pytrace=False)
            try:
                status, _ = _get(f"{url}/object_info/MoGAMultiShotPrompt")
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the ComfyUI server did not answer within 240 s:\n{tail()}", pytrace=False)
            time.sleep(0.5)
        status, body = _get(f"{url}/object_info/MoGAMultiShotPrompt")
        if "MoGAMultiShotPrompt" not in json.loads(body):
            pytest.fail(f"the pack's nodes are not loaded:\n{tail()}", pytrace=False)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        log.close()
