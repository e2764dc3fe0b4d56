"""Shot plans: durations -> frames -> latent frames, cut positions, and which caption tokens each shot owns.

The text form, which the web timeline writes and people type (one shot per line; a line whose first non-space
character is ``#`` is a comment, a ``#`` anywhere else belongs to the prompt):

    3s   | A woman walks into a cafe, wide shot
    2.5s | Close-up: she smiles
    33f  | The barista hands her a cup

A duration is seconds (``3s``, ``2.5 s``, or a bare number) or frames (``33f``). A JSON list works too:
``[{"prompt": "...", "seconds": 3}, {"prompt": "...", "frames": 33}]``.

Frame arithmetic (Wan and HunyuanVideo: the VAE keeps frame 0 and packs 4 frames per latent frame after it):
latent frames = (frames − 1) // 4 + 1, and latent frame L ≥ 1 holds pixel frames 4L−3 … 4L. A shot starting at pixel
frame s therefore starts cleanly only when s = 4L − 3; otherwise its cut moves to the nearest latent boundary,
L = (s + 5) // 4 (ties go later), and the plan says so. The web extension mirrors these rules (web/shot_plan.js).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace

TEMPORAL_STRIDE = 4
# The longest plan: the long-video sampler's own length limit (100,000 frames, 1 h 44 min at 16 fps). Beyond it
# the latent alone outgrows any GPU, and a typo such as "1e12" seconds must not turn into a trillion-frame video.
MAX_FRAMES = 100_000
_LINE = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>s|sec|secs|seconds?|f|frames?)?\s*[|:]\s*(?P<prompt>.*)$",
                   re.IGNORECASE)


@dataclass(frozen=True)
class ShotSpec:
    prompt: str
    frames: int
    seconds: float | None = None  # as typed, when given in seconds


@dataclass
class ShotPlan:
    """A multi-shot video's structure. Frame numbers are pixel frames; ``latent_starts`` are latent frames."""

    shots: tuple[ShotSpec, ...]
    fps: float
    frame_starts: tuple[int, ...]
    latent_starts: tuple[int, ...]
    num_latent_frames: int
    num_frames: int  # what the latent decodes to: 4·(T − 1) + 1
    notes: tuple[str, ...] = ()
    # caption tokens in the conditioning: the global caption's range and one range per shot (set by the prompt node)
    global_tokens: tuple[int, int] | None = None
    shot_tokens: tuple[tuple[int, int], ...] | None = None
    text_tokens: int = 0

    def __deepcopy__(self, memo):
        return self  # immutable in practice; ComfyUI's option merges may deep-copy

    @property
    def num_shots(self) -> int:
        return len(self.shots)

    def shot_of_latent_frame(self, t: int) -> int:
        shot = 0
        for i, start in enumerate(self.latent_starts):
            if t >= start:
                shot = i
        return shot

    def caption_ranges(self, shot: int | None = None) -> list[tuple[int, int]]:
        """Token ranges (start, end) in the conditioning of the global caption and of ``shot``'s (every shot's when
        None), in that order; empty when the plan carries no caption ranges."""
        if self.shot_tokens is None:
            return []
        own = list(self.shot_tokens) if shot is None else [self.shot_tokens[shot]]
        return ([self.global_tokens] if self.global_tokens else []) + own

    def latent_ranges(self) -> list[tuple[int, int]]:
        ends = self.latent_starts[1:] + (self.num_latent_frames,)
        return list(zip(self.latent_starts, ends))

    def describe(self) -> str:
        lines = [f"{self.num_shots} shots, {self.num_frames} frames at {self.fps:g} fps "
                 f"({self.num_frames / self.fps:.2f} s), {self.num_latent_frames} latent frames"]
        for i, ((a, b), spec) in enumerate(zip(self.latent_ranges(), self.shots)):
            first = 0 if a == 0 else TEMPORAL_STRIDE * a - 3
            last = TEMPORAL_STRIDE * (b - 1)
            lines.append(f"shot {i + 1}: latent frames {a}-{b - 1} (frames {first}-{last}): {spec.prompt[:60]}")
        lines += list(self.notes)
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"fps": self.fps, "num_frames": self.num_frames, "num_latent_frames": self.num_latent_frames,
                "frame_starts": list(self.frame_starts), "latent_starts": list(self.latent_starts),
                "shots": [{"prompt": s.prompt, "frames": s.frames} for s in self.shots], "notes": list(self.notes)}


