"""docs/QUALITY.md for a matched-density study (bench/quality.py, preset ``long``), written from one run's JSON.

Every number, and every comparative word of "Targets" and "Which mode to pick", comes from the results: the rules
are `target_checks` and `pick` below (rows compared at the same target density), never hand-written claims.
"""

from __future__ import annotations

import math

IDENTITY_SLACK = 0.01  # the issue's bar: identity >= dense − 0.01
# the sampled identity decides only when dense attention's own samples give at least this many pairs (subjects the
# probe finds in two shots of a video); else the teacher-forced identity (`identity_tf`, read at the true pixels)
MIN_IDENTITY_PAIRS = 20
ROUTED_UNION = ("union_auto", "union_auto_g2", "union_calibrated")
FREE_MODES = ROUTED_UNION + ("random_groups", "svg2")


def _num(v):
    if v in ("inf", "-inf"):
        return float(v)
    return float("nan") if v is None else float(v)


def _f(v, fmt):
    v = _num(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else float(v)
    if math.isinf(v):
        return "∞"
    if math.isnan(v):
        return "–"
    return format(v, fmt)


def _ge(a, b):
    return math.isfinite(a) and math.isfinite(b) and a >= b


def identity_measure(data: dict) -> tuple[str | None, str]:
    """Which identity column decides the targets and the pick, and why (a sentence); None when no measure can.

    Candidates in order: the sampled identity, when dense attention's samples give ``MIN_IDENTITY_PAIRS`` pairs or
    more; else the teacher-forced one. A candidate is used only if it sees what it is for: where the matched study
    ran the local-branches-only control, that control (no long-range keys) must score below dense − IDENTITY_SLACK on
    it. Otherwise the identity targets cannot be decided from this run."""
    rows = {r.get("key"): r for r in data.get("rows", []) if not r.get("error")}
    dense, local = rows.get("dense", {}), rows.get("local_only")
    pairs = int(dense.get("identity_pairs") or 0)
    candidates = []
    if pairs >= MIN_IDENTITY_PAIRS:
        candidates.append(("identity", f"identity of the samples (dense attention's samples give {pairs} pairs)"))
    else:
        few = (f"dense attention's samples give only {pairs} identity pairs — subjects the probe finds in two shots "
               f"of a generated video — under the {MIN_IDENTITY_PAIRS} that would let the sampled identity decide")
        if dense.get("identity_tf") is not None:
            candidates.append(("identity_tf", f"teacher-forced identity at t = {_f(dense.get('identity_tf_t'), 'g')} "
                                              f"({few}; the teacher-forced one reads "
                                              f"{int(dense.get('identity_tf_pairs') or 0)} pairs at the subjects' "
                                              "true pixels)"))
        else:
            return None, few
    refused = []
    for col, why in candidates:
        if local is None:
            return col, why
        lo, de = _num(local.get(col)), _num(dense.get(col))
        if _ge(de - IDENTITY_SLACK, lo) and not _ge(lo, de - IDENTITY_SLACK):
            return col, why + f"; the local-only control scores {_f(lo, '.3f')} against dense {_f(de, '.3f')} on it"
        refused.append(f"{col}: the local-only control (no long-range keys) scores {_f(lo, '.3f')}, not below dense "
                       f"attention's {_f(de, '.3f')} − {IDENTITY_SLACK}, so it does not see what long-range "
                       "attention carries")
    reason = candidates[-1][1] if candidates else ""
    return None, (f"not decidable from this run: {reason}; " + "; ".join(refused))


class Rows:
    """The rows of a results dict by (mode, target); the dense and fine-tuned rows by key."""

    def __init__(self, data: dict):
        self.all = [r for r in data.get("rows", [])]
        ok = [r for r in self.all if not r.get("error")]
        self.by_key = {r["key"]: r for r in ok}
        self.matched = {(r["mode"], float(r["target_density"])): r for r in ok if "target_density" in r}
        targets = (data.get("meta") or {}).get("config", {}).get("targets") or []
        self.targets = [float(t) for t in targets] or sorted({t for _, t in self.matched})

    def get(self, mode, target, col):
        r = self.matched.get((mode, target))
        return _num(r.get(col)) if r else float("nan")

    def dense(self, col):
        return _num(self.by_key.get("dense", {}).get(col))

    def ft(self, col):
        return _num(self.by_key.get("moga_finetuned", {}).get(col))


def target_checks(data: dict) -> list[dict]:
    """The issue's targets, each decided from the rows: {target, what, passed (bool or None when a row is
    missing), detail}."""
    rows = Rows(data)
    checks = []
    idc, _ = identity_measure(data)
    dense_id = rows.dense(idc) if idc else float("nan")

    def id_check(a):  # None: no valid identity measure in this run
        return _ge(a, dense_id - IDENTITY_SLACK) if idc else None
    for t in rows.targets:
        for mode in ("union_auto", "union_auto_g2"):
            if (mode, t) not in rows.matched:
                continue
            ps, pb = rows.get(mode, t, "psnr"), rows.get("svg2", t, "psnr")
            checks.append({"target": t, "what": f"{mode} PSNR ≥ svg2 PSNR",
                           "passed": _ge(ps, pb) if math.isfinite(pb) else None,
                           "detail": f"{_f(ps, '.2f')} vs {_f(pb, '.2f')} dB"})
            idn = rows.get(mode, t, idc) if idc else float("nan")
            checks.append({"target": t, "what": f"{mode} {idc or 'identity'} ≥ dense − {IDENTITY_SLACK}",
                           "passed": id_check(idn),
                           "detail": f"{_f(idn, '.4f')} vs {_f(dense_id, '.4f')}" if idc else
                           "no valid identity measure: see Which mode to pick"})
        if ("union_auto", t) in rows.matched and ("union_calibrated", t) in rows.matched:
            for col, name, fmt in (("psnr", "PSNR", ".2f"), (idc, idc or "identity", ".4f")):
                if col is None:
                    checks.append({"target": t, "what": "union_auto identity ≥ union_calibrated identity",
                                   "passed": None, "detail": "no valid identity measure"})
                    continue
                a, c = rows.get("union_auto", t, col), rows.get("union_calibrated", t, col)
                checks.append({"target": t, "what": f"union_auto {name} ≥ union_calibrated {name}",
                               "passed": _ge(a, c), "detail": f"{_f(a, fmt)} vs {_f(c, fmt)}"})
    if "moga_finetuned" in rows.by_key:
        a = rows.ft(idc) if idc else float("nan")
        checks.append({"target": None, "what": f"MoGA fine-tune (mean) {idc or 'identity'} ≥ dense",
                       "passed": _ge(a, dense_id) if idc else None,
                       "detail": f"{_f(a, '.4f')} vs {_f(dense_id, '.4f')}" if idc else "no valid identity measure"})
    return checks


PACK_MODES = ROUTED_UNION + ("random_groups",)  # the training-free groupings a user can pick on the nodes


def pick(data: dict) -> dict:
    """The training-free choice the numbers support, among the groupings the pack offers (`PACK_MODES`).

    Per target density: the rows that keep identity within ``IDENTITY_SLACK`` of dense (every row when the run has
    no valid identity measure: `identity_measure`); of those the highest PSNR (``best``). The recommended density is
    the lowest target whose best row also reaches the SVG2-style baseline's PSNR; else the lowest target with any
    kept row; else none (no training-free row kept identity: dense, or the highest density measured)."""
    rows = Rows(data)
    idc, _ = identity_measure(data)
    dense_id = rows.dense(idc) if idc else float("nan")
    per_target = {}
    for t in rows.targets:
        keep = [m for m in PACK_MODES if (m, t) in rows.matched
                and (idc is None or _ge(rows.get(m, t, idc), dense_id - IDENTITY_SLACK))]
        best = max(keep, key=lambda m: (rows.get(m, t, "psnr"), -PACK_MODES.index(m))) if keep else None
        beats = best is not None and (("svg2", t) not in rows.matched
                                      or _ge(rows.get(best, t, "psnr"), rows.get("svg2", t, "psnr")))
        per_target[t] = {"best": best, "beats_svg2": beats}
    choice = next((t for t in rows.targets if per_target[t]["beats_svg2"]), None)
    if choice is None:
        choice = next((t for t in rows.targets if per_target[t]["best"]), None)
    mode = per_target[choice]["best"] if choice is not None else None
    params = rows.matched[(mode, choice)].get("params", {}) if mode else {}
    return {"per_target": per_target, "density": choice, "mode": mode, "params": params, "identity": idc}


def _knob(row) -> str:
    p = row.get("params") or {}
    if "svg2_top_p" in p:
        return f"top-p {p['svg2_top_p']:.3f}"
    if "sol_tau" in p:
        return f"top-k {p['sol_topk']:g}" if p.get("sol_topk") else f"tau {p['sol_tau']:g}"
    parts = [f"M = {p.get('num_groups', '?')}"]
    if p.get("capacity"):
        parts.append(f"cap {p['capacity']}")
    if p.get("second_group"):
        parts.append("2nd group")
    return ", ".join(parts)


def table(data: dict) -> list[str]:
    cfg = (data.get("meta") or {}).get("config", {})
    far = cfg.get("far_shots", 2)
    head = ("| mode | target | knob | density: calib → eval (sampling) | scores/N² | PSNR dB | cos | attn err | "
            f"identity (pairs) | identity ≥ {far} shots apart | identity first ↔ last | identity, teacher-forced "
            "(≥ far) | adherence | flow loss | ms/step |")
    ncol = head.count("|") - 1
    lines = [head, "|" + "---|" * ncol]
    for r in data.get("rows", []):
        label = r.get("label", r.get("key"))
        if r.get("error"):
            lines.append(f"| {label} | error: {r['error'][:100]} |" + " |" * (ncol - 2))
            continue
        target = _f(r.get("target_density"), ".2f") if "target_density" in r else "–"
        knob = _knob(r) if r.get("params") else "–"
        dens = (f"{_f(r.get('tuned_density'), '.3f')} → " if "tuned_density" in r else "") + \
            f"{_f(r.get('density'), '.3f')} ({_f(r.get('density_sampling'), '.3f')})"
        lines.append(f"| {label} | {target} | {knob} | {dens} | {_f(r.get('compute'), '.3f')} | "
                     f"{_f(r.get('psnr'), '.2f')} | {_f(r.get('cosine'), '.4f')} | {_f(r.get('rel_err'), '.3f')} | "
                     f"{_f(r.get('identity'), '.3f')} ({r.get('identity_pairs', 0)}) | "
                     f"{_f(r.get('identity_far'), '.3f')} | {_f(r.get('identity_span'), '.3f')} | "
                     f"{_f(r.get('identity_tf'), '.3f')} ({_f(r.get('identity_tf_far'), '.3f')}) | "
                     f"{_f(r.get('adherence'), '.3f')} | {_f(r.get('flow_loss'), '.4f')} | "
                     f"{_f(r.get('ms_per_step'), '.1f')} |")
    gt = (data.get("reference") or {}).get("ground_truth", {})
    lines.append(f"| *ground-truth videos* | – | – | – | – | – | – | – | {_f(gt.get('identity'), '.3f')} "
                 f"({gt.get('identity_pairs', 0)}) | {_f(gt.get('identity_far'), '.3f')} | "
                 f"{_f(gt.get('identity_span'), '.3f')} | – | {_f(gt.get('adherence'), '.3f')} | – | – |")
    return lines


def concentration(data: dict) -> list[tuple[float, float]]:
    """(density, top-p) pairs of the SVG2-style baseline's tuning: the share of the (centroid-estimated) attention
    mass its kept clusters hold at each density. Uniform attention gives top-p = density; the further above, the more
    concentrated the model's attention."""
    out = []
    for entry in data.get("tuning") or []:
        if entry.get("mode") == "svg2" and "svg2_top_p" in (entry.get("params") or {}):
            out.append((float(entry.get("density", float("nan"))), float(entry["params"]["svg2_top_p"])))
    return sorted(out)


def _training(data: dict) -> list[str]:
    tr = data.get("training", {})
    cfg = (data.get("meta") or {}).get("config", {})
    out = []
    for key, what in (("dense", "dense, phase 1"), ("dense_long", "dense, phase 2"), ("finetune", "MoGA fine-tune")):
        r = tr.get(key)
        if not r:
            continue
        if "loaded" in r:
            out.append(f"- {what}: loaded from `{r['loaded']}`.")
            continue
        frames = (cfg.get("train_task") or cfg.get("task", {})).get("frames") if key == "dense" else \
            cfg.get("task", {}).get("frames")
        tc = cfg.get({"dense": "dense", "dense_long": "dense_long", "finetune": "finetune"}[key]) or {}
        out.append(f"- {what} ({frames}-frame videos, batch {tc.get('batch', '?')}): {r.get('steps')} steps in "
                   f"{_f(r.get('seconds'), '.0f')} s ({_f(r.get('step_ms'), '.0f')} ms/step), flow loss "
                   f"{_f(r.get('loss_first'), '.3f')} → {_f(r.get('loss_last'), '.4f')}"
                   + (f", balancing loss {_f(r.get('aux_last'), '.3f')} (α = 0.1)" if key == "finetune" else "")
                   + ".")
    return out


def render(data: dict, model_params: float, tokens: int) -> str:
    """The page. ``model_params``: the model's parameter count; ``tokens``: video tokens of an evaluation video."""
    meta = data.get("meta", {})
    cfg = meta.get("config", {})
    task, model = cfg.get("task", {}), cfg.get("model", {})
    train_task = cfg.get("train_task")
    rows = Rows(data)
    out = ["# Quality: MoGA at length, at matched densities", "",
           f"Measured on **{meta.get('device')}** ({meta.get('date')}, commit {meta.get('commit') or '?'}"
           + (f" — {meta['commit_annotation']}" if meta.get("commit_annotation") else "") + ", torch "
           f"{meta.get('torch')}, study preset `{meta.get('study')}`), one run, every row with the same prompts and "
           f"seeds. Total wall time {_f((meta.get('timings_s') or {}).get('total'), '.0f')} s "
           f"({', '.join(f'{k} {v} s' for k, v in (meta.get('timings_s') or {}).items() if k != 'total')}).", "",
           "## Setup", "",
           f"- **Task** (`bench/quality_data.py`): {task.get('frames')} latent frames of {task.get('height')}×"
           f"{task.get('width')} latent pixels — **{tokens:,} tokens** after Wan's 1×2×2 patches — and "
           f"{task.get('min_shots')}–{task.get('max_shots')} shots of at least {task.get('min_shot_frames')} frames; "
           f"a cast of {task.get('cast')} recurring subjects (the protagonist opens and closes every video) whose "
           "per-video identity no caption carries.",
           f"- **Model**: ComfyUI's `WanModel`, dim {model.get('dim')}, {model.get('heads')} heads, "
           f"{model.get('layers')} blocks, FFN {model.get('ffn')}: **{model_params / 1e6:.2f} M parameters**, bf16 "
           "autocast on the GPU."
           + (f" Trained short, run long: the dense phase 1 trains on {train_task.get('frames')}-frame clips of the "
              f"same frame size ({train_task.get('min_shots')}–{train_task.get('max_shots')} shots), where dense "
              f"attention costs {(task.get('frames') / max(1, train_task.get('frames'))) ** 2:.0f}× less per video, and "
              f"phase 2 adapts it at the full {task.get('frames')} frames; the MoGA fine-tune runs at full length."
              if train_task else ""),
           f"- **Matched densities** (`bench/quality_tune.py`): for every target density "
           f"({', '.join(_f(t, '.2f') for t in rows.targets)}) each training-free mode's knob is tuned on the "
           "calibration prompts (never the evaluation's): M for the routed modes (searched at capacity "
           f"{cfg.get('capacity')}, the pack's default, then M ± 1 × capacity "
           f"{', '.join(str(c) for c in cfg.get('tune_capacities') or ()) or 'off'}; the second group as the mode "
           "says) and for random groups (balanced), top-p for the SVG2-style baseline. The table shows the density reached on the calibration prompts → on "
           "the evaluation videos (teacher-forced), and in brackets during sampling.",
           "- **Auto routers**: fitted per evaluation video on its own router inputs at the last dense step, as the "
           "pack's auto routers are (4,096 seeded rows per block, k-means, `Router.fit`); *calibrated* routers are "
           "k-means on other prompts (a router file).",
           f"- **Sampling**: {cfg.get('eval_batches', 0) * cfg.get('eval_batch', 0)} evaluation videos, "
           f"{cfg.get('sample_steps')} Euler steps; the training-free rows run their first {cfg.get('dense_steps')} "
           "steps dense (the node's dense warm-up); the fine-tuned model runs MoGA mean mode from the first step.",
           f"- **Identity** (cosine of a subject's per-video colour across shots; 1 = the same individual): all "
           f"pairs (their number in brackets: subjects the probe finds in two shots of a generated video); pairs ≥ "
           f"{cfg.get('far_shots')} shots apart; and first vs last appearance."
           + (f" *Teacher-forced*: the same score on each row's one-step estimate of the clean video, x̂0 = x_t − t·v̂ "
              f"at t = {', '.join(str(t) for t in cfg.get('identity_ts'))}, read at the subjects' true pixels (every "
              "captioned appearance counts, generated or not). The idea: at that noise a shot's own pixels carry "
              "little of its subject's colour, so agreeing across shots would take attention to the other shots; the "
              "local-only control row tests it (a measure on which the control scores as high as dense attention "
              "cannot see long-range attention, and is not used)."
              if cfg.get("identity_ts") else ""),
           "", "## Results", ""]
    out += table(data)
    out += ["", "Columns: *density* = query–key pairs attended / N² (1 − sparsity; the key set G ∪ W ∪ F, second "
            "group included), as tuned on the calibration prompts → measured teacher-forced on the evaluation videos "
            "(sampling's in brackets); *PSNR / cos* against the dense model's sample from the same prompt and noise; "
            "*attn err* = ‖O − O_dense‖ / ‖O_dense‖ per self-attention call; *ms/step* = median sparse sampling "
            "step of a batch (the auto routers' one fit per video, at the last dense step, is not in it; masked "
            "SVG2 is not SVG2's speed); *scores/N²* = scores the implementation computes (what a row costs).",
            "", "Training:", ""] + _training(data)
    checks = data.get("checks") or {}
    if checks:
        out += ["", f"Check: union mode with M = 1 against dense attention, one batch sampled: max |Δ| "
                f"{_f(checks.get('union_m1_vs_dense_max_abs'), '.3g')}, PSNR "
                f"{_f(checks.get('union_m1_vs_dense_psnr'), '.1f')} dB — two exact computations that differ only by "
                "kernel rounding (bf16 on the GPU), the floor of the PSNR column; dense sampled twice: max |Δ| "
                f"{_f(checks.get('dense_repeat_max_abs'), '.3g')}."]
    out += ["", "## Targets", "", "Each line is decided by the rows above (✓ met, ✗ not met, – not decided: a row "
            "missing, or no valid identity measure in this run):", ""]
    for c in target_checks(data):
        mark = "–" if c["passed"] is None else ("✓" if c["passed"] else "✗")
        where = f"at density {c['target']:.2f}: " if c["target"] is not None else ""
        out.append(f"- {mark} {where}{c['what']} ({c['detail']})")
    out += ["", "## Which mode to pick", ""]
    out += _pick_text(data)
    out += ["", "## Regenerate", "", "```",
            "bash bench/quality_gpu.sh --preset long     # one H200, ~11 min; writes quality.json, QUALITY.md, checkpoints",
            "# or in two calls of the device tool (10-minute limit), the dense checkpoint returned in parts:",
            "bash bench/quality_gpu_split.sh first       # on the GPU: CUDA smoke run + dense training",
            "bash bench/quality_gpu_split.sh join FILES  # here: join the checkpoint under .device/",
            "bash bench/quality_gpu_split.sh second --finetune-seconds 120   # on the GPU: every row",
            "python bench/quality.py --write-doc quality_out/quality.json --doc docs/QUALITY.md", "```", "",
            "This page: `bench/results/quality/run3_h200/quality.json` (the calls' logs beside it). The study's random "
            "groups are `moga_core.RandomGroups` (what the nodes use), seeded 1000 · seed + block.", "",
            "The CI slice of this study (`--preset long-tiny`, every row, on CPU) runs in "
            "`tests/host/test_quality_slice.py`.", ""]
    return "\n".join(out)


MODE_NAMES = {"union_auto": "auto routers (grouping `k-means on this video`)",
              "union_auto_g2": "auto routers + second group",
              "union_calibrated": "calibrated routers (a router file from MoGA Calibrate Router)",
              "random_groups": "random groups (grouping `random (balanced)`)"}


def _pick_text(data: dict) -> list[str]:
    rows = Rows(data)
    p = pick(data)
    idc, why = identity_measure(data)
    dense_id = rows.dense(idc) if idc else float("nan")
    text = [f"Identity: {why}. " if idc is None else f"Identity below is the {why}. "]
    if p["mode"] is None:
        text.append(f"**No training-free union mode kept cross-shot identity within {IDENTITY_SLACK} of dense "
                    f"attention ({_f(dense_id, '.3f')}) at the densities measured**: for multi-shot videos use dense "
                    "attention, or a higher density than these. ")
    else:
        t = p["density"]
        r = rows.matched[(p["mode"], t)]
        if idc is None:
            why_here = "the most faithful to the dense sample (PSNR) of the groupings the pack offers"
            wins = [u for u in rows.targets if p["per_target"][u]["best"] == p["mode"]]
            why_here += f", at {len(wins)} of {len(rows.targets)} target densities"
        else:
            why_here = (f"the lowest target density where a union mode keeps identity within {IDENTITY_SLACK} of "
                        f"dense ({_f(r.get(idc), '.3f')} vs {_f(dense_id, '.3f')}), and the best PSNR there")
        text.append(f"**Stock weights: {MODE_NAMES[p['mode']]}** (row `{p['mode']}`; at density {t:.2f}: "
                    f"{_knob(r)} at {_tokens(data):,} tokens): {why_here}"
                    + ("; it reaches the SVG2-style baseline's PSNR there" if p["per_target"][t]["beats_svg2"] else
                       "; it does not reach the SVG2-style baseline's PSNR at any density measured")
                    + f" ({_f(r.get('psnr'), '.2f')} vs {_f(rows.get('svg2', t, 'psnr'), '.2f')} dB at {t:.2f}, "
                    f"attention error {_f(r.get('rel_err'), '.3f')}). ")
    for t in rows.targets:
        b = p["per_target"][t]["best"]
        label = "best identity-keeping grouping" if idc else "best grouping"
        text.append(f"At {t:.2f}: " + (f"{label} `{b}` ({_f(rows.get(b, t, 'psnr'), '.2f')} dB)" if b else
                                       "no grouping keeps identity")
                    + "; " + ", ".join(f"`{m}` {_f(rows.get(m, t, 'psnr'), '.2f')}" for m in PACK_MODES
                                       if (m, t) in rows.matched and m != b)
                    + f"; SVG2-style {_f(rows.get('svg2', t, 'psnr'), '.2f')} dB"
                    + (f", identity {_f(rows.get('svg2', t, idc), '.3f')}" if idc else "") + ". ")
    comp = []
    for a, b, what in (("union_auto", "union_calibrated", "auto routers vs routers calibrated on other prompts"),
                       ("union_auto_g2", "union_auto", "the second group vs none (auto routers)"),
                       ("union_auto", "random_groups", "auto routers vs random groups")):
        both = [t for t in rows.targets if (a, t) in rows.matched and (b, t) in rows.matched]
        if not both:
            continue
        wins_p = sum(_ge(rows.get(a, t, "psnr"), rows.get(b, t, "psnr")) for t in both)
        if idc:
            wins_i = sum(_ge(rows.get(a, t, idc), rows.get(b, t, idc)) for t in both)
            comp.append(f"{what}: at least as good in PSNR at {wins_p} of {len(both)} densities, in identity at "
                        f"{wins_i} of {len(both)}")
        else:
            comp.append(f"{what}: at least as good in PSNR at {wins_p} of {len(both)} densities")
    if comp:
        text.append("Matched-density comparisons — " + "; ".join(comp) + ". ")
    g2 = [t for t in rows.targets if ("union_auto_g2", t) in rows.matched and ("union_auto", t) in rows.matched]
    if g2:
        text.append("The second group's cost at the same density: " + ", ".join(
            f"{_f(rows.get('union_auto_g2', t, 'compute'), '.2f')} vs {_f(rows.get('union_auto', t, 'compute'), '.2f')}"
            f" scores/N² at {t:.2f}" for t in g2) + " (the block kernel computes every key block any query of a block "
            "needs: with a second group per query, more of them). ")
    routed = [m for m in ROUTED_UNION if any((m, t) in rows.matched for t in rows.targets)]
    rand_wins = [t for t in rows.targets if ("random_groups", t) in rows.matched and routed and all(
        _ge(rows.get("random_groups", t, "psnr"), rows.get(m, t, "psnr")) for m in routed if (m, t) in rows.matched)]
    conc = concentration(data)
    if rand_wins:
        text.append(f"**Random groups beat every routed union mode in PSNR at {len(rand_wins)} of "
                    f"{len(rows.targets)} densities** (attention error "
                    + ", ".join(f"{_f(rows.get('random_groups', t, 'rel_err'), '.3f')} vs "
                                f"{_f(min(rows.get(m, t, 'rel_err') for m in routed if (m, t) in rows.matched), '.3f')}"
                                f" at {t:.2f}" for t in rand_wins)
                    + "): a balanced random partition makes each query's group an unbiased sample of the far keys, "
                    "which is close to full attention where attention is spread out; content groups keep the keys "
                    "most like the query and drop the rest, a biased sample. ")
    if conc:
        text.append("How concentrated this model's attention is: the SVG2-style baseline's kept clusters hold "
                    + ", ".join(f"{tp:.2f} of the estimated attention mass at density {d:.2f}" for d, tp in conc)
                    + " (uniform attention: equal numbers). ")
    if "local_only" in rows.by_key:
        lo = rows.by_key["local_only"]
        text.append(f"Control, local branches only (density {_f(lo.get('density'), '.3f')}): "
                    f"{_f(lo.get('psnr'), '.2f')} dB, attention error {_f(lo.get('rel_err'), '.3f')}, sampled "
                    f"identity {_f(lo.get('identity'), '.3f')} ({lo.get('identity_pairs', 0)} pairs; dense "
                    f"{_f(rows.dense('identity'), '.3f')}, {int(rows.dense('identity_pairs') or 0)} pairs), "
                    f"teacher-forced {_f(lo.get('identity_tf'), '.3f')} (dense {_f(rows.dense('identity_tf'), '.3f')})"
                    " — what the metrics read without long-range keys. ")
    if p["mode"] is not None:
        prm = p["params"]
        default = {"random_groups": "with no router connected, grouping `random (balanced)`",
                   "union_auto": "with no router connected, grouping `k-means on this video`",
                   "union_auto_g2": "with no router connected, grouping `k-means on this video`",
                   "union_calibrated": "a calibrated router file (no grouping default can give it)"}[p["mode"]]
        text.append(f"**Node defaults this supports**: {default}, combine `union`, `second_group` "
                    f"{'on' if prm.get('second_group') else 'off'}"
                    + (f", capacity {prm.get('capacity')}" if prm.get("capacity") else "")
                    + f"; M = {prm.get('num_groups')} reached density {p['density']:.2f} at this length (M sets the "
                    "density: a token's group holds about 1/M of the keys). ")
    if "moga_finetuned" in rows.by_key and idc is None:
        text.append(f"**Trained reference**: the MoGA fine-tune (mean mode, density {_f(rows.ft('density'), '.2f')}) "
                    f"has flow loss {_f(rows.ft('flow_loss'), '.4f')} vs dense {_f(rows.dense('flow_loss'), '.4f')} "
                    f"and {_f(rows.ft('psnr'), '.2f')} dB to the dense sample; its identity cannot be compared here. "
                    "Mean mode only for weights trained with it. ")
    if "moga_finetuned" in rows.by_key and idc is not None:
        ft_ok = _ge(rows.ft(idc), dense_id)
        text.append(f"**Trained reference**: the MoGA fine-tune (mean mode, density {_f(rows.ft('density'), '.2f')}) "
                    f"scores identity {_f(rows.ft(idc), '.3f')} "
                    + ("— at least dense attention's " if ft_ok else "— below dense attention's ")
                    + f"{_f(dense_id, '.3f')}; flow loss {_f(rows.ft('flow_loss'), '.4f')} vs dense "
                    f"{_f(rows.dense('flow_loss'), '.4f')}. Mean mode only for weights trained with it. ")
    text.append("This is a small model on synthetic data: how these modes rank on Wan/HunyuanVideo depends on how "
                "concentrated their attention is, which this model does not show; compare one short clip against a "
                "dense sample at the same seed before a long render.")
    return ["".join(text)]


def _tokens(data: dict) -> int:
    cfg = (data.get("meta") or {}).get("config", {})
    task, patch = cfg.get("task", {}), cfg.get("model", {}).get("patch", (1, 2, 2))
    return (task.get("frames", 0) // patch[0]) * (task.get("height", 0) // patch[1]) * (task.get("width", 0) // patch[2])
