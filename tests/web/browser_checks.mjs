// Browser checks of the MoGA frontend extension against a running ComfyUI server (started by test_browser.py).
//
//   node browser_checks.mjs --url http://127.0.0.1:PORT --report report.json --artifacts DIR --screenshots DIR \
//        --workflow a.json [--workflow b.json ...] [--chromium /usr/bin/chromium]
//
// Every check runs even when an earlier one failed; the report says, per check, ok / error / data, and
// test_browser.py turns each into a pytest test. Failing checks leave a screenshot in the artifacts folder.

import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    report: { type: "string" },
    artifacts: { type: "string" },
    screenshots: { type: "string" },
    workflow: { type: "string", multiple: true, default: [] },
    chromium: { type: "string", default: "/usr/bin/chromium" },
  },
});

const NODE = "MoGAMultiShotPrompt";
const MOGA_NODES = ["MoGALoadModel", "MoGALoadRouter", "MoGAApply", "MoGACalibrateRouter", "MoGASaveRouter",
  "MoGAMultiShotPrompt", "MoGALongVideoSampler", "MoGALongVideoGuider", "MoGAApplyRay"];
const report = { url: args.url, checks: {}, console: [] };
mkdirSync(args.artifacts, { recursive: true });
mkdirSync(args.screenshots, { recursive: true });

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

function assertEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

const profile = mkdtempSync(join(tmpdir(), "moga-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: args.chromium,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage"],
  viewport: { width: 1400, height: 900 },
  deviceScaleFactor: 2, // crisp screenshots for the docs
});
const page = context.pages()[0] ?? (await context.newPage());
page.setDefaultTimeout(20000);
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(String(e.stack || e)));
page.on("console", (m) => {
  if (m.type() === "error" || m.type() === "warning") report.console.push(`${m.type()}: ${m.text().slice(0, 500)}`);
});

async function check(name, fn) {
  const t0 = Date.now();
  const errorsBefore = pageErrors.length;
  try {
    const data = await fn();
    const ours = pageErrors.slice(errorsBefore).filter((e) => /moga/i.test(e));
    if (ours.length) throw new Error(`page errors from the MoGA extension:\n${ours.join("\n")}`);
    report.checks[name] = { ok: true, data: data ?? null, ms: Date.now() - t0 };
  } catch (err) {
    report.checks[name] = { ok: false, error: String(err.stack || err), ms: Date.now() - t0 };
    await page.screenshot({ path: join(args.artifacts, `${name}-failed.png`) }).catch(() => {});
  }
  console.log(`${report.checks[name].ok ? "ok  " : "FAIL"} ${name} (${Date.now() - t0} ms)`);
}

