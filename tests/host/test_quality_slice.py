"""The quality study (bench/quality.py) end to end on a tiny slice, with ComfyUI's real WanModel, on CPU.

Every row of docs/QUALITY.md runs: dense training, calibration, router distillation, the MoGA fine-tune, the probe,
sampling and every metric; then the checkpoint, router files and the doc writer. Assertions are about structure and
exact properties (dense row exact, union with one group = dense, densities ordered), not about the tiny model's
quality, and nothing about wall time.
"""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch

pytestmark = pytest.mark.host

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(PACK_ROOT, "bench")


def _has_sol_attn() -> bool:
    """Whether this ComfyUI's comfy-kitchen ships Sol-Attn (the eager reference the CPU slice runs)."""
    try:
        import comfy_kitchen.backends.eager.sol_attn  # noqa: F401
    except ImportError:
        return False
    return True


SOL_ATTN = _has_sol_attn()


@pytest.fixture(scope="module")
def study(comfyui, tmp_path_factory):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    import comfy.model_management as mm
    import quality

    out = str(tmp_path_factory.mktemp("quality"))
    before = mm.in_training
    results = quality.run_study(quality.preset("tiny"), out, "cpu", log=quality.Logger(quiet=True))
    assert mm.in_training == before, "the study must restore ComfyUI's in_training flag"
    return quality, results, out


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_every_row_ran_with_finite_numbers(study):
    quality, results, _ = study
    rows = {r["key"]: r for r in results["rows"]}
    assert list(rows) == [key for key, _, _ in quality.ROWS]
    blocks = quality.preset("tiny").model.layers
    for key, row in rows.items():
        assert "error" not in row, (key, row.get("error"))
        for col in ("density", "compute", "rel_err", "flow_loss", "ms_per_step", "cosine", "adherence"):
            assert finite(row[col]), (key, col, row[col])
        assert len(row["layer_rel_err"]) == blocks and all(finite(e) and e >= 0 for e in row["layer_rel_err"])
        assert 0 < row["density"] <= 1.0 + 1e-9
        assert 0 <= row["adherence"] <= 1
        if row["identity_pairs"]:
            assert -1 <= row["identity"] <= 1
        if key != "dense":
            assert finite(row["psnr"]) and row["psnr"] > 0 and -1 - 1e-6 <= row["cosine"] <= 1 + 1e-6


def test_dense_row_is_exact_and_union_with_one_group_is_dense(study):
    _, results, _ = study
    dense = results["rows"][0]
    assert dense["key"] == "dense"
    assert dense["psnr"] == math.inf and dense["cosine"] == 1.0
    assert dense["density"] == 1.0 and dense["compute"] == 1.0
    assert dense["layer_rel_err"] == [0.0] * len(dense["layer_rel_err"])
    checks = results["checks"]
    assert checks["union_m1_vs_dense_rel"] < 1e-5
    assert checks["dense_repeat_max_abs"] == 0.0


def test_sparse_rows_are_sparse_and_ordered(study):
    _, results, _ = study
    rows = {r["key"]: r for r in results["rows"]}
    for key in ("union_kmeans", "mean_kmeans", "union_distilled", "moga_finetuned", "local_only", "random_groups"):
        assert rows[key]["density"] < 1.0, key
        assert rows[key]["rel_err"] > 0, key
    # same routers, same key sets: union and mean with k-means routers attend to the same pairs
    assert rows["union_kmeans"]["density"] == pytest.approx(rows["mean_kmeans"]["density"])
    # the local branches are a subset of every routed key set
    for key in ("union_kmeans", "union_distilled", "random_groups"):
        assert rows["local_only"]["density"] < rows[key]["density"]
    assert rows["svg2"]["density"] <= 1.0


def test_training_distillation_and_references(study):
    quality, results, _ = study
    cfg = quality.preset("tiny")
    tr = results["training"]
    assert tr["dense"]["steps"] == cfg.dense.steps and finite(tr["dense"]["loss_last"])
    assert tr["finetune"]["steps"] == cfg.finetune.steps and finite(tr["finetune"]["aux_last"])
    assert tr["finetune"]["aux_last"] >= 0.1 - 1e-6  # α·M·ΣF·P ≥ α, equality at a uniform split
    assert len(tr["distill"]) == cfg.model.layers
    for rep in tr["distill"]:
        assert rep["final_error"] <= rep["init_error"]
        assert rep["final_density"] <= 1.05 * rep["init_density"] + 1e-9
    ref = results["reference"]
    assert finite(ref["trivial_flow_loss"]) and 0 <= ref["probe_pixel_accuracy"] <= 1
    assert ref["ground_truth"]["adherence"] > 0.5
    assert ref["ground_truth"]["identity_pairs"] > 0 and ref["ground_truth"]["identity"] > 0.5


