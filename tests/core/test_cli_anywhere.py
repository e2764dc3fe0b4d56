"""The command line from outside the pack's folder: `python /path/to/ComfyUI-MoGA/moga_core/__main__.py info`
works from any folder, and `python -m moga_core` works with the pack's folder on PYTHONPATH."""

import os
import subprocess
import sys

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN = os.path.join(PACK_ROOT, "moga_core", "__main__.py")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def test_main_file_runs_from_any_folder(tmp_path):
    res = subprocess.run([sys.executable, MAIN, "info"], cwd=tmp_path, env=clean_env(), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "moga_core 0.1.0" in res.stdout and "auto picks" in res.stdout
    usage = subprocess.run([sys.executable, MAIN, "--help"], cwd=tmp_path, env=clean_env(), capture_output=True,
                           text=True, timeout=600)
    assert usage.returncode == 0 and "moga_core/__main__.py" in usage.stdout


def test_main_file_does_not_put_its_own_folder_on_the_path(tmp_path):
    """moga_core/ holds modules named config, plan, parallel …: run as a file (which puts the file's folder first on
    sys.path), the pack's folder takes that place, so they do not shadow other modules."""
    core = os.path.dirname(MAIN)
    code = (f"import os, runpy, sys; sys.path.insert(0, {core!r}); sys.argv = [{MAIN!r}, '--help']\n"
            "try:\n"
            f"    runpy.run_path({MAIN!r}, run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            f"print('CORE_ON_PATH', any(os.path.abspath(p or '.') == {core!r} for p in sys.path))\n"
            f"print('ROOT_FIRST', os.path.abspath(sys.path[0]) == {PACK_ROOT!r})\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert "CORE_ON_PATH False" in res.stdout and "ROOT_FIRST True" in res.stdout, res.stdout


def test_module_form_with_the_pack_on_pythonpath(tmp_path):
    res = subprocess.run([sys.executable, "-m", "moga_core", "info"], cwd=tmp_path, env=clean_env(PYTHONPATH=PACK_ROOT),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "moga_core 0.1.0" in res.stdout