async function openApp() {
  await page.goto(args.url, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(() => window.comfyAPI?.app?.app?.canvas && window.LiteGraph?.registered_node_types,
    null, { timeout: 60000 });
  // the extensions are imported before the canvas exists; give the first graph a moment to settle
  await page.waitForFunction(() => !!window.LiteGraph.registered_node_types.MoGAMultiShotPrompt, null,
    { timeout: 30000 });
  await page.waitForTimeout(500);
}

/** Start from an empty graph (also clears the "missing models" note of the default graph). */
async function emptyGraph() {
  await page.evaluate(async () => {
    const app = window.comfyAPI.app.app;
    await app.loadGraphData({ last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {},
      extra: { ds: { scale: 1, offset: [0, 0] } }, version: 0.4 }, true, true, "moga-test");
  });
}

/** Add a node in graph coordinates; returns its id. */
async function addNode(type, pos, values = {}) {
  return page.evaluate(({ type, pos, values }) => {
    const app = window.comfyAPI.app.app;
    const node = window.LiteGraph.createNode(type);
    node.pos = pos;
    app.graph.add(node);
    for (const [k, v] of Object.entries(values)) node.widgets.find((w) => w.name === k).value = v;
    app.canvas.setDirty(true, true);
    return node.id;
  }, { type, pos, values });
}

async function widgetValue(nodeId, name) {
  return page.evaluate(({ nodeId, name }) => {
    const node = window.comfyAPI.app.app.graph.getNodeById(nodeId);
    return node.widgets.find((w) => w.name === name).value;
  }, { nodeId, name });
}

/** What the timeline of a node shows: blocks, totals line, ruler labels, status. */
async function timelineState(nodeId) {
  return page.evaluate((nodeId) => {
    const node = window.comfyAPI.app.app.graph.getNodeById(nodeId);
    const root = node?.__mogaTimeline?.root;
    if (!root) return null;
    const rect = root.getBoundingClientRect();
    return {
      connected: root.isConnected,
      visible: rect.width > 50 && rect.height > 50 && getComputedStyle(root.parentElement ?? root).display !== "none",
      blocks: [...root.querySelectorAll(".moga-tl-shot")].map((b) => ({
        head: b.querySelector(".moga-tl-shot-head").textContent,
        text: b.querySelector(".moga-tl-shot-text").textContent,
        width: b.getBoundingClientRect().width,
      })),
      totals: root.querySelector(".moga-tl-totals").textContent,
      labels: [...root.querySelectorAll(".moga-tl-label")].map((l) => l.textContent),
      ticks: [...root.querySelectorAll(".moga-tl-tick")].map((t) => t.title),
      status: root.querySelector(".moga-tl-status").textContent,
      error: root.querySelector(".moga-tl-status").classList.contains("moga-error"),
    };
  }, nodeId);
}

function timeline(nodeId) {
  // the timeline root of one node (there may be several MoGAMultiShotPrompt nodes)
  return page.locator(`[data-testid=moga-shot-timeline][data-node-id="${nodeId}"]`);
}

/** Screen rectangle of a node (title bar included), for screenshots. */
async function nodeRect(nodeId, pad = 16) {
  return page.evaluate(({ nodeId, pad }) => {
    const app = window.comfyAPI.app.app;
    const node = app.graph.getNodeById(nodeId);
    const r = app.canvas.canvas.getBoundingClientRect();
    const title = window.LiteGraph.NODE_TITLE_HEIGHT;
    const [x0, y0] = app.canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - title]);
    const [x1, y1] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0], node.pos[1] + node.size[1]]);
    const top = pad + 10; // the node's source badge sits above the title bar
    return { x: r.left + x0 - pad, y: r.top + y0 - top, width: x1 - x0 + 2 * pad, height: y1 - y0 + top + pad };
  }, { nodeId, pad });
}

async function dragMouse(from, to, steps = 12) {
  await page.mouse.move(from.x, from.y);
  await page.mouse.down();
  for (let k = 1; k <= steps; k++) {
    await page.mouse.move(from.x + ((to.x - from.x) * k) / steps, from.y + ((to.y - from.y) * k) / steps);
  }
  await page.mouse.up();
}

function center(box) {
  return { x: box.x + box.width / 2, y: box.y + box.height / 2 };
}

// ---------------------------------------------------------------------------------------------------------------

await check("frontend_loads", async () => {
  await openApp();
  const info = await page.evaluate(async (names) => {
    const app = window.comfyAPI.app.app;
    const defs = await (await fetch("/object_info")).json();
    return {
      extensions: app.extensions.map((e) => e.name).filter((n) => n.startsWith("moga")),
      registered: names.filter((n) => !!window.LiteGraph.registered_node_types[n]),
      modules: Object.fromEntries(names.map((n) => [n, defs[n]?.python_module ?? null])),
      scripts: (await (await fetch("/extensions")).json()).filter((u) => /moga/i.test(u)),
      // test_browser.py's profile turns the frontend's workflow validation on (it reports broken links)
      validation: app.extensionManager?.setting?.get?.("Comfy.Validation.Workflows") ?? null,
    };
  }, MOGA_NODES);
  assertEqual(info.registered, MOGA_NODES, "MoGA node types registered in the frontend");
  assertEqual(info.extensions.sort(), ["moga.GroupMap", "moga.ShotTimeline"], "MoGA frontend extensions (each once)");
  assert(info.scripts.some((u) => u.endsWith("/moga_timeline.js")), `timeline script not served: ${info.scripts}`);
  assertEqual(info.validation, true, "setting Comfy.Validation.Workflows of the test profile");
  const registerErrors = report.console.filter((l) => /already registered|Error loading extension/.test(l) && /moga/i.test(l));
  assert(!registerErrors.length, `extension load errors: ${registerErrors.join("\n")}`);
  return info;
});

