"""Structured synthetic video tokens for tests and benchmarks (no model weights needed).

A multi-shot "video" of token embeddings: every shot has its own background, a few recurring objects move across
the frame, leave and come back in later shots. A token's embedding is its object's (or background's) identity
plus noise and a little position signal; q and k are the same per-head projection of it (plus independent noise),
so attention concentrates on tokens of the same object — across shots too — as it does in a video DiT.
"""

from __future__ import annotations

import math

import torch

from .config import VideoLayout


def grid_for_tokens(tokens: int) -> tuple[int, int, int]:
    """A (T, H, W) grid with exactly ``tokens`` tokens, preferring real latent frame shapes.

    480p Wan frames are 30×52 = 1560 tokens; 720p 45×80 = 3600; then square-ish frames; else a single row.
    """
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    for h, w in ((30, 52), (45, 80), (40, 50), (40, 40), (32, 32), (24, 32), (16, 16), (8, 8), (4, 4)):
        if tokens % (h * w) == 0:
            return tokens // (h * w), h, w
    for hw in range(min(tokens, 4096), 0, -1):
        if tokens % hw == 0:
            h = int(math.isqrt(hw))
            while hw % h:
                h -= 1
            return tokens // hw, h, hw // h
    return tokens, 1, 1


def even_shots(num_frames: int, num_shots: int) -> tuple[int, ...]:
    num_shots = max(1, min(num_shots, num_frames))
    return tuple(sorted({(i * num_frames) // num_shots for i in range(num_shots)}))


def structured_video_tokens(layout: VideoLayout, channels: int = 64, num_objects: int = 6, noise: float = 0.35,
                            seed: int = 0, device=None, dtype=torch.float32):
    """-> (x (1, Nv, C), labels (Nv,) int64): video token embeddings and the identity each token shows.

    Identities are fine-grained, as features in a video DiT are: each object has 4 parts (its quadrants) and each
    shot's background 9 regions (a 3×3 split of the frame). A part's embedding is its object's plus a part offset,
    so parts of one object are similar and objects are distinct. Label = object·4 + part for objects, then
    ``4·num_objects + 9·shot + region`` for backgrounds.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    t_len, h, w = layout.grid
    shots = layout.shot_ranges()

    def unit(n):
        e = torch.randn(n, channels, generator=gen)
        return e / e.norm(dim=-1, keepdim=True) * math.sqrt(channels)

    objects, parts = unit(num_objects), unit(num_objects * 4)
    backs, regions = unit(len(shots)), unit(len(shots) * 9)
    ids = torch.cat([
        (objects.repeat_interleave(4, 0) + 0.6 * parts) / math.sqrt(1.36),
        (backs.repeat_interleave(9, 0) + 0.6 * regions) / math.sqrt(1.36),
    ])
    labels = torch.empty(t_len, h, w, dtype=torch.int64)
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    region = (torch.clamp((ys * 3 / h).long(), max=2) * 3 + torch.clamp((xs * 3 / w).long(), max=2))
    for s, (a, b) in enumerate(shots):
        labels[a:b] = 4 * num_objects + 9 * s + region
        present = torch.randperm(num_objects, generator=gen)[: max(1, min(3, num_objects))].tolist()
        for obj in present:
            cy, cx = float(torch.rand(1, generator=gen)) * h, float(torch.rand(1, generator=gen)) * w
            vy, vx = (torch.rand(2, generator=gen) - 0.5).tolist()
            radius = max(1.0, 0.22 * min(h, w) * (0.6 + float(torch.rand(1, generator=gen))))
            for t in range(a, b):
                py, px = cy + vy * (t - a), cx + vx * (t - a)
                blob = (ys - py) ** 2 + (xs - px) ** 2 <= radius ** 2
                quadrant = (ys >= py).long() * 2 + (xs >= px).long()
                labels[t][blob] = (obj * 4 + quadrant)[blob]
    labels = labels.reshape(-1)
    pos = torch.stack(torch.meshgrid(torch.arange(t_len), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    pos = pos.reshape(-1, 3).float() / torch.tensor([max(t_len, 1), max(h, 1), max(w, 1)])
    pos_proj = torch.randn(3, channels, generator=gen) * 0.5
    x = ids[labels] + noise * torch.randn(labels.numel(), channels, generator=gen) + pos @ pos_proj
    return x[None].to(device=device, dtype=dtype), labels.to(device)


def synthetic_qkv(x: torch.Tensor, heads: int, head_dim: int, sharpness: float = 12.0, seed: int = 1):
    """q, k, v (B, N, H, D) from token embeddings x (B, N, C): q ≈ k = x·P (per head), v = x·Pv.

    ``sharpness`` scales q so that attention is peaked on tokens of the same identity (as trained DiT heads are).
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    b, n, c = x.shape
    proj = torch.randn(c, heads * head_dim, generator=gen) / math.sqrt(c)
    proj_v = torch.randn(c, heads * head_dim, generator=gen) / math.sqrt(c)
    jitter = torch.randn(c, heads * head_dim, generator=gen) / math.sqrt(c) * 0.3
    dev, dt = x.device, x.dtype
    xf = x.float()
    k = xf @ proj.to(dev)
    # same-identity logits sit about `sharpness` above the rest after SDPA's 1/sqrt(D)
    q = (xf @ (proj + jitter).to(dev)) * (sharpness / math.sqrt(head_dim))
    v = xf @ proj_v.to(dev)
    shape = (b, n, heads, head_dim)
    return q.reshape(shape).to(dt), k.reshape(shape).to(dt), v.reshape(shape).to(dt)


def structured_video_qkv(tokens: int, heads: int, head_dim: int, shots: int = 3, seed: int = 0, device=None,
                         dtype=torch.float32, sharpness: float = 12.0):
    """A benchmark point: ``(layout, x (1, N, H·D), q, k, v (1, N, H, D))`` for ``tokens`` structured video tokens
    in ``shots`` even shots. The structure is drawn in at most 256 channels and lifted to the model width H·D by a
    fixed random map (the identities stay what they were). ``sharpness``: how peaked attention is on tokens of the
    same identity (`synthetic_qkv`)."""
    grid = grid_for_tokens(tokens)
    layout = VideoLayout(grid=grid, shots=even_shots(grid[0], shots))
    channels = heads * head_dim
    x, _ = structured_video_tokens(layout, channels=min(channels, 256), seed=seed, device=device)
    if channels > x.shape[-1]:
        gen = torch.Generator(device="cpu").manual_seed(seed + 7)
        lift = torch.randn(x.shape[-1], channels, generator=gen).to(x.device) / x.shape[-1] ** 0.5
        x = x @ lift
    q, k, v = synthetic_qkv(x, heads, head_dim, sharpness=sharpness, seed=seed + 1)
    return (layout,) + tuple(t.to(dtype) for t in (x, q, k, v))
