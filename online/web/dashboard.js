// l1forge online dashboard: polls /api/status and /api/dqm every second and draws with SVG.
// Plain JavaScript, no libraries and no network access beyond this server.
"use strict";

const POLL_MS = 1000;
const HISTORY_POINTS = 900;            // rate history kept in the page (15 min at 1 Hz)
const RATE_WINDOW_POLLS = 5;           // the time plot's rates: counts over this many polls
const SVG_NS = "http://www.w3.org/2000/svg";
// Colour-blind-safe 10-colour cycle (Petroff 2021, the CMS plotting default).
const PALETTE = ["#3f90da", "#ffa90e", "#bd1f01", "#94a4a2", "#832db6",
                 "#a96b59", "#e76300", "#b9ac70", "#717581", "#92dadd"];

// Counter tiles: label, unit, the status keys that may hold the value (first found wins).
const TILES = [
  { id: "events_in", label: "Events in", keys: ["events_in", "n_events_in"] },
  { id: "events_processed", label: "Processed", keys: ["events_processed", "n_processed", "processed"] },
  { id: "events_accepted", label: "Accepted", keys: ["events_accepted", "n_accepted", "accepted"] },
  { id: "events_per_s", label: "Throughput", unit: "Hz", rate: true,
    keys: ["events_per_s", "input_rate_hz", "processing_rate_hz"] },
  { id: "in_flight", label: "In flight", keys: ["in_flight_batches", "in_flight"] },
  { id: "queued", label: "Queued", keys: ["queued_batches", "queue_depth"] },
  { id: "workers_alive", label: "Workers", keys: ["workers_alive", "n_workers_alive"] },
  { id: "latency_p99", label: "Latency p99", ms: true, keys: ["latency_ms"], sub: "p99" },
  { id: "lost", label: "Lost", keys: ["lost", "events_lost", "n_lost"], alarmIfPositive: true },
  { id: "duplicated", label: "Duplicated", keys: ["duplicated", "events_duplicated", "n_duplicated"], alarmIfPositive: true },
  { id: "redelivered", label: "Redelivered", keys: ["batches_redelivered", "redelivered_batches"] },
  { id: "rejected", label: "Rejected msgs", keys: ["rejected"], sum: true, alarmIfPositive: true },
  { id: "lumisection", label: "Lumisection", keys: ["lumisection", "current_lumisection"] },
];

const state = {
  updates: 0,             // successful polls of /api/status
  dqmUpdates: 0,          // successful polls of /api/dqm
  status: null,
  dqm: null,
  history: [],            // [{t, rates: {seed: Hz}}] of the current run
  historyRun: undefined,  // the run the history belongs to
  samples: [],            // the last polls' {processed, counts} for windowed rates
  inputRateHz: undefined, // the input rate the status's rates are scaled to (40 MHz)
  seedColours: new Map(),
  dqmKey: null,           // the last DQM view drawn (redraw only on change)
  failures: 0,
};
window.dashboard = state;  // read by the end-to-end test and handy in a console

