// Shot plans in the browser: the JavaScript twin of nodes/shots.py (pure, no DOM).
//
// The Python module is the spec. This file follows it rule for rule so that the timeline shows exactly the frames,
// latent frames and cut positions that the node will use, and the same notes and error messages:
//   - text form: one shot per line, "duration | prompt" ("3s", "2.5 s", "2.5", "33f"); a line whose first non-space
//     character is '#' is a comment ('#' elsewhere belongs to the prompt); at most MAX_FRAMES frames in all;
//     or a JSON list [{"prompt": ..., "seconds": 3}, {"prompt": ..., "frames": 33}];
//   - seconds -> frames with Python's round() (ties to even);
//   - latent frames = (frames - 1) // 4 + 1; a cut at pixel frame s moves to latent frame (s + 5) // 4.
// tests/web/shot_plan.test.mjs checks this file against cases that nodes/shots.py produced
// (tests/web/fixtures/shot_plan_cases.json, written by tests/web/make_shot_fixture.py).
//
// ComfyUI loads every .js file of the web folder as an extension module; this one only exports functions, so being
// loaded that way does nothing.

export const TEMPORAL_STRIDE = 4;
export const MAX_FRAMES = 100000; // nodes/shots.py MAX_FRAMES: the long-video sampler's length limit