def test_checkpoints_and_router_files(study, comfyui):
    quality, results, out = study
    import quality_model
    from moga_core.routers import RouterSet, split_checkpoint
    from safetensors.torch import load_file

    path = os.path.join(out, "quality_dense.safetensors")
    assert os.path.getsize(path) == results["training"]["dense_checkpoint_bytes"] <= 8 * 1024 * 1024
    sd = load_file(path)
    assert all(v.dtype == torch.float16 for v in sd.values())
    model, spec, meta = quality_model.load_checkpoint(path, "cpu")
    assert spec == quality.preset("tiny").model and meta["study"] == "tiny"
    assert set(model.state_dict()) == set(sd)  # ComfyUI's WanModel key layout, nothing else
    for name in ("tiny", "full", "long", "long-tiny"):  # the analytic count the doc quotes matches the real class
        spec_n = quality.preset(name).model
        assert spec_n.num_params == quality_model.param_count(quality_model.build_model(spec_n, 0, "cpu"))
    assert quality.preset("full").model.num_params * 2 <= 8 * 1024 * 1024  # the fp16 fixture fits 8 MiB

    ft = load_file(os.path.join(out, "quality_moga_ft.safetensors"))
    model_sd, routers = split_checkpoint(ft)
    assert set(model_sd) == set(sd) and sorted(routers) == list(range(spec.layers))
    for name in ("routers_kmeans", "routers_distilled"):
        rs = RouterSet.load(os.path.join(out, f"{name}.safetensors"))
        assert rs.num_blocks == spec.layers and rs.hidden_size == spec.dim and rs.combine == "union"
        assert rs.num_groups == quality.preset("tiny").num_groups


def test_results_json_and_the_doc(study, tmp_path):
    quality, results, out = study
    with open(os.path.join(out, "quality.json")) as f:
        data = json.load(f)
    assert data["rows"][0]["psnr"] == "inf"  # JSON has no infinity: written as a string, read back as inf
    doc = open(os.path.join(out, "QUALITY.md")).read()
    for _, label, _ in quality.ROWS:
        assert label in doc
    assert "not yet measured" not in doc and quality.DOC_COMMAND_GPU in doc and "∞" in doc
    assert "## Which mode to pick" in doc and "combine=\"union\"" in doc
    # the CLI writes the same page from the JSON
    target = tmp_path / "QUALITY.md"
    assert quality.main(["--write-doc", os.path.join(out, "quality.json"), "--doc", str(target)]) == 0
    assert target.read_text() == doc
    # and the placeholder page, before any GPU run
    placeholder = quality.render_doc(None)
    assert "not yet measured on a GPU" in placeholder and quality.DOC_COMMAND_GPU in placeholder
    table = quality.compact_table(data)
    assert all(key in table for key, _, _ in quality.ROWS)


# ---------------------------------------------------------------------------------------------------------------
# the study at length (preset `long`), on its CI slice `long-tiny`: short-clip training then full length, matched
# densities tuned on the calibration prompts, auto routers per video, every mode at every target, the doc


@pytest.fixture(scope="module")
def long_study(comfyui, tmp_path_factory):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    import quality

    out = str(tmp_path_factory.mktemp("quality_long"))
    cfg = quality.preset("long-tiny")
    results = quality.run_study(cfg, out, "cpu", log=quality.Logger(quiet=True))
    with open(os.path.join(out, "quality.json")) as f:
        data = json.load(f)
    return quality, cfg, results, data, out


