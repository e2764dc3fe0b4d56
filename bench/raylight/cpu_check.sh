#!/usr/bin/env bash
# HERE, on a CPU machine (not on the GPU machine): what can be checked of bench/raylight/run_one_gpu.sh without
# CUDA. Writes only under /tmp/moga-ray-cpu (and Ray's own /tmp/raylight-ray, ~/.ray).
#
#   COMFYUI_PATH=/tmp/moga-ci-host/ComfyUI bash bench/raylight/cpu_check.sh
#
# 1. the real carry (.ray, cp312): its files match MANIFEST.json; its wheels install with pip --no-index
#    --no-deps --target into a temp folder; its trimmed, stripped ray tree imports and runs ray.init + a task + an
#    actor under Python 3.12 (pyenv's 3.12, with ray's own pip deps that the GPU image has, downloaded for 3.12
#    into a host-only folder) — the GPU image's Python, the very _raylet.so / raylet / gcs_server that travel;
# 2. a .ray for THIS machine's python (prepare_carry.sh with RAY_CARRY_PY, into /tmp/moga-ray-cpu/carry), then
#    run_one_gpu.sh all with it (CPU mode: tiny model; raylight's Ray Init Actor as it is, raylight's RayWorker
#    under a fake GPU, then the graphs with the CPU probe worker; see run_one_gpu.py's doc);
#    host-only stand-ins for what the GPU image has and this machine lacks: msgpack, protobuf and grpcio wheels;
#    a torchaudio stub (raylight's node module imports torchaudio; no torchaudio wheel exists for this torch);
# 3. an audit: every distribution the driver and a raylight worker imported, against the GPU image's package list
#    (KINDS.md) + .whl + .ray: what would be missing there.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
BASE=/tmp/moga-ray-cpu
mkdir -p "$BASE"
PY=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
status=0
note() { echo; echo "==== $*"; }

note "1. the real carry .ray (cp312)"
if [ -f .ray/MANIFEST.json ]; then
  python3 - .ray <<'PY' || status=1
import hashlib, json, os, sys
root = sys.argv[1]
m = json.load(open(os.path.join(root, "MANIFEST.json")))
bad = [rel for rel, want in m["files"].items()
       if hashlib.sha256(open(os.path.join(root, rel), "rb").read()).hexdigest() != want["sha256"]]
print(f"MANIFEST ok={not bad}: python {m['python']}, ray {m['ray']}, raylight {m['raylight_commit']}, "
      f"{m['total_bytes'] / 2**20:.1f} MiB, wheels {m['wheels']}")