await check("workflows_load", async () => {
  const results = [];
  // a probe extension records what the frontend reports as missing when a graph is configured
  await page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    if (!app.extensions.some((e) => e.name === "moga.test.probe")) {
      app.registerExtension({
        name: "moga.test.probe",
        afterConfigureGraph(missing) {
          window.__mogaMissing = (missing ?? []).map((m) => (typeof m === "string" ? m : m.type));
        },
      });
    }
  });
  for (const path of args.workflow) {
    const wf = JSON.parse(readFileSync(path, "utf8"));
    await emptyGraph();
    // dismiss toasts of earlier loads
    await page.evaluate(() => document.querySelectorAll(".p-toast-message").forEach((t) => t.remove()));
    const result = await page.evaluate(async ({ wf, name }) => {
      const app = window.comfyAPI.app.app;
      const LG = window.LiteGraph;
      window.__mogaMissing = null;
      const unknown = [...new Set(wf.nodes.map((n) => n.type).filter((t) => !LG.registered_node_types[t]))];
      await app.loadGraphData(wf, true, true, name, { showMissingModelsDialog: false });
      await new Promise((r) => setTimeout(r, 400));
      const g = app.graph;
      const links = g.links instanceof Map ? [...g.links.values()] : Object.values(g.links ?? {});
      const problems = [];
      for (const link of links) {
        const a = g.getNodeById(link.origin_id);
        const b = g.getNodeById(link.target_id);
        if (!a || !b) problems.push(`link ${link.id}: node ${a ? link.target_id : link.origin_id} missing`);
        else {
          if (!a.outputs?.[link.origin_slot]?.links?.includes(link.id)) problems.push(`link ${link.id}: output side`);
          if (b.inputs?.[link.target_slot]?.link !== link.id) problems.push(`link ${link.id}: input side`);
        }
      }
      for (const node of g.nodes) {
        for (const input of node.inputs ?? []) {
          if (input.link != null && !links.some((l) => l.id === input.link)) {
            problems.push(`node ${node.id} input ${input.name}: link ${input.link} does not exist`);
          }
        }
      }
      const toasts = [...document.querySelectorAll(".p-toast-message")].map((t) => t.textContent.trim());
      const dialogs = [...document.querySelectorAll(".p-dialog")].map((d) => d.textContent.trim().slice(0, 200));
      const timelines = g.nodes.filter((n) => n.comfyClass === "MoGAMultiShotPrompt")
        .map((n) => ({ id: n.id, blocks: n.__mogaTimeline?.root.querySelectorAll(".moga-tl-shot").length ?? 0,
          error: n.__mogaTimeline?.error ?? "no timeline" }));
      return { missing: window.__mogaMissing, unknown, problems, toasts, dialogs, timelines,
        nodes: g.nodes.length, links: links.length,
        // flagged: loaders whose model files are absent here (expected: the test server has no models)
        flagged: g.nodes.filter((n) => n.has_errors).map((n) => n.type) };
    }, { wf, name: basename(path) });
    result.file = basename(path);
    results.push(result);
    assert(Array.isArray(result.missing), `${result.file}: the load did not finish (no afterConfigureGraph)`);
    assertEqual(result.missing, [], `${result.file}: missing node types reported by the frontend`);
    assertEqual(result.unknown, [], `${result.file}: node types the frontend does not know`);
    assertEqual(result.problems, [], `${result.file}: broken links`);
    assertEqual(result.nodes, wf.nodes.length, `${result.file}: node count`);
    assertEqual(result.links, (wf.links ?? []).length, `${result.file}: link count`);
    const bad = result.toasts.filter((t) => /validation|links fixed|missing|invalid|error/i.test(t));
    assertEqual(bad, [], `${result.file}: validation or error toasts`);
    const badDialogs = result.dialogs.filter((t) => /missing|link|error/i.test(t));
    assertEqual(badDialogs, [], `${result.file}: dialogs`);
    for (const t of result.timelines) {
      assert(t.blocks > 0 && !t.error, `${result.file}: the timeline of node ${t.id} shows ${t.blocks} shots, error "${t.error}"`);
    }
  }
  assert(results.length > 0, "no workflows to load");
  return results;
});

