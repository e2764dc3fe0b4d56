#!/usr/bin/env bash
# On the GPU machine, in the repository root: raylight's own actors with "MoGA Patch (Ray)" on one GPU.
#
#   bash bench/raylight/run_one_gpu.sh prepare [ARGS]   call 1, carry [".comfy", ".whl"]
#   bash bench/raylight/run_one_gpu.sh ray [ARGS]       call 2 on the same warm machine, carry [".ray"]
#   bash bench/raylight/run_one_gpu.sh all [ARGS]       both in ONE call, carry [".ray"] when .ray was built with
#                                                       MOGA_RAY_WITH_COMFY_DEPS=1 (it then holds .whl's deps and
#                                                       all of ComfyUI's *.py), or wherever .comfy/.whl/.ray fit
#
# ARGS go to bench/raylight/run_one_gpu.py (--steps, --blocks, --frames, --moga-option id=value, ...).
# Everything lands in a state folder OUTSIDE the repository, $MOGA_RAY_STATE (default /tmp/moga-ray), so that call 2
# finds what call 1 set up even though it carries only .ray:
#   site/        .whl's wheels (ComfyUI's pip deps the image lacks), pip --target, or .ray/comfy-deps.tar.xz
#                unpacked; only if the image lacks torchsde
#   ComfyUI/     .comfy's files, overlaid with .ray/comfyui-py.tar.xz (all of ComfyUI 0.19.3's *.py: raylight needs
#                main.py and execution.py and more of ComfyUI); models/diffusion_models/ (the stand-in model);
#                custom_nodes/raylight (.ray's raylight tarball) and custom_nodes/ComfyUI-MoGA -> this repository
#   ray-site/    ray 2.60.0, unpacked from .ray (trimmed, not pip-installed)
#   ray-deps/    .ray/whl/*.whl (xfuser, yunchang, comfy-kitchen, jsonschema & co.), pip --target
# PYTHONPATH = ray-site:ray-deps:site (the image's torch/numpy are never replaced: --no-deps, separate targets).
# Results: $OUT (default ./raylight_out): results_<stage>.json, run_<stage>.log, ray_logs.tar.gz.
# Every failure (a missing carry, an install, an import, Ray, NCCL) ends the run with its message in the log and
# in results_<stage>.json; nothing is skipped silently.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
STAGE="${1:-all}"
[ $# -gt 0 ] && shift
case "$STAGE" in prepare|ray|all) ;; *) echo "usage: $0 prepare|ray|all [run_one_gpu.py args]"; exit 2 ;; esac
DEFAULT_OUT=$([ -z "${OUT:-}" ] && echo 1 || echo 0)
OUT="${OUT:-$REPO/raylight_out}"
STATE="${MOGA_RAY_STATE:-/tmp/moga-ray}"
RAY_CARRY="${MOGA_RAY_CARRY:-$REPO/.ray}"
COMFY_CARRY="${MOGA_COMFY_CARRY:-$REPO/.comfy}"
WHL_CARRY="${MOGA_WHL_CARRY:-$REPO/.whl}"
mkdir -p "$OUT" "$STATE"
[ "$DEFAULT_OUT" = 1 ] && [ ! -e "$OUT/.gitignore" ] && printf '*\n' > "$OUT/.gitignore"  # ./raylight_out stays out of git
exec > >(tee -a "$OUT/run_$STAGE.log") 2>&1
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OUT MOGA_RAY_STATE="$STATE"
echo "== run_one_gpu.sh $STAGE $* ($(date -u +%FT%TZ)) repo=$REPO state=$STATE out=$OUT"

fail() {  # the reason, in the log and as results_<stage>.json, then exit 1
  echo "FAILED ($STAGE): $*"
  python3 - "$OUT/results_$STAGE.json" "$STAGE" "$*" <<'PY' || true
import json, sys
json.dump({"ok": False, "stage": sys.argv[2], "error": sys.argv[3], "where": "run_one_gpu.sh"},
          open(sys.argv[1], "w"), indent=1)
PY
  exit 1
}

pip_target() {  # pip_target DIR WHEEL... : install once per set of wheels (marker = their names and sizes)
  local dir=$1; shift
  local key; key=$(ls -l "$@" | awk '{print $5, $NF}' | sha256sum | cut -c1-16)
  if [ -f "$dir/.moga-installed" ] && [ "$(cat "$dir/.moga-installed")" = "$key" ]; then
    echo "   $dir: already installed ($# wheels)"; return 0
  fi
  rm -rf "$dir"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$dir" "$@" ||
    fail "pip install --target $dir of $* failed (see the log above)"
  echo "$key" > "$dir/.moga-installed"
  echo "   $dir: installed $# wheels"
}

# ---- ComfyUI's pip deps (.whl), as bench/gpu_session.sh: only where the image lacks them
if python3 -c "import torchsde, av, pydantic" 2>/dev/null; then
  echo "-- ComfyUI's deps: the image (or PYTHONPATH) has them"
