"""raylight's OWN actors with the pack's "MoGA Patch (Ray)" node on one GPU, in-process through ComfyUI's node
classes (as bench/e2e.py runs ComfyUI). Started by bench/raylight/run_one_gpu.sh, which unpacks the carried files
and sets PYTHONPATH; see bench/raylight/README.md.

    python3 bench/raylight/run_one_gpu.py --stage prepare|ray|all --state /tmp/moga-ray --out ./raylight_out

Stages:

- ``prepare``: ComfyUI (the pack only) and the stand-in model: ComfyUI's real ``WanModel`` with the Wan 2.1 1.3B
  layout (width 1536, 12 heads of 128, ``--blocks`` blocks, ffn 8960, text 4096), seeded random weights as
  tests/host/tiny_models.py makes them (std 0.02), saved as bf16 into ``<state>/ComfyUI/models/diffusion_models``
  (skipped when the same spec is there); the image's package versions. Needs no ray.
- ``ray`` (raylight's actors):
  1. ``dense`` graph: Ray Init Actor (``RayInitializer``: GPU 1, ulysses 1, ring 1, cfg 1, dp 1 — the degree-1
     path, ``is_xdit`` on, xfuser groups of size 1) → Load Diffusion Model (Ray) (``RayUNETLoader``, the stand-in,
     weight_dtype default) → XFuser KSampler (Advanced) (``XFuserKSamplerAdvanced``: raylight's Ray KSampler,
     every actor runs ComfyUI's sampler in its own process);
  2. ``moga`` graph: a fresh Ray Init Actor → Load Diffusion Model (Ray) → **MoGA Patch (Ray)** (the pack's
     ``MoGAApplyRay``; the node's defaults, ``start_percent`` 0 so that every step is sparse) → the same sampler;
  each sampler is called cold (1 step), then 1 step and ``--steps`` steps: step time = (t(S) - t(1)) / (S - 1), the
  driver's wall clock around the sampler node (Ray's transfers of conditioning and latent included, fixed costs
  cancelled). The worker's MoGA run summary ("MoGA: N sparse / M dense attention calls ...") is read back with
  raylight's ``model_function_runner_get_values`` (``nodes.wiring.patch_of(model).last_run_stats`` and
  ``nodes.patcher.summarize_run`` of the pack as the worker loaded it), and the worker's "moga" logger is turned to
  INFO so the same line is in the log (Ray forwards worker output as ``(RayWorker pid=...)``);
  3. ``fractional``: Ray Init Actor with GPU 2 on this one-GPU machine (two actors on one GPU), to record what
     raylight says;
  4. ``reference``: Ray shut down, the same file, conditioning and sampler settings in this process (ComfyUI's
     ``comfy.sample.sample``, what raylight's ``RayWorker.common_ksampler`` calls): dense and MoGAApply (the
     single-GPU node, same options), timed the same way; the Ray outputs are compared with them.
- ``all``: both.

Without CUDA (a CPU test, not the GPU run) the ``ray`` stage first runs Ray Init Actor as it is (raylight refuses:
no GPU), then the real ``RayWorker`` under a fake GPU resource (it fails in its ``__init__``: no CUDA), then the
graphs with ``CPUProbeWorker``: raylight's ``RayWorker`` whose ``__init__`` runs with its CUDA calls pointed at the
CPU (gloo instead of NCCL, a CPU device mesh, xfuser's groups on gloo); every other method is raylight's. Each of
those CPU stand-ins is marked ``cpu_probe`` in the results. Sizes default to a tiny model there.

Writes ``<out>/results_<stage>.json`` (and a copy in the state folder; the ``ray`` stage adds the ``prepare``
results found there) and ``<out>/ray_logs.tar.gz`` (Ray's session logs of each graph). Every stage that fails
records its exception and traceback (a Ray error carries the worker's traceback); the script exits 1 when a
required stage failed, 3 when a stage outlived ``--stage-timeout`` (its traceback and the cluster's resources are
recorded first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import glob
import importlib
import io as _io
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(os.path.dirname(HERE))
HOST_TESTS = os.path.join(PACK_ROOT, "tests", "host")
PACK_LINK_NAME = "ComfyUI-MoGA"
FRAME_PATCH = 2  # Wan's patch (1, 2, 2) over the 8x VAE: 16 pixels a token side
# distributions the image is read for (KINDS.md's list names them; versions are read there)
IMAGE_PACKAGES = ["torch", "numpy", "triton", "msgpack", "protobuf", "grpcio", "click", "filelock", "packaging",
                  "PyYAML", "requests", "aiohttp", "attrs", "typing_extensions", "einops", "safetensors",
                  "cloudpickle", "psutil", "jsonschema", "torchaudio", "transformers", "accelerate",
                  "huggingface-hub", "sentencepiece", "av", "pydantic", "torchsde", "comfy-aimdo", "comfy-kitchen"]
RAY_PACKAGES = ["ray", "xfuser", "yunchang", "jsonschema", "referencing", "rpds-py", "jsonschema-specifications",
                "comfy-kitchen"]

RESULTS: dict = {"ok": True, "stages": []}
ARGS = None
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.time() - T0:6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# results, stages, watchdog


def write_results() -> None:
    RESULTS["elapsed_s"] = round(time.time() - T0, 1)
    text = json.dumps(RESULTS, indent=1, default=str)
    for folder in (ARGS.out, ARGS.state):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"results_{ARGS.stage}.json"), "w") as f:
            f.write(text)


class Watchdog:
    """Ends the process (exit 3) when a stage runs past ``seconds``: a hung ``ray.get`` (an actor that never
    schedules, a collective that never completes) must come back as a recorded error, not a timeout of the call."""

    def __init__(self):
        self._lock = threading.Lock()
        self._deadline = None
        self._name = None
        threading.Thread(target=self._run, daemon=True).start()

    def arm(self, name: str, seconds: float):
        with self._lock:
            self._name, self._deadline = name, time.time() + seconds

    def disarm(self):
        with self._lock:
            self._deadline = None

    def _run(self):
        while True:
            time.sleep(1.0)
            with self._lock:
                late = self._deadline is not None and time.time() > self._deadline
                name = self._name
            if not late:
                continue
            log(f"WATCHDOG: stage {name!r} ran past its limit; recording and exiting")
            buf = _io.StringIO()
            for tid, frame in sys._current_frames().items():
                buf.write(f"--- thread {tid}\n" + "".join(traceback.format_stack(frame)))
            entry = {"name": name + " (watchdog)", "ok": False,
                     "error": "stage still running past its time limit (watchdog): see the thread stacks",
                     "traceback": buf.getvalue()}
            try:
                import ray

                if ray.is_initialized():
                    entry["ray_cluster_resources"] = ray.cluster_resources()
                    entry["ray_available_resources"] = ray.available_resources()
            except Exception as exc:  # noqa: BLE001
                entry["ray_state_error"] = repr(exc)
            RESULTS["stages"].append(entry)
            RESULTS["ok"] = False
            with contextlib.suppress(Exception):
                save_ray_logs(f"{name}_watchdog")
                pack_ray_logs()
            write_results()
            print(buf.getvalue(), flush=True)
            stopper = threading.Thread(target=shutdown_ray, daemon=True)  # no Ray processes left behind
            stopper.start()
            stopper.join(20)
            os._exit(3)


WATCHDOG = None


def shutdown_ray() -> None:
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            ray.shutdown()


@contextlib.contextmanager
def stage(name: str, required: bool = True, expect_failure: bool = False, timeout: float | None = None, **info):
    """Run a stage: its time, and on an exception its type, message and traceback go into the results.
    ``expect_failure``: a failure is what the stage is there to record (CPU probes); it does not fail the run.
    A required stage that fails re-raises `StageFailed` (the caller skips what depended on it)."""
    entry = {"name": name, **info}
    RESULTS["stages"].append(entry)
    log(f"== stage {name}")
    t = time.time()
    entry["timeout_s"] = timeout or ARGS.stage_timeout
    WATCHDOG.arm(name, entry["timeout_s"])
    try:
        yield entry
        entry["ok"] = True
        if expect_failure:
            entry["note"] = "expected to fail here, but it ran"
    except StageFailed:
        entry["ok"] = False
        entry["error"] = "skipped: an earlier stage it needs failed"
        if required:
            raise
    except BaseException as exc:  # noqa: BLE001  (KeyboardInterrupt / SystemExit too: record, then re-raise)
        entry["ok"] = False
        entry["error"] = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
        entry["traceback"] = traceback.format_exc()
        log(f"!! stage {name} failed: {entry['error'][:4000]}")
        print(entry["traceback"], flush=True)
        if expect_failure:
            entry["expected"] = True
        elif required:
            RESULTS["ok"] = False
            if not isinstance(exc, Exception):
                raise
            raise StageFailed(name) from exc
        else:
            entry["optional"] = True
    finally:
        WATCHDOG.disarm()
        entry["seconds"] = round(time.time() - t, 2)
        write_results()


class StageFailed(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------------
# environment


def versions_of(names) -> dict:
    import importlib.metadata as md

    out = {}
    for name in names:
        try:
            dist = md.distribution(name)
            out[name] = {"version": dist.version, "at": str(dist.locate_file(""))}
        except md.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict:
    import torch

    info = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        with contextlib.suppress(Exception):
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
    with contextlib.suppress(Exception):
        info["dev_shm"] = shutil.disk_usage("/dev/shm")._asdict()
    return info


def capture_logs():
    """A handler that keeps the records of the root logger (ComfyUI logs a failed custom node's traceback there)."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    return handler, records


def init_comfyui(comfy_root: str, with_raylight: bool) -> dict:
    """ComfyUI's node loader in this process (CPU mode without CUDA), then raylight and the pack as custom nodes
    from ``<comfy_root>/custom_nodes``. A node pack that does not load raises with ComfyUI's own log of it."""
    import torch

    sys.path.insert(0, comfy_root)
    import comfy.options  # noqa: F401
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    importlib.import_module("utils.install_util")
    importlib.import_module("utils.extra_config")
    import nodes

    logging.getLogger().setLevel(logging.INFO)
    loaded = {}
    packs = (["raylight"] if with_raylight else []) + [PACK_LINK_NAME]
    for name in packs:
        path = os.path.join(comfy_root, "custom_nodes", name)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no custom node folder {path} (run_one_gpu.sh makes it)")
        handler, records = capture_logs()
        logging.getLogger().addHandler(handler)
        try:
            ok = asyncio.run(nodes.load_custom_node(path))
        finally:
            logging.getLogger().removeHandler(handler)
        if not ok:
            raise RuntimeError(f"ComfyUI could not load the custom node {path}:\n" + "\n".join(records[-20:]))
        loaded[name] = path.replace(".", "_x_")
    needed = ["MoGAApplyRay", "MoGAApply"] + (["RayInitializer", "RayUNETLoader", "XFuserKSamplerAdvanced"]
                                              if with_raylight else [])
    missing = [n for n in needed if n not in nodes.NODE_CLASS_MAPPINGS]
    if missing:
        raise RuntimeError(f"nodes not registered after loading {packs}: {missing}")
    return {"nodes": nodes, "pack_module": loaded[PACK_LINK_NAME]}


# ---------------------------------------------------------------------------------------------------------------
# the stand-in model, conditioning, latent


def model_spec(args) -> dict:
    return {"family": "wan2.1 t2v (ComfyUI WanModel)", "dim": args.dim, "ffn": args.ffn, "blocks": args.blocks,
            "heads": args.dim // 128, "text_dim": 4096, "in_dim": 16, "seed": args.model_seed, "std": 0.02,
            "dtype": "bfloat16"}


def model_name(spec: dict) -> str:
    return f"wan2.1_t2v_standin_d{spec['dim']}_L{spec['blocks']}_bf16.safetensors"


def ensure_model(comfy_root: str, spec: dict) -> dict:
    """The stand-in diffusion model file (ComfyUI's real WanModel, real key layout, random weights) in
    models/diffusion_models; written once per spec."""
    import torch
    from safetensors.torch import save_file

    folder = os.path.join(comfy_root, "models", "diffusion_models")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, model_name(spec))
    marker = path + ".json"
    if os.path.exists(path) and os.path.exists(marker):
        with open(marker) as f:
            if json.load(f).get("spec") == spec:
                return {"path": path, "bytes": os.path.getsize(path), "built": False}
    if HOST_TESTS not in sys.path:
        sys.path.append(HOST_TESTS)
    import comfy.ldm.wan.model as wan
    import comfy.ops
    import tiny_models as tm  # the tests' builders: _randomize (norms 1 + 0.1 N, the rest std * N)

    t = time.time()
    model = wan.WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=spec["dim"],
                         ffn_dim=spec["ffn"], freq_dim=256, text_dim=4096, out_dim=16, num_heads=spec["heads"],
                         num_layers=spec["blocks"], window_size=(-1, -1), qk_norm=True, cross_attn_norm=True,
                         eps=1e-6, operations=comfy.ops.disable_weight_init)
    sd = tm._randomize(model, spec["seed"], std=spec["std"])
    del model
    params = sum(v.numel() for v in sd.values())
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}, path)
    del sd
    with open(marker, "w") as f:
        json.dump({"spec": spec, "params": params}, f)
    return {"path": path, "bytes": os.path.getsize(path), "params": params, "built": True,
            "seconds": round(time.time() - t, 1)}