/** A malformed shot list or an impossible plan; `message` is the Python side's message, word for word. */
export class ShotPlanError extends Error {
  constructor(message) {
    super(message);
    this.name = "ShotPlanError";
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Python string and number behaviour that the spec relies on

// str.isspace() / re's \s for str patterns (Python's set differs from JavaScript's: \x1c-\x1f and \x85 are
// whitespace there, \ufeff is not)
const PY_SPACE = "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PY_SPACE_CLASS = `[${PY_SPACE}]`;
const STRIP_RE = new RegExp(`^${PY_SPACE_CLASS}+|${PY_SPACE_CLASS}+$`, "gu");
const LSTRIP_RE = new RegExp(`^${PY_SPACE_CLASS}+`, "u");
// str.splitlines() boundaries
const LINE_BREAK_RE = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/u;
// nodes/shots.py _LINE (re.IGNORECASE; Python's \d is any Unicode decimal digit)
const LINE_RE = new RegExp(
  `^${PY_SPACE_CLASS}*(?<num>\\p{Nd}+(?:\\.\\p{Nd}+)?)${PY_SPACE_CLASS}*` +
    `(?<unit>s|sec|secs|seconds?|f|frames?)?${PY_SPACE_CLASS}*[|:]${PY_SPACE_CLASS}*(?<prompt>.*)$`,
  "iu",
);
const ND_RE = /\p{Nd}/u;

export function pyStrip(s) {
  return s.replace(STRIP_RE, "");
}

function pyLstrip(s) {
  return s.replace(LSTRIP_RE, "");
}

export function pySplitlines(text) {
  if (text === "") return [];
  const lines = text.split(LINE_BREAK_RE);
  // a final line break ends the last line instead of starting an empty one
  if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

// Python's float() of a string of Unicode decimal digits and one '.': map every digit to ASCII first. Unicode's
// decimal digits come in aligned runs of ten (0..9), so a digit's value is its distance from the run's start mod 10.
function asciiDigits(s) {
  let out = "";
  for (const ch of s) {
    if (ch === "." || (ch >= "0" && ch <= "9")) {
      out += ch;
      continue;
    }
    let cp = ch.codePointAt(0);
    let start = cp;
    while (start > 0 && ND_RE.test(String.fromCodePoint(start - 1))) start -= 1;
    out += String((cp - start) % 10);
  }
  return out;
}

/** Python's round(x) for a finite float: the nearest integer, ties to even. */
export function pyRound(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff < 0.5) return floor;
  if (diff > 0.5) return floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

// The exact decimal expansion of a finite double as [digits, pointPosition] ("12345", 2 = 123.45), or null where
// toFixed cannot give it exactly (very large or very small numbers, where ties cannot happen for our purposes).
function exactDecimal(x) {
  const a = Math.abs(x);
  if (a === 0 || a >= 1e21 || a < 1e-6) return null;
  const fixed = a.toFixed(100); // exact for |x| < 1e21: the binary value's full expansion fits in 100 digits here
  let [int, frac] = fixed.split(".");
  frac = frac.replace(/0+$/, "");
  let digits = (int === "0" ? "" : int) + frac;
  let point = int === "0" ? 0 : int.length;
  const lead = digits.match(/^0*/)[0].length;
  digits = digits.slice(lead);
  point -= lead;
  return [digits, point];
}

// round the exact expansion to `keep` significant digits, ties to even -> [digits (length keep), point]
function roundDigits(digits, point, keep) {
  if (digits.length <= keep) return [digits.padEnd(keep, "0"), point];
  const head = digits.slice(0, keep);
  const rest = digits.slice(keep);
  let up;
  if (rest[0] > "5") up = true;
  else if (rest[0] < "5") up = false;
  else if (/[1-9]/.test(rest.slice(1))) up = true;
  else up = keep > 0 && Number(head[keep - 1]) % 2 === 1; // exact tie: to even
  if (!up) return [head.padEnd(keep, "0") || "", point];
  // add one to the last kept digit
  const arr = head.split("").map(Number);
  let i = arr.length - 1;
  while (i >= 0) {
    arr[i] += 1;
    if (arr[i] < 10) break;
    arr[i] = 0;
    i -= 1;
  }
  if (i < 0) {
    // 9.99 -> 10.0: one more digit in front (a trailing zero too many does not matter to the callers)
    arr.unshift(1);
    point += 1;
  }
  return [arr.join(""), point];
}

/** Python's format(x, ".{n}f") (correctly rounded, ties to even). */
export function pyFixed(x, n) {
  if (!Number.isFinite(x)) return x > 0 ? "inf" : x < 0 ? "-inf" : "nan";
  const exact = exactDecimal(x);
  if (exact === null) return x.toFixed(n);
  const [digits, point] = exact;
  const keep = point + n;
  const sign = x < 0 ? "-" : "";
  if (keep < 0) return sign + (0).toFixed(n);
  const [rd, rp] = roundDigits(digits, point, keep);
  // rebuild "int.frac" from digits and point
  let s = rd || "0";
  let p = rd ? rp : 1;
  if (p <= 0) {
    s = "0".repeat(1 - p) + s;
    p = 1;
  }
  s = s.padEnd(p + n, "0");
  const intPart = s.slice(0, p).replace(/^0+(?=\d)/, "");
  const fracPart = s.slice(p, p + n);
  return sign + (n > 0 ? `${intPart}.${fracPart}` : intPart); // Python keeps the sign of a rounded-off -0.001
}

/** Python's format(x, "g"): 6 significant digits, no trailing zeros, exponent below 1e-4 and from 1e6. */
export function pyG(x, precision = 6) {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  if (x === 0) return Object.is(x, -0) ? "-0" : "0";
  const sign = x < 0 ? "-" : "";
  let digits;
  let point;
  const exact = exactDecimal(x);
  if (exact === null) {
    const [mant, exp] = Math.abs(x).toExponential(precision - 1).split("e");
    digits = mant.replace(".", "");
    point = Number(exp) + 1;
  } else {
    [digits, point] = roundDigits(exact[0], exact[1], precision);
  }
  const exp = point - 1;
  digits = digits.replace(/0+$/, "") || "0";
  if (exp < -4 || exp >= precision) {
    const mant = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp) < 10 ? `0${Math.abs(exp)}` : String(Math.abs(exp));
    return `${sign}${mant}e${exp < 0 ? "-" : "+"}${e}`;
  }
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  if (digits.length <= exp + 1) return sign + digits.padEnd(exp + 1, "0");
  return `${sign}${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
}

/** Python's str()/repr() of a float (shortest round trip; exponent below 1e-4 and from 1e16). */
export function pyFloatStr(x) {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mant, expStr] = x.toExponential().split("e");
  const exp = Number(expStr);
  const sign = x < 0 ? "-" : "";
  const digits = mant.replace("-", "").replace(".", "");
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp) < 10 ? `0${Math.abs(exp)}` : String(Math.abs(exp));
    return `${sign}${m}e${exp < 0 ? "-" : "+"}${e}`;
  }
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  if (digits.length <= exp + 1) return `${sign}${digits.padEnd(exp + 1, "0")}.0`;
  return `${sign}${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
}

/** Python's repr() of a str (the quote choice and the escapes of printable ASCII and control characters). */
export function pyRepr(s) {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const cp = ch.codePointAt(0);
    if (ch === quote || ch === "\\") out += `\\${ch}`;
    else if (ch === "\t") out += "\\t";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) out += `\\x${cp.toString(16).padStart(2, "0")}`;
    else if (/[\p{Z}\p{C}]/u.test(ch) && ch !== " ") {
      // non-printable in Python's sense (separators other than space, other/format/unassigned)
      out += cp <= 0xff ? `\\x${cp.toString(16).padStart(2, "0")}`
        : cp <= 0xffff ? `\\u${cp.toString(16).padStart(4, "0")}` : `\\U${cp.toString(16).padStart(8, "0")}`;
    } else out += ch;
  }
  return out + quote;
}

// Python's str() of a JSON value (json.loads gives dict, list, str, int/float, bool, None)
function pyStr(v) {
  if (typeof v === "string") return v;
  return pyValueRepr(v);
}

function pyValueRepr(v) {
  if (v === null) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return Number.isInteger(v) && Math.abs(v) < 1e16 ? String(v) : pyFloatStr(v);
  if (typeof v === "string") return pyRepr(v);
  if (Array.isArray(v)) return `[${v.map(pyValueRepr).join(", ")}]`;
  return `{${Object.entries(v).map(([k, x]) => `${pyRepr(k)}: ${pyValueRepr(x)}`).join(", ")}}`;
}

// Python's float(v) for a JSON value; null where Python raises
function pyFloat(v) {
  if (typeof v === "number") return v;
  if (typeof v === "boolean") return v ? 1 : 0;
  if (typeof v !== "string") return null;
  const t = pyStrip(v).replace(/_/g, (m, i, s) => (/\d/.test(s[i - 1] ?? "") && /\d/.test(s[i + 1] ?? "") ? "" : "x"));
  if (/^[+-]?(inf|infinity)$/i.test(t)) return t.startsWith("-") ? -Infinity : Infinity;
  if (/^[+-]?nan$/i.test(t)) return NaN;
  if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(t)) return null;
  return Number(t);
}

