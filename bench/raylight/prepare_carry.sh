#!/usr/bin/env bash
# Run HERE (a machine with PyPI through pip's configured index), not on the GPU machine: builds .ray/, what
# bench/raylight/run_one_gpu.sh needs on the GPU machine (no network there) to run raylight's own actors with the
# pack's "MoGA Patch (Ray)" node.
#
#   bash bench/raylight/prepare_carry.sh
#
# Writes, in the repository root (git-ignored by the .ray/.gitignore it writes, "*"):
#   .ray/ray-2.60.0-cp312-trimmed.tar.xz   ray 2.60.0's cp312 manylinux2014 x86-64 wheel, UNPACKED (ray/ and its
#                                          dist-info) and trimmed: no ray/jars (Java), rllib, serve, data, llm,
#                                          tune, train, dashboard client build, tests folders, *.pyi/*.pxd/*.pyx/
#                                          *.h/*.map; raylet, gcs_server and _raylet.so stripped (strip
#                                          --strip-unneeded: symbol tables only, no code). Unpack it anywhere and
#                                          put that folder on PYTHONPATH (run_one_gpu.sh does: /tmp/moga-ray/ray-site)
#   .ray/raylight-<commit12>.tar.xz        raylight's source (github.com/komikndr/raylight, Apache-2.0) at the
#                                          pinned commit, as a ComfyUI custom node folder "raylight/" (git archive;
#                                          example_workflows, docs, tests and icon.png left out)
#   .ray/comfyui-py.tar.xz                 every *.py file of ComfyUI v0.19.3 (+ LICENSE, comfyui_version.py):
#                                          raylight's node module needs ComfyUI's main.py and execution.py to exist
#                                          (nodes.py::_resolve_repo_root) and imports more of ComfyUI than the
#                                          pack's .comfy/ holds; ~0.9 MB
#   .ray/whl/                              wheels of what ray / raylight need on the degree-1 path that the GPU
#                                          image lacks (KINDS.md's package list):
#                                          - xfuser 0.4.5 + yunchang 0.6.4: raylight imports both on every path
#                                            (nodes.py: yunchang.kernels; the worker: xfuser.core.distributed through
#                                            raylight's own xfuser shim, src/raylight/xfuser_compat.py, which loads
#                                            xfuser's files without xfuser/__init__: no diffusers/distvae needed).
#                                            NOT xfuser 0.5.0-0.7.0: their init_distributed_environment calls
#                                            xfuser.envs.get_device_name(), which raylight's stub of xfuser.envs
#                                            lacks (AttributeError at RayWorker start, measured on CPU here with
#                                            0.7.0); 0.4.5 uses only what the stub has. XFUSER_VERSION overrides.
#                                          - comfy-kitchen 0.2.40, the pure-Python wheel: raylight's worker module
#                                            imports comfy_kitchen (comfy_dist/quant_ops.py); the image lacks it
#                                          - jsonschema + referencing + rpds-py + jsonschema-specifications:
#                                            `import ray` imports jsonschema (ray/runtime_env/runtime_env.py)
#   .ray/MANIFEST.json                     versions, raylight commit, sizes and sha256 of all of the above
#
# The GPU run also needs .comfy/ and .whl/ (bench/prepare_gpu_carry.sh: ComfyUI's files and its missing pip deps,
# ~42 MiB); with the ~10 MiB working tree, .comfy + .whl + .ray is over the 64 MiB a device call carries, so the
# run is TWO device calls on one warm machine (bench/raylight/README.md): first carry [".comfy", ".whl"], then
# [".ray"].
#
# Environment (all optional):
#   RAY_CARRY_PY=3.12        the Python version of the ray/rpds-py binaries (3.12 = the GPU image's; a CPU test on
#                            this machine uses its own, e.g. 3.11, into another folder)
#   RAY_CARRY_DIR=.ray       where to write
#   RAYLIGHT_GIT=...         a git directory of komikndr/raylight holding the pinned commit (default: the search
#                            tool's mirror /work/.mirror/komikndr+raylight/repo; `fetch github:komikndr/raylight`)
#   COMFYUI_PATH / COMFYUI_TARBALL   ComfyUI v0.19.3 (a tree, or the tarball ../shared/vendor/comfyui-v0.19.3.tar.gz)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PYVER="${RAY_CARRY_PY:-3.12}"
PYTAG="cp${PYVER/./}"
DEST="${RAY_CARRY_DIR:-.ray}"
RAY_VERSION=2.60.0
RAYLIGHT_COMMIT=c0495710d960c413443727b5c640e22d6bd9ef61
RAYLIGHT_GIT="${RAYLIGHT_GIT:-/work/.mirror/komikndr+raylight/repo}"
# pure-Python wheels (py3-none-any)
PURE=("xfuser==${XFUSER_VERSION:-0.4.5}" yunchang==0.6.4 comfy-kitchen==0.2.40 jsonschema==4.26.0
      jsonschema-specifications==2025.9.1 referencing==0.37.0)
