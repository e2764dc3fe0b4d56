#!/usr/bin/env bash
# Run here (not on the GPU machine): prepares what bench/quality_gpu.sh needs that the GPU image lacks.
#   .comfy/  the files of a ComfyUI tree ($COMFYUI_PATH, default /opt/comfyui) that `import comfy.ldm.wan.model`
#            loads, found by importing it (about 25 modules, under 1 MB; ComfyUI's LICENSE beside them)
#   .whl/    wheels for Python 3.12 / x86-64 of that import chain's pip deps (comfy-aimdo, einops, psutil, tqdm,
#            pillow), at the versions installed here
# Both folders are git-ignored; carry them with the run: carry = [".comfy", ".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
COMFY="${COMFYUI_PATH:-/opt/comfyui}"
rm -rf .comfy && mkdir -p .comfy
python3 - "$COMFY" <<'PY'
import os, shutil, sys
src = os.path.abspath(sys.argv[1])
sys.path.insert(0, src)
import comfy.options  # noqa: F401
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.ldm.wan.model  # noqa: F401
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
  "comfy-aimdo==$(version comfy-aimdo)" "einops==$(version einops)" "psutil==$(version psutil)" \
  "tqdm==$(version tqdm)" "pillow==$(version pillow)"
ls -la .whl
du -sh .comfy .whl