def test_long_preset_is_the_study_at_length():
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    import quality

    long, full = quality.preset("long"), quality.preset("full")
    t, p = long.task, long.model.patch
    tokens = (t.frames // p[0]) * (t.height // p[1]) * (t.width // p[2])
    assert t.frames >= 96 and t.min_shots >= 6 and tokens >= 35_000
    assert long.model.num_params > full.model.num_params and long.model.layers > full.model.layers
    assert long.model.dim > full.model.dim and long.model.heads > full.model.heads
    assert long.targets == (0.15, 0.25, 0.35)
    # trained short, run long: same world and frame size, so the model meets the evaluation's vocabulary
    tt = long.train_task
    assert (tt.height, tt.width, tt.world_seed, tt.num_subjects, tt.text_dim) == \
        (t.height, t.width, t.world_seed, t.num_subjects, t.text_dim) and tt.frames < t.frames
    assert long.dense_long is not None and 1 <= long.dense_steps < long.sample_steps
    for cfg in (long, quality.preset("long-tiny")):  # auto routers are tuned where sampling fits them
        assert cfg.tune_auto_t == pytest.approx(quality.auto_fit_t(cfg), abs=1e-3)
        assert cfg.tune_auto_t in cfg.calib_ts


def test_auto_router_constants_are_the_nodes(moga):
    from importlib import import_module

    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    import quality_model

    node = import_module(f"{moga.name}.nodes.auto_routers")
    assert (quality_model.AUTO_TOKENS_PER_BLOCK, quality_model.AUTO_SEED, quality_model.AUTO_ITERS) == \
        (node.AUTO_TOKENS_PER_BLOCK, node.AUTO_SEED, node.AUTO_ITERS)


def test_long_slice_every_row_at_every_target(long_study):
    quality, cfg, results, data, _ = long_study
    keys = [r["key"] for r in results["rows"]]
    want = ["dense", "moga_finetuned"] + [quality.matched_key(m, t) for t in cfg.targets for m in cfg.matched_modes]
    sol = [f"sol_topk{k:g}" if k else f"sol_tau{t:g}" for t, k in cfg.sol_rows]
    assert len(sol) == 5 and keys == want + sol + ["local_only"]  # the control last (a deadline drops it first)
    for row in results["rows"]:
        if row["key"].startswith("sol_") and not SOL_ATTN:
            # a ComfyUI whose comfy-kitchen predates Sol-Attn (v0.27 pins 0.2.16): the row says so, the rest ran
            assert "has no Sol-Attn" in row["error"], row
            continue
        assert "error" not in row, (row["key"], row.get("error"))
        for col in ("density", "density_sampling", "compute", "rel_err", "flow_loss", "cosine", "adherence",
                    "ms_per_step"):
            assert finite(row[col]), (row["key"], col, row[col])
        for col, pairs in (("identity", "identity_pairs"), ("identity_far", "identity_far_pairs"),
                           ("identity_span", "identity_span_pairs")):
            assert row[pairs] > 0 and -1 <= row[col] <= 1, (row["key"], col)
        assert row["identity_far_shots"] == cfg.far_shots
        if row["key"] != "dense":
            assert finite(row["psnr"]) and row["rel_err"] > 0 and row["density"] < 1.0
    gt = results["reference"]["ground_truth"]
    assert gt["identity_span_pairs"] > 0 and gt["identity_span"] > 0.5
    tr = results["training"]
    assert tr["dense"]["steps"] == cfg.dense.steps and tr["dense_long"]["steps"] == cfg.dense_long.steps
    assert tr["finetune"]["steps"] == cfg.finetune.steps
    assert results["checks"]["union_m1_vs_dense_rel"] < 1e-5
    assert results["checks"]["union_m1_vs_dense_psnr"] > 100  # float32 on the CPU: rounding only


def test_long_slice_teacher_forced_identity_and_local_control(long_study):
    """Every row reads the teacher-forced identity at the same (true) pixels; the local-only control attends a
    subset of every union row's keys (union = its group ∪ the same local branches)."""
    _, cfg, results, _, _ = long_study
    rows = {r["key"]: r for r in results["rows"] if "error" not in r}  # (Sol rows on a comfy-kitchen without it)
    pairs = {r["identity_tf_pairs"] for r in rows.values()}
    assert len(pairs) == 1 and pairs.pop() > 0, "the true pixels do not depend on the attention mode"
    for r in rows.values():
        assert -1 <= r["identity_tf"] <= 1 and r["identity_tf_t"] == cfg.identity_ts[0], r["key"]
        assert set(r["identity_tf_by_t"]) == {f"{t:g}" for t in cfg.identity_ts}
    local = rows["local_only"]
    assert local["mode"] == "local_only" and 0 < local["density"] < 1
    for r in results["rows"]:
        if r.get("mode") in ("union_auto", "union_auto_g2", "union_calibrated", "random_groups"):
            assert local["density"] <= r["density"] + 1e-9, r["key"]


def test_long_slice_sol_rows_report_their_density(long_study):
    """Core's Sol-Attn rows (the eager reference on the CPU): each at its fixed setting, sparse, with the density
    of the blocks it attends exactly plus its pooled terms, and the doc's table names their knobs."""
    if not SOL_ATTN:
        pytest.skip("this ComfyUI's comfy-kitchen has no Sol-Attn (the rows' errors are checked above)")
    _, cfg, results, data, _ = long_study
    sol = [r for r in results["rows"] if r.get("mode") == "sol"]
    assert [(r["params"]["sol_tau"], r["params"]["sol_topk"]) for r in sol] == [tuple(map(float, p))
                                                                                for p in cfg.sol_rows]
    for r in sol:
        assert 0 < r["density"] < 1 and r["rel_err"] > 0 and finite(r["psnr"]), r["key"]
    import quality_doc

    table = "\n".join(quality_doc.table(data))
    for knob in ("tau 1.3", "top-k 0.1"):
        assert f"Sol-Attn (ComfyUI core's Model Sparse Attention), {knob} | – | {knob} |" in table


def test_long_slice_densities_are_matched(long_study):
    quality, cfg, results, _, _ = long_study
    import quality_tune

    tuned = [quality_tune.Tuned(**t) for t in results["tuning"]]
    assert {(t.mode, t.target) for t in tuned} == {(m, t) for m in cfg.matched_modes for t in cfg.targets}
    for t in tuned:
        assert quality_tune.closest_is_chosen(t), t
    for row in (r for r in results["rows"][2:] if "target_density" in r):
        # on the evaluation videos (other prompts than the tuning's), near the target: the tiny slice's tolerance
        assert abs(row["density"] - row["target_density"]) < 0.06, (row["key"], row["density"])
        p = row["params"]
        if row["mode"] != "svg2":
            assert p["second_group"] == (row["mode"] == "union_auto_g2")
            if row["mode"] == "random_groups":
                assert p["capacity"] is None
            else:
                assert p["capacity"] in cfg.tune_capacities
    # a higher target: a denser choice on the calibration prompts; random groups: fewer of them
    for mode in cfg.matched_modes:
        ds = [t.density for t in tuned if t.mode == mode]
        assert ds == sorted(ds) and ds[0] < ds[-1], (mode, ds)
    ms = [r["params"]["num_groups"] for r in results["rows"] if r.get("mode") == "random_groups"]
    assert ms == sorted(ms, reverse=True) and ms[0] > ms[-1], ms


def test_auto_routers_are_fitted_per_video_at_the_last_dense_step(long_study, comfyui):
    quality, cfg, _, _, out = long_study
    import quality_model
    from moga_core import MogaConfig

    model, spec, _ = quality_model.load_checkpoint(os.path.join(out, "quality_dense.safetensors"), "cpu")
    ctrl = quality_model.AttentionController(model)
    task = quality.SyntheticMultiShot(cfg.task)
    batch = task.batch(5, 2)
    ctrl.set(layout=quality_model.layout_for(task.spec, batch.shots))
    noise = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(0))
    mode = quality_model.AttentionMode("moga", MogaConfig(num_groups=3, window=cfg.window, temporal_group=2,
                                                          neighbor_frames=1, capacity=1.25), auto=True)
    ctrl.set(mode)
    with pytest.raises(ValueError, match="dense_steps"):
        quality_model.sample(model, ctrl, batch.context, noise, 3, 1.0, False, dense_steps=0)
    quality_model.sample(model, ctrl, batch.context, noise, 3, 1.0, False, dense_steps=2)
    assert len(mode.routers) == spec.layers and all(len(r) == 2 for r in mode.routers)  # per block, per video
    assert not torch.equal(mode.routers[0][0].weight, mode.routers[0][1].weight)  # each video its own
    # only the sparse step is recorded; the dense warm-up is not
    assert all(len(v) == 1 for v in ctrl.keyset.values()) and all(d < 1 for v in ctrl.keyset.values() for d in v)
    ctrl.remove()