// ---------------------------------------------------------------------------------------------------------------
// The spec: parse_shots, _spec, plan_shots, ShotPlan.describe / to_json

/**
 * The widget's text (lines or JSON) -> shot specs [{prompt, frames, seconds}] (seconds: as typed, or null).
 * Throws ShotPlanError with the Python message for anything malformed.
 */
export function parseShots(text, fps) {
  if (typeof text !== "string") throw new ShotPlanError(`shots must be text, got ${text === null ? "NoneType" : typeof text}`);
  if (fps <= 0) throw new ShotPlanError(`fps must be positive, got ${pyFloatStr(Number(fps))}`);
  const stripped = pyStrip(text);
  const specs = [];
  if (stripped.startsWith("[")) {
    let items;
    try {
      items = JSON.parse(stripped);
    } catch (exc) {
      // Python's json module words the reason differently; the prefix is the same
      throw new ShotPlanError(`shots look like JSON but do not parse: ${exc.message}`);
    }
    if (!Array.isArray(items)) throw new ShotPlanError("shots look like JSON but do not parse: expected a list");
    items.forEach((item, k) => {
      const i = k + 1;
      const isDict = item !== null && typeof item === "object" && !Array.isArray(item);
      if (!isDict || !Object.hasOwn(item, "prompt")) {
        throw new ShotPlanError(`shot ${i}: expected an object with 'prompt' and 'seconds' or 'frames', got ${pyValueRepr(item)}`);
      }
      if (Object.hasOwn(item, "frames")) specs.push(makeSpec(i, pyStr(item.prompt), item.frames, "f", fps));
      else if (Object.hasOwn(item, "seconds")) specs.push(makeSpec(i, pyStr(item.prompt), item.seconds, "s", fps));
      else throw new ShotPlanError(`shot ${i}: give its duration as 'seconds' or 'frames'`);
    });
  } else {
    let number = 0;
    pySplitlines(text).forEach((raw, k) => {
      const lineNo = k + 1;
      const line = pyLstrip(raw).startsWith("#") ? "" : raw;
      if (!pyStrip(line)) return;
      number += 1;
      const m = LINE_RE.exec(line);
      if (!m) {
        throw new ShotPlanError(`line ${lineNo}: expected 'duration | prompt' such as '3s | a cat on a roof' or ` +
          `'33f | ...', got ${pyRepr(pyStrip(raw))}`);
      }
      const unit = (m.groups.unit || "s").toLowerCase()[0];
      specs.push(makeSpec(number, m.groups.prompt, Number(asciiDigits(m.groups.num)), unit, fps));
    });
  }
  if (specs.length === 0) {
    throw new ShotPlanError("no shots: write one shot per line as 'duration | prompt', e.g. '3s | a cat on a roof'");
  }
  return specs;
}

