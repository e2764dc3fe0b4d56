#!/usr/bin/env bash
# The quality study's GPU run (docs/QUALITY.md): trains the WanModel, fine-tunes it MoGA-style, evaluates every mode
# and writes quality.json, QUALITY.md, checkpoints and quality.log to $OUT.
#
#   bash bench/quality_gpu.sh --preset long    # the study at length (96 frames, 36,864 tokens, matched densities):
#                                              # about 12 minutes on one H200 (estimate in bench/quality.py, `long`)
#   bash bench/quality_gpu.sh                  # the original study (preset `full`, 9,216 tokens): ~8 min, one H100
#
# On the lent GPU machine (device tool) the dense checkpoint of `long` (13.2 M parameters, ~26 MB in fp16) is over
# the 16 MiB per file that comes back from $OUT, and $OUT is emptied before each call: either fit one call
# (`--preset long --dense-seconds 140 --dense-long-seconds 45 --finetune-seconds 45 --deadline 560`, fewer steps
# than the estimate assumes: say so in the note), or split it with OUT outside the device's $OUT (e.g.
# OUT=/tmp/quality_out) and issue the second call within the machine's 30-second warm window, then copy
# quality.json / QUALITY.md / quality.log into the device's $OUT.
# Where one call may not run 12 minutes (a 10-minute limit), split it in two calls with the same $OUT:
#   bash bench/quality_gpu.sh --preset long --stop-after dense          # dense training, both phases (~4.5 min)
#   bash bench/quality_gpu.sh --preset long --dense-checkpoint "$OUT/quality_dense.safetensors" --deadline 540
#                                   # fine-tune, calibration, tuning, every row (~7.5 min; --deadline skips the
#                                   # last target's rows rather than lose the run); the training report of the
#                                   # first call is kept in quality.json
#
# Needs beside the working tree (git-ignored; made here by bench/prepare_gpu_carry.sh, carried to the GPU machine):
#   .comfy/  ComfyUI's comfy/ import chain of comfy.ldm.wan.model (COMFYUI_PATH defaults to it)
#   .whl/    wheels of that chain's pip deps the GPU image may lack (comfy-aimdo, einops, psutil, tqdm, pillow)
# Extra arguments go to bench/quality.py (e.g. --dense-seconds 200, --dense-steps 4000, --deadline 560).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-quality_out}"
mkdir -p "$OUT"
WHEELS="${WHEELS:-.whl}"  # another folder of wheels: e.g. without av (the study does not import it), to leave room
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then  # in the 64 MiB carry for a dense checkpoint
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/moga-site \
    "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/moga-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export COMFYUI_PATH="${COMFYUI_PATH:-$PWD/.comfy}"
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
exec python3 bench/quality.py --device cuda --all --out "$OUT" "$@"
