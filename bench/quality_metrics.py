"""Metrics of the quality study (bench/quality.py): fidelity to the dense sample, cross-shot identity consistency and
per-shot caption adherence of generated latents of the synthetic task (bench/quality_data.py).

- A *probe* (a small per-pixel MLP, trained on ground-truth latents) says which background or subject class each
  latent pixel shows; identity and adherence read generated samples through it, so a subject is found wherever the
  model put it.
- Caption adherence: per shot, two decisions — the background (majority of background-classified pixels) and the
  set of subjects present (a class covering at least 30 % of the captioned disc area) — compared with the caption.
  Score = fraction of correct decisions; where the found subjects sit (captioned half of the frame) is reported
  beside it.
- Identity consistency: for every recurring subject, the mean latent of its pixels in each later shot where it is
  found, minus the same class's mean over the other videos, against the same in the first shot where it is found:
  cosine. What the caption determines (and any bias shared by all videos) cancels; what is left is the video's random
  identity, so 1 = the same individual throughout, 0 = unrelated individuals.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from quality_data import Batch, SyntheticMultiShot, subject_radius

MIN_AREA = 0.3  # fraction of the captioned disc area that counts as "the subject is there"


class Probe(torch.nn.Module):
    """Per-pixel class logits: a small MLP on the 16 latent channels."""

    def __init__(self, channels: int, classes: int, hidden: int = 128):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(channels, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, classes))

    def forward(self, x):  # (..., C) -> (..., classes)
        return self.net(x)

    @torch.no_grad()
    def classify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T, H, W) class ids."""
        x = latents.float().permute(0, 2, 3, 4, 1)
        flat = x.reshape(-1, x.shape[-1])
        out = torch.cat([self(flat[s:s + (1 << 18)]).argmax(-1) for s in range(0, flat.shape[0], 1 << 18)])
        return out.view(x.shape[:-1])


def train_probe(batches: list[Batch], task: SyntheticMultiShot, steps: int, device, seed: int = 0):
    """Fit the probe on ground-truth frames; returns (probe, accuracy on the subject pixels of held-out videos —
    the hard part; backgrounds are near-perfect).

    Augmentation makes it identity-invariant with few videos: every training frame gets, per class present, a random
    colour shift of the size of the task's per-video identity (subjects) or tint (backgrounds) — new individuals
    and new tints, as identities and tints are additive in the generator.
    """
    spec = task.spec
    nb, classes = spec.num_backgrounds, spec.num_classes
    gen = torch.Generator().manual_seed(seed)
    frames = torch.cat([b.latents.transpose(1, 2).reshape(-1, b.latents.shape[1], *b.latents.shape[3:])
                        for b in batches]).float().permute(0, 2, 3, 1).contiguous()  # (F, H, W, C)
    labels = torch.cat([b.labels.reshape(-1, *b.labels.shape[2:]) for b in batches])  # (F, H, W)
    per_video = spec.frames
    videos = frames.shape[0] // per_video
    split = (videos - max(1, videos // 8)) * per_video if videos > 1 else frames.shape[0]
    torch.manual_seed(seed)
    probe = Probe(spec.channels, classes).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=3e-3)
    shift_std = torch.tensor([1.2 * spec.tint_std] * nb + [1.2 * spec.identity_std] * spec.num_subjects,
                             device=frames.device)
    bs = min(16, split)
    freq = torch.bincount(labels[:split].reshape(-1), minlength=classes).float().clamp_min(1)
    weight = (freq.sum() / freq).sqrt()  # subjects are ~10 % of the pixels: weigh them up
    weight = (weight / weight.mean()).to(device)
    for step in range(steps):
        pick = torch.randint(split, (bs,), generator=gen).to(frames.device)
        delta = torch.randn(bs, classes, spec.channels, generator=gen).to(frames.device) * shift_std[:, None]
        lab = labels[pick]
        xb = frames[pick] + delta[torch.arange(bs, device=frames.device)[:, None, None], lab]
        loss = F.cross_entropy(probe(xb).reshape(-1, classes), lab.reshape(-1), weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = 3e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps)))
    probe.eval()
    with torch.no_grad():
        held = frames[split:] if split < frames.shape[0] else frames
        truth = labels[split:] if split < frames.shape[0] else labels
        pred = probe(held).argmax(-1)
        subj = truth >= nb
        acc = float((pred[subj] == truth[subj]).float().mean()) if bool(subj.any()) else float("nan")
    return probe, acc