def parse_shots(text: str, fps: float) -> list[ShotSpec]:
    """The widget's text (lines or JSON) -> shot specs, with a clear error for anything malformed."""
    if not isinstance(text, str):
        raise ValueError(f"shots must be text, got {type(text).__name__}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return [_spec(index, prompt, value, unit, fps) for index, prompt, value, unit in _shot_items(text)]


def check_shots_text(text: str, fps: float | None = None) -> None:
    """Raise the `ValueError` that `parse_shots` and `plan_shots` would raise for ``text`` at ``fps``; with ``fps``
    None (not known yet, e.g. a linked input) only what holds at every frame rate: the syntax, the prompts and the
    durations as numbers (a duration in seconds becomes frames only with the frame rate)."""
    if fps is not None:
        plan_shots(parse_shots(text, fps), fps)
        return
    for index, prompt, value, unit in _shot_items(text):
        _duration(index, prompt, value, unit)


def _shot_items(text: str) -> list[tuple[int, str, object, str]]:
    """(shot number, prompt, duration as given, unit "s" or "f") per shot; syntax errors raise."""
    if not isinstance(text, str):
        raise ValueError(f"shots must be text, got {type(text).__name__}")
    stripped = text.strip()
    items: list[tuple[int, str, object, str]] = []
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"shots look like JSON but do not parse: {exc}") from None
        for i, item in enumerate(parsed, 1):
            if not isinstance(item, dict) or "prompt" not in item:
                raise ValueError(f"shot {i}: expected an object with 'prompt' and 'seconds' or 'frames', got {item!r}")
            if "frames" in item:
                items.append((i, str(item["prompt"]), item["frames"], "f"))
            elif "seconds" in item:
                items.append((i, str(item["prompt"]), item["seconds"], "s"))
            else:
                raise ValueError(f"shot {i}: give its duration as 'seconds' or 'frames'")
    else:
        number = 0
        for line_no, raw in enumerate(text.splitlines(), 1):
            line = "" if raw.lstrip().startswith("#") else raw
            if not line.strip():
                continue
            number += 1
            m = _LINE.match(line)
            if not m:
                raise ValueError(f"line {line_no}: expected 'duration | prompt' such as '3s | a cat on a roof' or "
                                 f"'33f | ...', got {raw.strip()!r}")
            unit = (m.group("unit") or "s").lower()[0]
            items.append((number, m.group("prompt"), float(m.group("num")), unit))
    if not items:
        raise ValueError("no shots: write one shot per line as 'duration | prompt', e.g. '3s | a cat on a roof'")
    return items


def _duration(index: int, prompt: str, value, unit: str) -> tuple[str, float]:
    """(prompt, duration) checked as far as no frame rate is needed."""
    prompt = prompt.strip()
    if not prompt:
        raise ValueError(f"shot {index}: the prompt is empty")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"shot {index}: duration {value!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"shot {index}: duration must be positive, got {value:g}{unit}")
    if unit == "f":
        if value > MAX_FRAMES:
            raise ValueError(f"shot {index}: {value:g}{unit} is longer than a whole video may be ({MAX_FRAMES} "
                             "frames, the long-video sampler's limit)")
        if value != int(value):
            raise ValueError(f"shot {index}: a frame count must be whole, got {value:g}f")
    return prompt, value