function makeSpec(index, prompt, value, unit, fps) {
  prompt = pyStrip(prompt);
  if (!prompt) throw new ShotPlanError(`shot ${index}: the prompt is empty`);
  const number = pyFloat(value);
  if (number === null) throw new ShotPlanError(`shot ${index}: duration ${pyValueRepr(value)} is not a number`);
  value = number;
  if (!Number.isFinite(value) || value <= 0) {
    throw new ShotPlanError(`shot ${index}: duration must be positive, got ${pyG(value)}${unit}`);
  }
  if ((unit === "f" ? value : value * fps) > MAX_FRAMES) {
    throw new ShotPlanError(`shot ${index}: ${pyG(value)}${unit} is longer than a whole video may be (${MAX_FRAMES} ` +
      "frames, the long-video sampler's limit)");
  }
  if (unit === "f") {
    if (value !== Math.trunc(value)) throw new ShotPlanError(`shot ${index}: a frame count must be whole, got ${pyG(value)}f`);
    return { prompt, frames: value, seconds: null };
  }
  const frames = pyRound(value * fps);
  if (frames < 1) {
    throw new ShotPlanError(`shot ${index}: ${pyG(value)}s at ${pyG(fps)} fps is less than one frame`);
  }
  return { prompt, frames, seconds: value };
}

/**
 * Frames and cut positions of a list of shots: {shots, fps, frameStarts, latentStarts, numLatentFrames, numFrames,
 * notes}. Frame numbers are pixel frames, latentStarts are latent frames (nodes/shots.py plan_shots).
 */
export function planShots(specs, fps) {
  if (!specs.length) throw new ShotPlanError("no shots to plan");
  const total = specs.reduce((sum, s) => sum + s.frames, 0);
  if (total > MAX_FRAMES) {
    throw new ShotPlanError(`the shots add up to ${total} frames, more than a video may have (${MAX_FRAMES} frames, ` +
      "the long-video sampler's limit); shorten or drop shots");
  }
  const numLatent = Math.floor((total - 1) / TEMPORAL_STRIDE) + 1;
  const decoded = TEMPORAL_STRIDE * (numLatent - 1) + 1;
  const notes = [];
  if (decoded !== total) {
    notes.push(`total ${total} frames is not 4k+1: the video has ${decoded} frames (the last ` +
      `${total - decoded} are dropped; Wan/HunyuanVideo latents hold 4k+1 frames)`);
  }
  const frameStarts = [0];
  const latentStarts = [0];
  let position = 0;
  for (let i = 1; i < specs.length; i++) {
    position += specs[i - 1].frames;
    const latent = Math.floor((position + 5) / TEMPORAL_STRIDE);
    frameStarts.push(position);
    const clean = TEMPORAL_STRIDE * latent - 3;
    if (clean !== position) {
      notes.push(`cut before shot ${i + 1} moved from frame ${position} to frame ${clean} (latent frame ${latent})`);
    }
    latentStarts.push(latent);
  }
  if (specs.length > numLatent) {
    throw new ShotPlanError(`${specs.length} shots do not fit in ${numLatent} latent frames (${total} frames); every ` +
      "shot needs at least one latent frame (4 frames)");
  }
  for (let i = 1; i < latentStarts.length; i++) {
    if (latentStarts[i] <= latentStarts[i - 1] || latentStarts[i] >= numLatent) {
      throw new ShotPlanError(`shot ${i} (${specs[i - 1].frames} frames) is too short: after rounding cuts to latent ` +
        "frames it has no latent frame of its own; make it at least 4 frames long");
    }
  }
  return { shots: specs, fps: Number(fps), frameStarts, latentStarts, numLatentFrames: numLatent, numFrames: decoded, notes };
}

/** [[first, end), ...] latent frames of each shot. */
export function latentRanges(plan) {
  const ends = [...plan.latentStarts.slice(1), plan.numLatentFrames];
  return plan.latentStarts.map((a, i) => [a, ends[i]]);
}

/** First pixel frame of latent frame L (the clean cut position): 0 for L = 0, else 4L - 3. */
export function firstFrameOfLatent(latent) {
  return latent === 0 ? 0 : TEMPORAL_STRIDE * latent - 3;
}

/** nodes/shots.py ShotPlan.describe(), character for character (the node's "plan" output). */
export function describePlan(plan) {
  const lines = [`${plan.shots.length} shots, ${plan.numFrames} frames at ${pyG(plan.fps)} fps ` +
    `(${pyFixed(plan.numFrames / plan.fps, 2)} s), ${plan.numLatentFrames} latent frames`];
  latentRanges(plan).forEach(([a, b], i) => {
    const spec = plan.shots[i];
    const first = a === 0 ? 0 : TEMPORAL_STRIDE * a - 3;
    const last = TEMPORAL_STRIDE * (b - 1);
    lines.push(`shot ${i + 1}: latent frames ${a}-${b - 1} (frames ${first}-${last}): ${Array.from(spec.prompt).slice(0, 60).join("")}`);
  });
  lines.push(...plan.notes);
  return lines.join("\n");
}

