#!/usr/bin/env bash
# Run here (not on the GPU machine): prepares what the GPU benchmarks (bench/e2e.py, bench/quality_gpu.sh) need
# that the GPU image lacks.
#   .comfy/  the files of a ComfyUI tree ($COMFYUI_PATH) that ComfyUI's node loader, the pack and the Wan /
#            HunyuanVideo models load, found by importing them (ComfyUI's LICENSE beside them)
#   .whl/    wheels for Python 3.12 / x86-64 of that import chain's pip deps that the GPU image has no copy of,
#            at the versions installed here
# Both folders are git-ignored; carry them with the run: carry = [".comfy", ".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
COMFY="${COMFYUI_PATH:?set COMFYUI_PATH to a ComfyUI tree (v0.19.3)}"
rm -rf .comfy && mkdir -p .comfy
python3 - "$COMFY" "$PWD" <<'PY'
import asyncio, importlib, os, shutil, sys, tempfile
src = os.path.abspath(sys.argv[1])
sys.path.insert(0, src)
import comfy.options  # noqa: F401
import comfy.cli_args
comfy.cli_args.args.cpu = True
importlib.import_module("utils.install_util")
importlib.import_module("utils.extra_config")
import nodes
link = os.path.join(tempfile.mkdtemp(), "ComfyUI-MoGA")
os.symlink(sys.argv[2], link)
assert asyncio.run(nodes.load_custom_node(link)), "the pack did not load"
import comfy.ldm.wan.model, comfy.ldm.hunyuan_video.model, comfy.sd  # noqa: F401,E401
files = set()
for mod in list(sys.modules.values()):
    f = getattr(mod, "__file__", None)
    if f and os.path.abspath(f).startswith(src + os.sep):
        files.add(os.path.abspath(f))
for f in list(files):  # package __init__ files on the way up
    d = os.path.dirname(f)
    while d.startswith(src + os.sep):
        init = os.path.join(d, "__init__.py")
        if os.path.exists(init):
            files.add(init)
        d = os.path.dirname(d)
for f in sorted(files):
    dst = os.path.join(".comfy", os.path.relpath(f, src))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(f, dst)
if os.path.exists(os.path.join(src, "LICENSE")):
    shutil.copy2(os.path.join(src, "LICENSE"), ".comfy/LICENSE")
print(f"copied {len(files)} files of {src} into .comfy/")
PY
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
  --platform manylinux1_x86_64 -d .whl \
  "av==$(version av)" "comfy-aimdo==$(version comfy-aimdo)" "python-dotenv==$(version python-dotenv)" \
  "torchsde==$(version torchsde)" "trampoline==$(version trampoline)" "pydantic==$(version pydantic)" \
  "pydantic-core==$(version pydantic-core)" "pydantic-settings==$(version pydantic-settings)" \
  "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)"
ls -la .whl
du -sh .comfy .whl