# binary wheels for $PYVER
BINARY=(rpds-py==0.30.0)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
printf '*\n' > "$DEST/.gitignore"   # ignores the folder's whole content, itself included
WORK=$(mktemp -d /tmp/moga-ray-carry.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "== building $DEST for Python $PYVER (work dir $WORK)"

# ---- (a) ray, unpacked and trimmed
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux2014_x86_64 -d "$WORK/dl" "ray==$RAY_VERSION"
RAY_WHEEL=$(ls "$WORK"/dl/ray-"$RAY_VERSION"-"$PYTAG"-*.whl)
mkdir -p "$WORK/ray-site"
unzip -q "$RAY_WHEEL" -d "$WORK/ray-site"   # unzip keeps the wheel's exec bits
python3 - "$WORK/ray-site" <<'PY'
import os, shutil, sys
root = sys.argv[1]
ray = os.path.join(root, "ray")
drop_dirs = ["jars", "rllib", "serve", "data", "llm", "tune", "train", os.path.join("dashboard", "client")]
removed = 0
def size(p):
    if os.path.isfile(p):
        return os.path.getsize(p)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs)
for d in drop_dirs:
    p = os.path.join(ray, d)
    if os.path.isdir(p):
        removed += size(p)
        shutil.rmtree(p)
for d, dirs, files in os.walk(ray, topdown=True):
    for sub in list(dirs):
        if sub in ("tests", "__pycache__"):
            removed += size(os.path.join(d, sub))
            shutil.rmtree(os.path.join(d, sub))
            dirs.remove(sub)
    for f in files:
        if f.endswith((".pyi", ".pxd", ".pyx", ".h", ".map")):
            removed += size(os.path.join(d, f))
            os.remove(os.path.join(d, f))
print(f"trimmed {removed / 2**20:.1f} MiB of python/java/web files")
PY
# strip symbol tables off the three big binaries (code and dynamic symbols stay)
for bin in ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server ray/_raylet.so; do
  before=$(stat -c %s "$WORK/ray-site/$bin")
  strip --strip-unneeded "$WORK/ray-site/$bin"
  echo "strip $bin: $((before / 1048576)) -> $(( $(stat -c %s "$WORK/ray-site/$bin") / 1048576 )) MiB"
done
RAY_TAR="$DEST/ray-$RAY_VERSION-$PYTAG-trimmed.tar.xz"
rm -f "$DEST"/ray-*-trimmed.tar.xz
# xz's x86 filter (BCJ) first: ~1 MB less on the binaries; one block (dict 128 MiB), so one thread, ~1.5 min
tar -C "$WORK/ray-site" --owner=0 --group=0 --numeric-owner -cf - . |
  xz -T1 --x86 --lzma2=preset=9e,dict=128MiB > "$RAY_TAR"
echo "ray tree: $(du -sm "$WORK/ray-site" | cut -f1) MiB unpacked -> $(( $(stat -c %s "$RAY_TAR") / 1024 )) KiB xz"

# ---- (b) raylight at the pinned commit
if ! git --git-dir="$RAYLIGHT_GIT" cat-file -e "$RAYLIGHT_COMMIT^{commit}" 2>/dev/null; then
  echo "ERROR: no raylight commit $RAYLIGHT_COMMIT in RAYLIGHT_GIT=$RAYLIGHT_GIT (bring github:komikndr/raylight" \
       "with the search tool's fetch, or point RAYLIGHT_GIT at a clone holding that commit)" >&2
  exit 2
fi
rm -f "$DEST"/raylight-*.tar.xz
RAYLIGHT_TAR="$DEST/raylight-${RAYLIGHT_COMMIT:0:12}.tar.xz"
git --git-dir="$RAYLIGHT_GIT" archive --format=tar --prefix=raylight/ "$RAYLIGHT_COMMIT" -- . \
  ':(exclude)example_workflows' ':(exclude)docs' ':(exclude)tests' ':(exclude)icon.png' | xz -9 > "$RAYLIGHT_TAR"
echo "raylight $RAYLIGHT_COMMIT -> $(( $(stat -c %s "$RAYLIGHT_TAR") / 1024 )) KiB"

# ---- (c) ComfyUI's python files (main.py, execution.py and everything raylight may import)
mkdir -p "$WORK/comfy"
if [ -n "${COMFYUI_PATH:-}" ] && [ -f "$COMFYUI_PATH/comfyui_version.py" ]; then
  COMFY_SRC=$COMFYUI_PATH
else
  TARBALL="${COMFYUI_TARBALL:-$ROOT/../shared/vendor/comfyui-v0.19.3.tar.gz}"
  [ -f "$TARBALL" ] || { echo "ERROR: set COMFYUI_PATH (a ComfyUI v0.19.3 tree) or COMFYUI_TARBALL" >&2; exit 2; }
  tar -xzf "$TARBALL" -C "$WORK/comfy"
  COMFY_SRC=$(dirname "$(ls "$WORK"/comfy/*/comfyui_version.py | head -1)")
