#!/usr/bin/env bash
# One GPU-machine session (device tool): the CUDA tests and the benchmarks behind docs/PERFORMANCE.md, by stage.
#
#   bash bench/gpu_session.sh STAGE [STAGE ...]      (in the repository root on the GPU machine; carry .comfy, .whl)
#
# Stages (each writes under $OUT, default ./gpu_out):
#   tests     pytest -m cuda tests/core                       → cuda_tests.log
#   layer     the attention layer at 187,200 and 580,320 tokens, dense in the same run, with a profile
#             (bench/union_kernel.py)                         → layer.json, profile.txt
#   layer187  the same at 187,200 tokens only, capacities 1.25 and 1.0, no varlen rows (a quick re-measure)
#   e2e       one sampling step of the Wan-1.3B shape at 187,200 tokens: dense, calibrated, random groups, skewed, auto routers,
#             second group; a profile of the calibrated step (bench/e2e.py) → e2e_187k.json, profile.txt
#   e2e14b    the same for the Wan-14B shape (calibrated)    → e2e_14b.json
#   memory    580,320 tokens (a minute of 480p) through the Wan-1.3B shape with 23 GiB free, as on a 24 GB card
#                                                             → e2e_580k_24gb.json
#   families  each model family the pack patches (Wan Animate, S2V, Kandinsky 5 Lite/Pro, LTX-2) at ~32k tokens,
#             dense vs MoGA sampling steps (bench/families.py)  → families.json
#   parallel  sequence-parallel MoGA on every visible GPU vs one (bench/parallel.py, torchrun) → parallel_*.json
# Stages run one after another on the GPUs they see; set CUDA_VISIBLE_DEVICES per call to run two side by side.
set -uo pipefail
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
if [ -d .whl ] && ! python3 -c "import torchsde" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export COMFYUI_PATH="${COMFYUI_PATH:-$PWD/.comfy}"
status=0
for stage in "$@"; do
  echo "== stage $stage ($(date -u +%T))"
  case "$stage" in
    tests)
      python3 -m pytest -m cuda tests/core -v -p no:cacheprovider --durations=25 2>&1 |
        while IFS= read -r line; do echo "$(date -u +%T) $line"; done | tee "$OUT/cuda_tests.log" | tail -40 ;;
    layer)
      python3 bench/union_kernel.py --out "$OUT/layer.json" --points 187200:5,580320:20 --capacities none,1.25,1.0 --groupings kmeans,random \
        --repeats 10 --back-to-back --profile "$OUT/profile.txt" ;;
    layer187)
      python3 bench/union_kernel.py --out "$OUT/layer_187k.json" --points 187200:5 --capacities 1.25,1.0 \
        --varlen-capacities "" --repeats 10 --back-to-back --no-check ;;
    e2e)
      python3 bench/e2e.py --out "$OUT/e2e_187k.json" --cases 1.3b:187200 \
        --routers calibrated,random,skewed,auto,calibrated+second --profile "$OUT/profile.txt" ;;
    e2e14b)
      python3 bench/e2e.py --out "$OUT/e2e_14b.json" --cases 14b:187200 --routers calibrated ;;
    memory)
      python3 bench/e2e.py --out "$OUT/e2e_580k_24gb.json" --cases 1.3b:580320 --routers calibrated --free-gib 23 ;;
    families)
      python3 bench/families.py --out "$OUT/families.json" ;;
    parallel)
      gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
      torchrun --nproc_per_node="$gpus" bench/parallel.py --tokens 187200 --groups 5 --combine union --check \
        --out "$OUT/parallel_187k.json" &&
      torchrun --nproc_per_node="$gpus" bench/parallel.py --tokens 580000 --groups 20 --combine union \
        --out "$OUT/parallel_580k.json" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
  rc=$?
  echo "== stage $stage rc=$rc ($(date -u +%T))"
  [ $rc -ne 0 ] && status=$rc
done
exit $status
