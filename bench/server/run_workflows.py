#!/usr/bin/env python3
"""Every shipped workflow (workflows/*.json) through the real ComfyUI server, with dynamic VRAM on and off.

    python3 bench/server/run_workflows.py [--profile gpu|tiny] [--passes on,off] [--extra-server-args=--cpu] ...

What it does (bench/server/README.md has the how-to):

1. builds a ComfyUI tree under ``--work``: ComfyUI unpacked from ``--tarball`` (v0.19.3), the pack linked in as
   ``custom_nodes/ComfyUI-MoGA``, the test stand-in loaders (tests/host/workflow_standins) as
   ``custom_nodes/moga_workflow_standins``, and bench/server/standin_vae (the tests' narrow-VAE constructors) as
   ``custom_nodes/moga_standin_vae_width``;
2. writes stand-in model files into that tree's own ``models/`` folders (bench/server/make_models.py, in its own
   process), under the names the workflows use, so the server finds them as a user's ComfyUI would;
3. per pass (``on``: ComfyUI's defaults, so dynamic VRAM is on wherever ComfyUI enables it, i.e. NVIDIA;
   ``off``: ``--disable-dynamic-vram``) starts ``main.py --listen 127.0.0.1 --port P`` (plus ``--front-end-root`` at
   an empty page when comfyui-frontend-package is not installed, and ``--extra-server-args``), waits for it to
   answer, reads ``/object_info``, converts each workflow to an API prompt with devtools/workflow_graph.ui_to_api,
   replaces the class_type of the loaders whose real models cannot be had (the tests' stand-ins), shrinks it (profile
   ``tiny``: the tests' shrink_prompt; ``gpu``: the workflow's own width and height, lengths and shots set to about
   ``--tokens`` video tokens per forward, ``--steps`` steps), adds a SaveLatent node on the sampled latent, queues it
   with ``POST /prompt`` and polls ``/history/{id}`` (bounded by ``--timeout`` and the run's ``--deadline``; a run
   past its time is interrupted, and a server that does not stop it is restarted);
4. checks each run: status success; the saved video decodes with the expected frame count and size and is not
   blank; the saved latent (and a saved router) is finite; every MoGA patch of the prompt logged its run summary
   ("MoGA: N sparse / M dense attention calls", nodes/patcher.py) with sparse calls, and no dense call for a reason
   other than the warm-up (``--moga shipped``) or none at all (``--moga test``);
5. writes ``results.json``, ``results.md`` and the server logs (``server_dynamic_<pass>.log``) under ``--out``
   (default ``$OUT``, else ./server_out).

Exit status 0 when the table was written, whatever the workflows did; non-zero only when the harness itself broke.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import traceback
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(os.path.dirname(HERE))
HOST_DIR = os.path.join(PACK_ROOT, "tests", "host")
WORKFLOWS_DIR = os.path.join(PACK_ROOT, "workflows")
for _path in (PACK_ROOT, HOST_DIR):
    if _path not in sys.path:
        sys.path.append(_path)

CUSTOM_NODES = {  # custom_nodes/<name> -> what it links to
    "ComfyUI-MoGA": PACK_ROOT,
    "moga_workflow_standins": os.path.join(HOST_DIR, "workflow_standins"),
    "moga_standin_vae_width": os.path.join(HERE, "standin_vae"),
}
CALIBRATE = "moga_calibrate_router.json"
LOAD_ROUTER = "moga_load_saved_router.json"

PROFILES = {
    # the sizes of tests/host/test_workflows.py (tiny files, shrink_prompt): for a CPU check of the harness
    "tiny": dict(wan_dim=256, wan_layers=2, wan_ffn=512, hv_hidden=256, hv_double=2, hv_single=2,
                 weights_dtype="float32", moga="test", timeout=300.0, deadline=3000.0),
    # ~32k video tokens per forward at the workflows' own resolutions, 1.3B-wide models with a few blocks
    "gpu": dict(wan_dim=1536, wan_layers=4, wan_ffn=8960, hv_hidden=1536, hv_double=2, hv_single=2,
                weights_dtype="bfloat16", moga="shipped", timeout=120.0, deadline=510.0),
}
SUMMARY = re.compile(r"MoGA: (\d+) sparse / (\d+) dense attention calls([^\n]*)")
STARTUP = re.compile(r"DynamicVRAM|dynamic vram|aimdo|comfy-kitchen|comfy_kitchen|Total VRAM|Set vram state|"
                     r"^Device:|pytorch version|ComfyUI version|Using .* attention|web root|MoGA", re.I)
WARMUP_REASONS = {"outside start/end percent"}
# dense_if_slower's speed check (nodes/patcher.py): the few dense calls it times, and the calls of a shape it
# measured slower sparse than dense (the guard doing its job, with the figures in the summary's "speed check")
SPEED_CHECK_REASONS = {"timed dense for the speed check", "measured slower than dense at this length"}
SPEED = re.compile(r"speed check at ([\d,]+) tokens: sparse ([\d.]+) ms vs dense ([\d.]+) ms per call, so (\w+)")
FIRST_PASS_WEIGHT = 1.3  # share of the time budget of the first pass against each later one


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# the ComfyUI tree


def build_tree(tarball: str, work: str) -> str:
    """Unpack ComfyUI (once per tarball) and link the custom node folders. Returns the ComfyUI directory."""
    comfy_dir = os.path.join(work, "ComfyUI")
    stamp = os.path.join(work, ".tarball")
    ident = f"{os.path.abspath(tarball)} {os.path.getsize(tarball)}"
    if not (os.path.isfile(os.path.join(comfy_dir, "main.py")) and os.path.exists(stamp)
            and open(stamp).read() == ident):
        shutil.rmtree(comfy_dir, ignore_errors=True)
        os.makedirs(work, exist_ok=True)
        t = time.time()
        with tarfile.open(tarball) as tar:
            try:
                tar.extractall(work, filter="data")
            except TypeError:  # Python without extraction filters
                tar.extractall(work)
        if not os.path.isfile(os.path.join(comfy_dir, "main.py")):
            raise RuntimeError(f"{tarball} did not unpack to {comfy_dir}")
        with open(stamp, "w") as f:
            f.write(ident)
        log(f"ComfyUI unpacked from {tarball} in {time.time() - t:.1f} s")
    for name, target in CUSTOM_NODES.items():
        link = os.path.join(comfy_dir, "custom_nodes", name)
        if os.path.islink(link) or os.path.exists(link):
            if os.path.islink(link) and os.readlink(link) == target:
                continue
            if os.path.islink(link) or os.path.isfile(link):
                os.remove(link)
            else:
                shutil.rmtree(link)
        os.symlink(target, link, target_is_directory=True)
    return comfy_dir


def comfyui_version(comfy_dir: str) -> str:
    try:
        text = open(os.path.join(comfy_dir, "comfyui_version.py")).read()
        return re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text).group(1)
    except (OSError, AttributeError):
        return "?"


def make_models(comfy_dir: str, spec: dict, env: dict) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "make_models.py"), "--comfyui", comfy_dir, "--spec", json.dumps(spec)]
    t = time.time()
    subprocess.run(cmd, check=True, env=env)
    with open(os.path.join(comfy_dir, "models", ".moga_server_models.json")) as f:
        info = json.load(f)
    log(f"model tree ready ({time.time() - t:.1f} s)")
    return info


# ---------------------------------------------------------------------------------------------------------------
# the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ``python3 main.py`` process, its log in a file."""

    def __init__(self, comfy_dir: str, args: list[str], log_path: str, env: dict):
        self.comfy_dir, self.args, self.log_path, self.env = comfy_dir, args, log_path, env
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> float:
        self.port = free_port()
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port)] + self.args
        with open(self.log_path, "a") as f:
            f.write(f"\n===== harness: starting {shlex.join(cmd)} (cwd {self.comfy_dir})\n")
        logf = open(self.log_path, "a")
        t = time.time()
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=logf, stderr=subprocess.STDOUT, env=self.env,
                                     stdin=subprocess.DEVNULL)
        logf.close()
        self.starts += 1
        log(f"server started: {shlex.join(cmd)} (pid {self.proc.pid})")
        while time.time() - t < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode} while starting "
                                   f"(log: {self.log_path})")
            try:
                self.get("/system_stats", timeout=5)
                log(f"server answers after {time.time() - t:.1f} s")
                return time.time() - t
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                time.sleep(1.0)
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s (log: {self.log_path})")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    self.proc.send_signal(sig)
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        log(f"server stopped (status {self.proc.returncode})")
        self.proc = None

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict, timeout: float = 60):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read()
            return json.loads(data) if data.strip() else {}

    def log_size(self) -> int:
        return os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0

    def read_log(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------------------
# prompts


def import_test_helpers():
    from devtools import workflow_graph as wt
    import test_workflows as twf

    return wt, twf


def load_workflow(name: str) -> dict:
    with open(os.path.join(WORKFLOWS_DIR, name), encoding="utf-8") as f:
        return json.load(f)


def shot_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def shots_for(text: str, latent_frames: int) -> str:
    """The shots' captions kept, durations set in frames so the plan spans ``latent_frames`` latent frames: shot i
    gets L_i latent frames (as equal as they come), the first 4 (L_1 - 1) + 1 frames, the others 4 L_i."""
    lines = shot_lines(text)
    n = len(lines)
    latent_frames = max(latent_frames, n + 1)
    counts = [latent_frames // n + (1 if i < latent_frames % n else 0) for i in range(n)]
    out = []
    for i, (line, count) in enumerate(zip(lines, counts)):
        frames = 4 * (count - 1) + 1 if i == 0 else 4 * count
        out.append(re.sub(r"^\s*[^|#]+\|", f"{frames}f |", line))
    return "\n".join(out)


def pixels_per_token(prompt: dict) -> int:
    """VAE compression x patch size: Wan 2.2 TI2V 5B (16x VAE) 32 px a token side, the others (8x VAE) 16."""
    return 32 if any(e["class_type"] == "Wan22ImageToVideoLatent" for e in prompt.values()) else 16


def scale_prompt(prompt: dict, twf, tokens: int, steps: int, moga: str) -> dict:
    """GPU sizes: the workflow's own width and height; every length (and the shot plan) cut to about ``tokens`` video
    tokens per forward (never longer than the workflow's own); ``steps`` sampling steps (the Wan 2.2 expert split
    scaled along); the stand-in loaders; MoGA as shipped, or the tests' always-sparse settings (``moga`` "test")."""
    px = pixels_per_token(prompt)
    sizes = [(e["inputs"]["width"], e["inputs"]["height"]) for e in prompt.values()
             if isinstance(e["inputs"].get("width"), int) and isinstance(e["inputs"].get("height"), int)]
    width, height = sizes[0] if sizes else (832, 480)
    latent = max(2, round(tokens / ((width // px) * (height // px))))
    frames = 4 * (latent - 1) + 1
    for entry in prompt.values():
        inputs, kind = entry["inputs"], entry["class_type"]
        if kind in twf.STAND_INS:
            entry["class_type"] = twf.STAND_INS[kind]
        if isinstance(inputs.get("length"), int):
            inputs["length"] = min(inputs["length"], frames)
        if kind == "MoGAMultiShotPrompt":
            inputs["shots"] = shots_for(inputs["shots"], latent)
        if kind == "KSamplerAdvanced":
            total = inputs["steps"]
            for key in ("start_at_step", "end_at_step"):
                if inputs[key] < total:
                    inputs[key] = inputs[key] * steps // total
            inputs["steps"] = steps
        elif kind == "MoGACalibrateRouter":
            inputs["steps"] = min(inputs["steps"], steps)
        elif isinstance(inputs.get("steps"), int):
            inputs["steps"] = steps
        if kind == "MoGAApply" and moga == "test":
            inputs.update(min_tokens=0, start_percent=0.0, dense_if_slower=False)
    return prompt


def add_save_latent(prompt: dict, name: str) -> str | None:
    """A SaveLatent on the latent the workflow decodes (the sampler's output), so the run's result can be read back
    and checked for NaN/inf. Returns its node id."""
    for entry in prompt.values():
        if entry["class_type"] in ("VAEDecodeTiled", "VAEDecode"):
            node = str(max(int(k) for k in prompt if k.isdigit()) + 1)
            prompt[node] = {"class_type": "SaveLatent",
                            "inputs": {"samples": entry["inputs"]["samples"],
                                       "filename_prefix": f"moga_server/{name.removesuffix('.json')}"}}
            return node
    return None


def workflow_prompt(name: str, schemas: dict, args, wt, twf) -> tuple[dict, dict]:
    wf = load_workflow(name)
    prompt = wt.ui_to_api(wf, schemas, strict=True)
    if args.profile == "tiny":
        prompt = twf.shrink_prompt(prompt, twf.EXPECT[name].size)
    else:
        prompt = scale_prompt(prompt, twf, args.tokens, args.steps, args.moga)
    return wf, prompt


# ---------------------------------------------------------------------------------------------------------------
# one run and its checks


def history_error(entry: dict) -> str | None:
    status = entry.get("status") or {}
    for event, data in status.get("messages") or []:
        if event == "execution_error":
            msg = str(data.get("exception_message", "")).strip().splitlines()
            return (f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_type')}: "
                    f"{msg[0] if msg else ''}")[:400]
        if event == "execution_interrupted":
            return f"interrupted at {data.get('node_type')} (node {data.get('node_id')})"
    if status.get("status_str") not in (None, "success"):
        return f"status {status.get('status_str')}"
    return None


def server_seconds(entry: dict) -> float | None:
    stamps = {event: data.get("timestamp") for event, data in (entry.get("status") or {}).get("messages") or []
              if isinstance(data, dict)}
    start = stamps.get("execution_start")
    end = stamps.get("execution_success") or stamps.get("execution_error") or stamps.get("execution_interrupted")
    return round((end - start) / 1000.0, 2) if start and end else None


def output_path(comfy_dir: str, item: dict) -> str:
    base = {"output": "output", "temp": "temp", "input": "input"}.get(item.get("type", "output"), "output")
    return os.path.join(comfy_dir, base, item.get("subfolder", ""), item["filename"])


def check_video(path: str) -> dict:
    import av
    import numpy as np

    frames, lo, hi, means = 0, 255, 0, []
    with av.open(path) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        for frame in container.decode(stream):
            a = frame.to_ndarray(format="rgb24").astype(np.float32)
            frames += 1
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
            means.append(float(a.mean()))
    return {"frames": frames, "width": width, "height": height, "min": lo, "max": hi,
            "finite": bool(np.isfinite(means).all()), "blank": hi - lo < 1.0}


def check_tensors(path: str) -> dict:
    import torch
    from safetensors.torch import load_file

    sd = load_file(path)
    tensors = {k: v for k, v in sd.items() if v.numel()}
    return {"finite": all(bool(torch.isfinite(v.float()).all()) for v in tensors.values()),
            "shapes": {k: list(v.shape) for k, v in tensors.items()}}


def moga_summaries(text: str) -> list[dict]:
    out = []
    for m in SUMMARY.finditer(text):
        reasons = {}
        dense_part = re.search(r"; dense: ([^;]*)", m.group(3))
        if dense_part:
            for piece in dense_part.group(1).split(","):
                rm = re.match(r"\s*(.*\S)\s+(\d+)\s*$", piece)
                if rm:
                    reasons[rm.group(1)] = reasons.get(rm.group(1), 0) + int(rm.group(2))
        out.append({"sparse": int(m.group(1)), "dense": int(m.group(2)), "dense_reasons": reasons,
                    "line": m.group(0).strip()})
    return out


def check_run(row: dict, entry: dict, prompt: dict, latent_node: str | None, name: str, comfy_dir: str,
              log_text: str, args, twf) -> None:
    """Fill the row's checks from the history entry, the output files and the server log of this run."""
    outputs = entry.get("outputs") or {}
    problems = []
    # the saved latent: finite, and the token count of one forward
    latent = None
    if latent_node is not None:
        items = (outputs.get(latent_node) or {}).get("latents") or []
        if items:
            info = check_tensors(output_path(comfy_dir, items[0]))
            latent = info["shapes"].get("latent_tensor")
            row["latent_shape"] = latent
            if latent and len(latent) == 5:
                row["tokens"] = latent[2] * (latent[3] // 2) * (latent[4] // 2)
            if not info["finite"]:
                problems.append("latent has NaN/inf")
        else:
            problems.append("no saved latent")
    # the video: decodes, frame count and size, not blank
    saves = [nid for nid, e in prompt.items() if e["class_type"] == "SaveVideo"]
    for nid in saves:
        items = (outputs.get(nid) or {}).get("images") or []
        if not items:
            problems.append("no saved video")
            continue
        video = check_video(output_path(comfy_dir, items[0]))
        row["video"] = video
        if latent and len(latent) == 5:
            want = (latent[2] - 1) * 4 + 1
            if video["frames"] != want:
                problems.append(f"video has {video['frames']} frames, the latent {latent[2]} latent frames "
                                f"({want} frames)")
        if args.profile == "tiny":
            expect = twf.EXPECT[name]
            if (video["frames"], video["width"], video["height"]) != (expect.frames, expect.size, expect.size):
                problems.append(f"video {video['frames']} frames {video['width']}x{video['height']}, the tests "
                                f"expect {expect.frames} frames {expect.size}x{expect.size}")
        else:
            sizes = {(e["inputs"]["width"], e["inputs"]["height"]) for e in prompt.values()
                     if isinstance(e["inputs"].get("width"), int) and isinstance(e["inputs"].get("height"), int)}
            if sizes and (video["width"], video["height"]) not in sizes:
                problems.append(f"video is {video['width']}x{video['height']}, the prompt asks {sorted(sizes)}")
        if video["blank"] or not video["finite"]:
            problems.append("video is blank")
    # a saved router (the calibration workflow): loads, finite
    for nid, e in prompt.items():
        if e["class_type"] == "MoGASaveRouter":
            texts = (outputs.get(nid) or {}).get("text") or []
            if not texts or not os.path.isfile(str(texts[0])):
                problems.append("no router file written")
            else:
                info = check_tensors(str(texts[0]))
                row["router_file"] = os.path.basename(str(texts[0]))
                row["router_tensors"] = len(info["shapes"])
                if not info["finite"] or not info["shapes"]:
                    problems.append("router file empty or not finite")
    row["outputs_ok"] = not problems
    # MoGA: one run summary per patch of the prompt, sparse calls in each
    patches = sum(1 for e in prompt.values() if e["class_type"] in ("MoGAApply", "MoGALoadModel"))
    summaries = moga_summaries(log_text)
    row["moga_patches"] = patches
    row["moga_summaries"] = [s["line"] for s in summaries]
    row["sparse_calls"] = sum(s["sparse"] for s in summaries) if summaries else None
    row["dense_calls"] = sum(s["dense"] for s in summaries) if summaries else None
    reasons: dict = {}
    for s in summaries:
        for reason, count in s["dense_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    row["dense_reasons"] = reasons
    row["moga_run_ui"] = [t for out in outputs.values() for t in (out.get("moga_run") or [])]
    row["moga_sparse_per_patch"] = [s["sparse"] for s in summaries]
    moga_problems = check_moga(row, shipped=args.moga == "shipped" and args.profile != "tiny")
    row["moga_ok"] = not moga_problems
    problems += moga_problems
    row["problems"] = problems


MOGA_PROBLEM_PREFIXES = ("MoGA run summaries", "a patch ran no sparse", "dense calls: ")


def check_moga(row: dict, shipped: bool) -> list[str]:
    """What is wrong with a run's MoGA summaries: one per patch, each with sparse calls, and dense calls only for
    the reasons the settings allow (shipped: the warm-up and the speed check; the tests' settings: none)."""
    problems = []
    summaries = row.get("moga_summaries") or []
    if len(summaries) != row.get("moga_patches", 0):
        problems.append(f"{len(summaries)} MoGA run summaries in the log for {row.get('moga_patches')} patches")
    if any(n == 0 for n in row.get("moga_sparse_per_patch") or []):
        problems.append("a patch ran no sparse attention call")
    allowed = WARMUP_REASONS | SPEED_CHECK_REASONS if shipped else set()
    unexpected = {r: c for r, c in (row.get("dense_reasons") or {}).items() if r not in allowed}
    if unexpected:
        problems.append("dense calls: " + ", ".join(f"{r} {c}" for r, c in unexpected.items()))
    return problems


def speed_checks(row: dict) -> str:
    """The summaries' speed-check verdicts: 'sparse 10.1 vs dense 10.5 ms -> sparse' per patch."""
    found = [SPEED.search(line) for line in row.get("moga_summaries") or []]
    return "; ".join(f"{m.group(2)} vs {m.group(3)} → {m.group(4)}" for m in found if m) or "-"


def recheck(path: str, out: str) -> int:
    """Re-apply today's checks to a results.json written earlier (e.g. after a check was corrected)."""
    with open(path) as f:
        result = json.load(f)
    shipped = result["meta"]["sizes"].get("moga") == "shipped" and result["meta"]["profile"] != "tiny"
    for row in result["rows"]:
        if not row.get("completed") or "moga_summaries" not in row:
            continue
        if "moga_sparse_per_patch" not in row:  # written before the field existed: read it off the summaries
            row["moga_sparse_per_patch"] = [int(SUMMARY.search(line).group(1)) for line in row["moga_summaries"]]
        moga_problems = check_moga(row, shipped)
        row["moga_ok"] = not moga_problems
        row["problems"] = [p for p in row.get("problems") or [] if not p.startswith(MOGA_PROBLEM_PREFIXES)]
        row["problems"] += moga_problems
    result["meta"]["rechecked"] = time.strftime("%Y-%m-%d %H:%M:%S")
    os.makedirs(out, exist_ok=True)
    write_results(out, result)
    print(markdown(result))
    return 0


def run_one(server: Server, name: str, wf: dict, prompt: dict, latent_node: str | None, limit_s: float,
            comfy_dir: str, args, twf) -> dict:
    row = {"workflow": name, "completed": False, "error": None, "outputs_ok": False, "moga_ok": False,
           "sparse_calls": None, "dense_calls": None, "tokens": None, "time_s": None, "server_s": None}
    offset = server.log_size()
    t = time.time()
    body = {"prompt": prompt, "client_id": args.client_id, "extra_data": {"extra_pnginfo": {"workflow": wf}}}
    try:
        answer = server.post("/prompt", body)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read())
        except ValueError:
            detail = {}
        errors = [f"{nid}: {'; '.join(e.get('details') or e.get('message', '') for e in ne.get('errors', []))}"
                  for nid, ne in (detail.get("node_errors") or {}).items()]
        row["error"] = (f"rejected: {(detail.get('error') or {}).get('message', exc)} " + " | ".join(errors))[:400]
        row["time_s"] = round(time.time() - t, 2)
        return row
    prompt_id = answer["prompt_id"]
    row["prompt_id"] = prompt_id
    entry = None
    while True:
        if not server.alive():
            row["error"] = f"the server died (exit status {server.proc.returncode if server.proc else '?'})"
            break
        try:
            entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        except (urllib.error.URLError, OSError, ValueError):
            entry = None
        if entry is not None and (entry.get("status") or {}).get("completed") is not None:
            break
        if time.time() - t > limit_s:
            row["error"] = f"timed out after {limit_s:.0f} s"
            log(f"  {name}: timed out, interrupting")
            try:
                server.post("/queue", {"delete": [prompt_id]})
                server.post("/interrupt", {"prompt_id": prompt_id})
            except (urllib.error.URLError, OSError, ValueError):
                pass
            t_int = time.time()
            while time.time() - t_int < 60 and server.alive():
                try:
                    entry = server.get(f"/history/{prompt_id}").get(prompt_id)
                except (urllib.error.URLError, OSError, ValueError):
                    entry = None
                if entry is not None:
                    break
                time.sleep(1.0)
            if entry is None:
                row["error"] += "; the server did not stop the run: restarted"
                row["restart"] = True
            else:
                row["error"] += " (interrupted)"
            entry = None
            break
        time.sleep(0.25)
    row["time_s"] = round(time.time() - t, 2)
    if entry is None:
        return row
    time.sleep(0.3)  # let the last log lines of the run reach the file
    log_text = server.read_log(offset)
    row["server_s"] = server_seconds(entry)
    row["error"] = history_error(entry)
    row["completed"] = (entry.get("status") or {}).get("status_str") == "success" and row["error"] is None
    if row["completed"]:
        try:
            check_run(row, entry, prompt, latent_node, name, comfy_dir, log_text, args, twf)
        except Exception as exc:  # a broken output file is a result, not a harness failure
            row["problems"] = [f"check failed: {type(exc).__name__}: {exc}"]
            row["check_traceback"] = traceback.format_exc()[-2000:]
    else:
        row["moga_summaries"] = [s["line"] for s in moga_summaries(log_text)]
    return row


# ---------------------------------------------------------------------------------------------------------------
# results


def fmt_calls(row: dict) -> str:
    if row.get("sparse_calls") is None:
        return "n/a" if row.get("moga_patches") == 0 else "-"
    text = f"{row['sparse_calls']} / {row['dense_calls']}"
    if row.get("dense_reasons"):
        text += " (" + ", ".join(f"{r}: {c}" for r, c in row["dense_reasons"].items()) + ")"
    return text


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# MoGA workflows through the ComfyUI server ({meta['profile']} profile)", "",
             f"ComfyUI {meta['comfyui_version']}, {meta['python']}, torch {meta.get('torch', '?')}, "
             f"device: {meta.get('device', '?')}. Sizes: {json.dumps(meta['sizes'])}.", ""]
    for p in meta["passes"]:
        lines.append(f"- pass `{p['pass']}`: `{p['server_args']}`; server up in {p.get('startup_s', '?')} s; "
                     f"dynamic VRAM active: {p.get('dynamic_vram_active')}; starts: {p.get('starts')}")
        for line in p.get("dynamic_vram_lines", []):
            lines.append(f"  - `{line}`")
    lines += ["", "| workflow | dynamic VRAM | completed | outputs | MoGA ok | MoGA sparse / dense calls | "
                  "speed check: sparse vs dense ms/call | tokens/forward | wall s | server s | error / problems |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        problems = r.get("error") or "; ".join(r.get("problems") or [])
        lines.append(f"| {r['workflow'].removesuffix('.json')} | {r['pass']} | {'yes' if r['completed'] else 'NO'} | "
                     f"{'ok' if r.get('outputs_ok') else ('-' if not r['completed'] else 'BAD')} | "
                     f"{('ok' if r.get('moga_ok') else 'BAD') if r['completed'] else '-'} | {fmt_calls(r)} | "
                     f"{speed_checks(r)} | "
                     f"{r.get('tokens') or '-'} | {r.get('time_s') if r.get('time_s') is not None else '-'} | "
                     f"{r.get('server_s') if r.get('server_s') is not None else '-'} | "
                     f"{(problems or '').replace('|', '/')[:300]} |")
    ok = sum(1 for r in result["rows"] if r["completed"] and r.get("outputs_ok") and r.get("moga_ok"))
    lines += ["", f"{ok} of {len(result['rows'])} runs completed with every check passing."]
    return "\n".join(lines) + "\n"


def write_results(out: str, result: dict) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(result))


def device_facts(server: Server) -> dict:
    """What the server says about itself (this process never touches the GPU: no CUDA context of its own)."""
    try:
        stats = server.get("/system_stats")
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    system, devices = stats.get("system") or {}, stats.get("devices") or [{}]
    return {"torch": system.get("pytorch_version"), "device": devices[0].get("name"),
            "vram_total_gib": round((devices[0].get("vram_total") or 0) / 2 ** 30, 1)}


def vram_free_gib(server: Server) -> float | None:
    try:
        device = (server.get("/system_stats", timeout=10).get("devices") or [{}])[0]
        return round(device.get("vram_free", 0) / 2 ** 30, 1)
    except (urllib.error.URLError, OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="gpu",
                   help="gpu: ~--tokens video tokens per forward, 1.3B-wide models; tiny: the host tests' sizes")
    p.add_argument("--tarball", default=os.path.join(PACK_ROOT, ".server", "comfyui-v0.19.3.tar.gz"),
                   help="ComfyUI source tarball (unpacks to ComfyUI/)")
    p.add_argument("--work", default="/tmp/moga_server", help="where the ComfyUI tree is built")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(os.getcwd(), "server_out"),
                   help="results folder (default $OUT, else ./server_out)")
    p.add_argument("--passes", default="on,off",
                   help="comma list: on = ComfyUI's defaults (dynamic VRAM where it enables it), off = "
                        "--disable-dynamic-vram")
    p.add_argument("--extra-server-args", default="", help="more main.py arguments, e.g. --extra-server-args=--cpu")
    p.add_argument("--workflows", default="", help="comma list of workflow file names (or parts of them); "
                                                   "default: all of workflows/")
    p.add_argument("--tokens", type=int, default=32760, help="gpu profile: video tokens per forward (about)")
    p.add_argument("--steps", type=int, default=8, help="gpu profile: sampling steps")
    p.add_argument("--moga", choices=("shipped", "test"), default=None,
                   help="MoGAApply settings: shipped (the workflow's: dense warm-up, min_tokens) or test (sparse "
                        "from the first step at any length); default: the profile's")
    for key in ("wan_dim", "wan_layers", "wan_ffn", "hv_hidden", "hv_double", "hv_single"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None, help="model size (default: profile's)")
    p.add_argument("--weights-dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--timeout", type=float, default=None, help="seconds one workflow may run")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds for everything; the time left is shared by the passes still to run")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--no-save-latent", action="store_true", help="do not add the SaveLatent node")
    p.add_argument("--recheck", default="", metavar="RESULTS_JSON",
                   help="run nothing: apply the current checks to an earlier results.json and write --out")
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    for key, value in profile.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.client_id = uuid.uuid4().hex
    return args


def order_workflows(selection: str) -> list[str]:
    names = sorted(f for f in os.listdir(WORKFLOWS_DIR) if f.endswith(".json"))
    if selection:
        wanted = [s.strip() for s in selection.split(",") if s.strip()]
        names = [n for n in names if any(w in n for w in wanted)]
    first = [n for n in (CALIBRATE, LOAD_ROUTER) if n in names]  # the load workflow reads the calibration's file
    return first + [n for n in names if n not in first]


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally blocks: the server is stopped


def main(argv=None) -> int:
    t0 = time.time()
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    if args.recheck:
        return recheck(args.recheck, out)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    comfy_dir = build_tree(args.tarball, os.path.abspath(args.work))
    spec = {k: getattr(args, k) for k in ("wan_dim", "wan_layers", "wan_ffn", "hv_hidden", "hv_double",
                                          "hv_single")}
    spec["dtype"] = args.weights_dtype
    models = make_models(comfy_dir, spec, env)
    wt, twf = import_test_helpers()
    builder = twf.load_builder()
    names = order_workflows(args.workflows)
    try:
        import comfyui_frontend_package  # noqa: F401

        frontend = []
    except ImportError:  # main.py exits without it unless --front-end-root names a web root
        stub = os.path.join(os.path.abspath(args.work), "frontend_stub")
        os.makedirs(stub, exist_ok=True)
        with open(os.path.join(stub, "index.html"), "w") as f:
            f.write("<!doctype html><title>ComfyUI</title><p>no frontend package (MoGA server bench)</p>\n")
        frontend = ["--front-end-root", stub]
    result = {"meta": {"profile": args.profile, "comfyui_version": comfyui_version(comfy_dir),
                       "python": sys.version.split()[0], "sizes": {
                           **spec, "tokens": args.tokens if args.profile == "gpu" else "tests' shrink_prompt",
                           "steps": args.steps if args.profile == "gpu" else 2, "moga": args.moga},
                       "model_files": models.get("files"), "model_seconds": models.get("seconds"),
                       "workflows": names, "passes": [], "argv": sys.argv[1:]},
              "rows": []}
    passes = [p.strip() for p in args.passes.split(",") if p.strip()]
    extra = shlex.split(args.extra_server_args)
    reserve = 25.0
    for index, label in enumerate(passes):
        if label not in ("on", "off"):
            raise SystemExit(f"unknown pass {label!r} (on, off)")
        # the time left, shared by the passes still to run; the first gets more (it compiles the attention kernels,
        # which later passes read from Inductor's cache)
        weights = [FIRST_PASS_WEIGHT if i == 0 else 1.0 for i in range(index, len(passes))]
        left = args.deadline - (time.time() - t0) - reserve
        pass_end = time.time() + left * weights[0] / sum(weights)
        server_args = (["--disable-dynamic-vram"] if label == "off" else []) + frontend + extra
        log_path = os.path.join(out, f"server_dynamic_{label}.log")
        if os.path.exists(log_path):
            os.remove(log_path)
        info = {"pass": label, "server_args": shlex.join(["main.py", "--listen", "127.0.0.1", "--port", "P"]
                                                         + server_args)}
        result["meta"]["passes"].append(info)
        moga_dir = os.path.join(comfy_dir, "models", "moga")  # each pass calibrates its own router file
        for f in os.listdir(moga_dir) if os.path.isdir(moga_dir) else []:
            if f.startswith(builder.CALIBRATED_ROUTER_PREFIX):
                os.remove(os.path.join(moga_dir, f))
        server = Server(comfy_dir, server_args, log_path, env)
        try:
            info["startup_s"] = round(server.start(args.startup_timeout), 1)
            startup = server.read_log()
            info["startup_lines"] = [line.strip() for line in startup.splitlines() if STARTUP.search(line)][:40]
            info["dynamic_vram_lines"] = [line for line in info["startup_lines"]
                                          if re.search(r"dynamic ?vram|aimdo", line, re.I)]
            info["dynamic_vram_active"] = "DynamicVRAM support detected and enabled" in startup
            facts = device_facts(server)
            info.update(facts)
            for key in ("torch", "device"):
                result["meta"].setdefault(key, facts.get(key))
            schemas = server.get("/object_info", timeout=120)
            for name in names:
                row = {"workflow": name, "pass": label}
                remaining = pass_end - time.time()
                if remaining < 10:
                    row.update(completed=False, error="skipped: out of time for this pass")
                    result["rows"].append(row)
                    continue
                if not server.alive():
                    log("server is down: restarting it")
                    server.stop()
                    server.start(min(args.startup_timeout, max(remaining - 5, 10)))
                    schemas = server.get("/object_info", timeout=120)
                missing = builder.missing_node_types(name.removesuffix(".json"), schemas)
                if missing:  # ComfyUI's audio nodes are absent where its Python has no torchaudio
                    row.update(completed=False, error=f"not run: the server has no {', '.join(sorted(missing))}"
                                                      + (" (ComfyUI imports its audio nodes only with torchaudio)"
                                                         if missing <= builder.TORCHAUDIO_NODE_TYPES else ""))
                    result["rows"].append(row)
                    continue
                try:
                    wf, prompt = workflow_prompt(name, schemas, args, wt, twf)
                    latent_node = None if args.no_save_latent else add_save_latent(prompt, name)
                except Exception as exc:  # noqa: BLE001  (a workflow that does not convert is a result)
                    row.update(completed=False, error=f"conversion failed: {type(exc).__name__}: {exc}"[:400])
                    result["rows"].append(row)
                    continue
                log(f"pass {label}: {name}")
                row.update(run_one(server, name, wf, prompt, latent_node, min(args.timeout, remaining), comfy_dir,
                                   args, twf))
                row["pass"] = label
                if server.alive():
                    row["vram_free_gib"] = vram_free_gib(server)
                result["rows"].append(row)
                log(f"  completed={row['completed']} outputs_ok={row.get('outputs_ok')} "
                    f"moga_ok={row.get('moga_ok')} calls={fmt_calls(row)} tokens={row.get('tokens')} "
                    f"{row['time_s']} s {row.get('error') or '; '.join(row.get('problems') or [])}")
                if row.pop("restart", False):
                    server.stop()
                    server.start(args.startup_timeout)
                    schemas = server.get("/object_info", timeout=120)
                write_results(out, result)
        except Exception as exc:  # noqa: BLE001  (a server that will not start fails the pass, not the table)
            info["error"] = f"{type(exc).__name__}: {exc}"
            log(f"pass {label} failed: {info['error']}")
            done = {r["workflow"] for r in result["rows"] if r["pass"] == label}
            for name in names:
                if name not in done:
                    result["rows"].append({"workflow": name, "pass": label, "completed": False,
                                           "error": f"pass failed: {info['error']}"[:400]})
        finally:
            server.stop()
            info["starts"] = server.starts
            write_results(out, result)
    result["meta"]["total_s"] = round(time.time() - t0, 1)
    write_results(out, result)
    print(markdown(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