// ---------- small helpers ----------
function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function first(obj, keys) {
  if (!obj) return undefined;
  for (const k of keys) if (obj[k] !== undefined && obj[k] !== null) return obj[k];
  return undefined;
}
function isNum(x) { return typeof x === "number" && Number.isFinite(x); }
function fmtInt(x) { return isNum(x) ? Math.round(x).toLocaleString("en-US") : "\u2014"; }
function fmtRate(hz) {
  if (!isNum(hz)) return "\u2014";
  const a = Math.abs(hz);
  if (a >= 1e6) return (hz / 1e6).toPrecision(3) + " MHz";
  if (a >= 1e3) return (hz / 1e3).toPrecision(3) + " kHz";
  if (a >= 1) return hz.toPrecision(3) + " Hz";
  if (a === 0) return "0 Hz";
  return hz.toPrecision(2) + " Hz";
}
function fmtNum(x) {
  if (!isNum(x)) return "\u2014";
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-2 || a >= 1e5)) return x.toExponential(1).replace("e+", "e");
  return Number.isInteger(x) ? String(x) : x.toPrecision(3).replace(/\.?0+$/, "");
}
function colourOf(seed) {
  if (!state.seedColours.has(seed)) {
    state.seedColours.set(seed, PALETTE[state.seedColours.size % PALETTE.length]);
  }
  return state.seedColours.get(seed);
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
function sum(values) { let s = 0; for (const v of values) if (isNum(v)) s += v; return s; }
function seedRate(entry) {
  // A seed's entry may be a number (rate) or an object {count, rate_hz, ...}.
  if (isNum(entry)) return entry;
  return first(entry, ["rate_hz", "rate", "rate_40mhz_hz"]);
}
function seedCount(entry) { return isNum(entry) ? undefined : first(entry, ["count", "accepted", "n"]); }

// ---------- axes ----------
function niceStep(span, n) {
  const raw = span / Math.max(n, 1);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const r = raw / mag;
  return (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag;
}
function linearTicks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const step = niceStep(hi - lo, n);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return out;
}
function logTicks(lo, hi) {
  const out = [];
  for (let e = Math.ceil(Math.log10(lo) - 1e-9); e <= Math.floor(Math.log10(hi) + 1e-9); e++) {
    out.push(Math.pow(10, e));
  }
  return out;
}
function fmtTick(v, log) {
  if (log) {
    const e = Math.round(Math.log10(v));
    if (e >= 0 && e < 4) return String(Math.pow(10, e));
    return "1e" + e;
  }
  return fmtNum(v);
}

// A frame with axes on an SVG of viewBox width W x height H; returns coordinate mappers.
function frame(root, { W, H, margin, x0, x1, y0, y1, yLog, xLog, xLabel, yLabel, xTickFmt, xTicks,
                       yTickCount, xTickFont = 11 }) {
  const m = margin;
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  const tx = (x) => (xLog ? Math.log10(x) : x);
  const fx = (x) => m.l + (x1 === x0 ? 0.5 : (tx(x) - tx(x0)) / (tx(x1) - tx(x0))) * pw;
  const ly0 = yLog ? Math.log10(y0) : y0, ly1 = yLog ? Math.log10(y1) : y1;
  const fy = (y) => {
    const v = yLog ? Math.log10(Math.max(y, y0)) : y;
    const f = ly1 === ly0 ? 0.5 : (v - ly0) / (ly1 - ly0);
    return m.t + ph - Math.min(Math.max(f, -0.02), 1.02) * ph;
  };
  const g = svg("g");
  const yt = yLog ? logTicks(y0, y1) : linearTicks(y0, y1, yTickCount || 4);
  for (const v of yt) {
    const y = fy(v);
    g.appendChild(svg("line", { class: "grid", x1: m.l, x2: m.l + pw, y1: y, y2: y }));
    g.appendChild(svg("text", { x: m.l - 5, y: y + 4, "text-anchor": "end", "font-size": 11 }, fmtTick(v, yLog)));
  }
  const xt = xTicks || (xLog ? logTicks(x0, x1).filter((v, i, a) => a.length < 7 || i % 2 === 0)
                             : linearTicks(x0, x1, 6));
  for (const v of xt) {
    const x = fx(v);
    g.appendChild(svg("line", { class: "tick", x1: x, x2: x, y1: m.t + ph, y2: m.t + ph + 4 }));
    g.appendChild(svg("text", { x, y: m.t + ph + 16, "text-anchor": "middle", "font-size": xTickFont },
                      xTickFmt ? xTickFmt(v) : xLog ? fmtTick(v, true) : fmtNum(v)));
  }
  g.appendChild(svg("rect", { class: "axis", x: m.l, y: m.t, width: pw, height: ph }));
  if (xLabel) {
    g.appendChild(svg("text", { x: m.l + pw / 2, y: H - 3, "text-anchor": "middle", "font-size": 12 }, xLabel));
  }
  if (yLabel) {
    g.appendChild(svg("text", { x: 12, y: m.t, "text-anchor": "end", "font-size": 12,
                                transform: `rotate(-90 12 ${m.t})` }, yLabel));
  }
  root.appendChild(g);
  return { fx, fy, pw, ph, m };
}

function emptyPlot(root, W, H, msg) {
  clear(root);
  root.appendChild(svg("text", { class: "empty-msg", x: W / 2, y: H / 2, "text-anchor": "middle", "font-size": 14 }, msg));
}

// Lines per seed (x numeric); log y when the values span more than a decade.
function fitWidth(root, H, fallback) {
  const w = Math.round(root.getBoundingClientRect().width) || fallback;
  root.setAttribute("viewBox", `0 0 ${w} ${H}`);
  return w;
}

function linePlot(root, W, H, series, opts) {
  W = fitWidth(root, H, W);
  const pts = series.flatMap((s) => s.points);
  const ys = pts.map((p) => p[1]).filter((y) => isNum(y));
  if (pts.length === 0 || ys.length === 0) { emptyPlot(root, W, H, opts.empty); return; }
  clear(root);
  const xs = pts.map((p) => p[0]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const pos = ys.filter((y) => y > 0);
  const yLog = pos.length > 0 && Math.max(...pos) / Math.min(...pos) > 20;
  let y0, y1;
  if (yLog) {
    y0 = Math.pow(10, Math.floor(Math.log10(Math.min(...pos))));
    y1 = Math.pow(10, Math.ceil(Math.log10(Math.max(...pos)) + 0.15));
  } else {
    y0 = 0;
    y1 = Math.max(...ys, 0) * 1.15 || 1;
  }
  const legendW = 170;
  const f = frame(root, { W, H, margin: { l: 62, r: legendW, t: 10, b: 38 }, x0, x1, y0, y1, yLog,
                          xLabel: opts.xLabel, yLabel: opts.yLabel, xTickFmt: opts.xTickFmt,
                          xTicks: opts.xTicks ? opts.xTicks(x0, x1) : undefined });
  series.forEach((s, i) => {
    // On a log scale a zero rate has no place: leave it out rather than draw it at the floor.
    const p = s.points.filter((q) => isNum(q[1]) && (!yLog || q[1] > 0));
    if (p.length) {
      const d = p.map((q, j) => `${j ? "L" : "M"}${f.fx(q[0]).toFixed(1)},${f.fy(q[1]).toFixed(1)}`).join("");
      root.appendChild(svg("path", { d, fill: "none", stroke: s.colour, "stroke-width": 2,
                                     "data-series": s.name }));
      if (p.length < 40) {
        for (const q of p) root.appendChild(svg("circle", { cx: f.fx(q[0]), cy: f.fy(q[1]), r: 2.5, fill: s.colour }));
      }
    }
    const ly = f.m.t + 8 + i * 18;
    const lx = W - legendW + 14;
    root.appendChild(svg("line", { x1: lx, x2: lx + 18, y1: ly, y2: ly, stroke: s.colour, "stroke-width": 3 }));
    const pts = s.points.filter((q) => isNum(q[1]));
    const last = pts.length ? pts[pts.length - 1][1] : undefined;
    root.appendChild(svg("text", { x: lx + 24, y: ly + 4, "font-size": 11, class: "legend", "data-series": s.name },
                         `${s.name}  ${opts.valueFmt ? opts.valueFmt(last) : fmtNum(last)}`));
  });
}

// One 1D histogram as steps, with the reference scaled to the same integral, dashed on top.
function histPlot(root, W, H, edges, values, reference, xLabel, logY, categories) {
  clear(root);
  let e = edges.slice(), v = values.slice(), r = reference ? reference.slice() : null;
  // Views may include under/overflow bins (len(values) == len(edges) + 1): drop them for drawing.
  if (v.length === e.length + 1) {
    v = v.slice(1, -1);
    if (r && r.length === values.length) r = r.slice(1, -1);
  }
  if (v.length !== e.length - 1) { emptyPlot(root, W, H, "bad histogram shape"); return; }
  if (r && r.length !== v.length) r = null;
  const nv = sum(v), nr = r ? sum(r) : 0;
  if (r && nr > 0 && nv > 0) r = r.map((x) => x * nv / nr);
  const finiteEdges = e.filter(isNum);
  const x0 = finiteEdges[0], x1 = finiteEdges[finiteEdges.length - 1];
  const all = v.concat(r || []);
  const pos = all.filter((x) => x > 0);
  const yLog = Boolean(logY && pos.length);
  const y0 = yLog ? Math.pow(10, Math.floor(Math.log10(Math.min(...pos) * 0.8))) : 0;
  const y1 = yLog ? Math.pow(10, Math.ceil(Math.log10(Math.max(...pos) * 2)))
                  : Math.max(...all, 1) * 1.15;
  // Axes spanning decades (latency) are drawn on a log scale.
  const xLog = x0 > 0 && x1 / x0 > 1e3;
  // Bins that are categories (trigger seeds) get their names under them.
  const named = Array.isArray(categories) && categories.length === v.length;
  const centres = named ? v.map((_, i) => (e[i] + e[i + 1]) / 2) : undefined;
  const f = frame(root, { W, H, margin: { l: 44, r: 14, t: 6, b: 34 }, x0, x1, y0, y1, yLog, xLog,
                          xLabel, yTickCount: 3, xTicks: centres, xTickFont: named ? 8 : 11,
                          xTickFmt: named ? (c) => String(categories[centres.indexOf(c)]) : undefined });
  const steps = (vals) => {
    let d = `M${f.fx(e[0]).toFixed(1)},${f.fy(0).toFixed(1)}`;
    vals.forEach((y, i) => {
      d += `L${f.fx(e[i]).toFixed(1)},${f.fy(y).toFixed(1)}L${f.fx(e[i + 1]).toFixed(1)},${f.fy(y).toFixed(1)}`;
    });
    return d + `L${f.fx(e[e.length - 1]).toFixed(1)},${f.fy(0).toFixed(1)}`;
  };
  root.appendChild(svg("path", { d: steps(v), fill: "rgba(28,36,48,0.08)", stroke: "#1c2430", "stroke-width": 1.4, class: "data-steps" }));
  if (r) {
    root.appendChild(svg("path", { d: steps(r), fill: "none", stroke: "#3f90da", "stroke-width": 1.6,
                                   "stroke-dasharray": "5,3", class: "ref-steps" }));
  }
}

// A 2D histogram as a heat map: the ratio to the scaled reference when there is one.
function mapPlot(root, W, H, edges, values, reference, xLabel) {
  clear(root);
  const nx = values.length, ny = nx ? values[0].length : 0;
  if (!nx || !ny) { emptyPlot(root, W, H, "empty map"); return; }
  const ex = Array.isArray(edges[0]) ? edges[0] : null;
  const ey = Array.isArray(edges[1]) ? edges[1] : null;
  const x0 = ex ? ex[0] : 0, x1 = ex ? ex[ex.length - 1] : nx;
  const y0 = ey ? ey[0] : 0, y1 = ey ? ey[ey.length - 1] : ny;
  const bx = (i) => (ex ? ex[i] : i), by = (j) => (ey ? ey[j] : j);
  const flat = values.flat();
  let ref = null;
  if (reference && reference.length === nx) {
    const total = sum(flat), rtotal = sum(reference.flat());
    if (total > 0 && rtotal > 0) ref = reference.map((row) => row.map((x) => x * total / rtotal));
  }
  const f = frame(root, { W, H, margin: { l: 44, r: 14, t: 6, b: 34 }, x0, x1, y0, y1, xLabel,
                          yTickCount: 3 });
  const vmax = Math.max(...flat, 1);
  for (let i = 0; i < nx; i++) {
    for (let j = 0; j < ny; j++) {
      let fill;
      if (ref) {
        // ratio 0 -> blue (dead), 1 -> white, 2+ -> red (hot)
        const q = ref[i][j] > 0 ? values[i][j] / ref[i][j] : 1;
        const t = Math.max(-1, Math.min(1, q - 1));
        const c = (a, b) => Math.round(255 + (b - 255) * Math.abs(t));
        fill = t < 0 ? `rgb(${c(0, 47)},${c(0, 111)},${c(0, 209)})` : `rgb(${c(0, 198)},${c(0, 40)},${c(0, 40)})`;
      } else {
        const t = values[i][j] / vmax;
        fill = `rgba(47,111,209,${t.toFixed(3)})`;
      }
      const xa = f.fx(bx(i)), xb = f.fx(bx(i + 1)), ya = f.fy(by(j)), yb = f.fy(by(j + 1));
      root.appendChild(svg("rect", { x: Math.min(xa, xb), y: Math.min(ya, yb), width: Math.abs(xb - xa) + 0.3,
                                     height: Math.abs(yb - ya) + 0.3, fill }));
    }
  }
}

// ---------- panels ----------
function renderHeader(s) {
  const run = first(s, ["run", "run_number"]);
  document.getElementById("run-number").textContent = isNum(run) ? String(run) : "\u2014";
  const st = String(first(s, ["state", "run_state"]) || "unknown").toLowerCase();
  const badge = document.getElementById("run-state");
  badge.textContent = st;
  badge.className = `badge state state-${st.replace(/[^a-z_-]/g, "")}`;
  const err = document.getElementById("run-error");
  const problem = s.error || s.storage_error;
  err.textContent = problem ? String(problem) : "";
  err.classList.toggle("hidden", !problem);
  const ls = first(s, ["lumisection", "current_lumisection"]);
  if (isNum(ls)) document.getElementById("ls-number").textContent = String(ls);
}

function renderTiles(s) {
  const box = document.getElementById("counters");
  for (const t of TILES) {
    let v = first(s, t.keys);
    if (t.sub && v && typeof v === "object") v = v[t.sub];
    if (t.sum && v && typeof v === "object") v = sum(Object.values(v));
    if (Array.isArray(v)) v = v.length;
    if (typeof v === "object" && v !== null) v = first(v, ["alive", "n_alive", "count"]);
    let tile = document.getElementById(`tile-${t.id}`);
    if (v === undefined && !tile) continue;
    if (!tile) {
      tile = el("div", { class: "tile", id: `tile-${t.id}`, "data-key": t.id });
      tile.appendChild(el("div", { class: "label" }, t.label));
      const val = el("div", { class: "value", id: `v-${t.id}` });
      tile.appendChild(val);
      box.appendChild(tile);
    }
    const val = document.getElementById(`v-${t.id}`);
    val.setAttribute("data-value", isNum(v) ? String(v) : "");
    if (t.ms) {
      val.textContent = isNum(v) ? v.toPrecision(3) : "\u2014";
      val.appendChild(el("span", { class: "unit" }, "ms"));
    } else if (t.rate) {
      const txt = fmtRate(v).split(" ");
      val.textContent = txt[0];
      if (txt[1]) val.appendChild(el("span", { class: "unit" }, txt[1]));
    } else {
      val.textContent = isNum(v) ? fmtInt(v) : (v === undefined ? "\u2014" : String(v));
    }
    tile.classList.toggle("bad", Boolean(t.alarmIfPositive && isNum(v) && v > 0));
    tile.classList.toggle("good", Boolean(t.alarmIfPositive && isNum(v) && v === 0));
  }
}

// Per-seed {count, rate_hz}: from "seeds" or from separate count and rate dictionaries
// (pipeline: seed_counts + seed_rates_hz; run summary: per_seed + rates_hz).
function seedsOf(s) {
  if (s.seeds && typeof s.seeds === "object") return s.seeds;
  const counts = first(s, ["seed_counts", "per_seed"]) || {};
  const rates = first(s, ["seed_rates_hz", "rates_hz"]) || {};
  const out = {};
  for (const n of new Set([...Object.keys(counts), ...Object.keys(rates)])) {
    out[n] = { count: counts[n], rate_hz: rates[n] };
  }
  return out;
}

function renderSeeds(s) {
  const seeds = seedsOf(s);
  const names = Object.keys(seeds);
  const tbody = document.querySelector("#seed-table tbody");
  clear(tbody);
  if (names.length === 0) {
    tbody.appendChild(el("tr", { class: "empty" })).appendChild(el("td", { colspan: 4 }, "no seeds reported yet"));
    return;
  }
  for (const name of names) {
    const entry = seeds[name];
    const rate = seedRate(entry), count = seedCount(entry);
    const tr = el("tr", { "data-seed": name });
    const sw = el("td");
    sw.appendChild(el("span", { class: "swatch", style: `background:${colourOf(name)}` }));
    tr.appendChild(sw);
    tr.appendChild(el("td", { class: "name" }, name));
    tr.appendChild(el("td", { class: "num count", "data-value": isNum(count) ? String(count) : "" }, fmtInt(count)));
    tr.appendChild(el("td", { class: "num rate", "data-value": isNum(rate) ? String(rate) : "" }, fmtRate(rate)));
    tbody.appendChild(tr);
  }
}

function renderRejections(s) {
  const rej = first(s, ["rejected", "rejections"]) || {};
  const tbody = document.querySelector("#reject-table tbody");
  clear(tbody);
  const reasons = typeof rej === "object" ? Object.keys(rej).filter((k) => isNum(rej[k]) && rej[k] > 0) : [];
  if (reasons.length === 0) {
    tbody.appendChild(el("tr", { class: "empty" })).appendChild(el("td", { colspan: 2 }, "none"));
    return;
  }
  for (const r of reasons.sort()) {
    const tr = el("tr", { "data-reason": r });
    tr.appendChild(el("td", {}, r));
    tr.appendChild(el("td", { class: "num" }, fmtInt(rej[r])));
    tbody.appendChild(tr);
  }
}

function clock(t) {
  const d = new Date(t * 1000);
  return d.toTimeString().slice(0, 8);
}

function timeTicks(x0, x1) {
  const span = x1 - x0;
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
  const step = steps.find((st) => span / st <= 6) || 3600;
  const out = [];
  for (let v = Math.ceil(x0 / step) * step; v <= x1; v += step) out.push(v);
  return out;
}

// Rates for the time plot: each seed's counts over the last RATE_WINDOW_POLLS polls, scaled
// like the status's run-average rates (rate = count / processed * input rate), so the plot
// follows changes that a run average would hide. Without counts, the status rates are used.
function pushRates(s, now) {
  const run = first(s, ["run", "run_number"]);
  if (run !== state.historyRun) {  // a new run starts a new history
    state.historyRun = run;
    state.history = [];
    state.samples = [];
  }
  const seeds = seedsOf(s);
  const processed = first(s, ["events_processed", "n_processed", "processed"]);
  const counts = {}, average = {};
  for (const [n, e] of Object.entries(seeds)) {
    const c = seedCount(e), r = seedRate(e);
    if (isNum(c)) counts[n] = c;
    if (isNum(r)) average[n] = r;
    if (isNum(c) && c > 0 && isNum(r) && r > 0 && isNum(processed) && processed > 0) {
      state.inputRateHz = (r * processed) / c;
    }
  }
  const prev = state.samples[state.samples.length - 1];
  if (isNum(processed) && prev && isNum(prev.processed)) {
    if (processed === prev.processed) return;  // the run is not moving: nothing new to draw
    if (processed < prev.processed) state.samples = [];
  }
  state.samples.push({ processed, counts });
  if (state.samples.length > RATE_WINDOW_POLLS + 1) state.samples.shift();
  const base = state.samples[0];
  const rates = {};
  for (const n of new Set([...Object.keys(counts), ...Object.keys(average)])) {
    const dn = processed - base.processed;
    if (dn > 0 && isNum(counts[n]) && isNum(base.counts[n]) && isNum(state.inputRateHz)) {
      rates[n] = ((counts[n] - base.counts[n]) / dn) * state.inputRateHz;
    } else if (isNum(average[n])) {
      rates[n] = average[n];
    }
  }
  if (Object.keys(rates).length) {
    state.history.push({ t: now, rates });
    if (state.history.length > HISTORY_POINTS) state.history.shift();
  }
}

function renderRatePlot() {
  const names = [...new Set(state.history.flatMap((h) => Object.keys(h.rates)))];
  const series = names.map((n) => ({
    name: n, colour: colourOf(n),
    points: state.history.filter((h) => n in h.rates).map((h) => [h.t, h.rates[n]]),
  }));
  linePlot(document.getElementById("rate-plot"), 900, 320, series, {
    empty: "waiting for a run: no seed rates yet", xLabel: "time", yLabel: "rate [Hz]",
    xTickFmt: clock, xTicks: timeTicks, valueFmt: fmtRate,
  });
  const sub = document.getElementById("rate-plot-sub");
  sub.textContent = state.history.length
    ? `over the last ${RATE_WINDOW_POLLS} polls, at the menu's input rate (table: run average)` : "";
}

function renderAlarms(d) {
  const alarms = (d && Array.isArray(d.alarms)) ? d.alarms.slice() : [];
  alarms.sort((a, b) => (b.lumisection ?? 0) - (a.lumisection ?? 0)
                        || (a.severity === "error" ? -1 : 0) - (b.severity === "error" ? -1 : 0));
  const tbody = document.querySelector("#alarm-table tbody");
  clear(tbody);
  if (alarms.length === 0) {
    tbody.appendChild(el("tr", { class: "empty" })).appendChild(el("td", { colspan: 5 }, d ? "no alarms" : "no DQM in this run"));
  }
  for (const a of alarms.slice(0, 200)) {
    const sev = String(a.severity || "info").toLowerCase();
    const tr = el("tr", { class: `alarm sev-${sev}`, "data-severity": sev, "data-kind": a.kind || "",
                          "data-histogram": a.histogram || "", "data-lumisection": String(a.lumisection ?? "") });
    tr.appendChild(el("td", { class: "num" }, String(a.lumisection ?? "\u2014")));
    const td = el("td");
    td.appendChild(el("span", { class: `sev ${sev}` }, sev));
    tr.appendChild(td);
    tr.appendChild(el("td", {}, a.kind || ""));
    tr.appendChild(el("td")).appendChild(el("code", {}, a.histogram || ""));
    tr.appendChild(el("td", { class: "msg" }, a.message || ""));
    tbody.appendChild(tr);
  }
  const nErr = alarms.filter((a) => a.severity === "error").length;
  const nWarn = alarms.filter((a) => a.severity === "warning").length;
  document.getElementById("alarm-summary").textContent =
    alarms.length ? `${nErr} error${nErr === 1 ? "" : "s"}, ${nWarn} warning${nWarn === 1 ? "" : "s"}` : "";
  const flag = document.getElementById("alarm-flag");
  const latest = isNum(d && d.lumisection) ? d.lumisection : Math.max(-1, ...alarms.map((a) => a.lumisection ?? -1));
  const current = alarms.filter((a) => a.lumisection === latest);
  const worst = current.some((a) => a.severity === "error") ? "error" : current.length ? "warning" : "";
  flag.classList.toggle("hidden", !worst);
  flag.classList.toggle("warning", worst === "warning");
  flag.textContent = worst ? `${worst === "error" ? "ALARM" : "WARNING"} LS ${latest}` : "";
}

function histAlarm(name, alarms, ls) {
  const mine = alarms.filter((a) => a.histogram === name && (!isNum(ls) || a.lumisection === ls));
  if (mine.some((a) => a.severity === "error")) return "error";
  return mine.length ? "warning" : "";
}

function renderHistograms(d) {
  const grid = document.getElementById("hist-grid");
  const hs = (d && d.histograms) || {};
  const names = Object.keys(hs);
  document.getElementById("hist-sub").textContent =
    d && isNum(d.lumisection) ? `lumisection ${d.lumisection}` + (isNum(d.run) ? `, run ${d.run}` : "") : "";
  if (isNum(d && d.lumisection)) document.getElementById("ls-number").textContent = String(d.lumisection);
  clear(grid);
  if (names.length === 0) {
    grid.appendChild(el("p", { class: "muted", id: "dqm-missing" }, d ? "no lumisection has ended yet" : "no DQM in this run"));
    return;
  }
  const alarms = Array.isArray(d.alarms) ? d.alarms : [];
  const rank = (n) => ({ error: 0, warning: 1, "": 2 })[histAlarm(n, alarms, d.lumisection)];
  names.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  for (const name of names) {
    const h = hs[name] || {};
    const level = histAlarm(name, alarms, d.lumisection);
    const box = el("div", { class: `hist${level ? " alarm-" + level : ""}`, "data-name": name });
    const title = el("div", { class: "title" });
    title.appendChild(el("span", {}, name));
    const values = h.values || [];
    const entries = isNum(h.entries) ? h.entries : sum(values.flat());
    title.appendChild(el("span", { class: "stat" }, `${fmtInt(entries)} entries`));
    box.appendChild(title);
    const plot = svg("svg", { class: "plot", viewBox: "0 0 320 170", preserveAspectRatio: "xMidYMid meet" });
    const is2d = Array.isArray(values[0]);
    if (is2d && h.reference) title.lastChild.textContent += " \u00b7 ratio to ref.";
    box.appendChild(plot);
    grid.appendChild(box);
    const label = h.xlabel || h.label || name.split("/").pop();
    if (is2d) {
      mapPlot(plot, 320, 170, h.edges || [], values, h.reference, label);
    } else {
      // Falling spectra (pT, MET, latency) read better on a log scale.
      const logY = h.log_y ?? /(^|\/)(pt|latency)$/.test(name);
      const seedAxis = /(^|\/)rates$/.test(name) && Array.isArray(d.seed_names) ? d.seed_names : undefined;
      histPlot(plot, 320, 170, h.edges || [], values, h.reference, seedAxis ? "trigger seed" : label,
               logY, seedAxis);
    }
  }
}

function renderLsRates(d) {
  const hz = Boolean(d && d.seed_rates_hz && Object.keys(d.seed_rates_hz).length);
  const sr = (d && (hz ? d.seed_rates_hz : d.seed_rates)) || {};
  const lss = Object.keys(sr).map(Number).filter(isNum).sort((a, b) => a - b);
  const names = [...new Set(lss.flatMap((ls) => Object.keys(sr[ls] || {})))];
  const series = names.map((n) => ({
    name: n, colour: colourOf(n),
    points: lss.filter((ls) => isNum(sr[ls][n])).map((ls) => [ls, sr[ls][n]]),
  }));
  linePlot(document.getElementById("ls-rate-plot"), 900, 260, series, {
    empty: d ? "no lumisection has ended yet" : "no DQM in this run",
    xLabel: "lumisection", yLabel: hz ? "rate [Hz]" : "accept fraction", valueFmt: hz ? fmtRate : fmtNum,
    xTicks: (x0, x1) => linearTicks(x0, x1, 8).filter((v) => Number.isInteger(v)),
  });
}

// ---------- polling ----------
async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (r.status === 404 && path === "api/dqm") return null;
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function setConnection(ok, text) {
  const c = document.getElementById("conn");
  c.className = `conn ${ok ? "ok" : "down"}`;
  document.getElementById("conn-text").textContent = text;
}

// Run control nests the pipeline's counters ("pipeline" while running, "summary" once stopped):
// one flat view, the run-control keys (state, run, error) taking precedence.
function flatten(raw) {
  if (!raw || typeof raw !== "object") return {};
  const out = {};
  for (const part of [raw.summary, raw.pipeline]) {
    if (part && typeof part === "object") Object.assign(out, part);
  }
  for (const [k, v] of Object.entries(raw)) {
    if (k !== "pipeline" && k !== "summary" && v !== null && v !== undefined) out[k] = v;
  }
  return out;
}

async function poll() {
  try {
    const [raw, d] = await Promise.all([getJson("api/status"), getJson("api/dqm")]);
    const s = flatten(raw);
    state.status = s;
    state.rawStatus = raw;
    state.dqm = d;
    state.updates += 1;
    if (d) state.dqmUpdates += 1;
    const now = Date.now() / 1000;
    pushRates(s, now);
    renderHeader(s);
    renderTiles(s);
    renderSeeds(s);
    renderRejections(s);
    renderRatePlot();
    const dqmKey = JSON.stringify(d);
    if (dqmKey !== state.dqmKey) {  // redraw the DQM panels only when their data changed
      state.dqmKey = dqmKey;
      renderAlarms(d);
      renderHistograms(d);
      renderLsRates(d);
    }
    state.failures = 0;
    setConnection(true, "live");
    document.getElementById("updated").textContent = `updated ${clock(now)}`;
  } catch (err) {
    state.failures += 1;
    setConnection(false, `no answer (${state.failures})`);
    console.warn("dashboard poll failed:", err);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
