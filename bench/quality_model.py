"""The quality study's model: a small real ComfyUI ``WanModel``, trained here, with its attention routed per mode.

Research code for bench/quality.py, not part of the pack: it patches attention without ComfyUI's ModelPatcher.

- `load_comfy` imports ``comfy.ldm.wan.model`` from a ComfyUI tree (``$COMFYUI_PATH``) with only what that module
  needs (torch, numpy, safetensors, einops, psutil, tqdm, pillow, comfy-aimdo; comfy-kitchen is optional). It sets
  ``comfy.cli_args.args`` before ``comfy.model_management`` is imported (CPU mode on CPU).
- `AttentionController` hooks every block: a forward pre-hook on ``block.self_attn`` captures the router input (the
  self-attention input ``norm1(x)·(1 + e1) + e0``, exactly what q/k/v are projected from) and marks the next attention
  call as self-attention; ``transformer_options["optimized_attention_override"]`` (honoured by ComfyUI's
  ``wrap_attn``) then runs that call as dense SDPA, MoGA (`moga_core.moga_attention`), local-only, random groups or
  the SVG2-style baseline. Cross-attention calls are masked per shot (shot k's frames see shot k's caption).
- Rectified-flow training (`train`), Euler sampling (`sample`) and capture of (x, q, k, v) for calibration.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PACK_ROOT not in sys.path:
    sys.path.insert(0, PACK_ROOT)

from moga_core import MogaConfig, RandomGroups, Router, VideoLayout, balance_loss, moga_attention  # noqa: E402
from moga_core.blocksparse import key_set_pairs_tensor  # noqa: E402
from moga_core.router import second_choice  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# ComfyUI


def load_comfy(comfyui_path: str | None = None, cpu: bool | None = None):
    """Import ComfyUI's Wan model module; returns ``(wan_module, comfy.ops, comfy.model_management)``.

    If ComfyUI is already imported in this process (e.g. by the host-test fixture) it is used as it is.
    """
    if "comfy.ldm.wan.model" not in sys.modules:
        path = comfyui_path or os.environ.get("COMFYUI_PATH")
        if not path:
            raise RuntimeError("set COMFYUI_PATH to a ComfyUI tree (only comfy/ and its Python deps are needed)")
        path = os.path.abspath(path)
        if not os.path.isfile(os.path.join(path, "comfy", "ldm", "wan", "model.py")):
            raise RuntimeError(f"no comfy/ldm/wan/model.py under COMFYUI_PATH={path}")
        if path not in sys.path:
            sys.path.insert(0, path)
        import comfy.options  # noqa: F401  (args parsing stays off: parse_args([]))
        import comfy.cli_args

        if cpu is None:
            cpu = not torch.cuda.is_available()
        if cpu:
            comfy.cli_args.args.cpu = True
    import comfy.ldm.wan.model as wan
    import comfy.model_management as mm
    import comfy.ops as ops

    return wan, ops, mm


@contextlib.contextmanager
def pure_torch_rope(mm):
    """ComfyUI's ``in_training`` flag: the plain-torch RoPE (autograd-safe, identical on CPU and GPU)."""
    saved = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = saved


# ---------------------------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class ModelSpec:
    dim: int = 256
    heads: int = 4
    layers: int = 4
    ffn: int = 512
    freq_dim: int = 256
    in_dim: int = 16
    text_dim: int = 64
    patch: tuple[int, int, int] = (1, 2, 2)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def num_params(self) -> int:
        """WanModel (t2v) parameter count for this spec, without building it."""
        d, f, pp = self.dim, self.ffn, math.prod(self.patch)
        n = self.in_dim * d * pp + d  # patch embedding
        n += self.text_dim * d + d + d * d + d  # text embedding
        n += self.freq_dim * d + d + d * d + d  # time embedding
        n += d * 6 * d + 6 * d  # time projection
        block = 2 * (4 * (d * d + d) + 2 * d) + 2 * d + (2 * d * f + f + d) + 6 * d  # self, cross, norm3, ffn, mod
        n += self.layers * block
        n += d * self.in_dim * pp + self.in_dim * pp + 2 * d  # head
        return n

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(spec: ModelSpec, seed: int, device, comfy=None):
    """A ``comfy.ldm.wan.model.WanModel`` (t2v) with ``comfy.ops.disable_weight_init`` layers, seeded init."""
    wan, ops, _ = comfy or load_comfy()
    model = wan.WanModel(model_type="t2v", patch_size=tuple(spec.patch), text_len=64, in_dim=spec.in_dim,
                         dim=spec.dim, ffn_dim=spec.ffn, freq_dim=spec.freq_dim, text_dim=spec.text_dim,
                         out_dim=spec.in_dim, num_heads=spec.heads, num_layers=spec.layers, window_size=(-1, -1),
                         qk_norm=True, cross_attn_norm=True, eps=1e-6, device=device, dtype=torch.float32,
                         operations=ops.disable_weight_init)
    init_weights(model, seed, spec)
    return model.to(device)


