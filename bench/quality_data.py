"""A synthetic multi-shot video task in latent space, for the quality study (bench/quality.py).

Independent of moga_core (plain torch); deterministic by seed on any device.

What a video is
---------------
A latent video of ``channels`` (16, as Wan's VAE) × ``frames`` latent frames × ``height`` × ``width`` latent pixels,
cut into 3–6 shots. Every shot has a background (one of ``num_backgrounds`` textures: a base colour plus two
sinusoidal gratings, zoomed by the shot's framing; a per-video tint) and up to two subjects, one in the left and one in the right half
of the frame. A subject is a disc (radius set by the framing: wide / medium / close-up) that moves at a constant
velocity (the motion: still, left, right, up, down). Its latent colour is::

    subject class base  +  class part pattern (4 quadrants)  +  identity

The *identity* is drawn at random for every video and is the same in every shot of that video: it is the thing no
caption says. Each video has a cast of recurring subjects; the protagonist is in the first and the last shot and leaves
in a middle one, the others come and go. To denoise a subject in shot k well, a model has to look at the same subject
in other shots — possibly several shots and seconds away — which is exactly the long-range, cross-shot interaction
that MoGA's routed groups are meant to keep and local attention cannot give. Backgrounds may be revisited too, with a
per-video tint that is also shared across the visits.

Captions
--------
Each shot has three caption tokens (``text_dim`` wide), sums of fixed random embeddings:
``[background + framing + role0, left subject + its motion + role1, right subject + its motion + role2]``
(an absent subject is the "none" embedding). The model sees shot k's caption only in shot k's frames (the study masks
cross-attention per shot, the usual multi-shot scheme).

Everything a metric needs is returned with the video: per-pixel class labels, the cast, the identities and the per-shot
caption ids.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

MOTIONS = ("still", "left", "right", "up", "down")
FRAMINGS = ("wide", "medium", "close-up")
_MOTION_DIR = ((0.0, 0.0), (0.0, -1.0), (0.0, 1.0), (-1.0, 0.0), (1.0, 0.0))  # (dy, dx)
_FRAMING_RADIUS = (0.12, 0.17, 0.23)  # subject radius as a fraction of the frame height
_FRAMING_ZOOM = (1.0, 0.75, 0.5)  # background grating frequency multiplier (close-up: zoomed in)


@dataclass(frozen=True)
class TaskSpec:
    """Sizes of the task. ``height``/``width`` are latent pixels (tokens = /2 each with Wan's 1×2×2 patches)."""

    frames: int = 24
    height: int = 32
    width: int = 48
    channels: int = 16
    num_subjects: int = 8
    num_backgrounds: int = 8
    min_shots: int = 3
    max_shots: int = 6
    min_shot_frames: int = 3
    cast: int = 3
    text_dim: int = 64
    identity_std: float = 0.9
    tint_std: float = 0.3
    pixel_noise: float = 0.05
    world_seed: int = 20251021

    def __post_init__(self) -> None:
        if self.min_shots < 1 or self.max_shots < self.min_shots:
            raise ValueError(f"need 1 <= min_shots <= max_shots, got {self.min_shots}, {self.max_shots}")
        if self.frames < self.max_shots * self.min_shot_frames:
            raise ValueError(f"{self.frames} frames cannot hold {self.max_shots} shots of >= {self.min_shot_frames}")
        if self.cast > self.num_subjects:
            raise ValueError(f"cast {self.cast} > num_subjects {self.num_subjects}")

    @property
    def caption_tokens(self) -> int:
        return 3

    @property
    def num_classes(self) -> int:
        """Pixel classes: one per background, then one per subject."""
        return self.num_backgrounds + self.num_subjects

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class World:
    """The fixed random 'vocabulary' of the task: class appearances and caption embeddings."""

    subj_base: torch.Tensor  # (S, C)
    subj_parts: torch.Tensor  # (S, 4, C)
    bg_base: torch.Tensor  # (Bg, C)
    bg_freq: torch.Tensor  # (Bg, 2, 2) cycles per frame (y, x) of 2 gratings
    bg_load: torch.Tensor  # (Bg, 2, C)
    bg_phase: torch.Tensor  # (Bg, 2)
    e_subj: torch.Tensor  # (S + 1, Dt), last = none
    e_bg: torch.Tensor  # (Bg, Dt)
    e_motion: torch.Tensor  # (len(MOTIONS) + 1, Dt), last = none
    e_framing: torch.Tensor  # (len(FRAMINGS), Dt)
    e_role: torch.Tensor  # (3, Dt)

    def to(self, device) -> "World":
        return World(**{k: v.to(device) for k, v in self.__dict__.items()})

    def subject_mean(self) -> torch.Tensor:
        """(S, C): the class-conditional mean colour of each subject (identity averaged out)."""
        return self.subj_base + self.subj_parts.mean(1)


def make_world(spec: TaskSpec) -> World:
    gen = torch.Generator().manual_seed(spec.world_seed)
    c, dt = spec.channels, spec.text_dim

    def unit(*shape):
        e = torch.randn(*shape, generator=gen)
        return e / e.pow(2).mean(-1, keepdim=True).sqrt()

    return World(
        subj_base=1.6 * torch.randn(spec.num_subjects, c, generator=gen),
        subj_parts=0.5 * torch.randn(spec.num_subjects, 4, c, generator=gen),
        bg_base=0.8 * torch.randn(spec.num_backgrounds, c, generator=gen),
        bg_freq=(1.0 + 2.0 * torch.rand(spec.num_backgrounds, 2, 2, generator=gen))
        * torch.where(torch.rand(spec.num_backgrounds, 2, 2, generator=gen) < 0.5, -1.0, 1.0),
        bg_load=0.45 * torch.randn(spec.num_backgrounds, 2, c, generator=gen),
        bg_phase=2 * math.pi * torch.rand(spec.num_backgrounds, 2, generator=gen),
        e_subj=unit(spec.num_subjects + 1, dt),
        e_bg=unit(spec.num_backgrounds, dt),
        e_motion=unit(len(MOTIONS) + 1, dt),
        e_framing=unit(len(FRAMINGS), dt),
        e_role=unit(3, dt),
    )


@dataclass
class SubjectInShot:
    subject: int  # class id
    cast_index: int  # which cast member (identity)
    side: int  # 0 = left half, 1 = right half
    motion: int
    center: tuple[float, float]  # (y, x) at the shot's middle frame, latent pixels


@dataclass
class ShotPlan:
    start: int
    end: int  # exclusive
    background: int
    framing: int
    subjects: list[SubjectInShot] = field(default_factory=list)

    def on_side(self, side: int) -> SubjectInShot | None:
        for s in self.subjects:
            if s.side == side:
                return s
        return None


@dataclass
class VideoPlan:
    shots: list[ShotPlan]
    cast: list[int]  # subject class of each cast member
    identity: torch.Tensor  # (cast, C)
    tint: torch.Tensor  # (Bg, C) per-video background tints

    @property
    def shot_starts(self) -> tuple[int, ...]:
        return tuple(s.start for s in self.shots)


@dataclass
class Batch:
    """A batch of videos that share one shot layout (so one attention layout serves the batch)."""

    latents: torch.Tensor  # (B, C, T, H, W) float32
    context: torch.Tensor  # (B, shots * 3, Dt) float32
    labels: torch.Tensor  # (B, T, H, W) int64 pixel class (backgrounds, then Bg + subject)
    shots: tuple[int, ...]  # first latent frame of each shot
    plans: list[VideoPlan]


def sample_shots(spec: TaskSpec, gen: torch.Generator) -> tuple[int, ...]:
    """Shot starts: 3–6 shots of >= min_shot_frames latent frames, random cut positions."""
    count = int(torch.randint(spec.min_shots, spec.max_shots + 1, (1,), generator=gen))
    free = spec.frames - count * spec.min_shot_frames
    # distribute the free frames at random (stars and bars)
    cuts = sorted(torch.randint(0, free + 1, (count - 1,), generator=gen).tolist())
    extra = [b - a for a, b in zip([0] + cuts, cuts + [free])]
    starts, pos = [], 0
    for e in extra:
        starts.append(pos)
        pos += spec.min_shot_frames + e
    return tuple(starts)


def sample_plan(spec: TaskSpec, shots: tuple[int, ...], gen: torch.Generator) -> VideoPlan:
    """One video's content for a given shot layout."""
    n_shots = len(shots)
    ends = list(shots[1:]) + [spec.frames]
    cast = torch.randperm(spec.num_subjects, generator=gen)[: spec.cast].tolist()
    identity = spec.identity_std * torch.randn(spec.cast, spec.channels, generator=gen)
    tint = spec.tint_std * torch.randn(spec.num_backgrounds, spec.channels, generator=gen)

    def rand() -> float:
        return float(torch.rand(1, generator=gen))

    # who is in which shot: the protagonist (cast 0) opens and closes the video and leaves in a middle shot
    present = [[False] * spec.cast for _ in range(n_shots)]
    away = int(torch.randint(1, n_shots - 1, (1,), generator=gen)) if n_shots >= 3 else -1
    for k in range(n_shots):
        present[k][0] = (k in (0, n_shots - 1)) or (k != away and rand() < 0.6)
        for c in range(1, spec.cast):
            present[k][c] = rand() < 0.5
        members = [c for c in range(spec.cast) if present[k][c]]
        while len(members) > 2:  # at most two subjects per shot; keep the protagonist where it must be
            drop = [c for c in members if c != 0 or k not in (0, n_shots - 1)]
            victim = drop[int(torch.randint(len(drop), (1,), generator=gen))]
            present[k][victim] = False
            members.remove(victim)
        if not members and spec.cast > 1 and rand() < 0.7:
            c = 1 + int(torch.randint(spec.cast - 1, (1,), generator=gen))
            present[k][c] = True

    plans: list[ShotPlan] = []
    for k in range(n_shots):
        if k > 0 and rand() < 0.3:  # revisit an earlier location
            background = plans[int(torch.randint(k, (1,), generator=gen))].background
        else:
            background = int(torch.randint(spec.num_backgrounds, (1,), generator=gen))
        framing = int(torch.randint(len(FRAMINGS), (1,), generator=gen))
        shot = ShotPlan(shots[k], ends[k], background, framing)
        members = [c for c in range(spec.cast) if present[k][c]]
        sides = [0, 1] if rand() < 0.5 else [1, 0]
        for c, side in zip(members, sides):
            cy = spec.height * (0.5 + 0.12 * (2 * rand() - 1))
            cx = spec.width * ((0.25 if side == 0 else 0.75) + 0.05 * (2 * rand() - 1))
            motion = int(torch.randint(len(MOTIONS), (1,), generator=gen))
            shot.subjects.append(SubjectInShot(cast[c], c, side, motion, (cy, cx)))
        plans.append(shot)
    return VideoPlan(plans, cast, identity, tint)


def caption_ids(plan: VideoPlan, spec: TaskSpec) -> list[tuple[int, int, int, int, int, int]]:
    """Per shot: (background, framing, left subject, left motion, right subject, right motion); -1 = none."""
    out = []
    for shot in plan.shots:
        left, right = shot.on_side(0), shot.on_side(1)
        out.append((shot.background, shot.framing,
                    left.subject if left else -1, left.motion if left else -1,
                    right.subject if right else -1, right.motion if right else -1))
    return out


def caption_embedding(plan: VideoPlan, spec: TaskSpec, world: World) -> torch.Tensor:
    """(shots * 3, Dt): the three caption tokens of every shot."""
    none_s, none_m = spec.num_subjects, len(MOTIONS)
    tokens = []
    for bg, fr, ls, lm, rs, rm in caption_ids(plan, spec):
        tokens.append(world.e_bg[bg] + world.e_framing[fr] + world.e_role[0])
        tokens.append(world.e_subj[ls if ls >= 0 else none_s] + world.e_motion[lm if lm >= 0 else none_m]
                      + world.e_role[1])
        tokens.append(world.e_subj[rs if rs >= 0 else none_s] + world.e_motion[rm if rm >= 0 else none_m]
                      + world.e_role[2])
    return torch.stack(tokens) / math.sqrt(3.0)


def subject_radius(spec: TaskSpec, framing: int) -> float:
    return _FRAMING_RADIUS[framing] * spec.height


def subject_speed(spec: TaskSpec) -> float:
    """Latent pixels per latent frame."""
    return spec.width / 64.0


def render(plans: list[VideoPlan], spec: TaskSpec, world: World, device, noise_seed: int):
    """Render videos that share one shot layout -> latents (B, C, T, H, W), labels (B, T, H, W) on ``device``.

    Vectorised over the batch (one pass per shot and subject slot), so the cost does not grow with B in launches.
    Pixel noise comes from a generator on ``device`` seeded with ``noise_seed``.
    """
    bsz = len(plans)
    n_shots = len(plans[0].shots)
    t_len, h, w, c = spec.frames, spec.height, spec.width, spec.channels
    # every per-(video, shot, side) parameter in a few CPU tensors, moved to the device at once
    bg = torch.tensor([[s.background for s in p.shots] for p in plans])  # (B, S)
    zoom = torch.tensor([[_FRAMING_ZOOM[s.framing] for s in p.shots] for p in plans])
    radius = torch.tensor([[subject_radius(spec, s.framing) for s in p.shots] for p in plans])
    slots = [[[s.on_side(side) for side in (0, 1)] for s in p.shots] for p in plans]
    present = torch.tensor([[[float(x is not None) for x in sh] for sh in v] for v in slots])  # (B, S, 2)
    subj = torch.tensor([[[x.subject if x else 0 for x in sh] for sh in v] for v in slots])
    cast = torch.tensor([[[x.cast_index if x else 0 for x in sh] for sh in v] for v in slots])
    center = torch.tensor([[[x.center if x else (0.0, 0.0) for x in sh] for sh in v] for v in slots])  # (B,S,2,2)
    direction = torch.tensor([[[_MOTION_DIR[x.motion] if x else (0.0, 0.0) for x in sh] for sh in v] for v in slots])
    identity = torch.stack([p.identity for p in plans])  # (B, cast, C)
    tint = torch.stack([p.tint for p in plans])  # (B, Bg, C)
    (bg, zoom, radius, present, subj, cast, center, direction, identity, tint) = (
        t.to(device) for t in (bg, zoom, radius, present, subj, cast, center, direction, identity, tint))
    any_side = [[any(slots[b][k][side] is not None for b in range(bsz)) for side in (0, 1)] for k in range(n_shots)]

    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None].expand(h, w) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, :].expand(h, w) + 0.5
    out = torch.empty(bsz, t_len, h, w, c, device=device)
    labels = torch.empty(bsz, t_len, h, w, dtype=torch.int64, device=device)
    speed = subject_speed(spec)
    rows = torch.arange(bsz, device=device)
    for k in range(n_shots):
        start, end = plans[0].shots[k].start, plans[0].shots[k].end
        n = end - start
        b_k = bg[:, k]
        img = (world.bg_base[b_k] + tint[rows, b_k])[:, None, None, :].expand(bsz, h, w, c)
        freq = world.bg_freq[b_k]  # (B, 2, 2)
        arg = 2 * math.pi * zoom[:, k, None, None, None] * (freq[:, :, 0, None, None] * ys / h
                                                            + freq[:, :, 1, None, None] * xs / w)
        arg = arg + world.bg_phase[b_k][:, :, None, None]  # (B, 2, H, W)
        img = img + torch.einsum("bghw,bgc->bhwc", torch.sin(arg), world.bg_load[b_k])
        frames = img[:, None].expand(bsz, n, h, w, c)
        lab = b_k[:, None, None, None].expand(bsz, n, h, w)
        tt = torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2.0
        for side in (0, 1):
            if not any_side[k][side]:
                continue
            s_id = subj[:, k, side]
            cy = center[:, k, side, 0, None] + direction[:, k, side, 0, None] * speed * tt  # (B, n)
            cx = center[:, k, side, 1, None] + direction[:, k, side, 1, None] * speed * tt
            dist = ((ys - cy[..., None, None]) ** 2 + (xs - cx[..., None, None]) ** 2).sqrt()  # (B, n, H, W)
            mask = torch.sigmoid((radius[:, k, None, None, None] - dist) / 0.6) * present[:, k, side, None, None, None]
            quadrant = (ys >= cy[..., None, None]).long() * 2 + (xs >= cx[..., None, None]).long()
            parts = world.subj_parts[s_id]  # (B, 4, C)
            colour = parts.gather(1, quadrant.reshape(bsz, -1, 1).expand(-1, -1, c)).view(bsz, n, h, w, c)
            colour = colour + (world.subj_base[s_id] + identity[rows, cast[:, k, side]])[:, None, None, None, :]
            frames = frames + mask[..., None] * (colour - frames)
            lab = torch.where(mask > 0.5, (spec.num_backgrounds + s_id)[:, None, None, None], lab)
        out[:, start:end] = frames
        labels[:, start:end] = lab
    dgen = torch.Generator(device=device).manual_seed(int(noise_seed))
    out = out + spec.pixel_noise * torch.randn(out.shape, generator=dgen, device=device)
    return out.permute(0, 4, 1, 2, 3).contiguous(), labels


class SyntheticMultiShot:
    """The task. ``batch(seed, size)`` is deterministic in (spec, seed, size, shots)."""

    def __init__(self, spec: TaskSpec, device="cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.world = make_world(spec).to(self.device)

    def shots(self, seed: int) -> tuple[int, ...]:
        return sample_shots(self.spec, torch.Generator().manual_seed(int(seed) * 7919 + 17))

    def batch(self, seed: int, size: int, shots: tuple[int, ...] | None = None) -> Batch:
        gen = torch.Generator().manual_seed(int(seed))
        if shots is None:
            shots = sample_shots(self.spec, gen)
        plans = [sample_plan(self.spec, shots, gen) for _ in range(size)]
        noise_seed = int(torch.randint(2 ** 62, (1,), generator=gen))
        latents, labels = render(plans, self.spec, self.world, self.device, noise_seed)
        ctx = torch.stack([caption_embedding(p, self.spec, self.world) for p in plans])
        return Batch(latents, ctx.to(self.device), labels, tuple(shots), plans)
