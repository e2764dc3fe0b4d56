#!/usr/bin/env bash
# On the GPU machine (device tool), in the repository root, carry = [".server"] (bench/server/prepare_carry.sh):
#
#   bash bench/server/gpu_workflows.sh [run_workflows.py options]
#
# Installs the carried wheels into /tmp/moga_server_site (--no-deps: nothing replaces the image's torch or numpy),
# then runs every shipped workflow through ComfyUI v0.19.3's main.py twice, dynamic VRAM on (ComfyUI's defaults)
# and off (--disable-dynamic-vram): bench/server/run_workflows.py, gpu profile unless options say otherwise.
# Results under $OUT (default ./server_out): results.json, results.md, server_dynamic_on.log,
# server_dynamic_off.log, harness.log. Exit status 0 whenever the table was written.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/server_out}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
SITE=/tmp/moga_server_site
WHEELS="${MOGA_SERVER_WHEELS:-.server/whl}"   # a folder that does not exist: install nothing (a ready python)
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
python3 bench/server/run_workflows.py --tarball .server/comfyui-v0.19.3.tar.gz --out "$OUT" "$@" 2>&1 |
  tee "$OUT/harness.log"
exit "${PIPESTATUS[0]}"
