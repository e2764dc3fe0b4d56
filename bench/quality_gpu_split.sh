#!/usr/bin/env bash
# The study at length (`--preset long`) in two device-tool calls that do not depend on the machine staying warm
# between them. The dense checkpoint (13.2 M parameters, ~26 MB in fp16) is over the 16 MiB per file that comes back
# from the device's $OUT, so the first call returns it in parts; here they are joined under .device/ (git-ignored),
# which the second call carries.
#
#   first (device, carry .comfy .whl):        bash bench/quality_gpu_split.sh first
#       a CUDA smoke run of the CI slice (`long-tiny`, every row), then the dense training of `long`; returns
#       smoke.log, dense.log, quality.json, quality.log and quality_dense.part.* (and runs `pytest -m cuda tests/core`
#       in the time left, when MOGA_CUDA_TESTS=1, into cuda_tests.log)
#   join (here):                              bash bench/quality_gpu_split.sh join FILES_AT
#       joins the parts into .device/quality/quality_dense.safetensors (+ its quality.json), checks the sha256
#   second (device, carry .comfy .device):    bash bench/quality_gpu_split.sh second [extra quality.py args]
#       fine-tune, calibration, tuning and every row from that checkpoint (WHEELS=.device/whl: the wheels without
#       av, which the study does not import, so the carry stays under 64 MiB); returns quality.json, QUALITY.md,
#       quality.log, second.log
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${1:?first | join FILES_AT | second}"
shift
case "$stage" in
  first)
    out="${OUT:?set OUT (the device tool sets it)}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    OUT=/tmp/quality_smoke timeout 240 bash bench/quality_gpu.sh --preset long-tiny >"$out/smoke.log" 2>&1
    echo "smoke rc $?"; tail -4 "$out/smoke.log"
    OUT=/tmp/quality_long bash bench/quality_gpu.sh --preset long --stop-after dense "$@" >"$out/dense.log" 2>&1
    echo "dense rc $?"; tail -6 "$out/dense.log"
    cp /tmp/quality_long/quality.json /tmp/quality_long/quality.log "$out/"
    split -b 15m -d /tmp/quality_long/quality_dense.safetensors "$out/quality_dense.part."
    sha256sum /tmp/quality_long/quality_dense.safetensors | tee "$out/quality_dense.sha256"
    if [ "${MOGA_CUDA_TESTS:-0}" = 1 ]; then
      left=$((570 - SECONDS))
      echo "cuda tests: ${left} s left"
      [ "$left" -gt 60 ] && timeout "$left" python3 -m pytest -m cuda tests/core -q -p no:cacheprovider \
        --durations=10 >"$out/cuda_tests.log" 2>&1
      echo "cuda tests rc $?"; tail -5 "$out/cuda_tests.log"
    fi ;;
  join)
    src="${1:?the folder where the files of the first call came back}"
    mkdir -p .device/quality
    cat "$src"/quality_dense.part.* >.device/quality/quality_dense.safetensors
    cp "$src/quality.json" .device/quality/quality.json
    (cd .device/quality && sha256sum quality_dense.safetensors) | cut -d' ' -f1 >/tmp/moga_join.sha
    if [ "$(cut -d' ' -f1 "$src/quality_dense.sha256")" != "$(cat /tmp/moga_join.sha)" ]; then
      echo "sha256 differs: the parts did not join to the checkpoint" >&2; exit 1
    fi
    echo "joined: .device/quality/quality_dense.safetensors ($(stat -c %s .device/quality/quality_dense.safetensors) bytes)" ;;
  second)
    out="${OUT:?set OUT (the device tool sets it)}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    # the study's own --deadline skips rows; the timeout is the backstop that leaves time to copy what was written
    OUT=/tmp/quality_long WHEELS=.device/whl timeout "${STUDY_TIMEOUT:-565}" bash bench/quality_gpu.sh --preset long \
      --dense-checkpoint .device/quality/quality_dense.safetensors --deadline "${DEADLINE:-545}" "$@" \
      >"$out/second.log" 2>&1
    echo "second rc $?"; tail -8 "$out/second.log"
    cp /tmp/quality_long/quality.json /tmp/quality_long/QUALITY.md /tmp/quality_long/quality.log "$out/" ;;
  *) echo "unknown stage $stage (first | join FILES_AT | second)" >&2; exit 2 ;;
esac
