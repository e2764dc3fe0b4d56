"""Write tests/web/fixtures/shot_plan_cases.json: shot texts and what nodes/shots.py makes of them.

The JavaScript twin (web/shot_plan.js) is tested against these cases (tests/web/shot_plan.test.mjs), so both
implementations are checked against the same numbers. tests/web/test_shot_plan.py fails when this file is stale:
after changing nodes/shots.py, run ``python3 tests/web/make_shot_fixture.py`` and mirror the change in the JS.

Needs nothing but the standard library (nodes/shots.py is loaded by path, without ComfyUI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURE = os.path.join(HERE, "fixtures", "shot_plan_cases.json")
JSON_ERROR_PREFIX = "shots look like JSON but do not parse:"


def load_shots_module():
    spec = importlib.util.spec_from_file_location("_moga_shots_for_fixture", os.path.join(PACK_ROOT, "nodes",
                                                                                          "shots.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


EXAMPLE = ("3s | A red-haired woman in a green coat walks into a rainy cafe, wide shot\n"
           "2s | Close-up of her face as she smiles at the barista\n"
           "3s | The barista, an old man with a grey beard, hands her a cup of coffee")

HAND_CASES: list[tuple[str, str, float]] = [
    ("node default, Wan", EXAMPLE, 16.0),
    ("node default, HunyuanVideo", EXAMPLE, 24.0),
    ("docstring example", "3s   | A woman walks into a cafe, wide shot\n2.5s | Close-up: she smiles\n"
                          "33f  | The barista hands her a cup", 16.0),
    ("units and separators", "3 sec: one\n2.5 seconds | two\n4 | three\n17 frames | four\n20 FRAME: five\n"
                             "1.25S | six", 16.0),
    ("comments and blank lines", "# opening\n\n3s | a cat on a roof   # wide\n   # note\n\n2s | the cat jumps\n\n",
     16.0),
    ("windows line ends", "3s | one\r\n2s | two\r\n", 16.0),
    ("other python line breaks", "3s | one\x0b2s | two\x1c1s | three\u20281s | four", 16.0),
    ("python whitespace", "\u30003s\u00a0|\x1fone\x85\n2s\u2003| two", 16.0),
    ("unicode digits", "\u0663s | arabic-indic three\n\uff12.\uff15s | fullwidth two and a half", 16.0),
    ("error: a fullwidth point is no point", "\uff12\uff0e\uff15s | two and a half?", 16.0),
    ("ties round to even (4.5 -> 4, 7.5 -> 8)", "1.5s | a\n2.5s | b\n3.5s | c", 3.0),
    ("cuts already clean", "49f | a\n32f | b\n40f | c", 16.0),
    ("4k+1 total", "33f | a\n48f | b", 16.0),
    ("all cuts move", "3.1s | a\n2.2s | b\n1.3s | c\n0.7s | d", 16.0),
    ("ntsc fps", "2s | a\n2s | b\n3.5s | c", 23.976),
    ("29.97 fps", "1.001s | a\n2.002s | b", 29.97),
    ("half-way .2f (17 frames at 8 fps = 2.125 s)", "17f | a single shot", 8.0),
    ("long prompt cut at 60 characters", "2s | " + "word " * 30 + "\n2s | short", 16.0),
    ("non-ascii prompt", "2s | Café au lait, 東京の夜, emoji \U0001F600 " + "é" * 70 + "\n2s | b", 16.0),
    ("pipes and colons inside the prompt", "2s | a: b | c\n2s:x|y", 16.0),
    ("error: the last shot ends inside the first latent frame of its cut", "8f | a\n1f | b", 16.0),
    ("dropped frames note", "10f | a\n10f | b\n10f | c", 16.0),
    ("one shot", "5s | only", 16.0),
    ("fps 1", "9s | a\n8 | b", 1.0),
    ("fps 120", "0.5s | a\n0.25s | b", 120.0),
    ("big", "\n".join(f"{(i % 7) + 1}.{i % 10}s | shot number {i}" for i in range(40)), 24.0),
    # errors
    ("error: empty", "", 16.0),
    ("error: only comments", "# nothing\n   \n  # here", 16.0),
    ("error: no separator", "3s a cat", 16.0),
    ("error: malformed line quoted", "2s | ok\nit's \"quoted\" \\ text", 16.0),
    ("error: malformed with single quote", "it's wrong", 16.0),
    ("error: malformed with tab", "\tx\ty\t# c", 16.0),
    ("error: empty prompt", "3s | \n2s | b", 16.0),
    ("a '#' after the duration belongs to the prompt", "3s | # all prompt", 16.0),
    ("a '#' inside a prompt belongs to it", "3s | a sign reading #1 on the door\n  # a comment line\n2s | b", 16.0),
    ("error: a shot longer than a video may be", '[{"prompt": "a", "seconds": 1e12}]', 16.0),
    ("error: frames past the limit", "100001f | a", 16.0),
    ("error: shots adding up past the limit", "60000f | a\n60000f | b", 16.0),
    ("error: zero seconds", "0s | a", 16.0),
    ("error: zero frames", "0.0f | a", 16.0),
    ("error: fractional frames", "33.5f | a", 16.0),
    ("error: less than a frame", "0.03125s | a", 16.0),
    ("error: less than a frame, tie to zero", "0.5s | a", 1.0),
    ("error: too many shots", "1f | a\n1f | b\n1f | c", 16.0),
    ("error: a shot too short", "16f | a\n2f | b\n16f | c", 16.0),
    ("error: last cut past the end", "8f | a\n2f | b", 16.0),
    ("error: fps zero", "3s | a", 0.0),
    ("error: fps negative", "3s | a", -16.0),
    ("error: negative duration is malformed", "-3s | a", 16.0),
    ("error: exponent is malformed", "1e2f | a", 16.0),
    # JSON
    ("json seconds and frames", '[{"prompt": "a", "seconds": 3}, {"prompt": "b", "frames": 33}]', 16.0),
    ("json frames win over seconds", '  [{"prompt": " a ", "seconds": 3, "frames": 20}, {"prompt": "b", "seconds": 2.5}]',
     24.0),
    ("json durations as strings", '[{"prompt": "a", "seconds": "2.5"}, {"prompt": "b", "frames": " 17 "}]', 16.0),
    ("json non-string prompt", '[{"prompt": 12, "seconds": 2}, {"prompt": true, "frames": 20}]', 16.0),
    ("error: json bad syntax", '[{"prompt": "a", "seconds": 3},]', 16.0),
    ("error: json item not an object", '[{"prompt": "a", "seconds": 3}, "b"]', 16.0),
    ("error: json no prompt", '[{"seconds": 3}]', 16.0),
    ("error: json no duration", '[{"prompt": "a"}]', 16.0),
    ("error: json null duration", '[{"prompt": "a", "seconds": null}]', 16.0),
    ("error: json word duration", '[{"prompt": "a", "seconds": "three"}]', 16.0),
    ("error: json list duration", '[{"prompt": "a", "frames": [1]}]', 16.0),
    ("error: json fractional frames", '[{"prompt": "a", "frames": 12.5}]', 16.0),
    ("error: json negative", '[{"prompt": "a", "seconds": -2}]', 16.0),
    ("error: json empty list", "[]", 16.0),
    ("error: json empty prompt", '[{"prompt": "  ", "seconds": 2}]', 16.0),
]


def random_cases(count: int = 160, seed: int = 4) -> list[tuple[str, str, float]]:
    rng = random.Random(seed)
    fps_choices = [8.0, 12.0, 15.0, 16.0, 23.976, 24.0, 25.0, 29.97, 30.0, 50.0, 60.0]
    cases = []
    for n in range(count):
        fps = rng.choice(fps_choices)
        lines = []
        for i in range(rng.randint(1, 8)):
            kind = rng.random()
            if kind < 0.45:
                dur = f"{rng.randint(0, 6)}.{rng.randint(0, 99):02d}".rstrip("0").rstrip(".") or "1"
                if float(dur) == 0:
                    dur = "0.5"
                dur += rng.choice(["s", " s", "", "sec", " seconds"])
            elif kind < 0.8:
                dur = f"{rng.randint(1, 120)}" + rng.choice(["f", " f", "frames", " frame"])
            else:
                dur = f"{rng.randint(1, 9)}" + rng.choice(["s", ""])
            lines.append(f"{dur} {rng.choice(['|', ':', ' |'])} shot {i + 1} of case {n}")
            if rng.random() < 0.1:
                lines.append("# a comment")
        cases.append((f"random {n}", "\n".join(lines), fps))
    return cases


def run_case(shots, name: str, text: str, fps: float) -> dict:
    case = {"name": name, "text": text, "fps": fps}
    try:
        specs = shots.parse_shots(text, fps)
        plan = shots.plan_shots(specs, fps)
    except ValueError as exc:
        message = str(exc)
        if message.startswith(JSON_ERROR_PREFIX):
            case.update(ok=False, error=JSON_ERROR_PREFIX, error_match="prefix")  # the parser's own words differ
        else:
            case.update(ok=False, error=message, error_match="exact")
        return case
    case.update(ok=True, specs=[{"prompt": s.prompt, "frames": s.frames, "seconds": s.seconds} for s in specs],
                plan=plan.to_json(), describe=plan.describe(), latent_ranges=[list(r) for r in plan.latent_ranges()])
    return case


def build_cases() -> dict:
    shots = load_shots_module()
    cases = [run_case(shots, *c) for c in HAND_CASES + random_cases()]
    return {"about": "generated by tests/web/make_shot_fixture.py from nodes/shots.py; do not edit by hand",
            "temporal_stride": shots.TEMPORAL_STRIDE, "cases": cases}


def render(data: dict) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    with open(FIXTURE, "w", encoding="utf-8") as f:
        f.write(render(build_cases()))
    print(f"wrote {FIXTURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