def test_long_slice_doc_is_written_from_the_numbers(long_study, tmp_path):
    quality, cfg, results, data, out = long_study
    import copy

    import quality_doc

    doc = open(os.path.join(out, "QUALITY.md")).read()
    assert doc == quality.render_doc(data)
    assert data["meta"]["device"] in doc and "## Which mode to pick" in doc and "## Targets" in doc
    for row in data["rows"]:
        assert row["label"] in doc
    assert "384 tokens" in doc and quality_doc.IDENTITY_SLACK == 0.01
    target = tmp_path / "QUALITY.md"
    assert quality.main(["--write-doc", os.path.join(out, "quality.json"), "--doc", str(target)]) == 0
    assert target.read_text() == doc
    # which identity decides: the sampled one when dense attention's samples give enough pairs, else the teacher-
    # forced one (read at the true pixels) — and only a measure on which the local-only control scores below dense
    def with_measure(col, pairs, control_sees_it=True):
        rigged = copy.deepcopy(data)
        rows = {r["key"]: r for r in rigged["rows"]}
        rows["dense"]["identity_pairs"] = pairs
        rows["local_only"][col] = rows["dense"][col] - (0.5 if control_sees_it else 0.0)
        return rigged

    assert quality_doc.identity_measure(with_measure("identity", quality_doc.MIN_IDENTITY_PAIRS))[0] == "identity"
    assert quality_doc.identity_measure(with_measure("identity_tf", quality_doc.MIN_IDENTITY_PAIRS - 1))[0] == \
        "identity_tf"
    for col, pairs in (("identity", 100), ("identity_tf", 0)):
        blind = with_measure(col, pairs, control_sees_it=False)
        idc, why = quality_doc.identity_measure(blind)
        assert idc is None and "not decidable" in why and "local-only control" in why
        # without a valid measure: identity targets are not decided, the pick goes by PSNR among the pack's groupings
        assert all(c["passed"] is None for c in quality_doc.target_checks(blind) if "identity" in c["what"])
        assert quality_doc.pick(blind)["mode"] in quality_doc.PACK_MODES
    # the pick follows the numbers: break auto routers' identity everywhere, lift the calibrated routers' PSNR
    for col, pairs in (("identity", 100), ("identity_tf", 0)):
        rigged = with_measure(col, pairs)
        assert quality_doc.identity_measure(rigged)[0] == col
        dense_id = quality_doc.Rows(rigged).dense(col)
        for r in rigged["rows"]:
            if r.get("mode") in ("union_auto", "union_auto_g2", "random_groups"):
                r[col] = dense_id - 0.5
            if r.get("mode") == "union_calibrated":
                r[col], r["psnr"] = dense_id, 500.0
        p = quality_doc.pick(rigged)
        assert p["mode"] == "union_calibrated" and p["density"] == min(cfg.targets)
        text = quality.render_doc(rigged)
        assert "**Stock weights: calibrated routers" in text and "a calibrated router file" in text
        assert f"✗ at density 0.15: union_auto {col} ≥ dense − 0.01" in text
        # no grouping keeps identity: the page says so instead of recommending one
        for r in rigged["rows"]:
            if r.get("mode") in quality_doc.PACK_MODES:
                r[col] = dense_id - 0.5
        assert quality_doc.pick(rigged)["mode"] is None
        assert "No training-free union mode kept cross-shot identity" in quality.render_doc(rigged)
    # random groups ahead of every routed union row in PSNR: the page says so
    rigged = copy.deepcopy(data)
    for r in rigged["rows"]:
        r["psnr"] = 600.0 if r.get("mode") == "random_groups" else (r.get("psnr") if r["key"] == "dense" else 50.0)
    assert "**Random groups beat every routed union mode in PSNR at 3 of 3 densities**" in quality.render_doc(rigged)
    for r in rigged["rows"]:
        if r.get("mode") == "random_groups":
            r["psnr"] = 10.0
    assert "Random groups beat" not in quality.render_doc(rigged)


def test_stop_after_dense_then_resume_keeps_the_training_report(comfyui, tmp_path):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    import quality

    cfg = quality.preset("long-tiny")
    out = str(tmp_path)
    first = quality.run_study(cfg, out, "cpu", log=quality.Logger(quiet=True), stop_after="dense")
    assert not first["rows"] and os.path.exists(os.path.join(out, "quality_dense.safetensors"))
    prior = quality._prior_training(os.path.join(out, "quality_dense.safetensors"))
    assert prior["training"]["dense"]["steps"] == cfg.dense.steps
    assert prior["training"]["dense_long"]["steps"] == cfg.dense_long.steps
