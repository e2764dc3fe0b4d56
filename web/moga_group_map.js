// MoGA group map: which group the router sent each token of one latent frame to, drawn on the node after a run.
//
// Dormant until a MoGA node sends the data. A node that wants the map returns, in its UI output:
//
//   ui = {"moga_group_map": [{"frame": 3, "block": 12, "step": 20,        # what the map shows (for the caption)
//                             "height": 30, "width": 52,                 # token grid of one latent frame (H, W)
//                             "num_groups": 5,                           # M
//                             "groups": [0, 4, 4, 1, ...]}]}             # H*W group ids, row-major
//
// (one entry; more are ignored), and/or
//
//   ui = {"moga_run": ["MoGA: 60 sparse / 12 dense attention calls; ..."]}   # one line on what MoGA did
//
// Nothing is serialized: the view is of the last run.

import { app } from "../../scripts/app.js";

const EXTENSION = "moga.GroupMap";
const WIDGET_NAME = "moga_group_map";
const LOADED = Symbol.for("moga.groupMap.loaded");
const MAX_HEIGHT = 240;

const CSS = `
.moga-gm { box-sizing: border-box; display: flex; flex-direction: column; gap: 3px; padding: 2px;
  font: 11px/1.3 system-ui, sans-serif; color: var(--descrip-text, #999); overflow: hidden; }
.moga-gm canvas { width: 100%; min-height: 0; flex: 1; object-fit: contain; image-rendering: pixelated;
  border-radius: 4px; background: var(--comfy-input-bg, #222); }
.moga-gm-legend { display: flex; flex-wrap: wrap; gap: 2px 8px; }
.moga-gm-swatch { display: inline-block; width: 9px; height: 9px; border-radius: 2px; margin-right: 3px;
  vertical-align: -1px; }
`;

function groupColor(g, m) {
  const hue = (g * 360) / Math.max(m, 1) + (g % 2) * 17;
  return `hsl(${hue.toFixed(0)} 70% ${g % 2 ? 48 : 60}%)`;
}

/** A valid map entry from a node's UI output, or null. */
export function readGroupMap(output) {
  const entry = output?.moga_group_map?.[0];
  if (!entry || typeof entry !== "object") return null;
  const height = Number(entry.height);
  const width = Number(entry.width);
  const m = Number(entry.num_groups);
  const groups = entry.groups;
  if (!(height > 0 && width > 0 && m > 0) || !Array.isArray(groups) || groups.length !== height * width) return null;
  return { ...entry, height, width, num_groups: m };
}

function draw(widget, map, run) {
  const { canvas, caption, legend, summary } = widget.parts;
  summary.textContent = run ?? "";
  canvas.style.display = map ? "" : "none";
  if (!map) {
    caption.textContent = "";
    legend.replaceChildren();
    widget.aspect = 0;
    return;
  }
  const cell = Math.max(2, Math.floor(480 / map.width));
  canvas.width = map.width * cell;
  canvas.height = map.height * cell;
  const ctx = canvas.getContext("2d");
  const counts = new Array(map.num_groups).fill(0);
  for (let y = 0; y < map.height; y++) {
    for (let x = 0; x < map.width; x++) {
      const g = map.groups[y * map.width + x];
      if (g >= 0 && g < map.num_groups) counts[g] += 1;
      ctx.fillStyle = g >= 0 && g < map.num_groups ? groupColor(g, map.num_groups) : "#000";
      ctx.fillRect(x * cell, y * cell, cell, cell);
    }
  }
  const where = [map.frame != null && `latent frame ${map.frame}`, map.block != null && `block ${map.block}`,
    map.step != null && `step ${map.step}`].filter(Boolean).join(" · ");
  caption.textContent = `MoGA groups${where ? ` — ${where}` : ""} (${map.width}×${map.height} tokens, ` +
    `${map.num_groups} groups)`;
  legend.replaceChildren(...counts.map((n, g) => {
    const item = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.className = "moga-gm-swatch";
    swatch.style.background = groupColor(g, map.num_groups);
    item.append(swatch, `${g}: ${((100 * n) / map.groups.length).toFixed(0)}%`);
    return item;
  }));
  widget.aspect = map.height / map.width;
}

function ensureWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (widget) return widget;
  const root = document.createElement("div");
  root.className = "moga-gm";
  root.dataset.testid = "moga-group-map";
  const caption = document.createElement("div");
  const canvas = document.createElement("canvas");
  const legend = document.createElement("div");
  legend.className = "moga-gm-legend";
  const summary = document.createElement("div");
  summary.dataset.testid = "moga-run-summary";
  root.append(caption, canvas, legend, summary);
  widget = node.addDOMWidget(WIDGET_NAME, "moga_group_map", root, {
    serialize: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => Math.min(MAX_HEIGHT, 64 + (node.size[0] - 20) * (widget?.aspect ?? 0.5)),
  });
  widget.serialize = false;
  widget.parts = { canvas, caption, legend, summary };
  return widget;
}

function show(node, map, run) {
  const widget = ensureWidget(node);
  draw(widget, map, run);
  const min = node.computeSize();
  node.setSize([Math.max(node.size[0], min[0]), Math.max(node.size[1], min[1])]);
  node.setDirtyCanvas?.(true, true);
}

if (!globalThis[LOADED]) {
  globalThis[LOADED] = true;
  const style = document.createElement("style");
  style.id = "moga-group-map-style";
  style.textContent = CSS;
  document.head.appendChild(style);
  app.registerExtension({
    name: EXTENSION,
    nodeCreated(node) {
      const cls = node.comfyClass ?? node.constructor?.comfyClass ?? "";
      if (!cls.startsWith("MoGA")) return;
      const previous = node.onExecuted;
      node.onExecuted = function (output) {
        const result = previous?.apply(this, arguments);
        const map = readGroupMap(output);
        const run = typeof output?.moga_run?.[0] === "string" ? output.moga_run[0] : null;
        if (map || run) show(this, map, run);
        return result;
      };
    },
  });
}