def video_inputs(args):
    """Random UMT5-shaped text (1, 512, 4096) for both prompts (as bench/e2e.py) and an empty Wan 2.1 latent."""
    import torch

    gen = torch.Generator().manual_seed(args.seed)
    pos = [[torch.randn(1, 512, 4096, generator=gen), {}]]
    neg = [[torch.randn(1, 512, 4096, generator=gen), {}]]
    t_lat = (args.frames - 1) // 4 + 1
    latent = {"samples": torch.zeros(1, 16, t_lat, args.height // 8, args.width // 8)}
    tokens = t_lat * (args.height // 8 // FRAME_PATCH) * (args.width // 8 // FRAME_PATCH)
    return pos, neg, latent, tokens


def moga_values(pack_module: str, args) -> dict:
    """MoGAApply's option values: the node's defaults, ``start_percent`` from the command line, ``--moga-option``."""
    options = importlib.import_module(f"{pack_module}.nodes.options")
    values = {o.id: o.default_value() for o in options.OPTIONS}
    values["start_percent"] = args.start_percent
    if args.min_tokens is not None:
        values["min_tokens"] = args.min_tokens
    for item in args.moga_option:
        key, _, raw = item.partition("=")
        if key not in values:
            raise SystemExit(f"--moga-option {item}: no option {key!r} (options: {sorted(values)})")
        old = values[key]
        values[key] = (raw.lower() in ("1", "true", "yes")) if isinstance(old, bool) else type(old)(raw) \
            if old is not None else raw
    return values


def tensor_summary(x) -> dict:
    import torch

    x = x.detach().float().cpu()
    finite = bool(torch.isfinite(x).all())
    out = {"shape": list(x.shape), "dtype": str(x.dtype), "finite": finite}
    if finite:
        out.update(mean=float(x.mean()), std=float(x.std()), absmax=float(x.abs().max()))
    else:
        out.update(nan=int(torch.isnan(x).sum()), inf=int(torch.isinf(x).sum()))
    return out


def rel_err(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------------------------
# functions sent to raylight's workers (model_function_runner_get_values): nested, so Ray's cloudpickle sends them
# by value; they name nothing of this file's module


def worker_logging_fn():
    def moga_bench_worker_logging(model):
        import logging
        import sys

        logger = logging.getLogger("moga")
        logger.setLevel(logging.INFO)
        if not any(getattr(h, "_moga_bench", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler._moga_bench = True
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
            logger.addHandler(handler)
            logger.propagate = False  # the one line, not twice where the root logger has a handler too
        return logger.level

    return moga_bench_worker_logging


def worker_stats_fn():
    def moga_bench_worker_stats(model):
        """The worker's MoGA holder and its last run's statistics, from the pack module the worker loaded."""
        import sys
        from collections import Counter

        def plain(value):
            if isinstance(value, Counter) or isinstance(value, dict):
                return {str(k): plain(v) for k, v in value.items()}
            if isinstance(value, (set, frozenset)):
                return sorted(str(v) for v in value)
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, (int, float, str, bool)) or value is None:
                return value
            return repr(value)

        packs = sorted(n[: -len(".nodes.wiring")] for n in sys.modules
                       if n.startswith("moga_pack_worker_") and n.endswith(".nodes.wiring"))
        if model is None:
            return {"installed": False, "reason": "the worker has no model", "pack_modules": packs}
        if not packs:
            return {"installed": False, "reason": "no MoGA pack module loaded in this worker", "pack_modules": packs}
        wiring = sys.modules[packs[0] + ".nodes.wiring"]
        patcher = sys.modules[packs[0] + ".nodes.patcher"]
        holder = wiring.patch_of(model)
        if holder is None:
            return {"installed": False, "reason": "the worker's model carries no MoGA holder", "pack_modules": packs}
        stats = holder.last_run_stats
        return {"installed": True, "pack_modules": packs,
                "holder": f"{type(holder).__module__}.{type(holder).__qualname__}",
                "summary": patcher.summarize_run(stats), "stats": plain(stats),
                "sparse_calls": sum((stats or {}).get("sparse_calls", {}).values()),
                "dense_calls": sum((stats or {}).get("dense", {}).values())}

    return moga_bench_worker_stats


def worker_diag_fn():
    def moga_bench_worker_diag(model, reset_peak=False, audit=False):
        """Where the worker runs and what it loaded (``audit``: every top-level module's distribution and path)."""
        import os
        import sys

        import torch

        info = {"pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "python": sys.version.split()[0], "torch": torch.__version__, "cwd": os.getcwd()}
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
            info["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
            info["memory_allocated_gib"] = round(torch.cuda.memory_allocated() / 2 ** 30, 3)
            if reset_peak:
                torch.cuda.reset_peak_memory_stats()
        import torch.distributed as dist

        if dist.is_initialized():
            info["dist"] = {"backend": str(dist.get_backend()), "world_size": dist.get_world_size(),
                            "rank": dist.get_rank()}
        try:
            from xfuser.core.distributed import get_sp_group, model_parallel_is_initialized

            info["xfuser_groups_initialized"] = bool(model_parallel_is_initialized())
            if info["xfuser_groups_initialized"]:
                info["sp_world_size"] = get_sp_group().world_size
        except Exception as exc:  # noqa: BLE001
            info["xfuser_error"] = repr(exc)
        if model is not None:
            info["model_base"] = type(model.model).__name__
            dm = model.model.diffusion_model
            p = next(dm.parameters())
            info.update(param_dtype=str(p.dtype), param_device=str(p.device), blocks=len(getattr(dm, "blocks", [])))
        if audit:
            import importlib.metadata as md

            dists = md.packages_distributions()
            found = {}
            for name, mod in list(sys.modules.items()):
                if "." in name or mod is None:
                    continue
                f = getattr(mod, "__file__", None) or ""
                for dist_name in dists.get(name, []):
                    found[dist_name] = f
            info["distributions"] = found
            info["sys_path"] = list(sys.path)
        return info

    return moga_bench_worker_diag


def run_on_workers(ray, ray_actors, fn, **kwargs):
    return ray.get([w.model_function_runner_get_values.remote(fn, **kwargs) for w in ray_actors["workers"]],
                   timeout=ARGS.call_timeout)


# ---------------------------------------------------------------------------------------------------------------
# CPU probe (no CUDA): raylight's RayWorker with its CUDA calls pointed at the CPU


def cpu_worker_setup_hook():
    """Ray worker_process_setup_hook for the CPU probe: ComfyUI's CPU mode before raylight imports comfy (ComfyUI's
    model_management asks CUDA for its device at import otherwise)."""
    import importlib

    import comfy.options  # noqa: F401
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    importlib.import_module("utils.install_util")


def make_cpu_probe_worker(RayWorker):
    class CPUProbeWorker(RayWorker):
        """CPU PROBE, not raylight: raylight's RayWorker.__init__ as it is, with its CUDA-only calls pointed at the
        CPU (device capability, NCCL -> gloo, CUDA device mesh -> CPU, xfuser's groups on gloo). Every other
        method is raylight's."""

        def __init__(self, local_rank, device_id, parallel_dict):
            import functools

            import torch
            import torch.distributed as dist

            import raylight.distributed_worker.parallel_group_manager as pgm

            torch.cuda.get_device_capability = lambda *a, **k: (0, 0)
            init_pg = dist.init_process_group
            dist.init_process_group = lambda backend=None, *a, **k: init_pg("gloo", *a, **k)
            init_mesh = dist.device_mesh.init_device_mesh
            dist.device_mesh.init_device_mesh = lambda device_type, *a, **k: init_mesh("cpu", *a, **k)
            pgm.init_distributed_environment = functools.partial(pgm.init_distributed_environment, backend="gloo")
            pgm.initialize_model_parallel = functools.partial(pgm.initialize_model_parallel, backend="gloo")
            super().__init__(local_rank, device_id, parallel_dict)

    return CPUProbeWorker


@contextlib.contextmanager
def cpu_probe_patches(rl_nodes, actor_class=None):
    """Driver side of the CPU probe: torch says one GPU (raylight counts them before ray.init), ray.init gets a
    fake GPU resource and the CPU setup hook; with ``actor_class``, raylight's make_ray_actor_fn builds that class
    (same options: num_gpus=1, named RayWorker:{rank})."""
    import ray
    import torch

    count, init, make = torch.cuda.device_count, ray.init, rl_nodes.make_ray_actor_fn

    def fake_init(*a, **k):
        k.setdefault("num_gpus", 1)
        env = dict(k.get("runtime_env") or {})
        env["worker_process_setup_hook"] = cpu_worker_setup_hook
        k["runtime_env"] = env
        return init(*a, **k)

    def probe_make(world_size, parallel_dict):
        def init_actors(world_size=world_size, parallel_dict=parallel_dict):
            cls = ray.remote(actor_class)
            workers = [cls.options(num_gpus=1, name=f"RayWorker:{r}").remote(local_rank=r, device_id=0,
                                                                             parallel_dict=parallel_dict)
                       for r in range(world_size)]
            for w in workers:
                ray.get(w.__ray_ready__.remote())
            return {"workers": workers}

        return init_actors

    torch.cuda.device_count = lambda: 1
    ray.init = fake_init
    if actor_class is not None:
        rl_nodes.make_ray_actor_fn = probe_make
    try:
        yield
    finally:
        torch.cuda.device_count, ray.init, rl_nodes.make_ray_actor_fn = count, init, make


@contextlib.contextmanager
def ray_init_watch(gpus: int, record: dict):
    """Watches raylight's own ray.init (changes nothing it passes): records the cluster's resources and fails
    loudly when Ray sees fewer GPUs than the actors will ask for (RayWorker asks num_gpus=1 each: they would never
    be scheduled and Ray Init Actor would wait forever)."""
    import ray

    init = ray.init

    def watched_init(*a, **k):
        ctx = init(*a, **k)
        resources = ray.cluster_resources()
        record["ray_init_kwargs"] = {key: (val if key != "runtime_env" else {kk: vv for kk, vv in val.items()
                                                                             if kk != "worker_process_setup_hook"})
                                     for key, val in k.items()}
        record["ray_cluster_resources"] = resources
        log(f"ray.init by raylight: cluster resources {resources}")
        if resources.get("GPU", 0) < gpus:
            raise RuntimeError(f"Ray sees {resources.get('GPU', 0)} GPU(s) but Ray Init Actor will start {gpus} "
                               f"RayWorker(s) of num_gpus=1 (torch sees {__import__('torch').cuda.device_count()}): "
                               f"they would never be scheduled. cluster_resources={resources}")
        return ctx

    ray.init = watched_init
    try:
        yield
    finally:
        ray.init = init


# ---------------------------------------------------------------------------------------------------------------
# Ray logs


def ray_session_logs() -> str | None:
    base = os.environ.get("RAYLIGHT_RAY_TMPDIR") or os.path.join(
        __import__("tempfile").gettempdir(), "raylight-ray")
    latest = os.path.join(base, "ray", "session_latest", "logs")
    return os.path.realpath(latest) if os.path.isdir(latest) else None


def save_ray_logs(tag: str) -> None:
    """Copy this Ray session's logs (raylight's next Ray Init Actor deletes its temp folder)."""
    src = ray_session_logs()
    if src is None:
        return
    dst = os.path.join(ARGS.state, "ray_logs", tag)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.sock"), dirs_exist_ok=True)


def pack_ray_logs() -> None:
    root = os.path.join(ARGS.state, "ray_logs")
    if not os.path.isdir(root):
        return
    out = os.path.join(ARGS.out, "ray_logs.tar.gz")
    limit = 2 * 2 ** 20  # per file: the tail of a larger one
    with tarfile.open(out, "w:gz") as tar:
        for d, _, files in os.walk(root):
            for f in sorted(files):
                p = os.path.join(d, f)
                data = open(p, "rb").read()
                if len(data) > limit:
                    data = b"[... head cut ...]\n" + data[-limit:]
                info = tarfile.TarInfo(os.path.relpath(p, root))
                info.size = len(data)
                tar.addfile(info, _io.BytesIO(data))


# ---------------------------------------------------------------------------------------------------------------
# the graphs


def ray_init_inputs(args, gpus=1, ulysses=1) -> dict:
    """Ray Init Actor's inputs (RayInitializer.INPUT_TYPES order): the degree-1 path."""
    return dict(ray_cluster_address="local", ray_cluster_namespace="default", GPU=gpus, ulysses_degree=ulysses,
                ring_degree=1, cfg_degree=1, dp_degree=1, sync_ulysses=False, clear_vram_after_sampling=False,
                FSDP=False, FSDP_CPU_OFFLOAD=False, XFuser_attention=args.xfuser_attention,
                skip_comm_test=not args.comm_test, use_mmap=False)


def sample_timed(sampler, ray_actors, pos, neg, latent, steps, args):
    import torch

    t = time.perf_counter()
    out = sampler.ray_sample(ray_actors=ray_actors, add_noise="enable", noise_seed=args.seed, steps=steps,
                             cfg=args.cfg, sampler_name=args.sampler, scheduler=args.scheduler, positive=pos,
                             negative=neg, latent_image=latent, start_at_step=0, end_at_step=10000,
                             return_with_leftover_noise="disable", denoise=1.0)
    seconds = time.perf_counter() - t
    samples = out[0]["samples"]
    assert torch.is_tensor(samples), f"the sampler returned {type(samples).__name__}"
    return samples, seconds


def run_graph(kind: str, ctx: dict, args, init_patches=None) -> dict:
    """One graph through raylight's nodes: Ray Init Actor -> Load Diffusion Model (Ray) [-> MoGA Patch (Ray)] ->
    XFuser KSampler (Advanced). ``kind`` is "dense" or "moga"."""
    import ray

    rl, nodes = ctx["raylight_nodes"], ctx["nodes"].NODE_CLASS_MAPPINGS
    pos, neg, latent = ctx["pos"], ctx["neg"], ctx["latent"]
    rec = {"graph": ["RayInitializer", "RayUNETLoader"] + (["MoGAApplyRay"] if kind == "moga" else []) +
           ["XFuserKSamplerAdvanced"]}
    if init_patches is not None:
        rec["cpu_probe"] = "CPUProbeWorker: raylight's RayWorker with its CUDA calls on the CPU (see the doc)"
    ctx["graphs"][kind] = rec
    with stage(f"{kind}: Ray Init Actor", timeout=args.init_timeout, **{"inputs": ray_init_inputs(args)}) as e:
        save_ray_logs("before_" + kind)
        with init_patches() if init_patches is not None else contextlib.nullcontext(), ray_init_watch(1, rec):
            t = time.perf_counter()
            (ray_actors_init,) = nodes["RayInitializer"]().spawn_actor(**ray_init_inputs(args))
            rec["ray_init_s"] = round(time.perf_counter() - t, 2)
        ray_actors = ray_actors_init[0]
        rec["workers"] = len(ray_actors["workers"])
        e["ray_resources"] = ray.cluster_resources()
        parallel = ray.get(ray_actors["workers"][0].get_parallel_dict.remote(), timeout=args.call_timeout)
        rec["parallel_dict"] = {k: v for k, v in parallel.items() if isinstance(v, (int, float, str, bool))}
    with stage(f"{kind}: Load Diffusion Model (Ray)", unet_name=ctx["unet_name"]):
        t = time.perf_counter()
        (ray_actors,) = nodes["RayUNETLoader"]().load_ray_unet(ray_actors_init, ctx["unet_name"], "default")
        rec["load_s"] = round(time.perf_counter() - t, 2)
        rec["worker"] = run_on_workers(ray, ray_actors, worker_diag_fn(), audit=True)
        run_on_workers(ray, ray_actors, worker_logging_fn())
    if kind == "moga":
        with stage("moga: MoGA Patch (Ray)", options=ctx["moga_values"]):
            t = time.perf_counter()
            out = nodes["MoGAApplyRay"].execute(ray_actors=ray_actors, router=None, **ctx["moga_values"])
            rec["patch_s"] = round(time.perf_counter() - t, 2)
            assert out.args[0] is ray_actors, "MoGA Patch (Ray) returned other actors"
            rec["after_patch"] = run_on_workers(ray, ray_actors, worker_stats_fn())
    sampler = nodes["XFuserKSamplerAdvanced"]()
    with stage(f"{kind}: XFuser KSampler (Advanced)", steps=args.steps, tokens=ctx["tokens"]):
        _, rec["sample_cold_1step_s"] = sample_timed(sampler, ray_actors, pos, neg, latent, 1, args)
        log(f"{kind}: cold 1-step sample {rec['sample_cold_1step_s']:.2f} s")
        ones, manys = [], []
        for r in range(args.repeats):  # the minimum of each: warm runs; the last S-step run is the one reported
            ones.append(sample_timed(sampler, ray_actors, pos, neg, latent, 1, args)[1])
            if r == args.repeats - 1:
                run_on_workers(ray, ray_actors, worker_diag_fn(), reset_peak=True)
            samples, seconds = sample_timed(sampler, ray_actors, pos, neg, latent, args.steps, args)
            manys.append(seconds)
        rec["runs_1step_s"], rec[f"runs_{args.steps}step_s"] = ones, manys
        rec["sample_1step_s"], rec[f"sample_{args.steps}step_s"] = min(ones), min(manys)
        rec["step_s"] = (rec[f"sample_{args.steps}step_s"] - rec["sample_1step_s"]) / max(args.steps - 1, 1)
        rec["output"] = tensor_summary(samples)
        ctx["outputs"][kind] = samples
        log(f"{kind}: {args.steps} steps {rec[f'sample_{args.steps}step_s']:.2f} s, 1 step {rec['sample_1step_s']:.2f}"
            f" s -> {rec['step_s']:.3f} s/step; output {rec['output']}")
        rec["worker_after"] = run_on_workers(ray, ray_actors, worker_diag_fn())
        rec["moga"] = run_on_workers(ray, ray_actors, worker_stats_fn())
        for i, s in enumerate(rec["moga"]):
            log(f"{kind}: worker {i} run summary: {s.get('summary') or s.get('reason')}")
        if not rec["output"]["finite"]:
            raise AssertionError(f"{kind}: the sampler's output is not finite: {rec['output']}")
        if kind == "moga" and not all(s.get("installed") and s.get("sparse_calls", 0) > 0 for s in rec["moga"]):
            raise AssertionError(f"moga: no sparse MoGA calls on a worker: {rec['moga']}")
    save_ray_logs(kind)
    return rec


def reference_run(ctx: dict, args) -> dict:
    """Ray shut down; the same model file, inputs and sampler settings in this process: dense and MoGAApply."""
    import comfy.model_management
    import comfy.sample
    import comfy.sd
    import folder_paths
    import torch

    nodes = ctx["nodes"].NODE_CLASS_MAPPINGS
    path = folder_paths.get_full_path_or_raise("diffusion_models", ctx["unet_name"])
    base = comfy.sd.load_diffusion_model(path)
    patched = nodes["MoGAApply"].execute(model=base, router=None, **ctx["moga_values"]).args[0]
    x = ctx["latent"]["samples"]
    x = comfy.sample.fix_empty_latent_channels(base, x)
    noise = comfy.sample.prepare_noise(x, args.seed, None)

    def sample(model, steps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = comfy.sample.sample(model, noise, steps, args.cfg, args.sampler, args.scheduler, ctx["pos"],
                                      ctx["neg"], x, denoise=1.0, disable_noise=False, start_step=0, last_step=10000,
                                      force_full_denoise=True, noise_mask=None, callback=None, disable_pbar=True,
                                      seed=args.seed)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    rec = {}
    for kind, model in (("dense", base), ("moga", patched)):
        _, cold = sample(model, 1)
        ones, manys = [], []
        for _ in range(args.repeats):
            ones.append(sample(model, 1)[1])
            out, seconds = sample(model, args.steps)
            manys.append(seconds)
        one, many = min(ones), min(manys)
        r = {"sample_cold_1step_s": cold, "sample_1step_s": one, f"sample_{args.steps}step_s": many,
             "runs_1step_s": ones, f"runs_{args.steps}step_s": manys,
             "step_s": (many - one) / max(args.steps - 1, 1), "output": tensor_summary(out)}
        if torch.cuda.is_available():
            r["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
            torch.cuda.reset_peak_memory_stats()
        if kind == "moga":
            holder = importlib.import_module(f"{ctx['pack_module']}.nodes.wiring").patch_of(model)
            summarize = importlib.import_module(f"{ctx['pack_module']}.nodes.patcher").summarize_run
            r["summary"] = summarize(holder.last_run_stats)
        ray_out = ctx["outputs"].get(kind)
        if ray_out is not None:
            r["rel_err_vs_ray"] = rel_err(ray_out, out)
            r["equal_to_ray"] = bool(torch.equal(ray_out.float().cpu(), out.float().cpu()))
        rec[kind] = r
        log(f"reference {kind}: {r['step_s']:.3f} s/step, vs Ray: {r.get('rel_err_vs_ray')} "
            f"{r.get('summary', '')}")
    del base, patched
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    return rec


# ---------------------------------------------------------------------------------------------------------------


def stage_prepare(args, comfy_root):
    with stage("environment") as e:
        RESULTS["machine"] = machine_info()
        RESULTS["image_packages"] = versions_of(IMAGE_PACKAGES)
        e["python_path"] = os.environ.get("PYTHONPATH", "")
    with stage("ComfyUI + pack"):
        ctx = init_comfyui(comfy_root, with_raylight=False)
    with stage("stand-in model", spec=model_spec(args)) as e:
        e.update(ensure_model(comfy_root, model_spec(args)))
        RESULTS["model"] = dict(e)
    return ctx


def stage_ray(args, comfy_root):
    import torch

    cuda = torch.cuda.is_available()
    shutil.rmtree(os.path.join(args.state, "ray_logs"), ignore_errors=True)  # this run's Ray logs only
    with stage("environment (ray)") as e:
        RESULTS.setdefault("machine", machine_info())
        RESULTS["versions"] = versions_of(RAY_PACKAGES)
        manifest = os.path.join(args.state, "ray-manifest.json")
        if os.path.exists(manifest):
            with open(manifest) as f:
                m = json.load(f)
            RESULTS["carry_manifest"] = {k: m.get(k) for k in ("python", "ray", "raylight_commit", "raylight_repo",
                                                                "wheels", "built", "total_bytes")}
        e["python_path"] = os.environ.get("PYTHONPATH", "")
        prev = os.path.join(args.state, "results_prepare.json")
        if args.stage == "ray" and os.path.exists(prev):
            with open(prev) as f:
                RESULTS["prepare"] = json.load(f)
        import ray

        RESULTS["versions"]["ray_module"] = {"version": ray.__version__, "file": ray.__file__}
    with stage("ComfyUI + raylight + pack"):
        ctx = init_comfyui(comfy_root, with_raylight=True)
        import raylight
        import raylight.nodes as rl_nodes

        RESULTS["versions"]["raylight"] = {"file": raylight.__file__,
                                           "commit": RESULTS.get("carry_manifest", {}).get("raylight_commit"),
                                           "runtime_env_local": rl_nodes._RAY_RUNTIME_ENV_LOCAL}
        ctx["raylight_nodes"] = rl_nodes
    with stage("stand-in model", spec=model_spec(args)) as e:
        e.update(ensure_model(comfy_root, model_spec(args)))
        RESULTS["model"] = dict(e)
    pos, neg, latent, tokens = video_inputs(args)
    ctx.update(pos=pos, neg=neg, latent=latent, tokens=tokens, unet_name=model_name(model_spec(args)),
               moga_values=moga_values(ctx["pack_module"], args), graphs={}, outputs={})
    RESULTS["inputs"] = {"frames": args.frames, "height": args.height, "width": args.width,
                         "latent": list(latent["samples"].shape), "tokens": tokens, "steps": args.steps,
                         "cfg": args.cfg, "sampler": args.sampler, "scheduler": args.scheduler, "seed": args.seed,
                         "moga_options": ctx["moga_values"]}
    RESULTS["graphs"] = ctx["graphs"]
    log(f"inputs: latent {list(latent['samples'].shape)} = {tokens} video tokens, {args.steps} steps")
    patches = None
    if not cuda:
        RESULTS["cpu_probe"] = {"why": "no CUDA here: raylight's actors need a GPU; see the module doc"}
        rl = ctx["raylight_nodes"]
        with stage("cpu: Ray Init Actor as it is", expect_failure=True) as e:
            ctx["nodes"].NODE_CLASS_MAPPINGS["RayInitializer"]().spawn_actor(**ray_init_inputs(args))
        RESULTS["cpu_probe"]["ray_init_as_is"] = e.get("error")
        with stage("cpu: raylight's RayWorker under a fake GPU resource", expect_failure=True) as e:
            with cpu_probe_patches(rl):
                ctx["nodes"].NODE_CLASS_MAPPINGS["RayInitializer"]().spawn_actor(**ray_init_inputs(args))
        RESULTS["cpu_probe"]["ray_worker_as_is"] = e.get("error")
        probe = make_cpu_probe_worker(importlib.import_module("raylight.distributed_worker.ray_worker").RayWorker)
        patches = lambda: cpu_probe_patches(rl, probe)  # noqa: E731
    for kind in args.graphs.split(","):
        with contextlib.suppress(StageFailed):
            run_graph(kind, ctx, args, patches)
    if "dense" in ctx["outputs"] and "moga" in ctx["outputs"]:
        d, m = ctx["graphs"]["dense"], ctx["graphs"]["moga"]
        RESULTS["comparison"] = {
            "tokens": tokens, "steps": args.steps, "device": RESULTS["machine"].get("gpus"),
            "dense_step_s": d.get("step_s"), "moga_step_s": m.get("step_s"),
            "speedup": d["step_s"] / m["step_s"] if m.get("step_s") else None,
            "moga_vs_dense_rel_err": rel_err(ctx["outputs"]["moga"], ctx["outputs"]["dense"]),
            "moga_summary": [s.get("summary") for s in m.get("moga", [])],
            "outputs_finite": {"dense": d["output"]["finite"], "moga": m["output"]["finite"]}}
        log(f"comparison: {json.dumps(RESULTS['comparison'], default=str)}")
    if args.fractional:
        # two actors on one GPU: GPU 2, ulysses 2 on this one-GPU machine (on CPU: with torch saying one GPU)
        with stage("fractional: Ray Init Actor with GPU 2 on one GPU", expect_failure=True) as e:
            import ray

            with cpu_probe_patches(ctx["raylight_nodes"]) if not cuda else contextlib.nullcontext():
                ctx["nodes"].NODE_CLASS_MAPPINGS["RayInitializer"]().spawn_actor(
                    **ray_init_inputs(args, gpus=2, ulysses=2))
            e["note"] = "raylight started two actors on one GPU"
            e["ray_resources"] = ray.cluster_resources()
        RESULTS["fractional_gpus"] = {
            "raylight_allows": e["ok"], "what_raylight_said": e.get("error"),
            "cpu_probe": None if cuda else "torch.cuda.device_count() said 1 (CPU probe)",
            "why": "RayInitializer.spawn_actor refuses GPU > torch.cuda.device_count() before ray.init, and "
                   "make_ray_actor_fn asks num_gpus=1 for every RayWorker (src/raylight/nodes.py, "
                   "distributed_worker/ray_worker.py): no fractional GPUs without code changes"}
    RESULTS["driver_distributions"] = worker_diag_fn()(None, audit=True).get("distributions")
    with contextlib.suppress(Exception):
        import ray

        ray.shutdown()
    if args.reference:
        with stage("reference: dense and MoGAApply in this process", required=False) as e:
            RESULTS["reference"] = reference_run(ctx, args)


def main() -> int:
    global ARGS, WATCHDOG
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["prepare", "ray", "all"], default="all")
    p.add_argument("--state", default="/tmp/moga-ray", help="the folder run_one_gpu.sh set up (ComfyUI/ inside)")
    p.add_argument("--out", default=os.environ.get("OUT", "raylight_out"))
    p.add_argument("--blocks", type=int, default=4 if cuda else 2)
    p.add_argument("--dim", type=int, default=1536 if cuda else 256)
    p.add_argument("--ffn", type=int, default=8960 if cuda else 512)
    p.add_argument("--model-seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=81 if cuda else 9, help="pixel frames (latent: (F - 1) / 4 + 1)")
    p.add_argument("--height", type=int, default=480 if cuda else 112)
    p.add_argument("--width", type=int, default=832 if cuda else 144)
    p.add_argument("--steps", type=int, default=6 if cuda else 3)
    p.add_argument("--repeats", type=int, default=2, help="timed (1-step, S-step) pairs; the minimum of each")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--scheduler", default="simple")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-percent", type=float, default=0.0, help="MoGA's start_percent (0: every step sparse)")
    p.add_argument("--min-tokens", type=int, default=None if cuda else 0,
                   help="MoGA's min_tokens (default: the node's, 16384; 0 on CPU for the tiny video)")
    p.add_argument("--moga-option", action="append", default=[], help="another MoGA option, id=value")
    p.add_argument("--graphs", default="dense,moga")
    p.add_argument("--xfuser-attention", default="TORCH_FLASH", help="Ray Init Actor's XFuser_attention")
    p.add_argument("--comm-test", action="store_true", help="run raylight's NCCL test at Ray Init Actor")
    p.add_argument("--no-fractional", dest="fractional", action="store_false")
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--stage-timeout", type=float, default=420.0, help="seconds before the watchdog ends a stage")
    p.add_argument("--init-timeout", type=float, default=240.0, help="seconds for one Ray Init Actor")
    p.add_argument("--call-timeout", type=float, default=300.0, help="seconds for a ray.get of a worker call")
    ARGS = p.parse_args()
    ARGS.out, ARGS.state = os.path.abspath(ARGS.out), os.path.abspath(ARGS.state)
    if not cuda and not any(o.startswith("dense_if_slower=") for o in ARGS.moga_option):
        # the tiny CPU video is below MoGA's cost estimate: without this every call would be dense (the host tests
        # set the same)
        ARGS.moga_option.append("dense_if_slower=false")
    WATCHDOG = Watchdog()
    faulthandler.enable()
    RESULTS.update(script="bench/raylight/run_one_gpu.py", stage=ARGS.stage, args=vars(ARGS),
                   started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cuda=cuda)
    comfy_root = os.path.join(ARGS.state, "ComfyUI")
    try:
        if ARGS.stage in ("prepare", "all"):
            stage_prepare(ARGS, comfy_root)
        if ARGS.stage in ("ray", "all"):
            stage_ray(ARGS, comfy_root)
    except StageFailed as exc:
        log(f"stopped: stage {exc} failed (see results_{ARGS.stage}.json)")
    finally:
        shutdown_ray()
        if ARGS.stage != "prepare":
            with contextlib.suppress(Exception):
                pack_ray_logs()
        write_results()
    failed = [s["name"] for s in RESULTS["stages"] if not s.get("ok") and not s.get("expected")
              and not s.get("optional")]
    log(f"done: ok={RESULTS['ok'] and not failed}; failed stages: {failed or 'none'}; "
        f"results in {ARGS.out}/results_{ARGS.stage}.json")
    return 0 if RESULTS["ok"] and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
