"""The live page served at ``/`` of a ``--metrics`` address.

One self-contained HTML document (inline CSS and JavaScript, no external
URL, so it works without internet).  Its script reads ``metrics`` (relative
to the page, so it also works behind a path prefix) about once a second,
parses Prometheus' text format itself, keeps the last five minutes in
memory and draws four plots as inline SVG: throughput, latency (p50/p99 from
the ``wallaroo_end_to_end_latency_seconds`` histogram's bucket deltas, when a worker
has it), backlogs and failures.  Every figure may come from one worker or
from many (each series has a ``worker`` label): throughput is then drawn per
worker and in total.

Rates divide by the difference of ``wallaroo_uptime_seconds`` between two
scrapes (the worker's own clock: exact, whatever the browser's timers do);
an uptime that went down is a restart, and that interval has no rate.

For tests and tools, each plot's element has ``data-plot`` (its name),
``data-points`` (values currently plotted, 0 while there are none) and
``data-max`` (the largest one); each legend entry has ``data-series`` and
``data-value`` (its latest value); ``<body>`` has ``data-scrapes`` (the
successful scrapes so far) and ``data-failed-scrapes``.
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wallaroo</title>
<style>
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; }
body { font: 13px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #1d2330; background: #f3f5f8; display: flex; flex-direction: column; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 22px;
  padding: 10px 18px; background: #fff; border-bottom: 1px solid #dde2ea; }
header h1 { font-size: 17px; margin: 0; font-weight: 600; }
header .k { color: #6b7484; margin-right: 4px; }
#status { margin-left: auto; padding: 2px 10px; border-radius: 10px; font-weight: 600;
  background: #e8ecf2; color: #4a5262; }
#status.ok { background: #e3f4e6; color: #1d7a34; }
#status.err { background: #fde7e6; color: #b3261e; }
main { flex: 1; display: grid; grid-template-columns: 1fr 1fr; grid-auto-rows: 1fr;
  gap: 12px; padding: 12px; min-height: 560px; }
section { background: #fff; border: 1px solid #dde2ea; border-radius: 8px;
  padding: 10px 12px 6px; display: flex; flex-direction: column; min-height: 0; }
section h2 { font-size: 14px; margin: 0; font-weight: 600; }
section h2 small { font-weight: 400; color: #6b7484; margin-left: 6px; }
.legend { display: flex; flex-wrap: wrap; gap: 2px 14px; margin: 4px 0 2px;
  color: #4a5262; max-height: 58px; overflow: auto; }
.legend span { white-space: nowrap; }
.legend i { display: inline-block; width: 16px; height: 0; vertical-align: middle;
  margin-right: 5px; border-top: 3px solid; }
.legend b { color: #1d2330; font-weight: 600; margin-left: 3px;
  font-variant-numeric: tabular-nums; }
.plot { flex: 1; min-height: 0; position: relative; }
.plot svg { position: absolute; inset: 0; width: 100%; height: 100%; }
.plot .msg { position: absolute; inset: 0; display: flex; align-items: center;
  justify-content: center; color: #8a92a0; font-size: 14px; pointer-events: none; }
svg text { font-size: 11px; fill: #6b7484; font-variant-numeric: tabular-nums; }
svg .grid { stroke: #eceff4; } svg .axis { stroke: #b9c0cc; }
svg path { fill: none; stroke-linejoin: round; stroke-linecap: round; }
</style></head>
<body data-scrapes="0" data-failed-scrapes="0">
<header>
  <h1>wallaroo</h1>
  <span><span class="k" id="apps-k">pipelines</span><span id="apps">-</span></span>
  <span><span class="k" id="workers-k">worker</span><span id="workers">-</span></span>
  <span><span class="k">uptime</span><span id="uptime">-</span></span>
  <span id="restarts-box" hidden><span class="k">restarts</span><span id="restarts"></span></span>
  <span id="replayed-box" hidden><span class="k">replayed at start</span><span id="replayed"></span></span>
  <span><span class="k">last scrape</span><span id="last">-</span></span>
  <span id="status">connecting</span>
</header>
<main>
  <section><h2>Throughput <small>messages per second</small></h2>
    <div class="legend" id="legend-throughput"></div>
    <div class="plot" data-plot="throughput" data-points="0" data-max="0"></div></section>
  <section><h2>Latency <small>end to end, frame read to output written, ms</small></h2>
    <div class="legend" id="legend-latency"></div>
    <div class="plot" data-plot="latency" data-points="0" data-max="0"></div></section>
  <section><h2>Backlogs <small>waiting, summed over workers</small></h2>
    <div class="legend" id="legend-backlog"></div>
    <div class="plot" data-plot="backlog" data-points="0" data-max="0"></div></section>
  <section><h2>Failures <small id="failures-total"></small></h2>
    <div class="legend" id="legend-failures"></div>
    <div class="plot" data-plot="failures" data-points="0" data-max="0"></div></section>
</main>
<script>
"use strict";
const PERIOD = 1000, TIMEOUT = 5000, WINDOW = 300e3, MIN_SPAN = 60e3;
const COLORS = ["#2463c7", "#e07b1a", "#2a9d4b", "#8e44ad", "#c0392b", "#138d90",
                "#b8860b", "#d35494", "#5d6d7e", "#6b8e23"];
const $ = id => document.getElementById(id);

// -- Prometheus text format ------------------------------------------------
function num(s) {
  if (s === "+Inf" || s === "Inf") return Infinity;
  if (s === "-Inf") return -Infinity;
  return Number(s);
}
function parse(text) {  // [{name, labels, value}]; '#' lines are left out
  const out = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line[0] === "#") continue;
    const labels = {};
    let i = 0;
    while (i < line.length && line[i] !== "{" && line[i] !== " ") i++;
    const name = line.slice(0, i);
    if (line[i] === "{") {
      i++;
      for (;;) {
        while (line[i] === " " || line[i] === ",") i++;
        if (i >= line.length || line[i] === "}") { i++; break; }
        const eq = line.indexOf("=", i);
        if (eq < 0 || line[eq + 1] !== '"') { i = line.length; break; }
        const key = line.slice(i, eq).trim();
        let v = "", j = eq + 2;
        for (; j < line.length && line[j] !== '"'; j++) {
          if (line[j] === "\\" && j + 1 < line.length) {
            j++; v += line[j] === "n" ? "\n" : line[j];
          } else v += line[j];
        }
        labels[key] = v;
        i = j + 1;
      }
    }
    const value = num(line.slice(i).trim().split(/\s+/)[0]);
    if (name && !Number.isNaN(value)) out.push({name, labels, value});
  }
  return out;
}

// -- one scrape's figures, per worker -----------------------------------------
function figures(samples) {
  const W = new Map(), apps = new Set(), pipelines = new Set();
  for (const {name, labels: L, value: v} of samples) {
    if (!name.startsWith("wallaroo_")) continue;
    const w = L.worker || "";
    if (!W.has(w)) W.set(w, {inNew: 0, inSrc: 0, replayed: 0, out: 0, fail: 0, inbox: 0,
      outbox: 0, chan: null, uptime: null, restarts: null, lat: null});
    const f = W.get(w);
    if (L.application) apps.add(L.application);
    switch (name) {
      case "wallaroo_source_messages_total":  // the application's sources
        pipelines.add(L.pipeline);
        if (L.kind === "replayed") f.replayed += v;
        else if (L.kind === "new") { f.inNew += v; f.inSrc += v; }
        break;
      case "wallaroo_channel_messages_total":  // from other workers
        if (L.kind === "replayed") f.replayed += v;
        else if (L.kind === "new") f.inNew += v;
        break;
      case "wallaroo_sink_outputs_total": f.out += v; break;
      case "wallaroo_failures_total": f.fail += v; break;
      case "wallaroo_inbox_messages": f.inbox += v; break;
      case "wallaroo_outbox_outputs": f.outbox += v; break;
      case "wallaroo_channel_backlog_batches": f.chan = (f.chan || 0) + v; break;
      case "wallaroo_uptime_seconds": f.uptime = v; break;
      case "wallaroo_restarts_total": f.restarts = (f.restarts || 0) + v; break;
      case "wallaroo_end_to_end_latency_seconds_bucket":
        f.lat = f.lat || {};
        f.lat[L.le] = (f.lat[L.le] || 0) + v;  // summed over other labels (sink)
        break;
    }
  }
  return {workers: W, apps, pipelines};
}

// Prometheus' histogram_quantile on cumulative counts [[le, n], ...] (sorted)
function quantile(q, buckets) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let lo = 0, below = 0;
  for (const [le, n] of buckets) {
    if (n >= rank) {
      if (le === Infinity) return lo;
      return lo + (le - lo) * (n > below ? (rank - below) / (n - below) : 1);
    }
    lo = le; below = n;
  }
  return lo;
}
function bucketDelta(a, b) {  // cumulative bucket deltas b - a, null on a reset
  if (!a || !b) return null;
  const out = {};
  for (const le in b) {
    const d = b[le] - (a[le] || 0);
    if (d < 0) return null;
    out[le] = d;
  }
  return out;
}

// -- history: per plot, the series seen and one row of values per scrape ------
const plots = {};
for (const name of ["throughput", "latency", "backlog", "failures"]) {
  plots[name] = {name, el: document.querySelector('[data-plot="' + name + '"]'),
    legend: $("legend-" + name), series: new Map(), rows: [], message: "",
    log: name === "latency",
    unit: {throughput: "messages / s", latency: "ms (log scale)", backlog: "waiting",
           failures: "failures / s"}[name]};
}
function series(plot, key, label, color, width, dash) {
  if (!plot.series.has(key)) plot.series.set(key, {key, label, color, width, dash});
}
let prev = null, scrapes = 0, failed = 0, firstT = null, seenReplayed = false;

function record(t, fig) {
  const rows = {throughput: {}, latency: {}, backlog: {}, failures: {}};
  const names = [...fig.workers.keys()].sort();
  const many = names.length > 1;
  const tp = plots.throughput;
  let inT = 0, outT = 0, repT = 0, failT = 0, rated = 0, latSum = null, hasLat = false;
  if (prev) {  // the totals first, to lead the legend; out is drawn thinner
    // over in, so that equal rates still show both
    series(tp, "in", many ? "in from sources, all workers" : "in", COLORS[0], 3.5, "");
    series(tp, "out", many ? "out, all workers" : "out", COLORS[1], 1.8, "");
  }
  names.forEach((w, i) => {
    const f = fig.workers.get(w), p = prev && prev.workers.get(w);
    if (f.lat) hasLat = true;
    if (!p) return;
    let dt = (f.uptime !== null && p.uptime !== null) ? f.uptime - p.uptime
           : (t - prev.t) / 1000;
    if (!(dt > 0) || f.inNew < p.inNew || f.out < p.out) return;  // a restart
    const r = (a, b) => Math.max(0, b - a) / dt;
    rated++;
    inT += r(p.inSrc, f.inSrc); outT += r(p.out, f.out);
    repT += r(p.replayed, f.replayed); failT += r(p.fail, f.fail);
    if (many) {
      const c = COLORS[(i + 2) % COLORS.length];
      series(tp, "in " + w, "in: " + w, c, 1.4, "");
      series(tp, "out " + w, "out: " + w, c, 1.4, "5 4");
      rows.throughput["in " + w] = r(p.inNew, f.inNew);
      rows.throughput["out " + w] = r(p.out, f.out);
    }
    const d = bucketDelta(p.lat, f.lat);
    if (d) {
      latSum = latSum || {};
      for (const le in d) latSum[le] = (latSum[le] || 0) + d[le];
    }
  });
  if (rated) {
    rows.throughput.in = inT; rows.throughput.out = outT;
    if (repT > 0) seenReplayed = true;
    if (seenReplayed) {
      series(tp, "replayed", "replayed", "#8e44ad", 2, "2 3");
      rows.throughput.replayed = repT;
    }
    series(plots.failures, "rate", "failed messages per second", "#c0392b", 2, "");
    rows.failures.rate = failT;
  }
  if (latSum) {
    const b = Object.keys(latSum).map(le => [num(le), latSum[le]]).sort((x, y) => x[0] - y[0]);
    series(plots.latency, "p50", "p50", COLORS[0], 2, "");
    series(plots.latency, "p99", "p99", "#c0392b", 2, "");
    const p50 = quantile(0.5, b), p99 = quantile(0.99, b);
    rows.latency.p50 = p50 === null ? null : p50 * 1000;
    rows.latency.p99 = p99 === null ? null : p99 * 1000;
  }
  plots.latency.message = !hasLat ? "no latency figures yet"
    : (latSum ? "no outputs in this window" : "waiting for a second scrape");
  let inbox = 0, outbox = 0, chan = null;
  for (const f of fig.workers.values()) {
    inbox += f.inbox; outbox += f.outbox;
    if (f.chan !== null) chan = (chan || 0) + f.chan;
  }
  if (fig.workers.size) {
    series(plots.backlog, "inbox", "inbox (messages)", COLORS[0], 2, "");
    series(plots.backlog, "outbox", "outbox (outputs)", COLORS[1], 2, "");
    rows.backlog.inbox = inbox; rows.backlog.outbox = outbox;
  }
  if (chan !== null) {
    series(plots.backlog, "chan", "channels (batches)", "#8e44ad", 2, "");
    rows.backlog.chan = chan;
  }
  for (const name in plots) {
    const plot = plots[name];
    plot.rows.push({t, v: rows[name]});
    while (plot.rows.length && plot.rows[0].t < t - WINDOW) plot.rows.shift();
  }
  header(fig, names);
  fig.t = t;
  prev = fig;
}

function gap(t) {  // a failed scrape: the lines break here
  for (const name in plots) plots[name].rows.push({t, v: {}});
}

// -- formatting -------------------------------------------------------------
function fmt(v) {
  if (v === null || v === undefined || !isFinite(v)) return "-";
  const a = Math.abs(v);
  const short = (x, d) => x.toFixed(d).replace(/\.0$/, "");
  if (a >= 1e9) return short(v / 1e9, a >= 1e10 ? 0 : 1) + "G";
  if (a >= 1e6) return short(v / 1e6, a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e4) return short(v / 1e3, a >= 1e5 ? 0 : 1) + "k";
  if (a >= 100 || v === Math.round(v)) return Math.round(v).toLocaleString("en");
  return (a >= 10 ? v.toFixed(1) : a >= 0.01 ? v.toFixed(2) : v.toPrecision(2))
    .replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
}
function duration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
        m = Math.floor(s % 3600 / 60), x = s % 60;
  if (d) return d + " d " + h + " h";
  if (h) return h + " h " + m + " min";
  if (m) return m + " min " + x + " s";
  return x + " s";
}
const pad = n => String(n).padStart(2, "0");
function clock(t) {
  const d = new Date(t);
  return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
}
function esc(s) {
  return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);
}

function header(fig, names) {
  const apps = fig.apps.size ? fig.apps : fig.pipelines;
  $("apps-k").textContent = fig.apps.size ? "application" : (apps.size > 1 ? "pipelines" : "pipeline");
  $("apps").textContent = [...apps].sort().join(", ") || "-";
  $("workers-k").textContent = names.length > 1 ? names.length + " workers" : "worker";
  $("workers").textContent = names.map(w => w || "(unnamed)").join(", ") || "-";
  const up = names.map(w => fig.workers.get(w).uptime).filter(u => u !== null);
  $("uptime").textContent = up.length ? duration(Math.min(...up)) + (up.length > 1 && Math.max(...up) - Math.min(...up) >= 1 ? " to " + duration(Math.max(...up)) : "") : "-";
  let restarts = null, replayed = 0, failures = 0;
  for (const f of fig.workers.values()) {
    if (f.restarts !== null) restarts = (restarts || 0) + f.restarts;
    replayed += f.replayed; failures += f.fail;
  }
  $("restarts-box").hidden = restarts === null;
  $("restarts").textContent = fmt(restarts);
  $("replayed-box").hidden = !(replayed > 0);
  $("replayed").textContent = fmt(replayed);
  $("failures-total").textContent = failures.toLocaleString("en") + " failed messages in total";
}

// -- drawing ------------------------------------------------------------------
function niceStep(span, n) {
  const raw = span / n, p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}
function draw(plot, now) {
  const el = plot.el, W = el.clientWidth, H = el.clientHeight;
  if (!W || !H) return;
  const L = 66, R = 14, T = 8, B = 22, pw = W - L - R, ph = H - T - B;
  const span = Math.min(WINDOW, Math.max(MIN_SPAN, now - (firstT === null ? now : firstT)));
  const t0 = now - span;
  const visible = plot.rows.filter(r => r.t >= t0 - PERIOD);
  const ok = v => v !== null && v !== undefined && isFinite(v) && (!plot.log || v > 0);
  let max = 0, min = Infinity, points = 0;
  for (const r of visible) for (const k in r.v) {
    const v = r.v[k];
    if (ok(v)) { points++; max = Math.max(max, v); min = Math.min(min, v); }
  }
  const ticks = [];
  let y;
  if (plot.log) {  // decades, with 2 and 5 between them when there are few
    const lo = points ? Math.pow(10, Math.floor(Math.log10(min))) : 0.1;
    const hi = points ? Math.max(lo * 10, Math.pow(10, Math.ceil(Math.log10(max)))) : 100;
    const decades = Math.round(Math.log10(hi / lo));
    for (let d = lo; d <= hi * 1.001; d *= 10) {
      ticks.push(d);
      if (decades <= 2 && d < hi / 1.001) ticks.push(2 * d, 5 * d);
    }
    y = v => T + ph - Math.log10(v / lo) / decades * ph;
  } else {
    const step = max > 0 ? niceStep(max * 1.08, 5) : 1;
    const top = max > 0 ? Math.ceil(max * 1.08 / step) * step : 4;
    for (let i = 0; i * step <= top * 1.000001; i++) ticks.push(i * step);
    y = v => T + ph - v / top * ph;
  }
  const x = t => L + (t - t0) / span * pw;
  let s = '<svg viewBox="0 0 ' + W + " " + H + '" role="img">';
  for (const v of ticks) {
    const yy = y(v).toFixed(1);
    s += '<line class="grid" x1="' + L + '" x2="' + (L + pw) + '" y1="' + yy + '" y2="' + yy + '"/>';
    s += '<text x="' + (L - 6) + '" y="' + yy + '" dy="0.35em" text-anchor="end">' + fmt(v) + "</text>";
  }
  const xs = [5, 10, 15, 30, 60, 120, 300].find(v => span / 1000 / v <= 7) * 1000;
  for (let t = Math.ceil(t0 / xs) * xs; t <= now; t += xs) {
    const xx = x(t).toFixed(1);
    s += '<line class="grid" x1="' + xx + '" x2="' + xx + '" y1="' + T + '" y2="' + (T + ph) + '"/>';
    if (x(t) > 26 && x(t) < W - 26)  // the labels that fit
      s += '<text x="' + xx + '" y="' + (H - 5) + '" text-anchor="middle">' + clock(t) + "</text>";
  }
  s += '<text transform="translate(13 ' + (T + ph / 2) + ') rotate(-90)" text-anchor="middle">' + plot.unit + "</text>";
  s += '<line class="axis" x1="' + L + '" x2="' + (L + pw) + '" y1="' + (T + ph) + '" y2="' + (T + ph) + '"/>';
  s += '<line class="axis" x1="' + L + '" x2="' + L + '" y1="' + T + '" y2="' + (T + ph) + '"/>';
  s += '<clipPath id="clip-' + plot.name + '"><rect x="' + L + '" y="' + (T - 2) + '" width="' + pw + '" height="' + (ph + 4) + '"/></clipPath>';
  s += '<g clip-path="url(#clip-' + plot.name + ')">';
  for (const se of plot.series.values()) {
    let d = "", run = 0, dots = "";
    const flush = (xx, yy) => { if (run === 1) dots += '<circle cx="' + xx + '" cy="' + yy + '" r="2" fill="' + se.color + '"/>'; };
    let lx = 0, ly = 0;
    for (const r of visible) {
      const v = r.v[se.key];
      if (!ok(v)) { flush(lx, ly); run = 0; continue; }
      lx = x(r.t).toFixed(1); ly = y(v).toFixed(1);
      d += (run ? "L" : "M") + lx + " " + ly;
      run++;
    }
    flush(lx, ly);
    s += '<path d="' + d + '" stroke="' + se.color + '" stroke-width="' + se.width + '"' + (se.dash ? ' stroke-dasharray="' + se.dash + '"' : "") + "/>" + dots;
  }
  s += "</g></svg>";
  const msg = points ? "" : (plot.message || (scrapes ? "waiting for a second scrape" : "waiting for the first scrape"));
  el.innerHTML = s + (msg ? '<div class="msg">' + esc(msg) + "</div>" : "");
  el.setAttribute("data-points", points);
  el.setAttribute("data-max", max);
  const last = plot.rows.length ? plot.rows[plot.rows.length - 1].v : {};
  let lg = "";
  for (const se of plot.series.values()) {
    const v = last[se.key];
    lg += '<span data-series="' + esc(se.key) + '" data-value="' + (v === undefined || v === null ? "" : v) + '"><i style="border-top: ' + (se.width > 2 ? 3 : 2) + "px " + (se.dash ? "dashed" : "solid") + " " + se.color + '"></i>' + esc(se.label) + "<b>" + fmt(v) + "</b></span>";
  }
  plot.legend.innerHTML = lg;
}
let lastT = null;
function drawAll() {
  const now = lastT === null ? Date.now() : lastT;
  for (const name in plots) draw(plots[name], now);
}

// -- the loop -----------------------------------------------------------------
function status(text, cls, why) {
  const el = $("status");
  el.textContent = text;
  el.className = cls;
  el.title = why || "";
}
async function scrape() {
  const ctl = new AbortController(), timer = setTimeout(() => ctl.abort(), TIMEOUT);
  try {
    const r = await fetch("metrics", {cache: "no-store", signal: ctl.signal});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const text = await r.text();
    const t = Date.now();
    if (firstT === null) firstT = t;
    record(t, figures(parse(text)));
    lastT = t;
    scrapes++;
    document.body.setAttribute("data-scrapes", scrapes);
    $("last").textContent = clock(t);
    status("live", "ok");
  } catch (e) {
    const t = Date.now();
    failed++;
    document.body.setAttribute("data-failed-scrapes", failed);
    gap(t);
    lastT = t;
    // the worker stopped, or is not reachable: keep what is drawn, retry
    status("scrape failed at " + clock(t) + ", retrying", "err",
           e.name === "AbortError" ? "no answer" : e.message);
  } finally {
    clearTimeout(timer);
  }
  drawAll();
  setTimeout(scrape, PERIOD);
}
window.addEventListener("resize", drawAll);
drawAll();
scrape();
</script>
</body></html>
""".encode("utf-8")
