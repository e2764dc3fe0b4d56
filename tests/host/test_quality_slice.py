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
    for name in ("tiny", "full"):  # the analytic count the doc quotes matches the real class
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