@torch.no_grad()
def init_weights(model, seed: int, spec: ModelSpec) -> None:
    """DiT-style init (disable_weight_init layers come uninitialised): N(0, 0.02) linears, scaled output
    projections, zero head, Wan's randn/sqrt(dim) modulations, unit norms."""
    gen = torch.Generator().manual_seed(int(seed))

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    out_std = 0.02 / math.sqrt(2 * spec.layers)
    for name, p in sorted(model.named_parameters()):
        if name.endswith("modulation"):
            normal(p, spec.dim ** -0.5)
        elif name.endswith(".bias"):
            p.zero_()
        elif "norm" in name.split(".")[-2] and name.endswith("weight"):
            p.fill_(1.0)
        elif name.startswith("head.head"):
            p.zero_()
        elif name.endswith(("self_attn.o.weight", "cross_attn.o.weight", "ffn.2.weight")):
            normal(p, out_std)
        elif name == "patch_embedding.weight":
            fan_in = p[0].numel()
            normal(p, 1.0 / math.sqrt(fan_in))
        else:
            normal(p, 0.02)


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(model, spec: ModelSpec, path: str, extra: dict | None = None) -> int:
    """fp16 safetensors of the WanModel state dict (ComfyUI's key layout); returns the file size in bytes."""
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    meta = {"model_spec": json.dumps(spec.to_dict()), "format": json.dumps("moga-quality-wan")}
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    save_file(sd, path, metadata=meta)
    return os.path.getsize(path)


def load_checkpoint(path: str, device, comfy=None):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    d = json.loads(meta["model_spec"])
    d["patch"] = tuple(d["patch"])
    spec = ModelSpec(**d)
    model = build_model(spec, 0, device, comfy)
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model, spec, {k: json.loads(v) for k, v in meta.items() if k != "model_spec"}


class EMA:
    """Exponential moving average of a model's parameters (warm-up decay (1+t)/(10+t))."""

    def __init__(self, model, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self, model) -> None:
        sd = model.state_dict()
        for k, v in self.shadow.items():
            sd[k].copy_(v)


# ---------------------------------------------------------------------------------------------------------------
# attention routing


@dataclass
class AttentionMode:
    """What a block's self-attention does.

    kind: ``dense`` | ``moga`` (routers) | ``random`` (fixed random balanced groups) | ``local`` (window + frame keys
    only) | ``svg2`` (per-head online k-means of q and k, top-p key clusters) | ``sol`` (comfy-kitchen's Sol-Attn,
    what ComfyUI core's "Model Sparse Attention" node runs: `sol_attention`).

    ``routers``: one ``moga_core.Router`` per block, or per block a list of one router per sample of the batch
    (per-sample routers: the pack's "auto" routers, fitted on each video's own router inputs). ``auto=True``
    (kind ``moga``): the routers are fitted during sampling, per sample, at the last dense step (`sample`'s
    ``dense_steps``; `fit_auto_routers`), as the pack's auto routers are; ``routers`` is then filled by `sample`.
    ``cfg.capacity`` and ``cfg.second_group`` are honoured for kind ``moga`` as the pack's patch does.
    """

    kind: str = "dense"
    cfg: MogaConfig | None = None
    routers: list | None = None  # per block: a moga_core.Router, or a list of them (one per sample)
    auto: bool = False
    seed: int = 0
    svg2_q_clusters: int = 32
    svg2_k_clusters: int = 128
    svg2_top_p: float = 0.9
    svg2_iters: int = 3
    sol_tau: float = 1.3  # kind "sol": comfy-kitchen's Sol-Attn routing threshold (core's node default)
    sol_topk: float = 0.0  # kind "sol": > 0 keeps this share of key blocks per query block instead (tau ignored)


