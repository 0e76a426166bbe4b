// Hand-drawn SVG charts: market depth, candles with volume, a sparkline, the forward curve.
// Each `draw*` function sizes itself to its container and replaces the container's content.

import { deliveryShort, esc, hhmm } from "./format.js";

const C = {
  bid: "#2ebd85",
  ask: "#f6465d",
  accent: "#4c8dff",
  grid: "#1c2331",
  axis: "#6b7588",
  ink: "#0b0e14", // text on a coloured tag
};

/** One SVG element; numbers are rounded to 0.01 px, strings escaped. */
function tag(name, attrs, content = null) {
  const list = Object.entries(attrs)
    .map(([k, v]) => `${k}="${typeof v === "number" ? Math.round(v * 100) / 100 : esc(v)}"`)
    .join(" ");
  return content === null ? `<${name} ${list}/>` : `<${name} ${list}>${content}</${name}>`;
}

const line = (x1, y1, x2, y2, stroke, extra = {}) => tag("line", { x1, y1, x2, y2, stroke, ...extra });
const label = (x, y, text, extra = {}) =>
  tag("text", { x, y, fill: C.axis, "font-size": 10, ...extra }, esc(text));

function size(el) {
  return { w: Math.max(120, el.clientWidth), h: Math.max(80, el.clientHeight) };
}