elif compgen -G "$WHL_CARRY/*.whl" > /dev/null; then
  echo "-- ComfyUI's deps from $WHL_CARRY"
  pip_target "$STATE/site" "$WHL_CARRY"/*.whl
elif [ -f "$RAY_CARRY/comfy-deps.tar.xz" ]; then
  echo "-- ComfyUI's deps from $RAY_CARRY/comfy-deps.tar.xz (.whl's wheels, unpacked; MOGA_RAY_WITH_COMFY_DEPS=1)"
  key=$(sha256sum "$RAY_CARRY/comfy-deps.tar.xz" | cut -c1-16)
  if [ "$(cat "$STATE/site/.moga-installed" 2>/dev/null)" != "$key" ]; then
    rm -rf "$STATE/site" && mkdir -p "$STATE/site"
    tar -xJf "$RAY_CARRY/comfy-deps.tar.xz" -C "$STATE/site" || fail "could not unpack $RAY_CARRY/comfy-deps.tar.xz"
    echo "$key" > "$STATE/site/.moga-installed"
  fi
elif [ -f "$STATE/site/.moga-installed" ]; then
  echo "-- ComfyUI's deps: $STATE/site from an earlier call"
else
  fail "ComfyUI's deps are missing: no $WHL_CARRY/*.whl, no $RAY_CARRY/comfy-deps.tar.xz and no $STATE/site from an" \
       "earlier call (run the 'prepare' call first, carrying .comfy and .whl, then 'ray' on the same warm machine;" \
       "if this is call 2, the machine was a fresh one: the first call's files are gone)"
fi

# ---- the ComfyUI tree
mkdir -p "$STATE/ComfyUI"
if [ -f "$COMFY_CARRY/folder_paths.py" ]; then
  cp -a "$COMFY_CARRY"/. "$STATE/ComfyUI"/
  echo "-- ComfyUI files from $COMFY_CARRY"
fi
if [ -f "$RAY_CARRY/comfyui-py.tar.xz" ]; then
  tar -xJf "$RAY_CARRY/comfyui-py.tar.xz" -C "$STATE/ComfyUI" || fail "could not unpack $RAY_CARRY/comfyui-py.tar.xz"
  echo "-- ComfyUI's python files from $RAY_CARRY/comfyui-py.tar.xz"
  if [ -f "$COMFY_CARRY/nodes.py" ] && ! cmp -s "$COMFY_CARRY/nodes.py" "$STATE/ComfyUI/nodes.py"; then
    echo "WARNING: $COMFY_CARRY and $RAY_CARRY/comfyui-py.tar.xz hold different ComfyUI versions (nodes.py differs)"
  fi
fi
[ -f "$STATE/ComfyUI/folder_paths.py" ] ||
  fail "no ComfyUI files: neither $COMFY_CARRY (bench/prepare_gpu_carry.sh) nor an earlier call's $STATE/ComfyUI"
mkdir -p "$STATE/ComfyUI/custom_nodes" "$STATE/ComfyUI/models/diffusion_models"
ln -sfn "$REPO" "$STATE/ComfyUI/custom_nodes/ComfyUI-MoGA"

# ---- ray, raylight and their wheels (.ray)
PYPATH="$STATE/site"
if [ "$STAGE" != prepare ]; then
  if [ -f "$RAY_CARRY/MANIFEST.json" ]; then
    echo "-- .ray from $RAY_CARRY"
    python3 - "$RAY_CARRY" <<'PY' || fail "$RAY_CARRY does not match its MANIFEST.json (an incomplete carry?)"
import hashlib, json, os, sys
root = sys.argv[1]
m = json.load(open(os.path.join(root, "MANIFEST.json")))
bad = []
for rel, want in m["files"].items():
    p = os.path.join(root, rel)
    if not os.path.exists(p):
        bad.append(f"{rel}: missing")
    elif hashlib.sha256(open(p, "rb").read()).hexdigest() != want["sha256"]:
        bad.append(f"{rel}: sha256 differs")
print(f"   MANIFEST: python {m['python']}, ray {m['ray']}, raylight {m['raylight_commit']}, wheels {m['wheels']}")
if bad:
    print("   " + "\n   ".join(bad)); sys.exit(1)
PY
    cp "$RAY_CARRY/MANIFEST.json" "$STATE/ray-manifest.json"
    RAY_TAR=$(ls "$RAY_CARRY"/ray-*-trimmed.tar.xz)
    key=$(sha256sum "$RAY_TAR" | cut -c1-16)
    if [ "$(cat "$STATE/ray-site/.moga-unpacked" 2>/dev/null)" != "$key" ]; then
      rm -rf "$STATE/ray-site" && mkdir -p "$STATE/ray-site"
      tar -xJf "$RAY_TAR" -C "$STATE/ray-site" || fail "could not unpack $RAY_TAR"
      echo "$key" > "$STATE/ray-site/.moga-unpacked"
      echo "   ray unpacked into $STATE/ray-site ($(du -sm "$STATE/ray-site" | cut -f1) MiB)"
    fi
    pip_target "$STATE/ray-deps" "$RAY_CARRY"/whl/*.whl
    rm -rf "$STATE/ComfyUI/custom_nodes/raylight"
    tar -xJf "$(ls "$RAY_CARRY"/raylight-*.tar.xz)" -C "$STATE/ComfyUI/custom_nodes" ||
      fail "could not unpack raylight from $RAY_CARRY"
  elif [ -f "$STATE/ray-site/.moga-unpacked" ] && [ -d "$STATE/ComfyUI/custom_nodes/raylight" ]; then
    echo "-- .ray: reusing $STATE/ray-site, ray-deps and custom_nodes/raylight from an earlier call"
  else
    fail "no $RAY_CARRY/MANIFEST.json: carry .ray (bench/raylight/prepare_carry.sh makes it)"
  fi
  PYPATH="$STATE/ray-site:$STATE/ray-deps:$PYPATH"
fi
export PYTHONPATH="$PYPATH${PYTHONPATH:+:$PYTHONPATH}"
echo "-- PYTHONPATH=$PYTHONPATH"
python3 -c "import sys, torch; print('-- python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv

python3 "$REPO/bench/raylight/run_one_gpu.py" --stage "$STAGE" --state "$STATE" --out "$OUT" "$@"
rc=$?
echo "== run_one_gpu.sh $STAGE rc=$rc ($(date -u +%FT%TZ)); files in $OUT:"
ls -la "$OUT"
exit $rc
