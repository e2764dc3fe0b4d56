"""Router-only distillation: train a block's router so that training-free MoGA (``combine="union"``) matches dense
attention on captured activations — for stock weights, where no MoGA-trained router exists.

    from moga_core.distill import distill_routers
    router, report = distill_routers(samples, cfg, init=Router.fit(x, cfg.num_groups))

``samples``: what one block saw on the user's own prompts, e.g. a few denoising steps of a calibration run —
dicts ``{"x": (B, Nv|N, C) router inputs, "q"/"k"/"v": (B, N, H, D), "layout": VideoLayout}``.

Why a surrogate. In union mode a query attends exactly to the keys of ``G(q) ∪ W(q) ∪ F(q) ∪ Glob``; the router
acts only through the hard argmax ``g(x)``, which has no gradient (the gate is unused in union mode). For one query
``i`` the union output is dense attention renormalised over the kept keys S, so its error is governed by the dense
probability mass it drops: ``|O_S − O| ≤ 2·(1 − P(S))·max|v|``. Local and global keys are kept anyway; what the router
decides is how much of the *non-local* mass is kept: ``Σ_{j∉L(i)} P_ij·[g_i = g_j]``. We replace the indicator by
the inner product of soft assignments ``r(x) = softmax(logits(x)/τ)`` and maximise

    captured = mean_i Σ_{j ∉ L(i)} P̄_ij · ⟨r_i, r_j⟩        (P̄: dense attention probabilities, mean over heads)

on random query subsets, minus ``balance_weight · M · Σ_m f_m²`` with ``f_m = mean_j r_jm`` — the soft group-pair
density, which is 1 at a uniform split and M if every token joins one group (without it the optimum is a single
group, i.e. dense attention). The weight starts at ``balance_weight`` and adapts by dual ascent (``dual_step``) to hold
the hard group density at the initial router's, so the router learns *which* tokens to group rather than trading
accuracy for density either way. τ starts at the median top-1/top-2 logit gap of the initial router (a k-means router
is nearly hard; a softmax at its own scale passes no gradient) and anneals to a tenth of that.

Selection. Every ``eval_every`` steps the *hard* router is scored on held-out queries by the exact union-mode
relative output error against dense attention, and the best iterate wins among those whose group density
(Σ_m n_m² / Nv²) stays within ``max_density_increase`` of the initial router's. The initial router is a candidate, so
the result is never worse than the init on those queries, and it never buys accuracy with a denser split.

A straight-through estimator (hard forward, soft backward) was the alternative; the soft expected-mass objective is
smoother and needs no O(N²) output per step — only dense probabilities for a few hundred queries.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from .config import MogaConfig, VideoLayout, check_config_for_layout
from .attention import window_key_mask
from .router import Router


def local_key_mask(layout: VideoLayout, cfg: MogaConfig, query_index: torch.Tensor) -> torch.Tensor:
    """(Q, N) bool: the keys that video queries ``query_index`` (video-token indices, (Q,)) always attend to —
    their window block (with neighbour frames) and their frame, as ``cfg`` enables them, and every global token."""
    t_len, hh, ww = layout.grid
    hw = hh * ww
    nv, n, p = layout.num_video_tokens, layout.num_tokens, layout.prefix
    device = query_index.device
    qi = query_index.long()
    frame_of = torch.arange(t_len, device=device).repeat_interleave(hw)  # (Nv,)
    q_frame = qi // hw
    mask = torch.zeros(qi.numel(), n, dtype=torch.bool, device=device)
    mask[:, :p] = True
    mask[:, p + nv:] = True
    video = torch.zeros(qi.numel(), nv, dtype=torch.bool, device=device)
    if cfg.frame_branch:
        video |= q_frame[:, None] == frame_of[None, :]
    if cfg.window is not None:
        video |= window_key_mask(layout, cfg, qi)
    mask[:, p:p + nv] = video
    return mask


def attended_fraction(layout: VideoLayout, cfg: MogaConfig, groups: torch.Tensor, query_index: torch.Tensor) -> float:
    """Mean over the given video queries of |keys attended in union mode| / N (``groups`` (Nv,) of one sample).

    The union key set G ∪ W ∪ F ∪ Glob is also every key any branch of ``"mean"`` mode reads, so this is the
    density in the paper's sense (1 − sparsity) for both combine modes.
    """
    keep = local_key_mask(layout, cfg, query_index)
    p, nv = layout.prefix, layout.num_video_tokens
    keep[:, p:p + nv] |= groups[query_index][:, None] == groups[None, :]
    return float(keep.float().mean())


# ---------------------------------------------------------------------------------------------------------------


def _video_x(x: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
    if x.dim() == 2:
        x = x[None]
    if x.shape[1] == layout.num_tokens and layout.num_tokens != layout.num_video_tokens:
        x = x[:, layout.prefix:layout.prefix + layout.num_video_tokens]
    return x


def _check_samples(samples, cfg):
    if not isinstance(cfg, MogaConfig):
        raise ValueError(f"cfg must be a MogaConfig, got {type(cfg).__name__}")
    if cfg.combine != "union":
        raise ValueError("distill_routers fits routers for combine='union' (training-free use: MoGA's output should "
                         "match dense attention). A 'mean'-mode router belongs to weights fine-tuned with it; on stock "
                         f"weights the mean of three branches is a different operator. Got combine={cfg.combine!r}")
    if not isinstance(samples, Sequence) or len(samples) == 0:
        raise ValueError("samples must be a non-empty sequence of {x, q, k, v, layout} dicts")
    out, width = [], None
    for i, s in enumerate(samples):
        if not isinstance(s, Mapping) or not all(key in s for key in ("x", "q", "k", "v", "layout")):
            raise ValueError(f"samples[{i}] must be a dict with keys x, q, k, v, layout; got "
                             f"{sorted(s) if isinstance(s, Mapping) else type(s).__name__}")
        layout = s["layout"]
        if not isinstance(layout, VideoLayout):
            raise ValueError(f"samples[{i}]['layout'] must be a VideoLayout, got {type(layout).__name__}")
        check_config_for_layout(cfg, layout)
        q, k, v = s["q"], s["k"], s["v"]
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not torch.is_tensor(t) or t.dim() != 4 or t.shape[1] != layout.num_tokens:
                raise ValueError(f"samples[{i}]['{name}'] must be (B, N, H, D) with N = {layout.num_tokens}; got "
                                 f"{tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}")
        if k.shape != q.shape or v.shape != q.shape:
            raise ValueError(f"samples[{i}]: q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, "
                             f"{tuple(v.shape)}")
        x = s["x"]
        if not torch.is_tensor(x) or x.dim() not in (2, 3) or not x.is_floating_point():
            raise ValueError(f"samples[{i}]['x'] must be a float tensor (B, Nv, C) or (B, N, C)")
        x = _video_x(x, layout)
        if x.shape[0] != q.shape[0] or x.shape[1] != layout.num_video_tokens:
            raise ValueError(f"samples[{i}]['x'] must be (B, Nv, C) = ({q.shape[0]}, {layout.num_video_tokens}, C) "
                             f"(or include the {layout.num_global_tokens} global tokens); got {tuple(s['x'].shape)}")
        if width is None:
            width = x.shape[-1]
        elif x.shape[-1] != width:
            raise ValueError(f"samples[{i}]['x'] has width {x.shape[-1]}, earlier samples {width}")
        out.append({"x": x, "q": q, "k": k, "v": v, "layout": layout})
    return out, width


def _probs(q_rows, k, scale):
    """q_rows (Q, H, D), k (N, H, D) -> dense attention probabilities (H, Q, N) float32."""
    scores = torch.einsum("qhd,nhd->hqn", q_rows.float(), k.float()) * scale
    return torch.softmax(scores, dim=-1)


def distill_routers(samples: Sequence[Mapping], cfg: MogaConfig, init: Router | None = None, *, steps: int = 300,
                    lr: float = 0.1, queries: int = 256, eval_queries: int = 256, eval_every: int = 25,
                    balance_weight: float = 0.2, dual_step: float = 0.01, max_density_increase: float = 0.05,
                    temperature: float | None = None,
                    anneal: float = 0.1, scale: float | None = None, seed: int = 0) -> tuple[Router, dict]:
    """Train one block's router so that union-mode MoGA matches dense attention (see the module docstring).

    ``init``: the starting router (default: k-means, ``Router.fit`` on the samples' router inputs). ``lr`` is relative:
    a step moves the logits by about ``lr``·τ. Deterministic under ``seed`` on one device. Returns the best
    router (float32, on the samples' device) and a report: ``init_error``/``final_error`` (relative union-mode output
    error vs dense on the held-out queries), ``init_density``/``final_density`` (group-pair density Σ n_m²/Nv²),
    ``init_captured``/``final_captured`` (non-local dense mass kept by the groups), ``best_step``, ``temperature``.
    """
    data, width = _check_samples(samples, cfg)
    m = cfg.num_groups
    device = data[0]["x"].device
    gen = torch.Generator().manual_seed(int(seed))
    if init is None:
        init = Router.fit(torch.cat([d["x"].reshape(-1, width) for d in data]).float(), m, seed=seed)
    if init.num_groups != m or init.in_features != width:
        raise ValueError(f"init router is (M={init.num_groups}, C={init.in_features}); expected (M={m}, C={width})")
    weight0 = init.weight.detach().float().to(device)
    bias0 = (init.bias.detach().float().to(device) if init.bias is not None
             else torch.zeros(m, device=device))

    # held-out queries per (sample, batch element): indices, local masks, dense outputs
    evals = []
    for si, d in enumerate(data):
        layout = d["layout"]
        nv, p = layout.num_video_tokens, layout.prefix
        sc = scale if scale is not None else d["q"].shape[-1] ** -0.5
        for b in range(d["q"].shape[0]):
            idx = torch.randperm(nv, generator=gen)[:min(eval_queries, nv)].sort().values.to(device)
            keep_local = local_key_mask(layout, cfg, idx)
            probs = _probs(d["q"][b, p + idx], d["k"][b], sc)
            out = torch.einsum("hqn,nhd->hqd", probs, d["v"][b].float())
            evals.append((si, b, idx, keep_local, out, sc))

    def hard_eval(weight, bias):
        err_num = err_den = 0.0
        dens, captured = [], []
        for si, b, idx, keep_local, out, sc in evals:
            d = data[si]
            layout = d["layout"]
            nv, p = layout.num_video_tokens, layout.prefix
            groups = (d["x"][b].float() @ weight.T + bias).argmax(-1)  # (Nv,)
            keep = keep_local.clone()
            same = groups[idx][:, None] == groups[None, :]
            keep[:, p:p + nv] |= same
            probs = _probs(d["q"][b, p + idx], d["k"][b], sc)  # (H, Q, N)
            kept = probs * keep[None]
            o = torch.einsum("hqn,nhd->hqd", kept, d["v"][b].float()) / kept.sum(-1, keepdim=True).clamp_min(1e-30)
            err_num += float((o - out).pow(2).sum())
            err_den += float(out.pow(2).sum())
            counts = torch.bincount(groups, minlength=m).double()
            dens.append(float((counts ** 2).sum() / nv ** 2))
            nonlocal_mass = probs.mean(0)[:, p:p + nv] * (~keep_local[:, p:p + nv])
            captured.append(float((nonlocal_mass * same).sum(-1).mean()))
        return math.sqrt(err_num / max(err_den, 1e-30)), float(np.mean(dens)), float(np.mean(captured))

    with torch.no_grad():
        init_err, init_dens, init_capt = hard_eval(weight0, bias0)
        all_logits = torch.cat([d["x"].reshape(-1, width).float() @ weight0.T + bias0 for d in data])
        if temperature is None:
            top2 = all_logits.topk(min(2, m), dim=-1).values
            gap = (top2[:, 0] - top2[:, -1]) if m > 1 else torch.ones(1, device=device)
            temperature = float(gap.median())
            if not math.isfinite(temperature) or temperature <= 0:
                temperature = float(all_logits.std().clamp_min(1e-6))
        x_l1 = float(torch.cat([d["x"].reshape(-1, width).float().abs().sum(-1) for d in data]).mean())

    report = {"init_error": init_err, "init_density": init_dens, "init_captured": init_capt, "steps": steps,
              "temperature": temperature, "best_step": 0, "history": []}
    best = (init_err, weight0.clone(), bias0.clone(), init_dens, init_capt)
    density_cap = init_dens * (1 + max_density_increase) + 1e-12
    if m == 1 or steps <= 0:
        report.update(final_error=init_err, final_density=init_dens, final_captured=init_capt)
        return Router.from_weights(weight0, bias0), report

    weight = weight0.clone().requires_grad_(True)
    bias = bias0.clone().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [weight], "lr": lr * temperature / max(x_l1, 1e-12)},
                            {"params": [bias], "lr": lr * temperature}])
    pairs = [(si, b) for si, d in enumerate(data) for b in range(d["q"].shape[0])]
    lam = float(balance_weight)
    for step in range(1, steps + 1):
        tau = temperature * anneal ** ((step - 1) / max(1, steps - 1))
        si, b = pairs[int(torch.randint(len(pairs), (1,), generator=gen))]
        d = data[si]
        layout = d["layout"]
        nv, p = layout.num_video_tokens, layout.prefix
        sc = scale if scale is not None else d["q"].shape[-1] ** -0.5
        idx = torch.randperm(nv, generator=gen)[:min(queries, nv)].to(device)
        with torch.no_grad():
            probs = _probs(d["q"][b, p + idx], d["k"][b], sc).mean(0)[:, p:p + nv]  # (Q, Nv)
            nonlocal_mass = probs * (~local_key_mask(layout, cfg, idx)[:, p:p + nv])
        logits = d["x"][b].float() @ weight.T + bias
        r = torch.softmax(logits / tau, dim=-1)  # (Nv, M)
        captured = (nonlocal_mass * (r[idx] @ r.T)).sum(-1).mean()
        f = r.mean(0)
        loss = -captured + lam * m * (f * f).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dual_step > 0:  # dual ascent: hold the hard group density at the initial router's
            with torch.no_grad():
                counts = torch.bincount(logits.argmax(-1), minlength=m).double()
                dens = float((counts ** 2).sum()) / nv ** 2
            lam = max(0.0, lam + dual_step * (dens / init_dens - 1.0))
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                err, dens, capt = hard_eval(weight, bias)
            report["history"].append({"step": step, "error": err, "density": dens, "captured": capt})
            if dens <= density_cap and err < best[0]:
                best = (err, weight.detach().clone(), bias.detach().clone(), dens, capt)
                report["best_step"] = step
    report.update(final_error=best[0], final_density=best[3], final_captured=best[4])
    return Router.from_weights(best[1], best[2]), report
