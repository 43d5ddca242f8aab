// The dashboard of `autoresearch serve`: fetches /api/... and draws it.
//
// Everything drawn here comes from candidates and proposers and is untrusted, so data only
// ever becomes text (textContent, text nodes, attribute values of our own choosing): no
// markup is ever built from it. The server's Content-Security-Policy backs this up.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f77b4", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#bcbd22", "#8c564b", "#2ca02c"];
const MANUAL_COLOR = "#4d4d4d"; // `autoresearch run` experiments, as in `autoresearch plot`
const FAILED = ["crash", "timeout", "invalid"];
const PLOT = { width: 1000, left: 84, right: 16, top: 14, main: 300, row: 16, gap: 28, bottom: 30 };
const REFRESH_MS = 300; // changes closer together than this are drawn once
const PYTHON_KEYWORDS = new Set(("False None True and as assert async await break class continue def del elif else " +
  "except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield").split(" "));
const PYTHON_BUILTINS = new Set(("abs all any bool dict enumerate float int len list max min print range " +
  "round set sorted str sum super tuple type zip isinstance getattr setattr open").split(" "));

// --------------------------------------------------------------------------- small helpers

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

const fixed = (v, digits = 6) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const signed = (v) => (v === null || v === undefined ? "–" : (v > 0 ? "+" : "") + Number(v).toFixed(6));
const ref = (row) => (row.tag ? `${row.tag}/${row.id}` : row.id);
const experimentHref = (row) => "/experiment?" + new URLSearchParams({ id: ref(row) });
const params = () => new URLSearchParams(location.search);