let nodeId = null;
await check("timeline_renders", async () => {
  await emptyGraph();
  nodeId = await addNode(NODE, [60, 40]);
  await page.waitForTimeout(300);
  const state = await timelineState(nodeId);
  assert(state, "no timeline on the node");
  assert(state.connected && state.visible, `timeline not visible: ${JSON.stringify(state)}`);
  assertEqual(state.blocks.length, 3, "shots of the default text");
  assert(state.blocks.every((b) => b.width > 20), `blocks too narrow: ${JSON.stringify(state.blocks)}`);
  assertEqual(state.blocks.map((b) => b.head), ["1 · 3s", "2 · 2s", "3 · 3s"], "block heads");
  assert(state.blocks[0].width > state.blocks[1].width * 1.3, "a 3 s block is wider than a 2 s block");
  assert(/3 shots · 7\.81 s · 125 frames · 32 latent frames/.test(state.totals), `totals: ${state.totals}`);
  await timeline(nodeId).screenshot({ path: join(args.artifacts, "timeline_default.png") });
  return state;
});

await check("timeline_follows_typing", async () => {
  const textarea = page.locator(".comfy-multiline-input").first();
  await textarea.fill("2s | a fox in the snow\n33f | the fox jumps\n# comment\n1.5s | it lands");
  await page.waitForTimeout(200);
  const state = await timelineState(nodeId);
  assertEqual(state.blocks.map((b) => b.head), ["1 · 2s", "2 · 33f", "3 · 1.5s"], "blocks after typing");
  assertEqual(state.blocks.map((b) => b.text), ["a fox in the snow", "the fox jumps", "it lands"], "snippets");
  await textarea.fill("2s | a fox\n2s | | broken? no: pipes are fine\n0s | zero");
  await page.waitForTimeout(200);
  const bad = await timelineState(nodeId);
  assert(bad.error && bad.status === "shot 3: duration must be positive, got 0s", `error shown: ${bad.status}`);
  // back to the default example for the next checks
  await textarea.fill("3s | A red-haired woman in a green coat walks into a rainy cafe, wide shot\n" +
    "2s | Close-up of her face as she smiles at the barista\n" +
    "3s | The barista, an old man with a grey beard, hands her a cup of coffee");
  await page.waitForTimeout(200);
  return { typed: state, error: bad.status };
});

await check("timeline_add_and_resize", async () => {
  const tl = timeline(nodeId);
  await tl.locator("[data-action=add]").click();
  await page.waitForTimeout(200);
  // the editor opens on the new shot with its prompt selected: type over it
  await page.keyboard.type("The rain stops and the street shines, wide shot");
  await page.keyboard.press("Enter");
  await page.waitForTimeout(200);
  const afterAdd = await widgetValue(nodeId, "shots");
  assert(afterAdd.endsWith("\n2s | The rain stops and the street shines, wide shot"), `after add: ${afterAdd}`);

  // resize shot 1 by dragging its right edge 80 px to the right
  const handle = await tl.locator('.moga-tl-shot[data-index="0"] .moga-tl-handle').boundingBox();
  const bar = await tl.locator(".moga-tl-bar").boundingBox();
  const from = center(handle);
  await dragMouse(from, { x: from.x + 80, y: from.y });
  await page.waitForTimeout(200);
  const text = await widgetValue(nodeId, "shots");
  const first = text.split("\n")[0];
  const m = /^(\d+(?:\.\d+)?)s \| A red-haired woman/.exec(first);
  assert(m, `first line after resize: ${first}`);
  const seconds = Number(m[1]);
  // 80 px of a bar of `bar.width` px showing 160 frames at 16 fps
  const expected = 3 + (80 / bar.width) * 160 / 16;
  assert(Math.abs(seconds - expected) <= 0.15, `resized to ${seconds}s, expected about ${expected.toFixed(2)}s`);
  assertEqual(text.split("\n").slice(1), ["2s | Close-up of her face as she smiles at the barista",
    "3s | The barista, an old man with a grey beard, hands her a cup of coffee",
    "2s | The rain stops and the street shines, wide shot"], "other lines unchanged");
  const textarea = await page.locator(".comfy-multiline-input").first().inputValue();
  assertEqual(textarea, text, "the text box shows the widget value");
  const state = await timelineState(nodeId);
  assertEqual(state.blocks.length, 4, "shots after add");
  await tl.screenshot({ path: join(args.artifacts, "timeline_resized.png") });
  return { text, totals: state.totals, labels: state.labels, ticks: state.ticks, fps: 16 };
});

