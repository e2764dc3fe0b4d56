#!/usr/bin/env bash
# Run HERE (a machine with PyPI), not on the GPU machine: prepares what bench/server/gpu_workflows.sh needs there.
#
#   bash bench/server/prepare_carry.sh
#
# Writes .server/ in the repository root (git-ignored by the .server/.gitignore it writes, "*"):
#   .server/comfyui-v0.19.3.tar.gz   ComfyUI v0.19.3 (a copy of ../shared/vendor/, or $COMFYUI_TARBALL)
#   .server/whl/                     cp312 x86-64 wheels of what ComfyUI's main.py needs to start and run the
#                                    workflows that the GPU image lacks (KINDS.md's list), pinned below
# Carry on the device call: carry = [".server"].
#
# Left out on purpose (main.py starts and the workflows run without them; sizes are the cp312 wheels):
#   comfyui-frontend-package (the web page; gpu_workflows.sh passes --front-end-root at an empty page instead),
#   comfyui-workflow-templates, comfyui-embedded-docs (10.6 MB), kornia (+kornia_rs), PyOpenGL, glfw (some
#   comfy_extras nodes fail to import: canny, morphology, glsl; none is used here). comfy-kitchen is the
#   pure-Python wheel of the same version (py3-none-any, 0.26 MB) instead of the 68 MB one with CUDA kernels: its
#   eager backend only; the stand-in models hold no fp8/fp4 weights, so ComfyUI never calls it here.
# typing-extensions 4.15.0 is carried although the image has some version: pydantic 2.13 needs >= 4.14.1.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARBALL="${COMFYUI_TARBALL:-$ROOT/../shared/vendor/comfyui-v0.19.3.tar.gz}"
[ -f "$TARBALL" ] || { echo "no ComfyUI tarball at $TARBALL (set COMFYUI_TARBALL)"; exit 2; }
mkdir -p .server
printf '*\n' > .server/.gitignore   # ignores the folder's whole content, itself included
cp "$TARBALL" .server/comfyui-v0.19.3.tar.gz
rm -rf .server/whl && mkdir -p .server/whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# binary wheels (cp312 / abi3, manylinux x86-64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .server/whl \
  comfy-aimdo==0.6.0 av==18.1.0 SQLAlchemy==2.1.9 pydantic-core==2.46.4 blake3==1.0.11
# pure-Python wheels (py3-none-any)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py --abi none \
  --platform any -d .server/whl \
  comfy-kitchen==0.2.40 torchsde==0.2.6 trampoline==0.1.2 alembic==1.20.1 Mako==1.4.3 pydantic==2.13.4 \
  annotated-types==0.7.0 typing-inspection==0.4.2 pydantic-settings==2.14.1 python-dotenv==1.2.2 \
  simpleeval==1.0.8 spandrel==0.4.2 typing-extensions==4.15.0
ls -la .server .server/whl
for p in .server/comfyui-v0.19.3.tar.gz .server/whl .server; do du -sb "$p"; done | awk '{printf "%8.1f MiB  %s\n", $1/1048576, $2}'
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carry_bytes=$(du -sb .server | cut -f1)
awk -v t="$tree_bytes" -v c="$carry_bytes" 'BEGIN { printf "working tree that travels: %.1f MiB + carry .server %.1f MiB = %.1f MiB (limit 64 MiB)\n", t/1048576, c/1048576, (t+c)/1048576 }'
git check-ignore -q .server/whl || echo "WARNING: .server/ is not git-ignored; add /.server/ to .gitignore"