def adherence(pred: torch.Tensor, batch: Batch, task: SyntheticMultiShot) -> dict:
    """pred (B, T, H, W) probe classes of samples of ``batch``'s captions -> caption adherence.

    Per shot two decisions: the background (majority of background-classified pixels) and the set of subjects (a
    class counts as present if it covers at least ``MIN_AREA`` of the captioned disc area). ``score`` is their mean.
    ``side``: of the captioned subjects found, the fraction whose centroid is in the captioned half of the frame
    (the "where"; Wan has no absolute position embedding, only RoPE, so placement is the hardest part to learn).
    """
    spec = task.spec
    nb = spec.num_backgrounds
    w = spec.width
    xs = torch.arange(w, device=pred.device, dtype=torch.float32) + 0.5
    ok_bg, ok_set, ok_side = [], [], []
    for i, plan in enumerate(batch.plans):
        for shot in plan.shots:
            p = pred[i, shot.start:shot.end]  # (n, H, W)
            n = shot.end - shot.start
            bg_pix = p[p < nb]
            bg = int(torch.bincount(bg_pix, minlength=nb).argmax()) if bg_pix.numel() else -1
            ok_bg.append(bg == shot.background)
            counts = torch.bincount(p.reshape(-1), minlength=spec.num_classes)[nb:]
            found = set((counts >= MIN_AREA * math.pi * subject_radius(spec, shot.framing) ** 2 * n)
                        .nonzero().flatten().tolist())
            wanted = {s.subject: s.side for s in shot.subjects}
            ok_set.append(found == set(wanted))
            for subject, side in wanted.items():
                if subject in found:
                    cols = (p == nb + subject).float().sum((0, 1))  # (W,)
                    centre = float((cols * xs).sum() / cols.sum())
                    ok_side.append((centre < w / 2) == (side == 0))
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    return {"score": (sum(ok_bg) + sum(ok_set)) / max(1, len(ok_bg) + len(ok_set)), "background": mean(ok_bg),
            "subjects": mean(ok_set), "side": mean(ok_side), "side_count": len(ok_side),
            "decisions": len(ok_bg) + len(ok_set)}


def subject_instances(latents: torch.Tensor, pred: torch.Tensor, batch: Batch, task: SyntheticMultiShot,
                      video_offset: int = 0) -> tuple[list[dict], int]:
    """Every (video, cast member, shot) where the caption puts a recurring subject and the probe finds it: the mean
    latent of its (interior) pixels. Returns (instances, number of captioned appearances not found)."""
    spec = task.spec
    nb = spec.num_backgrounds
    x = latents.float().permute(0, 2, 3, 4, 1)  # (B, T, H, W, C)
    out, missing = [], 0
    for i, plan in enumerate(batch.plans):
        for c, subject in enumerate(plan.cast):
            for k, shot in enumerate(plan.shots):
                if not any(s.cast_index == c for s in shot.subjects):
                    continue
                sel = pred[i, shot.start:shot.end] == nb + subject
                n = shot.end - shot.start
                if float(sel.sum()) < MIN_AREA * math.pi * subject_radius(spec, shot.framing) ** 2 * n:
                    missing += 1
                    continue
                core = _core(sel)
                if int(core.sum()) >= 4 * n:  # the interior, where tiny discs leave enough of it
                    sel = core
                out.append({"video": video_offset + i, "cast": c, "subject": subject, "shot": k,
                            "mean": x[i, shot.start:shot.end][sel].mean(0)})
    return out, missing