await check("timeline_edit_move_delete", async () => {
  const tl = timeline(nodeId);
  // click shot 2 -> editor; change the prompt and the duration
  await tl.locator('.moga-tl-shot[data-index="1"]').click({ position: { x: 12, y: 30 } });
  await tl.locator("textarea[data-field=prompt]").fill("Close-up: she smiles # not a comment");
  await tl.locator("input[data-field=duration]").fill("33f");
  await tl.locator("[data-action=save]").click();
  let lines = (await widgetValue(nodeId, "shots")).split("\n");
  assertEqual(lines[1], "33f | Close-up: she smiles # not a comment", "edited line ('#' kept: only a line starting with '#' is a comment)");
  // move shot 4 before shot 1 by dragging it
  const b4 = center(await tl.locator('.moga-tl-shot[data-index="3"]').boundingBox());
  const b1 = await tl.locator('.moga-tl-shot[data-index="0"]').boundingBox();
  await dragMouse({ x: b4.x, y: b4.y + 8 }, { x: b1.x + 5, y: b4.y + 8 }, 16);
  await page.waitForTimeout(200);
  lines = (await widgetValue(nodeId, "shots")).split("\n");
  assert(lines[0].endsWith("| The rain stops and the street shines, wide shot"), `after drag: ${lines}`);
  assertEqual(lines.length, 4, "lines after drag");
  // the ▶ button moves it back one place, ✕ deletes it
  await tl.locator('.moga-tl-shot[data-index="0"]').hover();
  await tl.locator('.moga-tl-shot[data-index="0"] [data-action=right]').click();
  lines = (await widgetValue(nodeId, "shots")).split("\n");
  assert(lines[1].endsWith("| The rain stops and the street shines, wide shot"), `after ▶: ${lines}`);
  await tl.locator('.moga-tl-shot[data-index="1"]').hover();
  await tl.locator('.moga-tl-shot[data-index="1"] [data-action=delete]').click();
  lines = (await widgetValue(nodeId, "shots")).split("\n");
  assertEqual(lines.length, 3, "lines after delete");
  assert(!lines.some((l) => l.includes("The rain stops")), `deleted shot still there: ${lines}`);
  return lines;
});

await check("save_and_reload", async () => {
  const before = await widgetValue(nodeId, "shots");
  const saved = await page.evaluate(async (nodeId) => {
    const app = window.comfyAPI.app.app;
    const wf = app.graph.serialize();
    const node = wf.nodes.find((n) => n.id === nodeId);
    const { output } = await app.graphToPrompt();
    return { wf, values: node.widgets_values, apiInputs: Object.keys(output[String(nodeId)]?.inputs ?? {}) };
  }, nodeId);
  assertEqual(saved.values.length, 3, "widgets_values entries (shots, global_prompt, fps; nothing for the timeline)");
  assertEqual(saved.values[0], before, "saved shots text");
  assertEqual(saved.apiInputs.sort(), ["fps", "global_prompt", "shots"], "inputs in the API prompt");
  // load it back through the frontend's loader
  await emptyGraph();
  await page.evaluate(async (wf) => window.comfyAPI.app.app.loadGraphData(wf, true, true, "moga-reload"), saved.wf);
  await page.waitForTimeout(300);
  assertEqual(await widgetValue(nodeId, "shots"), before, "shots after loadGraphData");
  const loaded = await timelineState(nodeId);
  assertEqual(loaded.blocks.length, 3, "timeline after loadGraphData");
  // and a real page reload: the frontend restores the open workflow from its own storage
  await page.waitForTimeout(1200); // the workflow store persists on a timer
  await page.reload();
  await openApp();
  await page.waitForTimeout(800);
  const restored = await page.evaluate(() => {
    const node = window.comfyAPI.app.app.graph.nodes.find((n) => n.comfyClass === "MoGAMultiShotPrompt");
    return node ? { id: node.id, text: node.widgets.find((w) => w.name === "shots").value } : null;
  });
  assert(restored, "no MoGAMultiShotPrompt after the page reload");
  assertEqual(restored.text, before, "shots after the page reload");
  const state = await timelineState(restored.id);
  assertEqual(state.blocks.length, 3, "timeline after the page reload");
  nodeId = restored.id;
  return { values: saved.values, totals: state.totals };
});