class AttentionController:
    """Hooks a WanModel's blocks; ``options()`` is the transformer_options that routes its attention calls."""

    def __init__(self, model):
        self.model = model
        self.mode = AttentionMode()
        self.layout: VideoLayout | None = None
        self.caption_tokens = 3
        self.compare = False  # record per-block relative error vs dense attention on the same q, k, v
        self.capture: dict | None = None  # block -> list of dict(x, q, k, v)
        self.aux_alpha = 0.0  # > 0: collect the group-balancing loss of every routed block (training)
        self.aux: list = []
        self.rel_err: dict[int, list] = {}
        self.density: dict[int, list] = {}
        self.coverage: dict[int, list] = {}
        self.keyset: dict[int, list] = {}  # key-set density (pairs attended / N²) of every recorded call
        self.record = True  # False: the calls are not recorded (dense warm-up steps of a sparse row)
        self.capture_qkv = True  # False: capture keeps only the router inputs x (auto-router fitting)
        self._svg2_state: dict = {}
        self._random_groups: dict = {}
        self._pending = None
        self._handles = []
        for i, block in enumerate(model.blocks):
            self._handles.append(block.self_attn.register_forward_pre_hook(self._make_pre_hook("self", i)))
            self._handles.append(block.cross_attn.register_forward_pre_hook(self._make_pre_hook("cross", i)))

    def _make_pre_hook(self, kind, index):
        def hook(module, args):
            self._pending = (kind, index, args[0] if kind == "self" else None)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def options(self) -> dict:
        return {"optimized_attention_override": self._override}

    def set(self, mode: AttentionMode | None = None, layout: VideoLayout | None = None) -> None:
        if mode is not None:
            self.mode = mode
            self._svg2_state = {}
        if layout is not None:
            self.layout = layout

    def reset_records(self) -> None:
        self.rel_err, self.density, self.coverage, self.keyset, self.aux = {}, {}, {}, {}, []

    def new_sample(self) -> None:
        """Forget per-sampling state (SVG2's warm-started centroids)."""
        self._svg2_state = {}

    # -- the override ------------------------------------------------------------------------------------------

    def _override(self, func, q, k, v, heads, **kwargs):
        pending, self._pending = self._pending, None
        if pending is None or kwargs.get("mask") is not None or kwargs.get("skip_reshape"):
            return func(q, k, v, heads, **kwargs)
        kind, index, x = pending
        # q, k, v arrive in the autocast dtype; inside, run as ComfyUI does (no autocast): router logits and SVG2's
        # k-means in float32 as written, attention kernels in the inputs' dtype
        with torch.autocast(q.device.type, enabled=False):
            if kind == "cross":
                return self._cross(q, k, v, heads)
            return self._self(index, x, q, k, v, heads)

    def _cross(self, q, k, v, heads):
        b, n, hd = q.shape
        d = hd // heads
        qh = q.view(b, n, heads, d).transpose(1, 2)
        kh = k.view(b, -1, heads, d).transpose(1, 2).to(qh.dtype)
        vh = v.view(b, -1, heads, d).transpose(1, 2).to(qh.dtype)
        layout = self.layout
        lc = self.caption_tokens
        if layout is None or kh.shape[2] != lc * len(layout.shots) or n != layout.num_video_tokens:
            out = F.scaled_dot_product_attention(qh, kh, vh)
        else:
            hw = layout.tokens_per_frame
            parts = []
            for s, (a, e) in enumerate(layout.shot_ranges()):
                parts.append(F.scaled_dot_product_attention(qh[:, :, a * hw:e * hw], kh[:, :, s * lc:(s + 1) * lc],
                                                            vh[:, :, s * lc:(s + 1) * lc]))
            out = torch.cat(parts, dim=2)
        return out.transpose(1, 2).reshape(b, n, hd)

    def _self(self, index, x, q, k, v, heads):
        b, n, hd = q.shape
        d = hd // heads
        dtype = v.dtype
        q4, k4, v4 = (t.reshape(b, n, heads, d).to(dtype) for t in (q, k, v))
        if self.capture is not None:
            entry = {"x": x.detach().float(), "layout": self.layout}
            if self.capture_qkv:
                entry.update(q=q4.detach(), k=k4.detach(), v=v4.detach())
            self.capture.setdefault(index, []).append(entry)
        mode = self.mode
        dense = None
        if mode.kind == "dense" or self.compare:
            dense = F.scaled_dot_product_attention(q4.transpose(1, 2), k4.transpose(1, 2),
                                                   v4.transpose(1, 2)).transpose(1, 2)
        if mode.kind == "dense":
            out, density, coverage = dense, 1.0, 1.0
        elif mode.kind == "svg2":
            out, density = svg2_attention(q4, k4, v4, self._svg2_state, index, mode)
            coverage = density
        elif mode.kind == "sol":
            out, density = sol_attention(q4, k4, v4, mode)
            coverage = density
        else:  # coverage: the key-set density G ∪ W ∪ F of every query of every sample (moga_attention's stats)
            out, density, coverage = self._moga(index, x, q4, k4, v4)
        if not self.record:
            return out.reshape(b, n, hd)
        if self.compare:
            err = (out.detach().float() - dense.float()).norm() / dense.float().norm().clamp_min(1e-12)
            self.rel_err.setdefault(index, []).append(float(err))
            self.coverage.setdefault(index, []).append(float(coverage))
        self.density.setdefault(index, []).append(float(density))
        self.keyset.setdefault(index, []).append(float(coverage))
        return out.reshape(b, n, hd)

    def _moga(self, index, x, q4, k4, v4):
        mode, layout = self.mode, self.layout
        if layout is None:
            raise RuntimeError("MoGA attention needs the controller's layout (set(layout=...))")
        b = q4.shape[0]
        nv = layout.num_video_tokens
        cfg, gate = mode.cfg, None
        if mode.kind == "local":
            cfg = MogaConfig(num_groups=nv, window=cfg.window, temporal_group=cfg.temporal_group,
                             neighbor_frames=cfg.neighbor_frames, frame_branch=cfg.frame_branch, combine="union",
                             backend=cfg.backend)
            groups = torch.arange(nv, device=q4.device).expand(b, nv)
        elif mode.kind == "random":
            if cfg.second_group:
                raise ValueError("random groups have no second choice: expected MogaConfig(second_group=False)")
            key = (index, cfg.num_groups)  # the pack's RandomGroups, seeded per block (it caches per length)
            if key not in self._random_groups:
                self._random_groups[key] = RandomGroups(cfg.num_groups, seed=mode.seed * 1000 + index)
            groups = self._random_groups[key].partition(nv, q4.device).expand(b, nv)
        elif mode.kind == "moga":
            if mode.routers is None:
                raise RuntimeError("MoGA mode without routers: auto routers are fitted by sample(dense_steps >= 1)")
            xv = x[:, layout.prefix:layout.prefix + nv]
            groups, gate, probs, logits = route_batch(mode.routers[index], xv, cfg)
            if self.aux_alpha > 0 and torch.is_grad_enabled():
                self.aux.append(balance_loss(probs, groups, alpha=self.aux_alpha))
        else:
            raise ValueError(f"unknown attention mode {mode.kind!r}")
        groups2 = second_choice(logits, groups) if cfg.second_group else None
        stats: dict = {}
        out = moga_attention(q4, k4, v4, layout, cfg, groups=groups,
                             gate=gate if cfg.combine == "mean" else None, stats=stats, groups2=groups2)
        keyset = stats["density"]
        if cfg.combine != "union":  # mean mode's stats add the branch sizes; the density is the union G ∪ W ∪ F
            n, ng = layout.num_tokens, layout.num_global_tokens
            pairs = float(key_set_pairs_tensor(layout, replace(cfg, combine="union"), groups))
            keyset = (pairs + b * ng * n) / float(b * n * n)
        return out, stats["work_density"], keyset  # scores computed (scores/N²), key-set density