sys.exit(1 if bad else 0)
PY
  rm -rf "$BASE/t312" && mkdir -p "$BASE/t312/ray-site"
  tar -xJf .ray/ray-*-trimmed.tar.xz -C "$BASE/t312/ray-site" || status=1
  PY312=$(ls /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1)
  if [ -n "$PY312" ]; then  # the GPU machine's command, with a Python 3.12's pip
    "$PY312" -m pip install -q --no-index --no-deps --no-compile --target "$BASE/t312/deps" .ray/whl/*.whl ||
      status=1
  else  # pip of this python, told the target is 3.12
    python3 -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_17_x86_64 --target "$BASE/t312/deps" .ray/whl/*.whl || status=1
  fi
  echo "installed into a temp target: $(ls "$BASE/t312/deps" | grep -c dist-info) distributions"
  if [ -n "$PY312" ]; then
    # ray's own deps that the GPU image has (KINDS.md) but pyenv's bare 3.12 lacks: host-only, for this check
    mkdir -p "$BASE/hostdeps312"
    python3 -m pip download -q --only-binary=:all: --python-version 3.12 --no-deps -d "$BASE/hostdeps312" \
      click filelock packaging pyyaml requests urllib3 idna certifi charset-normalizer msgpack protobuf \
      attrs typing-extensions 2>&1 | grep -v "Location 'file" || true
    "$PY312" -m pip install -q --no-index --no-deps --target "$BASE/t312/hostdeps" "$BASE"/hostdeps312/*.whl ||
      status=1
    PYTHONPATH="$BASE/t312/ray-site:$BASE/t312/deps:$BASE/t312/hostdeps" "$PY312" - <<'PY' || status=1
import sys, time
import ray
print("python", sys.version.split()[0], "ray", ray.__version__, ray.__file__)
t = time.time()
ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"MOGA_CHECK": "1"}})
@ray.remote
def f(x):
    import os
    return x + 1, os.environ.get("MOGA_CHECK")
@ray.remote
class A:
    def ping(self):
        return "pong"
a = A.options(name="probe").remote()
print("task", ray.get(f.remote(1)), "actor", ray.get(a.ping.remote()), f"{time.time() - t:.1f} s")
print("resources", ray.cluster_resources())
ray.shutdown()
PY
  else
    echo "no python3.12 here: the cp312 tree's import was not checked"
  fi
else
  echo "no .ray here: run bench/raylight/prepare_carry.sh first"; status=1
fi

note "2. a .ray for python $PY, then run_one_gpu.sh all on CPU"
CARRY="${MOGA_RAY_CARRY:-$BASE/carry}"
if [ ! -f "$CARRY/MANIFEST.json" ]; then
  RAY_CARRY_PY=$PY RAY_CARRY_DIR="$CARRY" bash bench/raylight/prepare_carry.sh || exit 1
fi
mkdir -p "$BASE/hostdeps" "$BASE/stubs/torchaudio"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$BASE/hostdeps" msgpack protobuf grpcio 2>&1 |
  grep -v "Location 'file" || true
rm -rf "$BASE/hostsite"
python3 -m pip install -q --no-index --no-deps --target "$BASE/hostsite" "$BASE"/hostdeps/*.whl || exit 1
echo '"""HOST-ONLY STAND-IN for the CPU check: no torchaudio for this torch; raylight imports it at module level."""' \
  > "$BASE/stubs/torchaudio/__init__.py"
rm -rf "$BASE/state/ComfyUI" "$BASE/out"
PYTHONPATH="$BASE/hostsite:$BASE/stubs${PYTHONPATH:+:$PYTHONPATH}" MOGA_RAY_STATE="$BASE/state" \
  MOGA_RAY_CARRY="$CARRY" MOGA_WHL_CARRY=/nonexistent OUT="$BASE/out" \
  bash bench/raylight/run_one_gpu.sh all "$@"
rc=$?
echo "run_one_gpu.sh all (CPU) rc=$rc"
[ $rc -ne 0 ] && status=$rc

note "3. audit: distributions imported by the driver and a raylight worker vs the GPU image (KINDS.md)"
python3 - "$BASE/out/results_all.json" "$REPO" <<'PY' || status=1
import json, os, re, sys
res = json.load(open(sys.argv[1]))
# KINDS.md "Python packages already there" (nvidia-h100-x1 / nvidia-h200 image 'cuda', read 2026-11-17)
image = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split()
whl = "av comfy-aimdo python-dotenv torchsde trampoline pydantic pydantic-core pydantic-settings annotated-types " \
      "typing-inspection".split()  # bench/prepare_gpu_carry.sh
ray_carry = "ray xfuser yunchang comfy-kitchen jsonschema referencing rpds-py jsonschema-specifications".split()
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
have = {norm(n) for n in image + whl + ray_carry}
host_only = {  # imported here, not needed on the image
    "torchaudio": "the stub here (the image has the real one)",
    "rfc3339-validator": "jsonschema's optional format checker (jsonschema/_format.py, under suppress(ImportError))",
    "jsonpointer": "jsonschema's optional format checker (jsonschema/_format.py, under suppress(ImportError))",
    "wcwidth": "tabulate's optional import (ray/_private/thirdparty/tabulate, try/except ImportError)",
    "httpx2": "this machine's huggingface_hub's own deps (the image has its own huggingface-hub, httpx, httpcore)",
    "httpcore2": "as httpx2", "truststore": "as httpx2 (httpcore2's)", "trio": "as httpx2 (httpcore2's)",
    "outcome": "as httpx2 (trio's)", "sniffio": "as httpx2 (trio's)"}
seen = {}
for where, dists in [("driver", res.get("driver_distributions") or {})] + [
        (f"worker ({g})", (w or {}).get("distributions") or {})
        for g, rec in (res.get("graphs") or {}).items() for w in (rec.get("worker") or [])]:
    for d, f in dists.items():
        seen.setdefault(norm(d), set()).add(where)
missing = {d: sorted(w) for d, w in seen.items() if d not in have and d not in host_only}
skipped = sorted(d for d in seen if d not in have and d in host_only)
print(f"{len(seen)} distributions imported; on the GPU image + .whl + .ray: {len(seen) - len(missing) - len(skipped)}")
print("imported here but not needed there:", {d: host_only[d] for d in skipped})
print("NOT on the GPU image, nor in .whl / .ray:", json.dumps(missing, indent=1) if missing else "none")
sys.exit(1 if missing else 0)
PY
echo
echo "cpu_check status=$status (results: $BASE/out/results_all.json, log: $BASE/out/run_all.log)"
exit $status