function show(el, w, h, body, name) {
  const attrs = { width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": name };
  el.innerHTML = tag("svg", { ...attrs, xmlns: "http://www.w3.org/2000/svg" }, body);
}

function empty(el, text) {
  const { w, h } = size(el);
  show(el, w, h, label(w / 2, h / 2, text, { "font-size": 12, "text-anchor": "middle" }), text);
}

/** About `count` round values covering [min, max]. */
export function niceTicks(min, max, count = 5) {
  const span = max - min;
  if (!(span > 0)) return [min];
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(v);
  return out;
}

function decimalsFor(ticks) {
  const step = ticks.length > 1 ? ticks[1] - ticks[0] : 0.01;
  return Math.min(4, Math.max(0, -Math.floor(Math.log10(step) + 1e-9)));
}

/** Pad a [lo, hi] range so that a flat series still has height. */
function padRange(lo, hi, fraction = 0.08) {
  const span = hi - lo;
  const pad = span > 0 ? span * fraction : Math.max(Math.abs(hi) * 0.01, 0.005);
  return [lo - pad, hi + pad];
}

/** Horizontal grid lines with their labels on the right (none where `busyY` has a tag). */
function yGrid(ticks, y, x0, x1, labelX, decimals, busyY = -1e9) {
  return ticks
    .map((v) => {
      const text = Math.abs(y(v) - busyY) > 12 ? label(labelX, y(v) + 4, v.toFixed(decimals)) : "";
      return line(x0, y(v), x1, y(v), C.grid) + text;
    })
    .join("");
}

/** Cumulative depth: bids green to the left of the mid, asks red to the right. */
export function drawDepth(el, asks, bids) {
  if (!asks.length && !bids.length) return empty(el, "no resting orders");
  const { w, h } = size(el);
  const m = { l: 8, r: 44, t: 10, b: 20 };
  const pw = w - m.l - m.r;
  const ph = h - m.t - m.b;
  const cum = (levels) => {
    let total = 0;
    return levels.map(([p, q]) => [Number(p), (total += Number(q))]);
  };
  const cb = cum(bids);
  const ca = cum(asks);
  const all = [...cb, ...ca];
  let [lo, hi] = [Math.min(...all.map(([p]) => p)), Math.max(...all.map(([p]) => p))];
  if (cb.length && ca.length) {
    // Centre the mid so that both sides get the same width.
    const mid = (cb[0][0] + ca[0][0]) / 2;
    const half = Math.max(mid - lo, hi - mid);
    [lo, hi] = [mid - half, mid + half];
  }
  [lo, hi] = padRange(lo, hi, 0.04);
  const qMax = Math.max(...all.map(([, c]) => c)) * 1.1;
  const x = (p) => m.l + ((p - lo) / (hi - lo)) * pw;
  const y = (q) => m.t + ph - (q / qMax) * ph;
  const y0 = y(0);
  const area = (points, edge) => {
    // A step line: each level holds its cumulative quantity out to the next level's price.
    let d = `M${x(points[0][0]).toFixed(1)},${y0.toFixed(1)}`;
    points.forEach(([p, c], i) => {
      const next = i + 1 < points.length ? points[i + 1][0] : edge;
      d += `L${x(p).toFixed(1)},${y(c).toFixed(1)}L${x(next).toFixed(1)},${y(c).toFixed(1)}`;
    });
    return `${d}L${x(edge).toFixed(1)},${y0.toFixed(1)}Z`;
  };
  const qTicks = niceTicks(0, qMax, 4).filter((v) => v > 0);
  let body = yGrid(qTicks, y, m.l, m.l + pw, w - m.r + 6, 0);
  const pTicks = niceTicks(lo, hi, Math.max(3, Math.floor(pw / 60)));
  const pDec = decimalsFor(pTicks);
  for (const v of pTicks) body += label(x(v), h - 5, v.toFixed(pDec), { "text-anchor": "middle" });
  for (const [points, edge, color] of [
    [cb, lo, C.bid],
    [ca, hi, C.ask],
  ]) {
    if (!points.length) continue;
    const style = { fill: color, "fill-opacity": 0.18, stroke: color, "stroke-width": 1.5 };
    body += tag("path", { d: area(points, edge), ...style });
  }
  if (cb.length && ca.length) {
    const mid = x((cb[0][0] + ca[0][0]) / 2);
    body += line(mid, m.t, mid, y0, C.axis, { "stroke-dasharray": "3 3" });
  }
  body += line(m.l, y0, m.l + pw, y0, C.axis);
  show(el, w, h, body, "market depth");
}

/** Candles (oldest left, newest at the right edge) over volume bars. */
export function drawCandles(el, candles, decimals = 3) {
  if (!candles.length) return empty(el, "no trades yet");
  const { w, h } = size(el);
  const m = { l: 8, r: 56, t: 12, b: 22 };
  const pw = w - m.l - m.r;
  const ph = h - m.t - m.b;
  // Few candles are drawn wide; many narrow down to 6 px slots, newest kept.
  const slots = Math.max(12, Math.min(Math.floor(pw / 6), Math.max(40, candles.length)));
  const slot = pw / slots;
  const volH = ph * 0.22;
  const priceH = ph - volH - 6;
  const rows = candles.slice(-slots).map((c) => ({
    start: c.start_ns,
    o: Number(c.open),
    h: Number(c.high),
    l: Number(c.low),
    c: Number(c.close),
    v: Number(c.volume),
  }));
  const [lo, hi] = padRange(Math.min(...rows.map((r) => r.l)), Math.max(...rows.map((r) => r.h)));
  const vMax = Math.max(...rows.map((r) => r.v), 1);
  const y = (p) => m.t + priceH - ((p - lo) / (hi - lo)) * priceH;
  const first = slots - rows.length; // right-aligned
  const cx = (i) => m.l + (first + i + 0.5) * slot;
  const ticks = niceTicks(lo, hi, Math.max(2, Math.floor(priceH / 45)));
  const last = rows[rows.length - 1];
  const ly = y(last.c);
  const dec = Math.max(decimals, decimalsFor(ticks));
  let body = yGrid(ticks, y, m.l, m.l + pw, w - m.r + 6, dec, ly);
  const bw = Math.max(1, Math.min(12, slot * 0.7));
  const labelEvery = Math.max(1, Math.ceil(70 / slot));
  rows.forEach((r, i) => {
    const color = r.c >= r.o ? C.bid : C.ask;
    const x = cx(i);
    const span = Math.abs(y(r.o) - y(r.c));
    const bodyH = Math.max(2, span); // a flat candle is still a visible dash
    const top = y(Math.max(r.o, r.c)) - (bodyH - span) / 2;
    const vh = (r.v / vMax) * volH;
    body += line(x, y(r.h), x, y(r.l), color);
    const bar = { x: x - bw / 2, width: bw, fill: color };
    body += tag("rect", { class: "candle", ...bar, y: top, height: bodyH });
    body += tag("rect", { ...bar, y: m.t + ph - vh, height: vh, "fill-opacity": 0.35 });
    if ((rows.length - 1 - i) % labelEvery === 0) {
      body += label(x, h - 6, hhmm(r.start), { "text-anchor": "middle" });
    }
  });
  const color = last.c >= last.o ? C.bid : C.ask;
  body += line(m.l, ly, m.l + pw, ly, color, { "stroke-dasharray": "2 3", "stroke-opacity": 0.8 });
  body += tag("rect", { x: w - m.r + 1, y: ly - 8, width: m.r - 2, height: 16, rx: 2, fill: color });
  body += label(w - m.r + 5, ly + 4, last.c.toFixed(decimals), { fill: C.ink, "font-weight": 600 });
  show(el, w, h, body, "candles");
}

/** A small line of recent values. */
export function drawSparkline(el, values) {
  const w = Math.max(40, el.clientWidth);
  const h = Math.max(16, el.clientHeight);
  if (values.length < 2) return show(el, w, h, line(0, h / 2, w, h / 2, C.grid), "index history");
  const [lo, hi] = padRange(Math.min(...values), Math.max(...values), 0.1);
  const x = (i) => ((i / (values.length - 1)) * (w - 2) + 1).toFixed(1);
  const y = (v) => (h - 1 - ((v - lo) / (hi - lo)) * (h - 2)).toFixed(1);
  const points = values.map((v, i) => `${x(i)},${y(v)}`).join(" ");
  const stroke = values[values.length - 1] >= values[0] ? C.bid : C.ask;
  const body = tag("polyline", { points, fill: "none", stroke, "stroke-width": 1.5 });
  show(el, w, h, body, "index history");
}

/** The forward curve: last price by delivery start, with each delivery's bid-ask range. */
export function drawCurve(el, points, product, selected) {
  const priced = points.filter((p) => p.last || p.bid || p.ask);
  if (!priced.length) return empty(el, "no prices on this curve yet");
  const { w, h } = size(el);
  const m = { l: 8, r: 56, t: 14, b: 22 };
  const pw = w - m.l - m.r;
  const ph = h - m.t - m.b;
  const values = priced.flatMap((p) => [p.last, p.bid, p.ask].filter(Boolean).map(Number));
  const [lo, hi] = padRange(Math.min(...values), Math.max(...values), 0.12);
  const step = pw / Math.max(points.length, 1);
  const x = (i) => m.l + (i + 0.5) * step;
  const y = (v) => m.t + ph - ((v - lo) / (hi - lo)) * ph;
  const ticks = niceTicks(lo, hi, Math.max(2, Math.floor(ph / 40)));
  let body = yGrid(ticks, y, m.l, m.l + pw, w - m.r + 6, Math.max(3, decimalsFor(ticks)));
  const labelEvery = Math.max(1, Math.ceil(44 / step));
  let path = "";
  points.forEach((p, i) => {
    const cx = x(i);
    if (p.symbol === selected) {
      const band = Math.min(step, 28);
      const style = { fill: C.accent, "fill-opacity": 0.12 };
      body += tag("rect", { x: cx - band / 2, y: m.t, width: band, height: ph, ...style });
    }
    if (p.bid && p.ask) {
      const style = { "stroke-width": 3, "stroke-opacity": 0.45 };
      body += line(cx, y(Number(p.bid)), cx, y(Number(p.ask)), C.axis, style);
    }
    if (p.bid) body += tag("circle", { cx, cy: y(Number(p.bid)), r: 2.5, fill: C.bid });
    if (p.ask) body += tag("circle", { cx, cy: y(Number(p.ask)), r: 2.5, fill: C.ask });
    if (p.last) path += `${path ? "L" : "M"}${cx.toFixed(1)},${y(Number(p.last)).toFixed(1)}`;
    if (i % labelEvery === 0) {
      body += label(cx, h - 6, deliveryShort(p.start_ns, product), { "text-anchor": "middle" });
    }
  });
  if (path) body += tag("path", { d: path, fill: "none", stroke: C.accent, "stroke-width": 1.5 });
  points.forEach((p, i) => {
    if (!p.last) return;
    const dot = { class: "curve-point", cx: x(i), cy: y(Number(p.last)), r: 3.5 };
    const title = tag("title", {}, esc(`${p.symbol} last ${p.last}`));
    body += tag("circle", { ...dot, fill: C.accent, stroke: C.ink }, title);
  });
  show(el, w, h, body, "forward curve");
}