def route_batch(router, xv: torch.Tensor, cfg: MogaConfig):
    """Route video router inputs ``xv`` (B, Nv, C) with one router or a list of B routers (one per sample).

    Returns (groups (B, Nv) int64, gate (B, Nv), probs (B, Nv, M), logits (B, Nv, M)); ``cfg.capacity`` bounds the
    group sizes per sample (`moga_core.router.capacity_assignment`), ``cfg.balanced`` is capacity 1.0."""
    capacity = None if cfg.balanced else cfg.capacity
    if isinstance(router, (list, tuple)):
        if len(router) != xv.shape[0]:
            raise ValueError(f"per-sample routers: expected one per sample ({xv.shape[0]}), got {len(router)}")
        parts = [r.route(xv[s:s + 1], balanced=cfg.balanced, capacity=capacity) for s, r in enumerate(router)]
        return tuple(torch.cat([p[j] for p in parts]) for j in range(4))
    return router.route(xv, balanced=cfg.balanced, capacity=capacity)


# the pack's auto routers (nodes/auto_routers.py): AUTO_TOKENS_PER_BLOCK rows sampled per block, seed AUTO_SEED,
# Router.fit with AUTO_ITERS Lloyd steps; tests/host/test_quality_slice.py checks these equal the node's constants
AUTO_TOKENS_PER_BLOCK = 4096
AUTO_SEED = 0
AUTO_ITERS = 25


def fit_auto_routers(captured: dict[int, list[dict]], num_groups: int, tokens: int = AUTO_TOKENS_PER_BLOCK,
                     seed: int = AUTO_SEED, iters: int = AUTO_ITERS) -> dict[int, list[Router]]:
    """Per block and per sample, a router fitted on that sample's own router inputs, as the pack's auto routers are.

    ``captured``: block -> list of one capture {x (B, N, C), layout} (the forward of the last dense step). Each
    sample's video rows: a seeded uniform sample of ``tokens`` of them (all when fewer), k-means
    (`moga_core.Router.fit`, ``seed``, ``iters``). Returns block -> [Router per sample]."""
    out = {}
    for i in sorted(captured):
        entry = captured[i][-1]
        x, layout = entry["x"], entry["layout"]
        xv = x[:, layout.prefix:layout.prefix + layout.num_video_tokens]
        routers = []
        for s in range(xv.shape[0]):
            rows = xv[s]
            if rows.shape[0] > tokens:
                gen = torch.Generator().manual_seed(seed)
                rows = rows[torch.randperm(rows.shape[0], generator=gen)[:tokens].to(rows.device)]
            routers.append(Router.fit(rows.to(torch.float16).float(), num_groups, iters=iters, seed=seed))
        out[i] = routers
    return out


# ---------------------------------------------------------------------------------------------------------------
# the SVG2-style baseline


def _kmeans_step(points, centroids):
    """One Lloyd step on (G, N, D) points with (G, C, D) centroids -> (labels (G, N), new centroids)."""
    dist = (points.pow(2).sum(-1, keepdim=True) - 2 * points @ centroids.transpose(1, 2)
            + centroids.pow(2).sum(-1)[:, None, :])
    labels = dist.argmin(-1)
    g, c, d = centroids.shape
    sums = torch.zeros(g, c, d, device=points.device, dtype=points.dtype).scatter_add_(
        1, labels[..., None].expand(-1, -1, d), points)
    counts = torch.zeros(g, c, device=points.device, dtype=points.dtype).scatter_add_(
        1, labels, torch.ones_like(labels, dtype=points.dtype))
    new = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centroids)
    return labels, new, counts


@torch.no_grad()
def svg2_clusters(q, k, state: dict, index: int, mode: AttentionMode) -> dict:
    """SVG2's clustering of one call: per (sample, head), k-means of the queries into ``svg2_q_clusters`` and of the
    keys into ``svg2_k_clusters`` (``svg2_iters`` Lloyd steps, warm-started from ``state``'s centroids of the previous
    call, as SVG2 does across denoising steps; ``state`` receives the new ones).

    q, k (B, N, H, D) -> {q_lab, k_lab (B·H, N), q_cnt (B·H, Cq), k_cnt (B·H, Ck), probs (B·H, Cq, Ck): the
    centroid-estimated attention mass of each key cluster for each query cluster}."""
    b, n, h, d = q.shape
    scale = d ** -0.5
    qf = q.float().permute(0, 2, 1, 3).reshape(b * h, n, d)
    kf = k.float().permute(0, 2, 1, 3).reshape(b * h, n, d)
    nq, nk = min(mode.svg2_q_clusters, n), min(mode.svg2_k_clusters, n)

    def init(points, count, salt):
        gen = torch.Generator().manual_seed(mode.seed * 7 + salt)
        idx = torch.stack([torch.randperm(n, generator=gen)[:count] for _ in range(points.shape[0])])
        return points.gather(1, idx.to(points.device)[..., None].expand(-1, -1, d)).clone()

    cq = state.get((index, "q"))
    ck = state.get((index, "k"))
    if cq is None or cq.shape != (b * h, nq, d):
        cq, ck = init(qf, nq, 2 * index), init(kf, nk, 2 * index + 1)
    for _ in range(max(1, mode.svg2_iters)):
        q_lab, cq, _ = _kmeans_step(qf, cq)
        k_lab, ck, k_cnt = _kmeans_step(kf, ck)
    q_lab, _, q_cnt = _kmeans_step(qf, cq)
    k_lab, _, k_cnt = _kmeans_step(kf, ck)
    state[(index, "q")], state[(index, "k")] = cq, ck
    logits = (cq @ ck.transpose(1, 2)) * scale + torch.log(k_cnt.clamp_min(1e-30))[:, None, :]
    logits = logits.masked_fill(k_cnt[:, None, :] == 0, float("-inf"))
    return {"q_lab": q_lab, "k_lab": k_lab, "q_cnt": q_cnt, "k_cnt": k_cnt, "probs": torch.softmax(logits, dim=-1)}