await check("queue_runs", async () => {
  await emptyGraph();
  // a graph that needs no model files, next to a MoGA node (not on the way to an output, so not executed)
  const result = await page.evaluate(async () => {
    const app = window.comfyAPI.app.app;
    const { api } = window.comfyAPI.api;
    const LG = window.LiteGraph;
    const image = LG.createNode("EmptyImage");
    image.pos = [40, 40];
    app.graph.add(image);
    image.widgets.find((w) => w.name === "width").value = 64;
    image.widgets.find((w) => w.name === "height").value = 64;
    const preview = LG.createNode("PreviewImage");
    preview.pos = [400, 40];
    app.graph.add(preview);
    image.connect(0, preview, 0);
    const shots = LG.createNode("MoGAMultiShotPrompt");
    shots.pos = [40, 400];
    app.graph.add(shots);
    const done = new Promise((resolve) => {
      const finish = (kind) => (e) => resolve({ kind, detail: e.detail });
      api.addEventListener("execution_success", finish("success"), { once: true });
      api.addEventListener("execution_error", finish("error"), { once: true });
      setTimeout(() => resolve({ kind: "timeout" }), 60000);
    });
    await app.queuePrompt(0, 1);
    const outcome = await done;
    const history = await (await fetch("/history?max_items=5")).json();
    const entries = Object.values(history);
    return { outcome: outcome.kind, detail: outcome.detail, ids: Object.keys(history),
      statuses: entries.map((h) => h.status?.status_str),
      images: entries.flatMap((h) => Object.values(h.outputs ?? {}).flatMap((o) => o.images ?? [])).length };
  });
  assertEqual(result.outcome, "success", `queue outcome (${JSON.stringify(result.detail)})`);
  assert(result.ids.includes(result.detail?.prompt_id), `the finished prompt is not in the history: ${JSON.stringify(result)}`);
  assert(result.statuses.includes("success") && result.images > 0, `history: ${JSON.stringify(result)}`);
  return result;
});

await check("help_pages", async () => {
  const fetched = await page.evaluate(async (names) => {
    const defs = await (await fetch("/object_info")).json();
    const out = {};
    for (const name of names) {
      // the frontend's rule: custom_nodes.<pack> -> /extensions/<pack>/docs/<node>.md (a <node>/<locale>.md first)
      const pack = defs[name].python_module.split(".")[1].split("@")[0];
      const res = await fetch(`/extensions/${pack}/docs/${name}.md`);
      const text = res.ok ? await res.text() : "";
      const inputs = Object.values(defs[name].input ?? {}).filter((v) => v && typeof v === "object")
        .flatMap((section) => Object.keys(section));
      const hidden = Object.keys(defs[name].input?.hidden ?? {});
      out[name] = { status: res.status, title: text.split("\n")[0], display: defs[name].display_name,
        undocumented: inputs.filter((i) => !hidden.includes(i) && !text.includes(`\`${i}\``)) };
    }
    return out;
  }, MOGA_NODES);
  for (const [name, f] of Object.entries(fetched)) {
    assertEqual(f.status, 200, `${name}: help page status`);
    assertEqual(f.title, `# ${f.display}`, `${name}: help page title`);
    assertEqual(f.undocumented, [], `${name}: inputs missing from the help page`);
  }
  // and the frontend shows it: select the node, press the selection toolbox's Node Info button
  await emptyGraph();
  const id = await addNode(NODE, [260, 200]);
  await page.waitForTimeout(300);
  const rect = await nodeRect(id, 0);
  await page.mouse.click(rect.x + 80, rect.y + 12); // the title bar
  await page.locator("[data-testid=info-button]").click();
  const panel = page.locator(".markdown-content").filter({ hasText: "MoGA Multi-Shot Prompt" }).first();
  await panel.waitFor({ state: "visible", timeout: 15000 });
  const headings = await panel.locator("h1, h2").allTextContents();
  assert(headings.includes("The shot timeline"), `help panel headings: ${headings}`);
  await page.screenshot({ path: join(args.artifacts, "help_panel.png") });
  return { fetched, headings };
});