function duration(seconds) {
  seconds = Math.max(0, seconds);
  if (seconds < 90) return `${seconds.toFixed(0)} s`;
  if (seconds < 90 * 60) return `${(seconds / 60).toFixed(0)} min`;
  if (seconds < 48 * 3600) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

function when(unix) {
  return new Date(unix * 1000).toLocaleString();
}

function deltaText(row) {
  if (row.delta === null) return "–";
  if (row.id === row.baseline) return "baseline";
  return signed(row.delta) + (row.worse_than_baseline ? " worse" : "");
}

function badge(status) {
  return el("span", { class: `badge status-${status}`, text: status });
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function proposerColors(rows) {
  const colors = new Map();
  for (const row of rows) {
    const name = row.proposer || "manual";
    if (!colors.has(name)) {
      const automatic = [...colors.keys()].filter((n) => n !== "manual").length;
      colors.set(name, name === "manual" ? MANUAL_COLOR : PALETTE[automatic % PALETTE.length]);
    }
  }
  return colors;
}

function table(headers, rows, className) {
  return el("table", { class: className },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows));
}

function pairs(entries) {
  return el("table", { class: "pairs" }, el("tbody", {},
    entries.map(([key, value]) => el("tr", {}, el("th", { text: key }),
      el("td", {}, value instanceof Node ? value : String(value))))));
}

function section(title, ...children) {
  return el("section", {}, el("h2", { text: title }), ...children);
}

function tagPicker(tags, current, page) {
  if (tags.length < 2) return null;
  const select = el("select", {
    "aria-label": "evolve run",
    onchange: () => { location.search = "?" + new URLSearchParams({ tag: select.value }); },
  }, tags.map((t) => el("option", { value: t, text: t || "(autoresearch run)", selected: t === current })));
  return el("label", { class: "picker" }, `${page} of `, select);
}

// --------------------------------------------------------------------------- the progress plot

function progressPlot(data) {
  const rows = data.experiments;
  const colors = proposerColors(rows);
  const failed = rows.some((r) => r.val_bpb === null);
  const height = PLOT.top + PLOT.main + (failed ? PLOT.gap + FAILED.length * PLOT.row : 0) + PLOT.bottom;
  const plot = svg("svg", { viewBox: `0 0 ${PLOT.width} ${height}`, class: "plot", role: "img",
    "aria-label": `progress plot of ${rows.length} experiments` });
  const { low, high, top } = data.scale;
  const x = (i) => PLOT.left + (rows.length > 1 ? (i / (rows.length - 1)) : 0.5) * (PLOT.width - PLOT.left - PLOT.right);
  const y = (v) => PLOT.top + (1 - (v - low) / (top - low || 1)) * PLOT.main;
  const right = PLOT.width - PLOT.right;
  const pinned = y(top - (top - high) * 0.35); // off-scale scores sit here, as in `autoresearch plot`

  for (let k = 0; k <= 4; k++) { // y grid and ticks
    const v = low + ((top - low) * k) / 4;
    plot.append(svg("line", { x1: PLOT.left, x2: right, y1: y(v), y2: y(v), class: "grid" }));
    const label = svg("text", { x: PLOT.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" });
    label.textContent = v.toFixed(4);
    plot.append(label);
  }
  const axis = svg("text", { x: 12, y: PLOT.top + PLOT.main / 2, class: "axis",
    transform: `rotate(-90 12 ${PLOT.top + PLOT.main / 2})`, "text-anchor": "middle" });
  axis.textContent = "val_bpb (lower is better)";
  plot.append(axis);

  const base = rows.find((r) => r.id === r.baseline);
  if (data.noise && data.noise.sigma) { // the measured noise around the champion's mean
    const m = data.noise.champion_mean, s = data.noise.sigma;
    const y1 = Math.max(PLOT.top, y(m + s)), y2 = Math.min(PLOT.top + PLOT.main, y(m - s));
    if (y2 > y1) plot.append(svg("rect", { x: PLOT.left, y: y1, width: right - PLOT.left, height: y2 - y1, class: "band" }));
  }
  if (data.noise && data.noise.threshold) {
    const v = data.noise.champion_mean - data.noise.threshold;
    if (v >= low) plot.append(svg("line", { x1: PLOT.left, x2: right, y1: y(v), y2: y(v), class: "threshold" }));
  }
  if (base && base.mean !== null) {
    plot.append(svg("line", { x1: PLOT.left, x2: right, y1: y(base.mean), y2: y(base.mean), class: "baseline" }));
  }

  let best = Infinity, path = "";
  rows.forEach((r, i) => { // the running best: the frontier after each experiment
    if (r.val_bpb === null) return;
    const next = Math.min(best, r.val_bpb), level = y(Math.min(next, high)).toFixed(1);
    if (!path) path = `M${x(i).toFixed(1)},${level}`;
    else if (next < best) path += ` H${x(i).toFixed(1)} V${level}`;
    best = next;
  });
  if (path) plot.append(svg("path", { d: `${path} H${right}`, class: "best" }));

  const points = svg("g", { class: "points" });
  const stripTop = PLOT.top + PLOT.main + PLOT.gap;
  rows.forEach((r, i) => {
    const color = colors.get(r.proposer || "manual");
    let mark;
    if (r.val_bpb === null) {
      const cy = stripTop + FAILED.indexOf(r.status) * PLOT.row + PLOT.row / 2;
      mark = svg("rect", { x: x(i) - 4, y: cy - 4, width: 8, height: 8, fill: color, class: `fail status-${r.status}` });
    } else if (r.val_bpb > high) {
      const cx = x(i);
      mark = svg("path", { d: `M${cx - 5},${pinned + 4} L${cx + 5},${pinned + 4} L${cx},${pinned - 5} Z`, fill: color, class: "off" });
    } else if (r.champion) {
      const cx = x(i), cy = y(r.val_bpb), spikes = [];
      for (let k = 0; k < 10; k++) {
        const radius = k % 2 ? 4.5 : 11, angle = (Math.PI * k) / 5 - Math.PI / 2;
        spikes.push(`${(cx + radius * Math.cos(angle)).toFixed(1)},${(cy + radius * Math.sin(angle)).toFixed(1)}`);
      }
      mark = svg("polygon", { points: spikes.join(" "), class: "champion" });
    } else {
      const kept = r.status === "keep";
      mark = svg("circle", { cx: x(i), cy: y(r.val_bpb), r: kept ? 5.5 : 3.5, fill: color, class: kept ? "kept" : "other" });
    }
    mark.setAttribute("data-i", i);
    points.append(mark);
  });
  plot.append(points);

  if (failed) {
    FAILED.forEach((status, k) => {
      const label = svg("text", { x: PLOT.left - 6, y: stripTop + k * PLOT.row + PLOT.row / 2 + 4, class: "tick", "text-anchor": "end" });
      label.textContent = `${status} (${rows.filter((r) => r.status === status).length})`;
      plot.append(label);
    });
  }
  const step = Math.max(1, Math.ceil(rows.length / 10));
  for (let i = 0; i < rows.length; i += step) {
    const label = svg("text", { x: x(i), y: height - 10, class: "tick", "text-anchor": "middle" });
    label.textContent = String(i + 1);
    plot.append(label);
  }

  const tip = document.getElementById("tip");
  const target = (event) => event.target.closest && event.target.closest("[data-i]");
  plot.addEventListener("mousemove", (event) => {
    const mark = target(event);
    if (!mark) { tip.hidden = true; return; }
    const r = rows[Number(mark.getAttribute("data-i"))];
    tip.replaceChildren(
      el("strong", { text: ref(r) }), " ", badge(r.status),
      el("div", { text: r.description || r.reason || "(no description)" }),
      el("div", { class: "mono", text: `val_bpb ${fixed(r.val_bpb)}` +
        (r.runs > 1 ? `  mean ${fixed(r.mean)} of ${r.runs}` : "") + `  delta ${deltaText(r)}` }),
      el("div", { class: "muted", text: `${r.proposer || "manual"}${r.parent ? `, parent ${r.parent}` : ""}` }));
    tip.hidden = false;
    tip.style.left = `${Math.min(event.pageX + 14, window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 8)}px`;
    tip.style.top = `${event.pageY + 14}px`;
  });
  plot.addEventListener("mouseleave", () => { tip.hidden = true; });
  plot.addEventListener("click", (event) => {
    const mark = target(event);
    if (mark) location.href = experimentHref(rows[Number(mark.getAttribute("data-i"))]);
  });

  const legend = el("div", { class: "legend" },
    [...colors].map(([name, color]) => {
      const dot = el("span", { class: "dot" });
      dot.style.background = color;
      return el("span", {}, dot, name);
    }),
    el("span", {}, el("span", { class: "key best" }), "running best"),
    base ? el("span", {}, el("span", { class: "key baseline" }), `baseline ${base.id} ${fixed(base.mean, 4)}`) : null,
    data.noise && data.noise.sigma ? el("span", {}, el("span", { class: "key band" }), `noise ±${fixed(data.noise.sigma, 4)} around the champion`) : null,
    data.noise && data.noise.threshold ? el("span", {}, el("span", { class: "key threshold" }), `promotion bar −${fixed(data.noise.threshold, 4)}`) : null,
    el("span", {}, el("span", { class: "key champion" }), "champion"));
  return el("figure", { class: "figure" }, plot, legend);
}

// --------------------------------------------------------------------------- overview

function statusPanel(data) {
  const s = data.status;
  const running = s.running && (!s.tag || s.tag === data.tag);
  const lines = [];
  if (running) {
    lines.push(el("p", { class: "running" }, el("span", { class: "pulse" }),
      `evolve is running: tag ${s.tag}, pid ${s.pid}` + (s.started ? `, for ${duration(data.now - s.started)}` : "")));
    const training = Object.entries(s.training || {});
    lines.push(el("p", { text: `phase: ${s.phase || "starting"}; slots busy: ${training.length} of ${s.slots}` }));
    for (const [id, began] of training) {
      const elapsed = Math.max(0, data.now - began);
      const budget = s.budget_seconds || 0;
      lines.push(el("div", { class: "training" }, el("span", { class: "mono", text: id }),
        budget ? el("progress", { max: budget, value: Math.min(elapsed, budget) }) : null,
        budget ? `${elapsed.toFixed(0)} of ${budget.toFixed(0)} s (${Math.min(100, (100 * elapsed) / budget).toFixed(0)}%)` : `${elapsed.toFixed(0)} s`));
    }
  } else {
    lines.push(el("p", { class: "muted", text: s.tag ? `no evolve run is going (the last one: tag ${s.tag}, pid ${s.pid})` : "no evolve run is going" }));
  }
  const best = data.leaderboard.find((r) => r.champion);
  lines.push(pairs([
    ["experiments", `${data.experiments.length} (${data.experiments.filter((r) => r.val_bpb === null).length} without a score)`],
    ["champion", best ? el("a", { href: experimentHref(best), text: `${best.id}  ${fixed(best.mean)}  (${deltaText(best)})` }) : "–"],
    ["spend", `$${data.experiments.reduce((sum, r) => sum + r.cost_usd, 0).toFixed(2)}`],
    ["stops", data.stop],
  ]));
  return el("div", { class: "status" }, lines);
}

function leaderboardTable(rows, picked) {
  const body = rows.map((r) => el("tr", { class: r.champion ? "champion-row" : "" },
    el("td", { class: "num", text: r.rank ?? "" }),
    el("td", {}, el("a", { href: experimentHref(r), text: r.id + (r.champion ? " ★" : "") })),
    el("td", { class: "num", text: fixed(r.mean) }),
    el("td", { class: "num", text: r.runs || "" }),
    el("td", { class: "num", text: deltaText(r) }),
    el("td", { class: "num", text: fixed(r.memory_gb, 1) }),
    el("td", {}, badge(r.status)),
    el("td", { text: r.proposer }),
    el("td", { class: "num", text: r.lineage_depth }),
    el("td", { class: "desc", text: r.description || r.reason }),
    el("td", {}, el("input", { type: "checkbox", "aria-label": `compare ${r.id}`, onchange: (e) => {
      if (e.target.checked) picked.push(ref(r)); else picked.splice(picked.indexOf(ref(r)), 1);
      if (picked.length === 2) location.href = "/compare?" + new URLSearchParams({ a: picked[0], b: picked[1] });
    } }))));
  return table(["rank", "candidate", "val_bpb", "runs", "delta", "mem GB", "status", "proposer", "depth", "description", "compare"],
    body, "board");
}

async function overviewPage() {
  const tag = params().get("tag");
  const data = await getJSON("/api/overview" + (tag !== null ? "?" + new URLSearchParams({ tag }) : ""));
  return [
    el("div", { class: "title" }, el("h1", { text: data.tag ? `evolve run ${data.tag}` : "autoresearch run experiments" }),
      tagPicker(data.tags, data.tag, "overview")),
    statusPanel(data),
    section("Progress", progressPlot(data)),
    section("Leaderboard", el("p", { class: "muted", text: `${data.what}; ★ marks the champion; tick two to compare` }),
      leaderboardTable(data.leaderboard, [])),
  ];
}

// --------------------------------------------------------------------------- lineage

const openNodes = new Set(); // kept across live redraws
const MAX_INDENT = 40; // deeper nodes are indented no further, and say their depth
const CHILDREN_SHOWN = 30; // of an open node, the best ones; a button shows the rest
const everyChild = new Set(); // nodes whose children are all shown

function lineagePage(data) {
  // A flat list of rows, indented by depth: deep lineages (hundreds of generations) stay
  // quick to lay out, and only the rows under open nodes are drawn.
  const rows = data.experiments;
  const byId = new Map(rows.map((r) => [r.id, r]));
  const children = new Map();
  const roots = [];
  for (const r of rows) {
    if (r.parent && byId.has(r.parent) && r.parent !== r.id) {
      if (!children.has(r.parent)) children.set(r.parent, []);
      children.get(r.parent).push(r);
    } else roots.push(r);
  }
  const onPath = new Set(data.champion_path);
  const score = (r) => (onPath.has(r.id) ? -Infinity : r.mean ?? Infinity);
  for (const kids of children.values()) kids.sort((a, b) => score(a) - score(b)); // best first
  const sizes = new Map(); // descendants of each node; children come after parents in the ledger
  for (let i = rows.length - 1; i >= 0; i--) {
    const r = rows[i];
    sizes.set(r.id, (children.get(r.id) || []).reduce((n, c) => n + 1 + (sizes.get(c.id) || 0), 0));
  }
  if (openNodes.size === 0) data.champion_path.forEach((id) => openNodes.add(id));

  const tree = el("div", { class: "tree", role: "tree" });
  function line(r, depth) {
    const kids = children.get(r.id) || [];
    const open = openNodes.has(r.id);
    const toggle = kids.length
      ? el("button", { type: "button", class: "toggle", "aria-expanded": String(open),
          "aria-label": `${open ? "close" : "open"} ${r.id}`, text: open ? "▾" : "▸",
          onclick: () => { if (open) openNodes.delete(r.id); else openNodes.add(r.id); draw(); } })
      : el("span", { class: "toggle" });
    const row = el("div", { class: "tree-row", role: "treeitem" }, toggle,
      el("span", { class: "node" + (onPath.has(r.id) ? " on-path" : "") },
        depth > MAX_INDENT ? el("span", { class: "muted", text: `depth ${depth}` }) : null,
        el("a", { href: experimentHref(r), text: r.id + (r.champion ? " ★" : "") }),
        badge(r.status),
        // Each node is one run: its own score (a repeat's differs from its source's mean).
        el("span", { class: "mono", text: r.val_bpb === null ? "–" : fixed(r.val_bpb) +
          (r.runs > 1 ? ` (mean ${fixed(r.mean)} of ${r.runs})` : "") }),
        el("span", { class: "desc", text: r.description || r.reason }),
        kids.length ? el("span", { class: "muted", text: `${kids.length} ${kids.length === 1 ? "child" : "children"}, ${sizes.get(r.id)} below` }) : null));
    row.style.paddingLeft = `${Math.min(depth, MAX_INDENT) * 16}px`;
    return row;
  }
  function more(parent, depth, hidden) {
    const row = el("div", { class: "tree-row" }, el("span", { class: "toggle" }),
      el("button", { type: "button", class: "more", text: `show ${hidden} more children of ${parent.id}`,
        onclick: () => { everyChild.add(parent.id); draw(); } }));
    row.style.paddingLeft = `${Math.min(depth, MAX_INDENT) * 16}px`;
    return row;
  }
  function draw() {
    const out = [];
    const stack = roots.map((r) => [r, 0]).reverse(); // depth first, without recursion
    while (stack.length) {
      const [r, depth, hidden] = stack.pop();
      if (hidden) { out.push(more(r, depth, hidden)); continue; }
      out.push(line(r, depth));
      if (openNodes.has(r.id)) {
        const kids = children.get(r.id) || [];
        const shown = everyChild.has(r.id) ? kids.length : Math.min(kids.length, CHILDREN_SHOWN);
        if (shown < kids.length) stack.push([r, depth + 1, kids.length - shown]);
        for (let k = shown - 1; k >= 0; k--) stack.push([kids[k], depth + 1]);
      }
    }
    tree.replaceChildren(...out);
  }
  draw();

  const controls = el("p", {},
    el("button", { type: "button", text: "Collapse to the champion's path", onclick: () => {
      openNodes.clear(); data.champion_path.forEach((id) => openNodes.add(id)); draw();
    } }),
    " ",
    el("button", { type: "button", text: "Expand all", onclick: () => {
      rows.forEach((r) => openNodes.add(r.id)); draw();
    } }));
  return [el("div", { class: "title" }, el("h1", { text: `lineage of ${data.tag || "autoresearch run"}` }), tagPicker(data.tags, data.tag, "lineage")),
    el("p", { class: "muted", text: `${rows.length} experiments; the champion's path back to the baseline is highlighted` }),
    controls, tree];
}

async function lineageLoad() {
  const tag = params().get("tag");
  return lineagePage(await getJSON("/api/lineage" + (tag !== null ? "?" + new URLSearchParams({ tag }) : "")));
}

// --------------------------------------------------------------------------- diffs

function highlight(code) {
  // Python, one line at a time (a diff shows lines, not whole files): tokens become spans
  // whose text is set as text.
  const out = [];
  const pattern = /(#.*$)|([rbfuRBFU]{0,2}(?:"""|'''|"(?:\\.|[^"\\])*"?|'(?:\\.|[^'\\])*'?))|(\b\d[\d_]*\.?\d*(?:[eE][-+]?\d+)?\b)|([A-Za-z_]\w*)|(\s+)|([^\w\s])/gy;
  let position = 0, previous = "";
  while (position < code.length) {
    pattern.lastIndex = position;
    const match = pattern.exec(code);
    if (!match || !match[0]) { out.push(document.createTextNode(code.slice(position))); break; }
    position = pattern.lastIndex;
    const [text, comment, string, number, word] = match;
    let cls = "";
    if (comment) cls = "tok-comment";
    else if (string) cls = "tok-string";
    else if (number) cls = "tok-number";
    else if (word) {
      if (PYTHON_KEYWORDS.has(word)) cls = "tok-keyword";
      else if (PYTHON_BUILTINS.has(word)) cls = "tok-builtin";
      else if (previous === "def" || previous === "class") cls = "tok-def";
      else if (/^[A-Z][A-Z0-9_]+$/.test(word)) cls = "tok-constant";
      previous = word;
    }
    out.push(cls ? el("span", { class: cls, text }) : document.createTextNode(text));
  }
  return out;
}

function parseDiff(text) {
  const lines = [];
  let oldNo = 0, newNo = 0;
  for (const line of text.split("\n")) {
    const hunk = /^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@/.exec(line);
    if (hunk) { oldNo = Number(hunk[1]); newNo = Number(hunk[2]); lines.push({ kind: "hunk", text: line }); }
    else if (/^(diff |index |--- |\+\+\+ |new file|deleted file|similarity|rename )/.test(line)) lines.push({ kind: "file", text: line });
    else if (line.startsWith("+")) lines.push({ kind: "add", text: line.slice(1), newNo: newNo++ });
    else if (line.startsWith("-")) lines.push({ kind: "del", text: line.slice(1), oldNo: oldNo++ });
    else if (line.startsWith("\\")) lines.push({ kind: "file", text: line });
    else if (oldNo || newNo) lines.push({ kind: "ctx", text: line.slice(1), oldNo: oldNo++, newNo: newNo++ });
  }
  return lines;
}

function codeCell(line, side) {
  if (!line) return [el("td", { class: "no" }), el("td", { class: "code empty" })];
  const number = side === "old" ? line.oldNo : line.newNo;
  return [el("td", { class: "no", text: number ?? "" }), el("td", { class: `code ${line.kind}` }, highlight(line.text))];
}

function columns(...kinds) { // a fixed layout takes its widths from here, not from a first row
  return el("colgroup", {}, kinds.map((kind) => el("col", { class: `col-${kind}` })));
}

function unifiedDiff(lines) {
  return el("table", { class: "diff unified" }, columns("no", "no", "sign", "code"), el("tbody", {}, lines.map((line) => {
    if (line.kind === "hunk" || line.kind === "file") return el("tr", { class: line.kind }, el("td", { colspan: 4, text: line.text }));
    const sign = { add: "+", del: "-", ctx: " " }[line.kind];
    return el("tr", {}, el("td", { class: "no", text: line.oldNo ?? "" }), el("td", { class: "no", text: line.newNo ?? "" }),
      el("td", { class: `sign ${line.kind}`, text: sign }), el("td", { class: `code ${line.kind}` }, highlight(line.text)));
  })));
}

function splitDiff(lines) {
  const body = [];
  let dels = [], adds = [];
  const flush = () => {
    for (let i = 0; i < Math.max(dels.length, adds.length); i++) {
      body.push(el("tr", {}, codeCell(dels[i], "old"), codeCell(adds[i], "new")));
    }
    dels = []; adds = [];
  };
  for (const line of lines) {
    if (line.kind === "del") { if (adds.length) flush(); dels.push(line); }
    else if (line.kind === "add") adds.push(line);
    else {
      flush();
      if (line.kind === "ctx") body.push(el("tr", {}, codeCell(line, "old"), codeCell(line, "new")));
      else if (line.kind === "hunk") body.push(el("tr", { class: "hunk" }, el("td", { colspan: 4, text: line.text })));
    }
  }
  flush();
  return el("table", { class: "diff split" }, columns("no", "code", "no", "code"), el("tbody", {}, body));
}

function diffView(text, title) {
  if (text === null || text === undefined) return el("p", { class: "muted", text: `${title}: not available (the commits are not in this repo)` });
  if (!text.trim()) return el("p", { class: "muted", text: `${title}: identical train.py` });
  const lines = parseDiff(text);
  const holder = el("div", { class: "diff-holder" });
  const draw = () => {
    const mode = localStorage.getItem("diff-mode") || "split";
    buttons.forEach((b) => b.classList.toggle("active", b.value === mode));
    holder.replaceChildren(mode === "split" ? splitDiff(lines) : unifiedDiff(lines));
  };
  const buttons = ["split", "unified"].map((mode) => el("button", { type: "button", value: mode,
    text: mode === "split" ? "side by side" : "unified",
    onclick: () => { localStorage.setItem("diff-mode", mode); draw(); } }));
  const added = lines.filter((l) => l.kind === "add").length, removed = lines.filter((l) => l.kind === "del").length;
  const head = el("div", { class: "diff-head" }, el("strong", { text: title }),
    el("span", { class: "add-count", text: `+${added}` }), el("span", { class: "del-count", text: `−${removed}` }), ...buttons);
  draw();
  return el("div", { class: "diff-view" }, head, holder);
}

// --------------------------------------------------------------------------- experiment

function metrics(data) {
  const r = data.record, row = data.experiment;
  return pairs([
    ["tag", r.tag || "(autoresearch run)"],
    ["status", badge(r.status)],
    ["val_bpb", fixed(r.val_bpb)],
    ["mean", row.runs ? `${fixed(row.mean)} over ${row.runs} run${row.runs > 1 ? "s" : ""}` : "–"],
    ["delta", deltaText(row) + (row.baseline && row.baseline !== r.id ? ` vs ${row.baseline}` : "")],
    ["proposer", r.proposer || "–"],
    ["parent", r.parent ? el("a", { href: "/experiment?" + new URLSearchParams({ id: r.tag ? `${r.tag}/${r.parent}` : r.parent }), text: r.parent }) : "–"],
    ["commit", el("span", { class: "mono", text: r.commit || "–" })],
    ["promoted", r.promoted ? "yes" : "no"],
    ["created", when(r.created)],
    ["memory_gb", fixed(r.memory_gb, 2)],
    ["training_seconds", fixed(r.training_seconds, 1)],
    ["total_seconds", fixed(r.total_seconds, 1)],
    ["tokens", r.tokens.toLocaleString()],
    ["num_steps", r.num_steps.toLocaleString()],
    ["num_params", r.num_params.toLocaleString()],
    ["model depth", r.depth ?? "–"],
    ["code lines", r.code_lines || "–"],
    ["mfu_percent", fixed(r.mfu_percent, 2)],
    ["seed", r.seed],
    ["device", r.device || "–"],
    ["ran on", r.ran_on || "this machine"],
    ["cost", `$${row.cost_usd.toFixed(4)}`],
    ...Object.entries(r.usage).filter(([k]) => k !== "cost_usd").map(([k, v]) => [`usage: ${k}`, String(v)]),
  ]);
}

function timings(record) {
  const entries = Object.entries(record.timings);
  if (!entries.length) return el("p", { class: "muted", text: "no timings recorded" });
  const total = entries.reduce((s, [, v]) => s + v, 0) || 1;
  return table(["phase", "seconds", ""], entries.map(([phase, seconds]) => el("tr", {},
    el("td", { text: phase }), el("td", { class: "num", text: seconds.toFixed(1) }),
    el("td", {}, el("progress", { max: total, value: seconds })))), "timings");
}

function lineageList(chain) {
  return el("ol", { class: "chain" }, chain.map((r) => el("li", {},
    el("a", { href: experimentHref(r), text: r.id }), " ", badge(r.status), " ",
    el("span", { class: "mono", text: fixed(r.val_bpb) }), " ", el("span", { class: "desc", text: r.description || r.reason }))));
}

function experimentBody(data) {
  const r = data.record, row = data.experiment;
  const title = `diff ${data.diff.against || "–"} → ${r.id} (train.py${data.diff.why})`;
  return [
    el("div", { class: "title" }, el("h1", { text: `${ref(row)}${row.champion ? " ★" : ""}` }), badge(r.status),
      el("span", { class: "score mono", text: `val_bpb ${fixed(r.val_bpb)}  ${deltaText(row)}` })),
    r.description ? el("p", { class: "description", text: r.description }) : null,
    r.reason ? el("p", { class: "reason" }, el("strong", { text: "reason: " }), r.reason) : null,
    el("div", { class: "columns" },
      section("Metrics", metrics(data)),
      el("div", {},
        section("Timings by phase", timings(r)),
        section("Fingerprints", Object.keys(r.fingerprints).length
          ? pairs(Object.entries(r.fingerprints).map(([k, v]) => [k, el("span", { class: "mono", text: v })]))
          : el("p", { class: "muted", text: "none recorded" })),
        section(`Lineage (${data.lineage.length - 1} back to the baseline)`, lineageList(data.lineage)))),
    section("Diff against its parent", data.diff.against ? diffView(data.diff.text, title) : el("p", { class: "muted", text: "no parent: a baseline" }),
      data.diff.against ? el("p", {}, el("a", { href: "/compare?" + new URLSearchParams({ a: data.lineage[1] ? ref(data.lineage[1]) : data.diff.against, b: ref(row) }), text: "compare with it side by side" })) : null),
    section("Log tail", data.log.path
      ? [el("p", { class: "muted mono", text: `${data.log.path}, last ${data.log.lines.length} lines` }), el("pre", { class: "log", text: data.log.lines.join("\n") })]
      : el("p", { class: "muted", text: "no log" })),
    data.proposal.length ? section("Proposal", data.proposal.map((file) =>
      el("details", {}, el("summary", { text: file.name }), el("pre", { class: "log", text: file.text })))) : null,
  ];
}

async function experimentPage() {
  const id = params().get("id");
  if (!id) return [el("p", { text: "no experiment given: open one from the overview" })];
  return experimentBody(await getJSON("/api/experiment?" + new URLSearchParams({ id })));
}

// --------------------------------------------------------------------------- compare

async function comparePage() {
  const a = params().get("a") || "", b = params().get("b") || "";
  const inputA = el("input", { name: "a", value: a, placeholder: "e0001 or tag/e0001", "aria-label": "first experiment" });
  const inputB = el("input", { name: "b", value: b, placeholder: "e0002 or tag/e0002", "aria-label": "second experiment" });
  const form = el("div", { class: "compare-form" }, inputA, " against ", inputB, " ",
    el("button", { type: "button", text: "Compare", onclick: () => {
      location.search = "?" + new URLSearchParams({ a: inputA.value.trim(), b: inputB.value.trim() });
    } }));
  const out = [el("h1", { text: "compare two experiments" }), form];
  if (!a || !b) return [...out, el("p", { class: "muted", text: "give two experiments, or tick two on the overview's leaderboard" })];
  const data = await getJSON("/api/compare?" + new URLSearchParams({ a, b }));
  const column = (side) => el("div", { class: "side" },
    el("h2", {}, el("a", { href: experimentHref(side.experiment), text: ref(side.experiment) }), " ", badge(side.record.status)),
    el("p", { class: "description", text: side.record.description || side.record.reason }),
    metrics(side),
    diffView(side.diff.text, `diff ${side.diff.against || "–"} → ${side.record.id}`));
  return [...out,
    section(`train.py from ${a} to ${b}`, diffView(data.diff.text, `diff ${a} → ${b}`)),
    el("div", { class: "columns compare" }, column(data.a), column(data.b))];
}

// --------------------------------------------------------------------------- the page and its live updates

const PAGES = { "/": overviewPage, "/lineage": lineageLoad, "/experiment": experimentPage, "/compare": comparePage };
let drawing = null, again = false;

async function refresh() {
  if (drawing) { again = true; return drawing; }
  const app = document.getElementById("app");
  drawing = (async () => {
    try {
      const content = await (PAGES[location.pathname] || overviewPage)();
      const scroll = window.scrollY;
      app.replaceChildren(...content.flat().filter(Boolean));
      window.scrollTo(0, scroll);
    } catch (error) {
      app.replaceChildren(el("p", { class: "error", text: error.message }));
    }
    document.body.setAttribute("data-drawn", String(Date.now()));
  })();
  await drawing;
  drawing = null;
  if (again) { again = false; return refresh(); }
}

function follow() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/events");
  let timer = null, first = true;
  events.addEventListener("change", () => {
    live.textContent = "live"; live.className = "live on";
    if (first) { first = false; return; } // the first event is the state just drawn
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  });
  events.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = "live off"; });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = { "/": "overview", "/lineage": "lineage", "/compare": "compare" }[location.pathname];
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  follow(); // before the first drawing: no change between the two goes unseen
  refresh();
});
