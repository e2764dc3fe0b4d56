"""moga_core stays plain PyTorch, and its command line works."""

import ast
import os
import subprocess
import sys

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORE = os.path.join(PACK_ROOT, "moga_core")


def test_moga_core_imports_nothing_from_comfyui():
    for name in sorted(os.listdir(CORE)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(CORE, name)).read())
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            for module in modules:
                top = module.split(".")[0]
                assert not top.startswith("comfy") and top not in ("nodes", "folder_paths", "node_helpers"), \
                    f"moga_core/{name} imports {module}"
    # and at run time nothing ComfyUI-ish gets loaded
    code = ("import sys, moga_core, moga_core.bench, moga_core.synthetic; "
            "bad = [m for m in sys.modules if m.split('.')[0].startswith('comfy') or m in ('nodes', 'folder_paths')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=PACK_ROOT)
    res = subprocess.run([sys.executable, "-c", code], cwd=PACK_ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=PACK_ROOT)
    return subprocess.run([sys.executable, "-m", "moga_core", *args], cwd=PACK_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_info_names_backends_and_auto_choice():
    res = run_cli("info")
    assert res.returncode == 0, res.stderr
    for word in ("torch", "flash_attn", "torch_varlen", "sdpa", "loop", "auto picks"):
        assert word in res.stdout


def test_bench_runs_on_cpu_and_reports_exactness(tmp_path):
    out = tmp_path / "bench.json"
    res = run_cli("bench", "--device", "cpu", "--tokens", "1536", "--heads", "2", "--head-dim", "32",
                  "--groups", "4", "--repeats", "1", "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert "dense SDPA" in res.stdout and "MoGA mean (M=4)" in res.stdout
    import json

    rows = json.loads(out.read_text())["rows"]
    moga = [r for r in rows if r["variant"].startswith("MoGA")]
    assert len(moga) == 4
    for r in moga:
        assert r["check"] <= 1e-5 and r["density"] > 0 and r["ms"] > 0


def test_unknown_command_is_an_error():
    res = run_cli("frobnicate")
    assert res.returncode == 2 and "expected 'info' or 'bench'" in res.stderr
