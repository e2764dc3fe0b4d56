"""bench/server/run_workflows.py's checks of a run's MoGA summaries (no server needed: the parsing and the rules)."""

import json
import os
import sys

import pytest

SERVER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench", "server")
if SERVER not in sys.path:
    sys.path.insert(0, SERVER)

import run_workflows as rw  # noqa: E402

SPARSE_LINE = ("MoGA: 22 sparse / 10 dense attention calls; dense: outside start/end percent 8, timed dense for the "
               "speed check 2; density 0.320; speed check at 32,760 tokens: sparse 19.78 ms vs dense 21.40 ms per "
               "call, so sparse")
DENSE_LINE = ("MoGA: 4 sparse / 28 dense attention calls; dense: measured slower than dense at this length 18, "
              "outside start/end percent 8, timed dense for the speed check 2; speed check at 32,760 tokens: sparse "
              "23.74 ms vs dense 20.92 ms per call, so dense")


def row_from(lines, patches=None):
    summaries = rw.moga_summaries("\n".join(lines))
    reasons = {}
    for s in summaries:
        for reason, count in s["dense_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    return {"moga_patches": len(lines) if patches is None else patches, "moga_summaries": [s["line"] for s in summaries],
            "moga_sparse_per_patch": [s["sparse"] for s in summaries], "dense_reasons": reasons}


def test_summaries_parse_with_their_reasons_and_speed_check():
    (s,) = rw.moga_summaries("noise\n" + DENSE_LINE + "\nmore")
    assert (s["sparse"], s["dense"]) == (4, 28)
    assert s["dense_reasons"] == {"measured slower than dense at this length": 18, "outside start/end percent": 8,
                                  "timed dense for the speed check": 2}
    assert rw.speed_checks(row_from([SPARSE_LINE, DENSE_LINE])) == "19.78 vs 21.40 → sparse; 23.74 vs 20.92 → dense"


def test_shipped_settings_allow_the_warm_up_and_the_speed_check_only():
    assert rw.check_moga(row_from([SPARSE_LINE, DENSE_LINE]), shipped=True) == []
    # the tests' settings (sparse from the first step, no guard): any dense call is a problem
    problems = rw.check_moga(row_from([SPARSE_LINE]), shipped=False)
    assert len(problems) == 1 and problems[0].startswith("dense calls: outside start/end percent 8")
    other = SPARSE_LINE.replace("outside start/end percent 8", "token layout not understood 8")
    assert rw.check_moga(row_from([other]), shipped=True) == ["dense calls: token layout not understood 8"]
    assert rw.check_moga(row_from([SPARSE_LINE], patches=2), shipped=True) == [
        "1 MoGA run summaries in the log for 2 patches"]
    none_sparse = "MoGA: 0 sparse / 30 dense attention calls; dense: outside start/end percent 30"
    assert rw.check_moga(row_from([none_sparse]), shipped=True) == ["a patch ran no sparse attention call"]


def test_recheck_applies_the_current_rules_to_an_old_results_file(tmp_path, capsys):
    row = dict(row_from([DENSE_LINE]), workflow="moga_load_saved_router.json", **{"pass": "on"}, completed=True,
               outputs_ok=True, moga_ok=False, sparse_calls=4, dense_calls=28,
               problems=["dense calls: measured slower than dense at this length 18", "video: 5 frames, expected 9"])
    del row["moga_sparse_per_patch"]  # written before the field existed
    result = {"meta": {"profile": "gpu", "comfyui_version": "0.19.3", "python": "3.12", "sizes": {"moga": "shipped"},
                       "passes": []}, "rows": [row]}
    src = tmp_path / "old.json"
    src.write_text(json.dumps(result))
    assert rw.recheck(str(src), str(tmp_path / "new")) == 0
    new = json.loads((tmp_path / "new" / "results.json").read_text())["rows"][0]
    assert new["moga_ok"] is True and new["problems"] == ["video: 5 frames, expected 9"]  # other problems kept
    assert "23.74 vs 20.92 → dense" in (tmp_path / "new" / "results.md").read_text()
    capsys.readouterr()