def _spec(index: int, prompt: str, value, unit: str, fps: float) -> ShotSpec:
    prompt, value = _duration(index, prompt, value, unit)
    if unit == "f":
        return ShotSpec(prompt, int(value))
    if value * fps > MAX_FRAMES:
        raise ValueError(f"shot {index}: {value:g}{unit} is longer than a whole video may be ({MAX_FRAMES} frames, "
                         "the long-video sampler's limit)")
    frames = int(round(value * fps))
    if frames < 1:
        raise ValueError(f"shot {index}: {value:g}s at {fps:g} fps is less than one frame")
    return ShotSpec(prompt, frames, value)


def plan_shots(specs: list[ShotSpec], fps: float) -> ShotPlan:
    """Frames and cut positions of a list of shots (see the module doc for the rounding rule)."""
    if not specs:
        raise ValueError("no shots to plan")
    total = sum(s.frames for s in specs)
    if total > MAX_FRAMES:
        raise ValueError(f"the shots add up to {total} frames, more than a video may have ({MAX_FRAMES} frames, the "
                         "long-video sampler's limit); shorten or drop shots")
    num_latent = (total - 1) // TEMPORAL_STRIDE + 1
    decoded = TEMPORAL_STRIDE * (num_latent - 1) + 1
    notes = []
    if decoded != total:
        notes.append(f"total {total} frames is not 4k+1: the video has {decoded} frames (the last "
                     f"{total - decoded} are dropped; Wan/HunyuanVideo latents hold 4k+1 frames)")
    frame_starts, latent_starts = [0], [0]
    position = 0
    for i, spec in enumerate(specs[:-1], 1):
        position += spec.frames
        latent = (position + 5) // TEMPORAL_STRIDE
        frame_starts.append(position)
        clean = TEMPORAL_STRIDE * latent - 3
        if clean != position:
            notes.append(f"cut before shot {i + 1} moved from frame {position} to frame {clean} "
                         f"(latent frame {latent})")
        latent_starts.append(latent)
    if len(specs) > num_latent:
        raise ValueError(f"{len(specs)} shots do not fit in {num_latent} latent frames ({total} frames); every shot "
                         "needs at least one latent frame (4 frames)")
    for i in range(1, len(latent_starts)):
        if latent_starts[i] <= latent_starts[i - 1] or latent_starts[i] >= num_latent:
            raise ValueError(f"shot {i} ({specs[i - 1].frames} frames) is too short: after rounding cuts to latent "
                             "frames it has no latent frame of its own; make it at least 4 frames long")
    return ShotPlan(tuple(specs), float(fps), tuple(frame_starts), tuple(latent_starts), num_latent, decoded,
                    tuple(notes))


def with_tokens(plan: ShotPlan, global_tokens: tuple[int, int] | None, shot_tokens: list[tuple[int, int]],
                text_tokens: int) -> ShotPlan:
    if len(shot_tokens) != plan.num_shots:
        raise ValueError(f"{len(shot_tokens)} caption ranges for {plan.num_shots} shots")
    return replace(plan, global_tokens=global_tokens, shot_tokens=tuple(shot_tokens), text_tokens=text_tokens)


def frame_shots(plan: ShotPlan, num_frames: int, index_list=None) -> list[int]:
    """The shot of each latent frame of a forward (``index_list``: the global frames of a context window)."""
    frames = list(index_list) if index_list is not None and len(index_list) == num_frames else list(range(num_frames))
    return [plan.shot_of_latent_frame(int(t)) for t in frames]


def text_keep_table(plan: ShotPlan, shots_of_frames: list[int]) -> list[list[bool]]:
    """Per frame, which of the ``plan.text_tokens`` caption tokens it may see (global + its own shot's)."""
    table = []
    for shot in shots_of_frames:
        row = [False] * plan.text_tokens
        for a, b in plan.caption_ranges(shot):
            for j in range(a, b):
                row[j] = True
        table.append(row)
    return table


__all__ = ["ShotSpec", "ShotPlan", "parse_shots", "check_shots_text", "plan_shots", "with_tokens", "frame_shots",
           "text_keep_table", "TEMPORAL_STRIDE"]