await check("group_map", async () => {
  await page.keyboard.press("Escape");
  await emptyGraph();
  const id = await addNode("MoGAApply", [60, 40]);
  const before = await page.evaluate((id) => window.comfyAPI.app.app.graph.getNodeById(id).widgets.length, id);
  // no data: nothing is added; synthetic data of the documented shape: a map is drawn
  const state = await page.evaluate((id) => {
    const node = window.comfyAPI.app.app.graph.getNodeById(id);
    node.onExecuted?.({ text: ["unrelated"] });
    const without = node.widgets.length;
    const h = 6, w = 10, m = 5;
    const ids = Array.from({ length: h * w }, (_, k) => (Math.floor(k / w) + (k % w)) % m);
    node.onExecuted?.({ moga_group_map: [{ frame: 3, block: 12, step: 20, height: h, width: w, num_groups: m, groups: ids }] });
    const canvas = node.widgets.find((x) => x.name === "moga_group_map")?.element?.querySelector("canvas");
    return { without, widgets: node.widgets.length, canvas: canvas ? [canvas.width, canvas.height] : null,
      caption: node.widgets.find((x) => x.name === "moga_group_map")?.element?.textContent ?? "",
      serialized: node.serialize().widgets_values.length };
  }, id);
  assertEqual(state.without, before, "widgets after an execution without a group map");
  assert(state.canvas && state.canvas[0] > 0, `group map canvas: ${JSON.stringify(state)}`);
  assertEqual(state.serialized, before, "widgets_values entries (the map is not saved)");
  // the run's one-line summary: shown under the map, and alone (map hidden) when a run stayed dense
  const summary = await page.evaluate((id) => {
    const node = window.comfyAPI.app.app.graph.getNodeById(id);
    const element = () => node.widgets.find((x) => x.name === "moga_group_map")?.element;
    const text = () => element()?.querySelector('[data-testid="moga-run-summary"]')?.textContent ?? null;
    const line = "MoGA: 60 sparse / 12 dense attention calls; dense: outside start/end percent 12";
    const h = 2, w = 3;
    node.onExecuted?.({ moga_group_map: [{ height: h, width: w, num_groups: 2, groups: [0, 1, 0, 1, 0, 1] }],
      moga_run: [line] });
    const withMap = { text: text(), canvasShown: element().querySelector("canvas").style.display !== "none" };
    const dense = "MoGA: 0 sparse / 30 dense attention calls; dense: below min_tokens 30";
    node.onExecuted?.({ moga_run: [dense] });
    const alone = { text: text(), canvasShown: element().querySelector("canvas").style.display !== "none" };
    return { line, dense, withMap, alone, serialized: node.serialize().widgets_values.length };
  }, id);
  assertEqual(summary.withMap.text, summary.line, "summary under the map");
  assertEqual(summary.withMap.canvasShown, true, "map shown with a summary");
  assertEqual(summary.alone.text, summary.dense, "summary of a dense run");
  assertEqual(summary.alone.canvasShown, false, "no stale map after a run without one");
  assertEqual(summary.serialized, before, "widgets_values entries (the summary is not saved)");
  return { ...state, summary };
});

await check("screenshots", async () => {
  await page.keyboard.press("Escape");
  await emptyGraph();
  await page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [0, 0];
  });
  const id = await addNode(NODE, [140, 170], {
    shots: "3s | A lighthouse keeper climbs the spiral stairs at dusk, wide shot\n" +
      "2s | Close-up: his hand turns the brass key of the lamp\n" +
      "4.5s | The beam sweeps across a stormy sea, aerial shot\n" +
      "2.5s | Dawn: the keeper sleeps in a chair, the lamp still turning",
    global_prompt: "an old lighthouse keeper with a white beard and a yellow raincoat, cinematic, 35mm film",
  });
  await page.evaluate((id) => {
    const app = window.comfyAPI.app.app;
    const node = app.graph.getNodeById(id);
    node.setSize([660, node.computeSize()[1] + 70]);
    app.canvas.deselectAll?.();
    app.canvas.setDirty(true, true);
  }, id);
  await page.waitForTimeout(500);
  const shots = join(args.screenshots, "shot_timeline.png");
  await page.screenshot({ path: shots, clip: await nodeRect(id) });
  // the editor open on shot 3
  const tl = timeline(id);
  await tl.locator('.moga-tl-shot[data-index="2"]').click({ position: { x: 12, y: 30 } });
  await page.waitForTimeout(300);
  const editor = join(args.screenshots, "shot_timeline_editor.png");
  await page.screenshot({ path: editor, clip: await nodeRect(id) });
  await page.keyboard.press("Escape");
  return { files: [shots, editor] };
});

report.pageErrors = pageErrors;
writeFileSync(args.report, JSON.stringify(report, null, 1));
await context.close();
rmSync(profile, { recursive: true, force: true });
const failed = Object.entries(report.checks).filter(([, c]) => !c.ok).map(([n]) => n);
console.log(failed.length ? `failed: ${failed.join(", ")}` : "all browser checks passed");
process.exit(failed.length ? 1 : 0);