/** nodes/shots.py ShotPlan.to_json() (same keys, snake_case). */
export function planToJson(plan) {
  return {
    fps: plan.fps,
    num_frames: plan.numFrames,
    num_latent_frames: plan.numLatentFrames,
    frame_starts: [...plan.frameStarts],
    latent_starts: [...plan.latentStarts],
    shots: plan.shots.map((s) => ({ prompt: s.prompt, frames: s.frames })),
    notes: [...plan.notes],
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Editing: the timeline's model of the text, and the canonical line it writes

/** A duration as the canonical text writes it: "3s", "2.5s", "33f". */
export function formatDuration(shot) {
  if (shot.unit === "f") return `${Math.round(shot.value)}f`;
  // at most 3 decimals, no exponent, no trailing zeros (the line grammar has no exponent form)
  let s = shot.value.toFixed(3).replace(/\.?0+$/, "");
  if (s === "0") s = "0.001";
  return `${s}s`;
}

/** A prompt fit for one line: line breaks become spaces. */
export function cleanPrompt(prompt) {
  return pyStrip(String(prompt).replace(/\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/gu, " "));
}

/** The canonical line of a shot: "3s | prompt". */
export function formatShotLine(shot) {
  return `${formatDuration(shot)} | ${cleanPrompt(shot.prompt)}`;
}

/**
 * The text as an editable document: {shots: [{value, unit ('s'|'f'), prompt, raw, leading: [lines]}],
 * trailing: [lines], json: bool}. Comment and blank lines travel with the shot below them; an unchanged shot keeps
 * its line as typed (shot.raw). Throws ShotPlanError where parseShots would.
 */
export function readDocument(text, fps) {
  parseShots(text, fps); // the same errors as the node
  if (pyStrip(text).startsWith("[")) {
    const items = JSON.parse(pyStrip(text));
    const shots = items.map((item) => {
      const unit = Object.hasOwn(item, "frames") ? "f" : "s";
      return { value: pyFloat(unit === "f" ? item.frames : item.seconds), unit, prompt: pyStrip(pyStr(item.prompt)),
        raw: null, leading: [] };
    });
    return { shots, trailing: [], json: true };
  }
  const shots = [];
  let pending = [];
  for (const raw of pySplitlines(text)) {
    const commentOnly = pyLstrip(raw).startsWith("#");
    const line = commentOnly ? "" : raw;
    if (!pyStrip(line)) {
      pending.push(raw);
      continue;
    }
    const m = LINE_RE.exec(line);
    shots.push({
      value: Number(asciiDigits(m.groups.num)),
      unit: (m.groups.unit || "s").toLowerCase()[0] === "f" ? "f" : "s",
      prompt: pyStrip(m.groups.prompt),
      raw,
      leading: pending,
    });
    pending = [];
  }
  return { shots, trailing: pending, json: false };
}

/** The document back to text: changed shots (raw === null) in the canonical line form, the rest as typed. */
export function writeDocument(doc) {
  const lines = [];
  for (const shot of doc.shots) {
    lines.push(...shot.leading);
    if (shot.raw != null) lines.push(shot.raw);
    else lines.push(formatShotLine(shot));
  }
  lines.push(...doc.trailing);
  return lines.join("\n");
}

/** Frames of one document shot at `fps` (as the node computes them). */
export function shotFrames(shot, fps) {
  return shot.unit === "f" ? Math.round(shot.value) : pyRound(shot.value * fps);
}

/** A new shot for the document (written in the canonical form). */
export function newShot(prompt, value, unit = "s") {
  return { value, unit, prompt: cleanPrompt(prompt), raw: null, leading: [] };
}

/**
 * Parse a duration typed in the timeline's editor ("3", "3s", "2.5 sec", "33f") -> {value, unit} or null.
 */
export function parseDuration(text) {
  const m = new RegExp(`^${PY_SPACE_CLASS}*(\\d+(?:\\.\\d+)?)${PY_SPACE_CLASS}*(s|sec|secs|seconds?|f|frames?)?${PY_SPACE_CLASS}*$`, "iu")
    .exec(String(text));
  if (!m) return null;
  const value = Number(m[1]);
  if (!(value > 0)) return null;
  const unit = (m[2] || "s").toLowerCase()[0] === "f" ? "f" : "s";
  if (unit === "f" && value !== Math.trunc(value)) return null;
  return { value, unit };
}