fi
grep -q '"0.19.3"' "$COMFY_SRC/comfyui_version.py" || echo "WARNING: $COMFY_SRC is not ComfyUI 0.19.3" >&2
(cd "$COMFY_SRC" && find . \( -path ./custom_nodes -o -path ./tests -o -path ./tests-unit -o -path ./models \
   -o -path ./input -o -path ./output -o -path ./user -o -name __pycache__ -o -name .git \) -prune -o \
   \( -name '*.py' -o -name LICENSE \) -type f -print | LC_ALL=C sort |
   tar --owner=0 --group=0 --numeric-owner -cf - -T -) | xz -9 > "$DEST/comfyui-py.tar.xz"
echo "ComfyUI python files from $COMFY_SRC -> $(( $(stat -c %s "$DEST/comfyui-py.tar.xz") / 1024 )) KiB"

# ---- (d) wheels
rm -rf "$DEST/whl" && mkdir -p "$DEST/whl"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation py --abi none \
  --platform any -d "$DEST/whl" "${PURE[@]}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST/whl" "${BINARY[@]}"

# ---- (e) optional: ComfyUI's pip deps (.whl's wheels) unpacked and xz'd, for ONE device call carrying only .ray
rm -f "$DEST/comfy-deps.tar.xz"
if [ "${MOGA_RAY_WITH_COMFY_DEPS:-0}" = 1 ]; then
  WHL_DIR="${MOGA_WHL_CARRY:-$ROOT/.whl}"
  compgen -G "$WHL_DIR/*.whl" > /dev/null ||
    { echo "ERROR: MOGA_RAY_WITH_COMFY_DEPS=1 needs $WHL_DIR/*.whl (bench/prepare_gpu_carry.sh makes .whl)" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${PLATFORMS[@]}" --target "$WORK/comfy-deps" "$WHL_DIR"/*.whl
  tar -C "$WORK/comfy-deps" --owner=0 --group=0 --numeric-owner -cf - . |
    xz -T1 --x86 --lzma2=preset=9e,dict=128MiB > "$DEST/comfy-deps.tar.xz"
  echo "ComfyUI's deps from $WHL_DIR ($(ls "$WHL_DIR"/*.whl | wc -l) wheels, $(du -sm "$WHL_DIR" | cut -f1) MiB) ->" \
       "$(( $(stat -c %s "$DEST/comfy-deps.tar.xz") / 1048576 )) MiB xz (comfy-deps.tar.xz)"
fi

# ---- manifest
python3 - "$DEST" "$RAY_VERSION" "$RAYLIGHT_COMMIT" "$PYVER" <<'PY'
import hashlib, json, os, sys, time
dest, ray_version, commit, pyver = sys.argv[1:]
files = {}
for d, _, fs in os.walk(dest):
    for f in sorted(fs):
        p = os.path.join(d, f)
        rel = os.path.relpath(p, dest)
        if rel in (".gitignore", "MANIFEST.json"):
            continue
        with open(p, "rb") as fh:
            files[rel] = {"bytes": os.path.getsize(p), "sha256": hashlib.sha256(fh.read()).hexdigest()}
manifest = {"python": pyver, "ray": ray_version, "raylight_commit": commit,
            "comfy_deps": "comfy-deps.tar.xz" in files,
            "raylight_repo": "https://github.com/komikndr/raylight",
            "wheels": sorted(f[4:] for f in files if f.startswith("whl/")),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files,
            "total_bytes": sum(v["bytes"] for v in files.values())}
with open(os.path.join(dest, "MANIFEST.json"), "w") as fh:
    json.dump(manifest, fh, indent=1)
PY
ls -la "$DEST" "$DEST/whl"
carry_bytes=$(du -sb "$DEST" | cut -f1)
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
comfy_bytes=$(du -sb "$ROOT/.comfy" 2>/dev/null | cut -f1); whl_bytes=$(du -sb "$ROOT/.whl" 2>/dev/null | cut -f1)
awk -v t="$tree_bytes" -v c="$carry_bytes" -v m="${comfy_bytes:-0}" -v w="${whl_bytes:-0}" -v d="$DEST" \
    -v deps="$([ -f "$DEST/comfy-deps.tar.xz" ] && echo 1 || echo 0)" 'BEGIN {
  M = 1048576
  printf "carry %s: %.1f MiB; working tree that travels: %.1f MiB (limit 64 MiB a call)\n", d, c/M, t/M
  if (deps) {
    printf "ONE call, carry [\".ray\"]: %.1f MiB %s\n", (t+c)/M, ((t+c)/M <= 64 ? "(fits)" : "(OVER 64 MiB)")
  } else {
    printf "tree + .comfy + .whl + .ray = %.1f MiB: %s\n", (t+m+w+c)/M,
           ((t+m+w+c)/M <= 64 ? "fits ONE call" : "over 64 MiB: TWO calls on one warm machine")
    printf "  call 1, carry [\".comfy\", \".whl\"]: %.1f MiB;  call 2, carry [\".ray\"]: %.1f MiB\n",
           (t+m+w)/M, (t+c)/M
  }
}'
if [ "$DEST" = "$ROOT/.ray" ] && ! git check-ignore -q .ray/MANIFEST.json; then
  echo "WARNING: .ray/ is not git-ignored" >&2
fi
