// MoGA shot timeline: a visual editor for MoGAMultiShotPrompt's `shots` text.
//
// The node's `shots` widget stays the single source of truth. The timeline reads it (web/shot_plan.js, the twin of
// nodes/shots.py), draws one block per shot sized by its frames, and every edit (add, delete, move, resize, edit the
// prompt or the duration) writes the text back: an edited shot becomes a canonical line "3s | prompt" (or "33f |
// prompt"), untouched lines and comments stay as typed. Typing in the text box redraws the timeline. The timeline
// widget is not serialized (no widgets_values entry, nothing in the API prompt), so saved workflows are unchanged.

import { app } from "../../scripts/app.js";
import * as sp from "./shot_plan.js";

const EXTENSION = "moga.ShotTimeline";
const NODE_CLASS = "MoGAMultiShotPrompt";
const WIDGET_NAME = "moga_shot_timeline";
const MIN_NODE_WIDTH = 480;
const BASE_HEIGHT = 150; // header + bar + ruler + status
const EDITOR_HEIGHT = 96;

// ComfyUI lists every .js file of each registered web folder; a pack whose pyproject names its web folder is
// registered under two names, so this module can be loaded twice. Register once.
const LOADED = Symbol.for("moga.shotTimeline.loaded");

const CSS = `
.moga-tl { box-sizing: border-box; display: flex; flex-direction: column; gap: 4px; padding: 4px 2px 2px;
  font: 12px/1.3 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--input-text, #ddd);
  user-select: none; overflow: hidden; }
.moga-tl * { box-sizing: border-box; }
.moga-tl-head { display: flex; align-items: center; gap: 8px; min-height: 22px; }
.moga-tl-title { font-weight: 600; white-space: nowrap; }
.moga-tl-totals { flex: 1; color: var(--descrip-text, #999); white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.moga-tl-btn { cursor: pointer; border: 1px solid var(--border-color, #4e4e4e); border-radius: 4px;
  background: var(--comfy-menu-bg, #353535); color: var(--input-text, #ddd); font: inherit; padding: 1px 8px; }
.moga-tl-btn:hover { filter: brightness(1.3); }
.moga-tl-btn:disabled { opacity: 0.4; cursor: default; filter: none; }
.moga-tl-bar { position: relative; height: 58px; border-radius: 5px; overflow: hidden;
  background: var(--comfy-input-bg, #222); border: 1px solid var(--border-color, #4e4e4e); }
.moga-tl-shot { position: absolute; top: 0; bottom: 0; overflow: hidden; cursor: grab; padding: 4px 10px 3px 6px;
  border-right: 1px solid rgba(0, 0, 0, 0.55); color: #f2f2f2; touch-action: none; }
.moga-tl-shot.moga-selected { box-shadow: inset 0 0 0 2px #fff; }
.moga-tl-shot.moga-dragging { opacity: 0.85; z-index: 3; cursor: grabbing; box-shadow: 0 0 8px #000; }
.moga-tl-shot-head { font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.moga-tl-shot-text { opacity: 0.9; font-size: 11px; line-height: 1.25; overflow: hidden; display: -webkit-box;
  -webkit-line-clamp: 2; -webkit-box-orient: vertical; word-break: break-word; }
.moga-tl-tools { position: absolute; right: 9px; top: 2px; display: none; gap: 2px; }
.moga-tl-shot:hover .moga-tl-tools { display: flex; }
.moga-tl-tool { cursor: pointer; border: none; border-radius: 3px; background: rgba(0, 0, 0, 0.45); color: #fff;
  font: 11px/1 system-ui, sans-serif; padding: 2px 4px; }
.moga-tl-tool:hover { background: rgba(0, 0, 0, 0.8); }
.moga-tl-handle { position: absolute; top: 0; right: 0; bottom: 0; width: 8px; cursor: ew-resize;
  background: linear-gradient(90deg, transparent 0, transparent 3px, rgba(255, 255, 255, 0.45) 3px,
  rgba(255, 255, 255, 0.45) 5px, transparent 5px); touch-action: none; z-index: 2; }
.moga-tl-handle:hover { background: rgba(255, 255, 255, 0.35); }
.moga-tl-cutline { position: absolute; top: 0; bottom: 0; width: 0; border-left: 2px dashed #ffb347;
  pointer-events: none; z-index: 2; }
.moga-tl-drop { position: absolute; top: -2px; bottom: -2px; width: 3px; background: #fff; z-index: 4;
  pointer-events: none; display: none; }
.moga-tl-ruler { position: relative; height: 16px; color: var(--descrip-text, #999); font-size: 10px; }
.moga-tl-tick { position: absolute; top: 0; height: 5px; border-left: 1px solid var(--descrip-text, #999); }
.moga-tl-tick.moga-moved { border-left: 2px solid #ffb347; }
.moga-tl-label { position: absolute; top: 4px; white-space: nowrap; transform: translateX(-50%); }
.moga-tl-label.moga-moved { color: #ffb347; }
.moga-tl-label.moga-start { transform: none; }
.moga-tl-label.moga-end { transform: translateX(-100%); }
.moga-tl-status { color: var(--descrip-text, #999); font-size: 11px; line-height: 1.3; max-height: 30px;
  overflow: hidden; white-space: pre-line; }
.moga-tl-status.moga-error { color: var(--error-text, #f44); }
.moga-tl-editor { display: none; flex-direction: column; gap: 4px; padding: 5px; border-radius: 5px;
  border: 1px solid var(--border-color, #4e4e4e); background: var(--comfy-menu-bg, #353535); }
.moga-tl-editor.moga-open { display: flex; }
.moga-tl-editor-row { display: flex; gap: 6px; align-items: center; }
.moga-tl-editor label { color: var(--descrip-text, #999); white-space: nowrap; }
.moga-tl-editor textarea, .moga-tl-editor input { font: inherit; color: var(--input-text, #ddd);
  background: var(--comfy-input-bg, #222); border: 1px solid var(--border-color, #4e4e4e); border-radius: 4px;
  padding: 2px 5px; user-select: text; }
.moga-tl-editor textarea { flex: 1; resize: none; height: 38px; }
.moga-tl-editor input { width: 70px; }
.moga-tl-editor-msg { flex: 1; color: var(--error-text, #f44); white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
`;

