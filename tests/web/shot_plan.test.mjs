// web/shot_plan.js against nodes/shots.py: every case of fixtures/shot_plan_cases.json (written by
// make_shot_fixture.py from the Python module) must give the same specs, plan, describe() text and error messages.
// Run: node --test tests/web/shot_plan.test.mjs (tests/web/test_shot_plan.py runs it under pytest).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import test from "node:test";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// web/ has no package.json (ComfyUI serves it as is), so Node would read shot_plan.js as CommonJS; load the same
// source as an ES module instead
const source = readFileSync(join(here, "..", "..", "web", "shot_plan.js"), "utf8");
const sp = await import(`data:text/javascript;base64,${Buffer.from(source).toString("base64")}`);
const fixture = JSON.parse(readFileSync(join(here, "fixtures", "shot_plan_cases.json"), "utf8"));

test("the fixture has cases, successes and errors", () => {
  assert.equal(fixture.temporal_stride, sp.TEMPORAL_STRIDE);
  assert.ok(fixture.cases.length > 100);
  assert.ok(fixture.cases.some((c) => c.ok) && fixture.cases.some((c) => !c.ok));
});

for (const c of fixture.cases) {
  test(`same as nodes/shots.py: ${c.name}`, () => {
    let specs;
    let plan;
    try {
      specs = sp.parseShots(c.text, c.fps);
      plan = sp.planShots(specs, c.fps);
    } catch (err) {
      if (!(err instanceof sp.ShotPlanError)) throw err;
      assert.equal(c.ok, false, `JS raised "${err.message}" where Python planned ${JSON.stringify(c.plan)}`);
      if (c.error_match === "prefix") assert.ok(err.message.startsWith(c.error), err.message);
      else assert.equal(err.message, c.error);
      return;
    }
    assert.equal(c.ok, true, `JS planned ${JSON.stringify(sp.planToJson(plan))} where Python raised "${c.error}"`);
    assert.deepEqual(specs, c.specs);
    assert.deepEqual(sp.planToJson(plan), c.plan);
    assert.equal(sp.describePlan(plan), c.describe);
    assert.deepEqual(sp.latentRanges(plan), c.latent_ranges);
  });
}

test("Python number formatting", () => {
  assert.equal(sp.pyRound(2.5), 2);
  assert.equal(sp.pyRound(3.5), 4);
  assert.equal(sp.pyRound(-0.5), 0); // int(round(-0.5)) == 0
  assert.equal(sp.pyG(16), "16");
  assert.equal(sp.pyG(23.976), "23.976");
  assert.equal(sp.pyG(0.03125), "0.03125");
  assert.equal(sp.pyG(1234565), "1.23456e+06"); // exact tie: to even
  assert.equal(sp.pyG(999999.5), "1e+06");
  assert.equal(sp.pyG(0.00001), "1e-05");
  assert.equal(sp.pyG(1e300), "1e+300");
  assert.equal(sp.pyFixed(2.125, 2), "2.12");
  assert.equal(sp.pyFixed(2.375, 2), "2.38");
  assert.equal(sp.pyFixed(0.004, 2), "0.00");
  assert.equal(sp.pyFixed(0.006, 2), "0.01");
  assert.equal(sp.pyFixed(9.999, 2), "10.00");
  assert.equal(sp.pyFixed(5.0625, 2), "5.06");
  assert.equal(sp.pyFloatStr(16), "16.0");
  assert.equal(sp.pyFloatStr(1e16), "1e+16");
  assert.equal(sp.pyFloatStr(0.0001), "0.0001");
  assert.equal(sp.pyFloatStr(0.00001), "1e-05");
  assert.equal(sp.pyRepr("it's"), `"it's"`);
  assert.equal(sp.pyRepr(`a'b"c`), `'a\\'b"c'`);
  assert.equal(sp.pyRepr("tab\there\u00a0"), "'tab\\there\\xa0'");
});

test("the document keeps comments and untouched lines, writes changed shots canonically", () => {
  const text = "# intro\n3 s| a cat   # wide\n\n2.5s | a dog\n# end";
  const doc = sp.readDocument(text, 16);
  assert.equal(doc.shots.length, 2);
  assert.equal(sp.writeDocument(doc), text);
  doc.shots[0].value = 4;
  doc.shots[0].raw = null;
  assert.equal(sp.writeDocument(doc), "# intro\n4s | a cat   # wide\n\n2.5s | a dog\n# end");
  doc.shots.reverse();
  doc.shots.push(sp.newShot("a bird\nflies # up", 33, "f"));
  const out = sp.writeDocument(doc);
  assert.equal(out, "\n2.5s | a dog\n# intro\n4s | a cat   # wide\n33f | a bird flies # up\n# end");
  const plan = sp.planShots(sp.parseShots(out, 16), 16);
  assert.deepEqual(plan.shots.map((s) => s.prompt), ["a dog", "a cat   # wide", "a bird flies # up"]);
  assert.deepEqual(plan.shots.map((s) => s.frames), [40, 64, 33]);
});

test("a JSON list becomes lines on the first edit", () => {
  const doc = sp.readDocument('[{"prompt": "a", "seconds": 3}, {"prompt": "b", "frames": 33}]', 16);
  assert.equal(doc.json, true);
  assert.equal(sp.writeDocument(doc), "3s | a\n33f | b");
});

test("canonical durations and the duration editor", () => {
  assert.equal(sp.formatDuration({ value: 3, unit: "s" }), "3s");
  assert.equal(sp.formatDuration({ value: 2.5, unit: "s" }), "2.5s");
  assert.equal(sp.formatDuration({ value: 0.1 + 0.2, unit: "s" }), "0.3s");
  assert.equal(sp.formatDuration({ value: 33, unit: "f" }), "33f");
  assert.deepEqual(sp.parseDuration(" 2.5 s"), { value: 2.5, unit: "s" });
  assert.deepEqual(sp.parseDuration("33f"), { value: 33, unit: "f" });
  assert.deepEqual(sp.parseDuration("4"), { value: 4, unit: "s" });
  assert.equal(sp.parseDuration("0s"), null);
  assert.equal(sp.parseDuration("3.5f"), null);
  assert.equal(sp.parseDuration("abc"), null);
  assert.equal(sp.shotFrames({ value: 2.5, unit: "s" }, 3), 8);
  assert.equal(sp.firstFrameOfLatent(0), 0);
  assert.equal(sp.firstFrameOfLatent(13), 49);
});