def identity_score(instances: list[dict], missing: int = 0, far: int = 2) -> dict:
    """Cross-shot identity consistency (see the module docstring).

    A subject's identity colour in one shot = its mean latent minus the mean of the same subject class in the *other*
    videos of the set (leave-one-video-out), so whatever every video shares — the class colour, and any systematic
    bias of the model (blur, colour drift) — cancels, and only the per-video individual is left. Score = cosine
    between a later shot's and the first found shot's identity colour, over all pairs; ``identity_far`` = pairs at
    least ``far`` shots apart; ``identity_span`` = each recurring subject's first vs last found appearance, where
    those are at least ``far`` shots apart (the protagonist opens and closes every video: the longest distance
    the video has).
    """
    if isinstance(far, bool) or not isinstance(far, int) or far < 1:
        raise ValueError(f"far must be an int >= 1 (shots apart), got {far!r}")
    by_class: dict[int, dict[int, list]] = {}
    for inst in instances:
        by_class.setdefault(inst["subject"], {}).setdefault(inst["video"], []).append(inst["mean"])
    video_mean = {(s, v): torch.stack(ms).mean(0) for s, vids in by_class.items() for v, ms in vids.items()}
    cos_all, cos_far, cos_span = [], [], []
    groups: dict[tuple, list] = {}
    for inst in instances:
        groups.setdefault((inst["video"], inst["cast"]), []).append(inst)
    for (video, _), insts in groups.items():
        subject = insts[0]["subject"]
        others = [video_mean[(subject, v)] for v in by_class[subject] if v != video]
        if not others or len(insts) < 2:
            continue
        centre = torch.stack(others).mean(0)
        insts = sorted(insts, key=lambda d: d["shot"])
        first = insts[0]["mean"] - centre
        for inst in insts[1:]:
            cos = float(F.cosine_similarity(inst["mean"] - centre, first, dim=0))
            cos_all.append(cos)
            if inst["shot"] - insts[0]["shot"] >= far:
                cos_far.append(cos)
        if insts[-1]["shot"] - insts[0]["shot"] >= far:
            cos_span.append(cos_all[-1])
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    return {"identity": mean(cos_all), "identity_far": mean(cos_far), "identity_span": mean(cos_span),
            "identity_pairs": len(cos_all), "identity_far_pairs": len(cos_far), "identity_span_pairs": len(cos_span),
            "identity_far_shots": far, "identity_missing": missing}


def _core(mask: torch.Tensor) -> torch.Tensor:
    """(n, H, W) bool -> the pixels whose 4 neighbours are in the mask too (drops the soft, background-mixed rim)."""
    m = torch.nn.functional.pad(mask, (1, 1, 1, 1))
    return mask & m[:, :-2, 1:-1] & m[:, 2:, 1:-1] & m[:, 1:-1, :-2] & m[:, 1:-1, 2:]


def fidelity(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """Per-video latent PSNR (peak = the reference's range) and cosine vs ``ref``, averaged over the videos."""
    psnr, cos = [], []
    for a, b in zip(x.float(), ref.float()):
        mse = float((a - b).pow(2).mean())
        peak = float(b.max() - b.min())
        psnr.append(float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse))
        cos.append(float(F.cosine_similarity(a.reshape(-1), b.reshape(-1), dim=0)))
    return {"psnr": sum(psnr) / len(psnr), "cosine": sum(cos) / len(cos)}


class GaussianBaseline:
    """The trivial denoiser: knows each channel's mean and variance of the data and nothing else; predicts the
    velocity ε − x0 as its best linear estimate from x_t = (1 − t)·x0 + t·ε, channel by channel."""

    def __init__(self, batches: list[Batch]):
        x = torch.cat([b.latents.transpose(0, 1).reshape(b.latents.shape[1], -1) for b in batches], 1).float()
        self.mu = x.mean(1)
        self.var = x.var(1)

    def predict(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1, 1)
        mu, var = self.mu.view(shape).to(xt.device), self.var.view(shape).to(xt.device)
        tt = t.view(-1, 1, 1, 1, 1)
        cov = tt - (1 - tt) * var
        var_xt = (1 - tt) ** 2 * var + tt ** 2
        return -mu + cov / var_xt * (xt - (1 - tt) * mu)