function injectStyle() {
  if (document.getElementById("moga-timeline-style")) return;
  const style = document.createElement("style");
  style.id = "moga-timeline-style";
  style.textContent = CSS;
  document.head.appendChild(style);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function shotColor(i) {
  const hue = (205 + i * 137.508) % 360; // golden angle: neighbours never look alike
  return `hsl(${hue.toFixed(1)} 42% 34%)`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** The timeline of one MoGAMultiShotPrompt node. */
class ShotTimeline {
  constructor(node) {
    this.node = node;
    this.doc = null; // sp.readDocument() of the current text, or null when it does not parse
    this.plan = null;
    this.error = "";
    this.lastText = null;
    this.lastFps = null;
    this.selected = -1; // shot whose editor is open
    this.drag = null;
    this.build();
  }

  // ---- widgets -------------------------------------------------------------------------------------------------
  widget(name) {
    return this.node.widgets?.find((w) => w.name === name);
  }

  get text() {
    const value = this.widget("shots")?.value;
    return typeof value === "string" ? value : "";
  }

  get fps() {
    const value = Number(this.widget("fps")?.value);
    return Number.isFinite(value) && value > 0 ? value : 16;
  }

  /** Whether `shots` is fed by a link (then the widget text is not what runs, and editing it would mislead). */
  get linked() {
    const input = this.node.inputs?.find((i) => i.name === "shots" || i.widget?.name === "shots");
    return input?.link != null;
  }

  // ---- DOM -----------------------------------------------------------------------------------------------------
  build() {
    const root = (this.root = el("div", "moga-tl"));
    root.dataset.testid = "moga-shot-timeline";
    const head = el("div", "moga-tl-head");
    head.append(el("span", "moga-tl-title", "Shots"));
    this.totals = el("span", "moga-tl-totals");
    this.addButton = el("button", "moga-tl-btn", "+ Shot");
    this.addButton.title = "Add a shot at the end";
    this.addButton.dataset.action = "add";
    this.addButton.addEventListener("click", (e) => {
      e.stopPropagation();
      this.addShot();
    });
    head.append(this.totals, this.addButton);

    this.bar = el("div", "moga-tl-bar");
    this.dropMarker = el("div", "moga-tl-drop");
    this.ruler = el("div", "moga-tl-ruler");
    this.status = el("div", "moga-tl-status");
    this.editor = this.buildEditor();
    root.append(head, this.bar, this.ruler, this.editor, this.status);

    // the canvas zooms on ctrl+wheel; let it, and keep plain wheel scrolling the canvas too
    root.addEventListener("wheel", (e) => {
      if (e.target instanceof HTMLTextAreaElement) return;
      e.preventDefault();
      app.canvas?.processMouseWheel?.(e);
    }, { passive: false });
  }

  buildEditor() {
    const box = el("div", "moga-tl-editor");
    const row1 = el("div", "moga-tl-editor-row");
    this.editorLabel = el("label", null, "Shot");
    this.promptInput = el("textarea");
    this.promptInput.placeholder = "What happens in this shot";
    this.promptInput.dataset.field = "prompt";
    row1.append(this.editorLabel, this.promptInput);
    const row2 = el("div", "moga-tl-editor-row");
    const durLabel = el("label", null, "Duration");
    this.durationInput = el("input");
    this.durationInput.dataset.field = "duration";
    this.durationInput.title = "Seconds (3s, 2.5) or frames (33f)";
    this.editorMsg = el("span", "moga-tl-editor-msg");
    const save = el("button", "moga-tl-btn", "Save");
    save.dataset.action = "save";
    const cancel = el("button", "moga-tl-btn", "Cancel");
    const del = el("button", "moga-tl-btn", "Delete");
    del.dataset.action = "delete";
    save.addEventListener("click", () => this.saveEditor());
    cancel.addEventListener("click", () => this.closeEditor());
    del.addEventListener("click", () => this.deleteShot(this.selected));
    row2.append(durLabel, this.durationInput, this.editorMsg, save, cancel, del);
    for (const input of [this.promptInput, this.durationInput]) {
      input.addEventListener("keydown", (e) => {
        e.stopPropagation(); // keep ComfyUI's shortcuts (Delete removes nodes, Ctrl+Enter queues) out of the editor
        if (e.key === "Enter" && !e.shiftKey) {
          e.preventDefault();
          this.saveEditor();
        } else if (e.key === "Escape") {
          e.preventDefault();
          this.closeEditor();
        }
      });
    }
    box.append(row1, row2);
    return box;
  }

  // ---- state ---------------------------------------------------------------------------------------------------
  /** Re-read the widget (when its text or fps changed, or when forced) and redraw. */
  refresh(force = false) {
    const text = this.text;
    const fps = this.fps;
    if (!force && text === this.lastText && fps === this.lastFps) return;
    this.lastText = text;
    this.lastFps = fps;
    this.doc = null;
    this.plan = null;
    this.error = "";
    try {
      this.doc = sp.readDocument(text, fps);
      this.plan = sp.planShots(sp.parseShots(text, fps), fps);
    } catch (err) {
      if (!(err instanceof sp.ShotPlanError)) throw err;
      this.error = err.message;
    }
    if (this.selected >= (this.doc?.shots.length ?? 0)) this.closeEditor(false);
    this.render();
  }

  /** Write the document back to the widget (the source of truth) and redraw from it. */
  commit(doc) {
    const text = sp.writeDocument(doc);
    const widget = this.widget("shots");
    if (!widget) return;
    widget.value = text; // updates the text box; its callback redraws us
    this.refresh(true);
    this.node.setDirtyCanvas?.(true, true);
    this.node.graph?.change?.();
  }

  frames(shot) {
    return sp.shotFrames(shot, this.fps);
  }

  // ---- drawing -------------------------------------------------------------------------------------------------
  render(scaleFrames = null) {
    const { doc, plan } = this;
    this.root.dataset.nodeId = String(this.node.id);
    const editable = !!doc && !this.linked;
    this.addButton.disabled = !editable;
    this.bar.replaceChildren();
    this.ruler.replaceChildren();
    if (!doc) {
      this.totals.textContent = "";
      this.setStatus(this.error, true);
      return;
    }
    const frames = doc.shots.map((s) => this.frames(s));
    const total = frames.reduce((a, b) => a + b, 0);
    const scale = scaleFrames ?? total;
    if (plan) {
      const seconds = sp.pyFixed(plan.numFrames / plan.fps, 2);
      this.totals.textContent = `${plural(plan.shots.length, "shot")} · ${seconds} s · ${plan.numFrames} frames · ` +
        `${plan.numLatentFrames} latent frames`;
      this.totals.title = sp.describePlan(plan);
    } else {
      this.totals.textContent = `${plural(doc.shots.length, "shot")} · ${total} frames`;
      this.totals.title = "";
    }

    let start = 0;
    doc.shots.forEach((shot, i) => {
      const block = el("div", "moga-tl-shot");
      block.dataset.index = String(i);
      block.style.left = `${(100 * start) / scale}%`;
      block.style.width = `${(100 * frames[i]) / scale}%`;
      block.style.background = shotColor(i);
      if (i === this.selected) block.classList.add("moga-selected");
      const head = el("div", "moga-tl-shot-head", `${i + 1} · ${sp.formatDuration(shot)}`);
      const text = el("div", "moga-tl-shot-text", shot.prompt);
      block.title = `Shot ${i + 1}: ${sp.formatDuration(shot)} = ${frames[i]} frames` +
        (plan ? `, latent frames ${sp.latentRanges(plan)[i].join("–")} (end exclusive)` : "") +
        `\n${shot.prompt}\n\nClick to edit, drag to move, drag the right edge to change the length.`;
      block.append(head, text);
      if (editable) {
        const tools = el("div", "moga-tl-tools");
        tools.append(
          this.tool("◀", "Move earlier", "left", () => this.moveShot(i, i - 1), i === 0),
          this.tool("▶", "Move later", "right", () => this.moveShot(i, i + 1), i === doc.shots.length - 1),
          this.tool("✕", "Delete this shot", "delete", () => this.deleteShot(i), doc.shots.length === 1),
        );
        const handle = el("div", "moga-tl-handle");
        handle.title = "Drag to change the length (Shift: finer steps)";
        handle.addEventListener("pointerdown", (e) => this.startResize(e, i));
        block.addEventListener("pointerdown", (e) => this.startMove(e, i));
        block.append(tools, handle);
      }
      this.bar.append(block);
      start += frames[i];
    });
    this.bar.append(this.dropMarker);

    // where the model cuts: latent-frame boundaries (nodes/shots.py rounding), marked on the ruler; a cut that moved
    // away from the shot boundary also gets a dashed line across the bar
    const barWidth = this.bar.clientWidth || 400;
    const labels = [{ at: 0, text: "0", cls: "moga-start" }];
    if (plan) {
      plan.latentStarts.slice(1).forEach((latent, k) => {
        const frame = sp.firstFrameOfLatent(latent);
        const moved = frame !== plan.frameStarts[k + 1];
        const x = (100 * frame) / scale;
        const tick = el("div", `moga-tl-tick${moved ? " moga-moved" : ""}`);
        tick.style.left = `${x}%`;
        tick.title = `cut before shot ${k + 2}: frame ${frame}, latent frame ${latent}` +
          (moved ? ` (shot boundary at frame ${plan.frameStarts[k + 1]})` : "");
        this.ruler.append(tick);
        labels.push({ at: x, text: `${frame}`, cls: moved ? "moga-moved" : "", title: tick.title });
        if (moved) {
          const line = el("div", "moga-tl-cutline");
          line.style.left = `${x}%`;
          this.bar.append(line);
        }
      });
      labels.push({ at: (100 * plan.numFrames) / scale, text: `${plan.numFrames} f`, cls: "moga-end" });
    }
    // labels: the start and the end always; a cut's label only where it does not crowd its neighbours
    const px = (label) => (label.at / 100) * barWidth;
    const end = labels.length > 1 ? labels[labels.length - 1] : null;
    let lastPx = -Infinity;
    for (const label of labels) {
      const isEdge = label === labels[0] || label === end;
      if (!isEdge && (px(label) - lastPx < 34 || (end && px(end) - px(label) < 44))) continue;
      const node = el("span", `moga-tl-label ${label.cls}`, label.text);
      node.style.left = `${label.at}%`;
      if (label.title) node.title = label.title;
      this.ruler.append(node);
      lastPx = px(label);
    }

    if (this.linked) this.setStatus("shots come from a link: the timeline shows the text box, which is not used", false);
    else if (this.error) this.setStatus(this.error, true);
    else this.setStatus(this.summary(total), false, plan?.notes.join("\n") ?? "");
  }

  /** One short line about the rounding (the full notes of nodes/shots.py are in the tooltip). */
  summary(total) {
    const plan = this.plan;
    if (!plan) return "";
    const parts = [];
    const moved = plan.latentStarts.slice(1).filter((l, k) => sp.firstFrameOfLatent(l) !== plan.frameStarts[k + 1]);
    if (moved.length) {
      parts.push(`${plural(moved.length, "cut")} moved to the nearest latent frame (orange)`);
    } else if (plan.shots.length > 1) parts.push("every cut is on a latent frame");
    if (plan.numFrames !== total) {
      parts.push(`last ${plural(total - plan.numFrames, "frame")} dropped (4k+1 frames)`);
    }
    return parts.join(" · ");
  }

  tool(label, title, action, fn, disabled) {
    const b = el("button", "moga-tl-tool", label);
    b.title = title;
    b.dataset.action = action;
    b.disabled = disabled;
    if (disabled) b.style.opacity = "0.35";
    b.addEventListener("pointerdown", (e) => e.stopPropagation());
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      if (!disabled) fn();
    });
    return b;
  }

  setStatus(text, isError, details = "") {
    this.status.textContent = text;
    this.status.classList.toggle("moga-error", !!isError);
    this.status.title = details || text;
  }

  // ---- edits ---------------------------------------------------------------------------------------------------
  addShot() {
    if (!this.doc || this.linked) return;
    const last = this.doc.shots[this.doc.shots.length - 1];
    const shot = last?.unit === "f" ? sp.newShot("new shot", 32, "f") : sp.newShot("new shot", 2, "s");
    this.doc.shots.push(shot);
    this.commit(this.doc);
    this.openEditor(this.doc.shots.length - 1, true);
  }

  deleteShot(i) {
    if (!this.doc || this.doc.shots.length <= 1 || i < 0 || i >= this.doc.shots.length) return;
    const [removed] = this.doc.shots.splice(i, 1);
    // comments above the removed shot stay where they were
    if (removed.leading.length) {
      if (i < this.doc.shots.length) this.doc.shots[i].leading = [...removed.leading, ...this.doc.shots[i].leading];
      else this.doc.trailing = [...removed.leading, ...this.doc.trailing];
    }
    this.closeEditor(false);
    this.commit(this.doc);
  }

  moveShot(from, to) {
    if (!this.doc || to < 0 || to >= this.doc.shots.length || from === to) return;
    const [shot] = this.doc.shots.splice(from, 1);
    this.doc.shots.splice(to, 0, shot);
    if (this.selected === from) this.selected = to;
    this.commit(this.doc);
  }

  setDuration(i, value, unit) {
    const shot = this.doc.shots[i];
    if (shot.value === value && shot.unit === unit) return false;
    shot.value = value;
    shot.unit = unit;
    shot.raw = null;
    return true;
  }

  // ---- resize by the right edge --------------------------------------------------------------------------------
  startResize(e, i) {
    if (e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    const shot = this.doc.shots[i];
    const total = this.doc.shots.reduce((a, s) => a + this.frames(s), 0);
    const rect = this.bar.getBoundingClientRect(); // screen pixels (the canvas zoom is in here)
    this.drag = {
      kind: "resize", index: i, x0: e.clientX, pxPerFrame: rect.width / total, scale: total,
      frames0: this.frames(shot), unit: shot.unit, value0: shot.value, changed: false,
    };
    // the bar is redrawn while dragging (the handle element is replaced), so listen on the window
    const move = (ev) => this.resizeMove(ev);
    const up = () => {
      window.removeEventListener("pointermove", move, true);
      window.removeEventListener("pointerup", up, true);
      window.removeEventListener("pointercancel", up, true);
      const drag = this.drag;
      this.drag = null;
      if (drag?.changed) this.commit(this.doc);
      else this.render();
    };
    window.addEventListener("pointermove", move, true);
    window.addEventListener("pointerup", up, true);
    window.addEventListener("pointercancel", up, true);
  }

  resizeMove(e) {
    const d = this.drag;
    if (!d) return;
    const frames = d.frames0 + (e.clientX - d.x0) / d.pxPerFrame;
    let value;
    if (d.unit === "f") {
      const step = e.shiftKey ? 1 : 4; // 4 frames = one latent frame
      value = Math.max(1, Math.round(frames / step) * step);
    } else {
      const step = e.shiftKey ? 0.01 : 0.1;
      value = Math.max(step, Math.round(frames / this.fps / step) * step);
      value = Number(value.toFixed(3));
    }
    if (this.setDuration(d.index, value, d.unit)) {
      d.changed = true;
      // live: the text box follows the drag; the bar keeps its scale until the button is released
      const widget = this.widget("shots");
      const text = sp.writeDocument(this.doc);
      if (widget) widget.value = text;
      this.lastText = text;
      try {
        this.plan = sp.planShots(sp.parseShots(text, this.fps), this.fps);
        this.error = "";
      } catch (err) {
        this.plan = null;
        this.error = err.message;
      }
      const total = this.doc.shots.reduce((a, s) => a + this.frames(s), 0);
      this.render(Math.max(d.scale, total));
    }
  }

  // ---- move by dragging a block, or click to edit ------------------------------------------------------------
  startMove(e, i) {
    if (e.button !== 0 || this.drag) return;
    e.stopPropagation();
    const block = e.currentTarget;
    const barRect = this.bar.getBoundingClientRect();
    this.drag = { kind: "move", index: i, x0: e.clientX, moved: false, block, barRect, target: i };
    const move = (ev) => {
      const d = this.drag;
      if (!d) return;
      const dx = ev.clientX - d.x0;
      if (!d.moved && Math.abs(dx) < 5) return;
      d.moved = true;
      block.classList.add("moga-dragging");
      block.style.transform = `translateX(${dx / (barRect.width / this.bar.clientWidth || 1)}px)`;
      d.target = this.dropIndex(ev.clientX, i);
      this.showDrop(d.target, i);
    };
    const up = (ev) => {
      window.removeEventListener("pointermove", move, true);
      window.removeEventListener("pointerup", up, true);
      window.removeEventListener("pointercancel", up, true);
      const d = this.drag;
      this.drag = null;
      this.dropMarker.style.display = "none";
      if (!d) return;
      if (!d.moved) {
        if (ev.type === "pointerup") this.openEditor(i);
        return;
      }
      block.classList.remove("moga-dragging");
      block.style.transform = "";
      if (d.target !== i) this.moveShot(i, d.target);
      else this.render();
    };
    window.addEventListener("pointermove", move, true);
    window.addEventListener("pointerup", up, true);
    window.addEventListener("pointercancel", up, true);
  }

  /** The index the dragged shot `from` takes when dropped at screen x. */
  dropIndex(clientX, from) {
    const blocks = [...this.bar.querySelectorAll(".moga-tl-shot")].filter((b) => Number(b.dataset.index) !== from);
    let index = 0;
    for (const b of blocks) {
      const r = b.getBoundingClientRect();
      if (clientX > r.left + r.width / 2) index += 1;
    }
    return index;
  }

  showDrop(target, from) {
    const others = [...this.bar.querySelectorAll(".moga-tl-shot")].filter((b) => Number(b.dataset.index) !== from);
    let leftPct;
    if (target >= others.length) {
      const last = others[others.length - 1];
      leftPct = last ? parseFloat(last.style.left) + parseFloat(last.style.width) : 0;
    } else leftPct = parseFloat(others[target].style.left);
    this.dropMarker.style.left = `calc(${leftPct}% - 1px)`;
    this.dropMarker.style.display = "block";
  }

  // ---- the prompt/duration editor ------------------------------------------------------------------------------
  openEditor(i, selectAll = false) {
    if (!this.doc || this.linked || i < 0 || i >= this.doc.shots.length) return;
    const shot = this.doc.shots[i];
    const wasOpen = this.selected >= 0;
    this.selected = i;
    this.editorLabel.textContent = `Shot ${i + 1}`;
    this.promptInput.value = shot.prompt;
    this.durationInput.value = sp.formatDuration(shot);
    this.editorMsg.textContent = "";
    this.editor.classList.add("moga-open");
    if (!wasOpen) this.resizeNode(EDITOR_HEIGHT);
    this.render();
    requestAnimationFrame(() => {
      this.promptInput.focus();
      if (selectAll) this.promptInput.select();
    });
  }

  closeEditor(redraw = true) {
    const wasOpen = this.selected >= 0;
    this.selected = -1;
    this.editor.classList.remove("moga-open");
    if (wasOpen) this.resizeNode(-EDITOR_HEIGHT);
    if (redraw && this.doc) this.render();
  }

  saveEditor() {
    const i = this.selected;
    if (!this.doc || i < 0 || i >= this.doc.shots.length) return this.closeEditor();
    const prompt = sp.cleanPrompt(this.promptInput.value);
    if (!prompt) {
      this.editorMsg.textContent = "the prompt is empty";
      return;
    }
    const duration = sp.parseDuration(this.durationInput.value);
    if (!duration) {
      this.editorMsg.textContent = "duration: seconds (3s, 2.5) or whole frames (33f)";
      return;
    }
    const shot = this.doc.shots[i];
    const changed = this.setDuration(i, duration.value, duration.unit) || shot.prompt !== prompt;
    if (shot.prompt !== prompt) {
      shot.prompt = prompt;
      shot.raw = null;
    }
    this.closeEditor(false);
    if (changed) this.commit(this.doc);
    else this.render();
  }

  // ---- size ----------------------------------------------------------------------------------------------------
  get height() {
    return BASE_HEIGHT + (this.selected >= 0 ? EDITOR_HEIGHT : 0);
  }

  /** Grow or shrink the node by `delta` px (the editor's height), never below what its widgets need. */
  resizeNode(delta) {
    const node = this.node;
    const min = node.computeSize?.() ?? [0, 0];
    node.setSize?.([Math.max(node.size[0], min[0], MIN_NODE_WIDTH), Math.max(node.size[1] + delta, min[1])]);
    node.setDirtyCanvas?.(true, true);
  }
}

function chainCallback(object, name, fn) {
  const previous = object[name];
  object[name] = function (...args) {
    const result = previous?.apply(this, args);
    fn.apply(this, args);
    return result;
  };
}

function attachTimeline(node) {
  if (node.__mogaTimeline || !node.addDOMWidget) return;
  const timeline = new ShotTimeline(node);
  node.__mogaTimeline = timeline;
  const widget = node.addDOMWidget(WIDGET_NAME, "moga_shot_timeline", timeline.root, {
    serialize: false, // not in the API prompt
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => timeline.height,
    getMaxHeight: () => timeline.height,
  });
  widget.serialize = false; // not in widgets_values: saved workflows stay exactly as without the extension
  timeline.domWidget = widget;

  for (const name of ["shots", "fps"]) {
    const w = timeline.widget(name);
    if (w) chainCallback(w, "callback", () => timeline.refresh());
  }
  // a safety net for changes that bypass the widget callbacks (undo, paste, links, other extensions)
  chainCallback(node, "onDrawForeground", () => timeline.refresh());
  chainCallback(node, "onConfigure", () => requestAnimationFrame(() => timeline.refresh(true)));
  chainCallback(node, "onConnectionsChange", () => timeline.render());
  chainCallback(node, "onResize", () => {
    if (timeline.doc) requestAnimationFrame(() => timeline.render());
  });

  // a new node gets room for a few lines of shots (a loaded node gets its saved size afterwards)
  const min = node.computeSize();
  node.setSize([Math.max(node.size[0], min[0], MIN_NODE_WIDTH), Math.max(node.size[1], min[1] + 60)]);
  timeline.refresh(true);
  // the bar's width is known only once the frontend has placed the element
  requestAnimationFrame(() => timeline.render());
}

if (!globalThis[LOADED]) {
  globalThis[LOADED] = true;
  injectStyle();
  app.registerExtension({
    name: EXTENSION,
    nodeCreated(node) {
      if (node.comfyClass === NODE_CLASS || node.constructor?.comfyClass === NODE_CLASS) attachTimeline(node);
    },
  });
}

export { ShotTimeline };