def svg2_select(clusters: dict, top_p: float) -> tuple[torch.Tensor, float]:
    """Per query cluster, the smallest set of key clusters holding ``top_p`` of the estimated mass (the cluster
    crossing p is kept). -> (sel (B·H, Cq, Ck) bool, density = query-key pairs selected / (B·H·N²))."""
    probs = clusters["probs"]
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p
    keep_sorted[..., 0] = True
    sel = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    q_cnt, k_cnt = clusters["q_cnt"], clusters["k_cnt"]
    pairs = (q_cnt[:, :, None] * k_cnt[:, None, :] * sel).sum()
    n = clusters["q_lab"].shape[1]
    return sel, float(pairs) / float(q_cnt.shape[0] * n * n)


SVG2_MASK_ELEMENTS = 1 << 28  # query chunk of the masked attention: (H, chunk, N) mask elements at most


@torch.no_grad()
def svg2_attention(q, k, v, state: dict, index: int, mode: AttentionMode):
    """SVG2-style semantic-aware sparse attention, simply (correctness over speed).

    `svg2_clusters` (per (sample, head) k-means of q and k, warm-started across calls) then `svg2_select` (each query
    cluster attends to the key clusters holding ``svg2_top_p`` of the estimated mass). Runs as masked dense
    attention over chunks of queries (the (H, chunk, N) mask stays under ``SVG2_MASK_ELEMENTS`` elements, so it
    fits at 36k+ tokens). Returns (out (B, N, H, D), density = scores computed / N²).
    """
    b, n, h, d = q.shape
    clusters = svg2_clusters(q, k, state, index, mode)
    sel, density = svg2_select(clusters, mode.svg2_top_p)
    nq, nk = sel.shape[1:]
    q_lab = clusters["q_lab"].view(b, h, n)
    k_lab = clusters["k_lab"].view(b, h, n)
    sel = sel.view(b, h, nq, nk)
    chunk = max(1, min(n, SVG2_MASK_ELEMENTS // (h * n)))
    out = torch.empty_like(q)
    for i in range(b):
        qi, ki, vi = (t[i].transpose(0, 1)[None] for t in (q, k, v))  # (1, H, N, D)
        for a in range(0, n, chunk):
            e = min(n, a + chunk)
            rows = sel[i].gather(1, q_lab[i, :, a:e, None].expand(h, e - a, nk))  # (H, chunk, Ck)
            mask = rows.gather(2, k_lab[i][:, None, :].expand(h, e - a, n))  # (H, chunk, N)
            o = F.scaled_dot_product_attention(qi[:, :, a:e], ki, vi, attn_mask=mask[None], scale=d ** -0.5)
            out[i, a:e] = o[0].transpose(0, 1)
    return out, density


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI core's sparse attention: comfy-kitchen's Sol-Attn

SOL_BLOCK = 64  # Sol-Attn's token block (comfy_kitchen.backends.eager.sol_attn.BLOCK)
SOL_HEAD_DIM = 128  # the only head size its fused kernels take


def sol_kernels():
    """(fused, eager, version): comfy_kitchen.sol_attn where its CUDA kernels run here (else None), the eager
    reference (comfy_kitchen.backends.eager.sol_attn.sol_attn) and the package version. A RuntimeError that says
    what is missing when comfy-kitchen or its Sol-Attn is not installed (Sol-Attn came with comfy-kitchen 0.2.3x;
    ComfyUI v0.27 pins 0.2.16)."""
    try:
        import comfy_kitchen as ck
    except ImportError as exc:
        raise RuntimeError(f"Sol-Attn rows need comfy-kitchen (pip install comfy-kitchen): {exc}") from exc
    try:
        from importlib.metadata import version as dist_version

        version = dist_version("comfy-kitchen")
    except Exception:  # noqa: BLE001 — unpacked without its dist-info
        version = getattr(ck, "__version__", "?")
    try:
        from comfy_kitchen.backends.eager.sol_attn import sol_attn as eager
    except ImportError as exc:
        raise RuntimeError(f"comfy-kitchen {version} has no Sol-Attn (comfy_kitchen.backends.eager.sol_attn): "
                           "expected a release that ships sol_attn") from exc
    fused = None
    available = getattr(ck, "sol_attn_is_available", None)
    if torch.cuda.is_available() and available is not None and available(torch.device("cuda")):
        fused = ck.sol_attn
    return fused, eager, version


def sol_exact_blocks(q: torch.Tensor, k: torch.Tensor, tau: float, topk: float, scale: float) -> torch.Tensor:
    """(B, H, NQ, NK) bool: the key blocks each 64-token query block attends exactly under Sol-Attn's routing (the
    eager reference's rule: a block's centroid score against the centred block-mean keys over ``tau`` sigmas of the
    proxy row, or the top ``topk`` share; the diagonal ±1 always), for the density of a row. q, k: (B, T, H, D).
    Checked against the reference in tests (its output with ``tail=False`` is attention over these blocks only)."""
    b, t, h, d = q.shape
    n = (t + SOL_BLOCK - 1) // SOL_BLOCK
    lengths = torch.full((n,), float(SOL_BLOCK), device=q.device)
    lengths[-1] = float(t - (n - 1) * SOL_BLOCK)
    blk = torch.arange(t, device=q.device) // SOL_BLOCK

    def pool_mean(x):  # (B, T, H, D) -> (B, N, H, D)
        out = torch.zeros(b, n, h, d, device=x.device, dtype=torch.float32)
        out.index_add_(1, blk, x.float())
        return out / lengths.view(1, -1, 1, 1)

    kc = pool_mean(k)
    kcc = kc - kc.mean(dim=1, keepdim=True)
    centroid = pool_mean(q)
    log2s = scale * 1.4426950408889634
    score = torch.einsum("bqhd,bkhd->bhqk", centroid, kcc) * log2s  # (B, H, NQ, NK): the block's mean proxy row
    idx = torch.arange(n, device=q.device)
    if topk:
        kk = max(0, min(n - 1, max(1, round(topk * n))))
        exact = score >= score.topk(kk, dim=-1).values[..., -1:] if kk else torch.zeros_like(score, dtype=torch.bool)
    else:
        var = (centroid.pow(2) * kcc.pow(2).mean(dim=1).unsqueeze(1)).sum(-1)  # (B, NQ, H)
        thr = tau * torch.sqrt(var * log2s * log2s + 1e-6)
        exact = score > thr.permute(0, 2, 1).unsqueeze(-1)
    return exact | ((idx.view(1, -1) - idx.view(-1, 1)).abs() <= 1).view(1, 1, n, n)


def sol_attention(q, k, v, mode: AttentionMode):
    """Sol-Attn on (B, N, H, D) as core's node runs it: the fused CUDA kernel where it can run (bf16/fp16; other head
    sizes are zero-padded to 128, which changes no score: q·k and the routing statistics sum over the padded
    dimensions as zeros), else the eager reference (any size; O(N²) memory: the CPU slice). Returns (out, density):
    density = the exactly attended key blocks' share of the N² scores, plus the pooled terms (one per other block
    and query)."""
    fused, eager, _ = sol_kernels()
    b, n, h, d = q.shape
    scale = d ** -0.5
    kwargs = dict(tau=float(mode.sol_tau), topk_ratio=float(mode.sol_topk), scale=scale)
    if fused is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        pad = SOL_HEAD_DIM - d
        qp, kp, vp = ((F.pad(t, (0, pad)) if pad > 0 else t).contiguous() for t in (q, k, v))
        out = fused(qp, kp, vp, **kwargs)[..., :d] if pad >= 0 else eager(q, k, v, **kwargs)
    else:
        out = eager(q, k, v, **kwargs)
    exact = sol_exact_blocks(q, k, float(mode.sol_tau), float(mode.sol_topk), scale)
    nq = exact.shape[-1]
    exact_keys = (exact.float().sum(-1) * SOL_BLOCK).mean()  # keys per query attended exactly (ragged end aside)
    density = float((exact_keys.clamp(max=n) + (nq - exact.float().sum(-1).mean())) / n)
    return out.to(q.dtype), density


# ---------------------------------------------------------------------------------------------------------------
# rectified flow


def layout_for(spec_task, shots, patch=(1, 2, 2)) -> VideoLayout:
    return VideoLayout(grid=(spec_task.frames // patch[0], spec_task.height // patch[1], spec_task.width // patch[2]),
                       shots=tuple(shots))


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def predict(model, ctrl, xt, t, context, autocast: bool):
    """Velocity prediction (float32). ``t`` (B,) in [0, 1]; Wan's timestep is t·1000."""
    with torch.autocast(xt.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(xt, t * 1000.0, context, transformer_options=ctrl.options())
    return out.float()


def flow_loss(model, ctrl, x0, context, t, noise, autocast: bool):
    tt = t.view(-1, 1, 1, 1, 1)
    xt = (1 - tt) * x0 + tt * noise
    pred = predict(model, ctrl, xt, t, context, autocast)
    return F.mse_loss(pred, noise - x0)


@dataclass
class TrainConfig:
    seconds: float = 240.0  # wall-clock budget (the step count is fixed after timing the first steps)
    steps: int | None = None  # exact step count instead of the time budget (reproduction)
    max_steps: int = 100000
    batch: int = 8
    lr: float = 1e-3
    router_lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    shift: float = 2.0
    ema: float = 0.999
    alpha: float = 0.0  # group-balancing loss weight (MoGA fine-tune)
    seed: int = 0
    layout_pool: int = 32
    log_every: int = 100


@dataclass
class TrainReport:
    steps: int = 0
    seconds: float = 0.0
    loss_first: float = float("nan")
    loss_last: float = float("nan")
    aux_last: float = float("nan")
    step_ms: float = float("nan")
    log: list = field(default_factory=list)


def train(model, ctrl, task, tc: TrainConfig, device, autocast: bool, routers=None, log=print,
          seed_offset: int = 0) -> TrainReport:
    """Rectified-flow training: x_t = (1-t)·x0 + t·ε, target ε − x0, t = shift(sigmoid(N(0,1))).

    With ``routers`` (a ModuleList) the routers train too (their own learning rate) and, with ``tc.alpha > 0``,
    the mean group-balancing loss of the routed blocks is added. The model ends holding its EMA weights.
    """
    gen = torch.Generator().manual_seed(tc.seed + 1)
    dgen = torch.Generator(device=device).manual_seed(tc.seed + 2)
    pool = [task.shots(tc.seed * 100003 + seed_offset + i) for i in range(tc.layout_pool)]
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay, "lr": tc.lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": tc.lr}]
    if routers is not None:
        groups.append({"params": list(routers.parameters()), "weight_decay": 0.0, "lr": tc.router_lr})
        params = params + list(routers.parameters())
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.99), eps=1e-8)
    base_lrs = [g["lr"] for g in opt.param_groups]
    ema = EMA(model, tc.ema)
    ema_routers = EMA(routers, tc.ema) if routers is not None else None
    report = TrainReport()
    total = tc.steps if tc.steps is not None else tc.max_steps
    timed_from, timed_steps = None, 10
    start = time.perf_counter()
    ctrl.aux_alpha = tc.alpha
    model.train()
    loss_sum = torch.zeros((), device=device)
    aux_sum = torch.zeros((), device=device)
    since_log = 0
    step = 0
    calibrated = recalibrated = False

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    while step < total:
        shots = pool[int(torch.randint(len(pool), (1,), generator=gen))]
        batch = task.batch(tc.seed * 7_000_003 + seed_offset + step, tc.batch, shots)
        ctrl.set(layout=layout_for(task.spec, batch.shots))
        ctrl.aux = []
        t = shift_t(torch.sigmoid(torch.randn(tc.batch, generator=dgen, device=device)), tc.shift)
        noise = torch.randn(batch.latents.shape, generator=dgen, device=device)
        loss = flow_loss(model, ctrl, batch.latents, batch.context, t, noise, autocast)
        aux = torch.stack(ctrl.aux).mean() if ctrl.aux else None
        total_loss = loss + aux if aux is not None else loss
        opt.zero_grad(set_to_none=True)
        total_loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scale = _cosine(step, total, min(tc.warmup, max(1, total // 10)))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        opt.step()
        ema.update(model)
        if ema_routers is not None:
            ema_routers.update(routers)
        loss_sum += loss.detach()
        if aux is not None:
            aux_sum += aux.detach()
        since_log += 1
        if step == 0:
            report.loss_first = float(loss.detach())
        step += 1
        if tc.steps is None:
            if step == 3:
                sync()
                timed_from = (step, time.perf_counter() - start)  # after warm-up (allocator, kernels)
            elif timed_from is not None and step == timed_from[0] + timed_steps:
                sync()
                elapsed = time.perf_counter() - start
                per = (elapsed - timed_from[1]) / timed_steps
                total = int(max(step + 1, min(tc.max_steps, (tc.seconds - elapsed) / per + step)))
                report.step_ms = per * 1000
                calibrated = True
                log(f"  {per * 1000:.1f} ms/step -> {total} steps in the {tc.seconds:.0f} s budget")
        if step % tc.log_every == 0 or step == total:
            mean_loss = float(loss_sum) / since_log
            mean_aux = float(aux_sum) / since_log if aux is not None else None
            loss_sum.zero_()
            aux_sum.zero_()
            since_log = 0
            elapsed = time.perf_counter() - start
            log(f"  step {step}/{total} loss {mean_loss:.4f}" + (f" aux {mean_aux:.4f}" if mean_aux is not None else "")
                + f"  ({elapsed:.0f} s)")
            report.log.append({"step": step, "loss": mean_loss, "aux": mean_aux, "seconds": round(elapsed, 1)})
            if tc.steps is None and calibrated and not recalibrated and elapsed > 0.15 * tc.seconds:
                # re-estimate from a longer stretch (the first 10 timed steps can be off: autotuning, a busy host)
                recalibrated = True
                per = (elapsed - timed_from[1]) / (step - timed_from[0])
                total = int(max(step + 1, min(tc.max_steps, (tc.seconds - elapsed) / per + step)))
                report.step_ms = per * 1000
                log(f"  {per * 1000:.1f} ms/step over {step - timed_from[0]} steps -> {total} steps in total")
            report.loss_last = mean_loss
            if mean_aux is not None:
                report.aux_last = mean_aux
            if tc.steps is None and elapsed > 1.15 * tc.seconds:
                log(f"  stopping at step {step}: over the time budget")
                break
    if since_log:
        report.loss_last = float(loss_sum) / since_log
    sync()
    ctrl.aux_alpha = 0.0
    ctrl.aux = []
    ema.copy_to(model)
    if ema_routers is not None:
        ema_routers.copy_to(routers)
    model.eval()
    report.steps = step
    report.seconds = time.perf_counter() - start
    if report.step_ms != report.step_ms:  # nan: fixed step count
        report.step_ms = report.seconds / max(1, step) * 1000
    return report


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
# ---------------------------------------------------------------------------------------------------------------
# sampling, capture, routers


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def sample(model, ctrl, context, noise, steps: int, shift: float, autocast: bool, step_times: list | None = None,
           dense_steps: int = 0):
    """Euler sampling of the rectified flow from t = 1 (``noise``) to 0; ``step_times`` receives seconds/step.

    ``dense_steps``: the first steps run dense attention, not recorded (the pack's dense warm-up, ``start_percent``);
    the controller's mode runs from then on. With an auto mode (``ctrl.mode.auto``) the router inputs of the last
    dense step are captured and each sample's routers fitted on its own (`fit_auto_routers`), as the pack does; the
    mode's ``routers`` then hold them (block -> [Router per sample]).
    """
    device = noise.device
    ctrl.new_sample()
    mode = ctrl.mode
    if mode.auto and not 1 <= dense_steps < steps:
        raise ValueError(f"auto routers are fitted at the last dense step: expected 1 <= dense_steps < steps "
                         f"({steps}), got dense_steps = {dense_steps}")
    x = noise.clone()
    ts = shift_t(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).tolist()
    dense = AttentionMode("dense")
    try:
        for i in range(steps):
            warm = i < dense_steps
            ctrl.mode, ctrl.record = (dense, False) if warm else (mode, True)
            fit_here = warm and mode.auto and i == dense_steps - 1
            if fit_here:
                ctrl.capture, ctrl.capture_qkv = {}, False
            t = torch.full((x.shape[0],), ts[i], device=device, dtype=torch.float32)
            if step_times is not None:
                _sync(device)
                t0 = time.perf_counter()
            try:
                v = predict(model, ctrl, x, t, context, autocast)
            finally:
                captured = ctrl.capture
                if fit_here:
                    ctrl.capture, ctrl.capture_qkv = None, True
            if fit_here:
                mode.routers = [r for _, r in sorted(fit_auto_routers(captured, mode.cfg.num_groups).items())]
                del captured
            x = x + (ts[i + 1] - ts[i]) * v
            if step_times is not None and not warm:
                _sync(device)
                step_times.append(time.perf_counter() - t0)
    finally:
        ctrl.mode, ctrl.record = mode, True
    return x


@torch.no_grad()
def predict_mode(model, ctrl, xt, t, context, autocast: bool):
    """`predict` with the controller's mode; an auto mode first runs the same input dense, unrecorded, and fits
    each sample's routers on that forward's router inputs (teacher-forced evaluation of auto routers)."""
    mode = ctrl.mode
    if mode.auto:
        ctrl.mode, ctrl.record, ctrl.capture, ctrl.capture_qkv = AttentionMode("dense"), False, {}, False
        try:
            predict(model, ctrl, xt, t, context, autocast)
            captured = ctrl.capture
        finally:
            ctrl.mode, ctrl.record, ctrl.capture, ctrl.capture_qkv = mode, True, None, True
        mode.routers = [r for _, r in sorted(fit_auto_routers(captured, mode.cfg.num_groups).items())]
    return predict(model, ctrl, xt, t, context, autocast)


def noisy(x0, t: float, seed: int):
    gen = torch.Generator(device=x0.device).manual_seed(int(seed))
    noise = torch.randn(x0.shape, generator=gen, device=x0.device)
    return (1 - t) * x0 + t * noise, noise


@torch.no_grad()
def capture(model, ctrl, task, batches, ts, autocast: bool, seed: int = 0) -> dict[int, list[dict]]:
    """Dense forwards of ``batches`` at noise levels ``ts``; per block the list of {x, q, k, v, layout}."""
    ctrl.set(AttentionMode("dense"))
    ctrl.capture = {}
    try:
        for bi, batch in enumerate(batches):
            ctrl.set(layout=layout_for(task.spec, batch.shots))
            for ti, t in enumerate(ts):
                xt, _ = noisy(batch.latents, t, seed * 1000 + bi * 10 + ti)
                tt = torch.full((xt.shape[0],), float(t), device=xt.device)
                predict(model, ctrl, xt, tt, batch.context, autocast)
        return ctrl.capture
    finally:
        ctrl.capture = None


def fit_routers(captured: dict[int, list[dict]], num_groups: int, seed: int = 0) -> list[Router]:
    """k-means calibration (moga_core.Router.fit) on every block's router inputs."""
    routers = []
    for i in sorted(captured):
        x = torch.cat([s["x"].reshape(-1, s["x"].shape[-1]) for s in captured[i]])
        routers.append(Router.fit(x, num_groups, seed=seed + i))
    return routers


@torch.no_grad()
def soften_router(router: Router, x: torch.Tensor, target_gate: float = 0.7) -> Router:
    """Same argmax, softer softmax: divide weight and bias by τ so that the mean winning probability on ``x`` is
    about ``target_gate`` (a k-means router's logits are huge; its gate is ≈ 1 and passes almost no gradient)."""
    logits = router.logits(x.reshape(-1, x.shape[-1]))
    lo, hi = 1e-3, 1e6
    for _ in range(60):
        tau = math.sqrt(lo * hi)
        gate = torch.softmax(logits / tau, -1).max(-1).values.mean()
        if gate > target_gate:
            lo = tau
        else:
            hi = tau
    tau = math.sqrt(lo * hi)
    return Router.from_weights(router.weight / tau, router.bias / tau if router.bias is not None else None)


def clone_routers(routers, device) -> torch.nn.ModuleList:
    return torch.nn.ModuleList([Router.from_weights(r.weight.detach().clone(), None if r.bias is None
                                                    else r.bias.detach().clone()) for r in routers]).to(device)


def copy_model(model, spec: ModelSpec, device, comfy=None):
    """A fresh WanModel with ``model``'s weights (deepcopy would also copy the controller's hooks)."""
    new = build_model(spec, 0, device, comfy)
    new.load_state_dict(model.state_dict())
    return new
