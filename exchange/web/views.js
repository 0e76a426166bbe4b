// Rendering: every view is redrawn from `state` at most once per animation frame, on demand.

import { drawCandles, drawCurve, drawDepth, drawSparkline } from "./charts.js";
import * as fmt from "./format.js";
import { isDisputable, OPEN_STATUSES, state } from "./state.js";

const ORDERS_SHOWN_MAX = 100;
const DELIVERIES_SHOWN_MAX = 100;
const HOUR_NS = 3_600_000_000_000n;
const LOG_LINES_MAX = 4;

export const $ = (id) => document.getElementById(id);

let feed = null; // the connection whose counters the footer shows

/** Show the counters of this connection in the footer. */
export function bindFeed(connection) {
  feed = connection;
}

/** Add a line to the page's log (and the console when it is a problem). */
export function log(text, bad = false) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toISOString().slice(11, 19)} ${text}`;
  if (bad) item.className = "bad";
  const list = $("log");
  list.prepend(item);
  while (list.children.length > LOG_LINES_MAX) list.lastChild.remove();
  if (bad) console.warn(text);
}

const dirty = new Set();
let frameRequested = false;

/** Redraw these views at the next animation frame. */
export function schedule(...parts) {
  for (const part of parts) dirty.add(part);
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(() => {
    frameRequested = false;
    const parts = [...dirty];
    dirty.clear();
    for (const part of parts) {
      try {
        RENDER[part]();
      } catch (error) {
        console.error(`rendering ${part} failed`, error); // a bug: the browser test fails on it
      }
    }
  });
}

/** The ticket's fields. */
export function ticketValues() {
  const form = $("ticket");
  return {
    side: form.querySelector("input[name=side]:checked").value,
    price: $("ticket-price").value.trim(),
    qty: $("ticket-qty").value.trim(),
    tif: $("ticket-tif").value,
    post_only: $("ticket-post-only").checked,
  };
}

const RENDER = {
  instrument: renderInstrument,
  book: renderBook,
  depth: () => {
    const { asks, bids } = state.book ? state.book.levels() : { asks: [], bids: [] };
    drawDepth($("depth-chart"), asks, bids);
  },
  trades: renderTrades,
  candles: () => {
    const rows = [...state.candles.values()].sort((a, b) =>
      BigInt(a.start_ns) < BigInt(b.start_ns) ? -1 : 1,
    );
    drawCandles($("candles"), rows, state.decimals);
    $("candles-meta").textContent = rows.length ? `${rows.length} bars · UTC` : "";
  },
  index: renderIndex,
  curve: renderCurve,
  ticket: renderTicket,
  orders: renderOrders,
  deliveries: renderHolderDeliveries,
  provider: renderProvider,
  feedInfo: renderFeedInfo,
};

function haltText({ status, reason, untilNs }) {
  if (status !== "halted") return "";
  if (reason === "circuit_breaker") {
    return `halted: circuit breaker${untilNs ? ` until ${fmt.clock(untilNs)} UTC` : ""}`;
  }
  return "halted by the operator";
}

function renderInstrument() {
  const inst = state.bySymbol.get(state.symbol);
  $("symbol").textContent = state.symbol ?? "–";
  const halt = $("halt");
  halt.hidden = state.halt.status !== "halted";
  halt.textContent = haltText(state.halt);
  if (!inst) return;
  const gpu = state.catalog.gpus.find((g) => g.model === inst.gpu);
  $("instrument-info").textContent =
    `${inst.gpu}${gpu ? ` (${gpu.memory_gb} GB, ${gpu.interconnect})` : ""} · ${inst.region} · ` +
    `delivery ${fmt.delivery(inst.start_ns, inst.product)} · ${inst.hours} h per lot · ` +
    `band ${inst.price_band_min}–${inst.price_band_max}`;
  const { asks, bids } = state.book ? state.book.levels() : { asks: [], bids: [] };
  const bid = bids[0]?.[0];
  const ask = asks[0]?.[0];
  $("stat-bid").textContent = bid ?? "–";
  $("stat-ask").textContent = ask ?? "–";
  $("stat-spread").textContent =
    bid && ask ? (Number(ask) - Number(bid)).toFixed(state.decimals) : "–";
  const last = state.trades[0];
  const lastEl = $("stat-last");
  lastEl.textContent = last?.price ?? "–";
  lastEl.className = `num ${last ? (last.side === "buy" ? "bid" : "ask") : ""}`;
  let volume = 0;
  for (const c of state.candles.values()) volume += Number(c.volume);
  $("stat-volume").textContent = state.candles.size ? `${volume} lots` : "–";
  $("stat-gate").textContent = `${fmt.hhmm(inst.gate_close_ns)}Z ${fmt.dayMonth(inst.gate_close_ns)}`;
}

function ladderRows(levels, side, maxTotal, padTo) {
  let total = 0;
  const rows = levels.map(([price, qty]) => {
    total += Number(qty);
    const key = `${side}:${price}`;
    const flash = state.shownLevels.has(key) && state.shownLevels.get(key) !== qty;
    const seen = state.shownLevels.size > 0 && !state.shownLevels.has(key);
    const width = ((total / maxTotal) * 100).toFixed(1);
    return (
      `<tr class="level${flash || seen ? " flash" : ""}" data-price="${fmt.esc(price)}" ` +
      `data-qty="${fmt.esc(qty)}" style="--w:${width}%">` +
      `<td>${fmt.esc(price)}</td><td>${fmt.esc(qty)}</td><td>${total}</td></tr>`
    );
  });
  const pad = '<tr class="pad"><td>&nbsp;</td><td></td><td></td></tr>';
  while (rows.length < padTo) rows.push(pad);
  return rows;
}

function renderBook() {
  const book = state.book;
  const { asks, bids } = book ? book.levels() : { asks: [], bids: [] };
  const shownAsks = asks.slice(0, state.depth);
  const shownBids = bids.slice(0, state.depth);
  const sum = (levels) => levels.reduce((s, [, q]) => s + Number(q), 0);
  const maxTotal = Math.max(sum(shownAsks), sum(shownBids), 1);
  const padTo = Math.min(state.depth, 10);
  $("book-asks").innerHTML = ladderRows(shownAsks, "a", maxTotal, padTo).reverse().join("");
  $("book-bids").innerHTML = ladderRows(shownBids, "b", maxTotal, padTo).join("");
  state.shownLevels = new Map([
    ...shownAsks.map(([p, q]) => [`a:${p}`, q]),
    ...shownBids.map(([p, q]) => [`b:${p}`, q]),
  ]);
  if (state.centerLadder && book?.synced) {
    state.centerLadder = false;
    const wrap = document.querySelector(".ladder-wrap");
    const row = $("book-spread");
    wrap.scrollTop = row.offsetTop - wrap.clientHeight / 2;
  }
  const spread = $("book-spread");
  if (bids.length && asks.length) {
    const mid = (Number(bids[0][0]) + Number(asks[0][0])) / 2;
    const gap = Number(asks[0][0]) - Number(bids[0][0]);
    spread.innerHTML =
      `<b>${mid.toFixed(state.decimals + 1)}</b> mid · spread ${gap.toFixed(state.decimals)}` +
      ` (${((gap / mid) * 10_000).toFixed(0)} bp)`;
  } else {
    spread.textContent = bids.length || asks.length ? "one-sided book" : "empty book";
  }
  const meta = $("book-meta");
  const ok = Boolean(book?.synced);
  meta.dataset.synced = String(ok);
  meta.dataset.seq = String(book?.seq ?? "");
  meta.className = `meta num${ok ? "" : " bad"}`;
  meta.textContent = ok
    ? `seq ${book.seq} · crc ${book.checksum.toString(16).padStart(8, "0")} ✓`
    : "waiting for snapshot…";
}

function renderTrades() {
  const rows = state.trades.map((t) => {
    const cls = `${t.side === "sell" ? "sell" : "buy"}${t.fresh ? " new" : ""}`;
    t.fresh = false;
    return (
      `<tr class="${cls}" data-trade-id="${t.trade_id}" data-price="${fmt.esc(t.price)}" ` +
      `data-qty="${fmt.esc(t.qty)}"><td>${fmt.clock(t.ts_ns)}</td><td>${fmt.esc(t.price)}</td>` +
      `<td>${fmt.esc(t.qty)}</td></tr>`
    );
  });
  $("trades").innerHTML = rows.length ? rows.join("") : emptyRow(3, "no trades yet");
  $("trades-meta").textContent = rows.length ? `${rows.length} shown` : "";
}

function renderIndex() {
  const { gpu, price, volume, history } = state.index;
  $("index-gpu").textContent = gpu ? `${gpu} index` : "index";
  $("index-price").textContent = price ?? "–";
  $("index-vol").textContent = volume ? `${volume} GPU·h 24h` : "";
  drawSparkline($("index-spark"), history);
}

function renderCurve() {
  const inst = state.bySymbol.get(state.symbol);
  const points = [...state.curve.points.values()].sort((a, b) =>
    BigInt(a.start_ns) < BigInt(b.start_ns) ? -1 : 1,
  );
  $("curve-name").textContent = state.curve.name ?? "";
  drawCurve($("curve"), points, inst?.product ?? "1h", state.symbol);
}

function renderTicket() {
  const v = ticketValues();
  const inst = state.bySymbol.get(state.symbol);
  const { asks, bids } = state.book ? state.book.levels() : { asks: [], bids: [] };
  const opposite = v.side === "buy" ? asks[0] : bids[0];
  $("ticket-price").placeholder = opposite ? opposite[0] : "price";
  const button = $("ticket-submit");
  button.className = `submit ${v.side}`;
  button.textContent = `${v.side === "buy" ? "Buy" : "Sell"} ${v.qty || "–"} @ ${v.price || "–"}`;
  // The engine refuses new orders while halted (INSTRUMENT_HALTED); cancels still work.
  button.disabled = state.halt.status === "halted";
  button.title = button.disabled ? "halted: new orders are refused until it trades again" : "";
  const notional = Number(v.price) * Number(v.qty) * (inst?.hours ?? 1);
  $("ticket-notional").textContent =
    inst && notional > 0
      ? `notional ${fmt.usd(notional)} (${v.qty} GPU × ${inst.hours} h × ${v.price})`
      : "";
  $("account").textContent = state.loggedOn ? `account ${state.account}` : "";
  const b = state.balances;
  $("balances").innerHTML = b
    ? `<span>available <b>${fmt.usd(b.available)}</b></span>` +
      `<span>held <b>${fmt.usd(b.held)}</b></span>` +
      `<span title="withdrawals requested, not yet paid out">pending <b>${fmt.usd(b.pending)}</b></span>`
    : "";
}

/** A table row: `data-*` attributes from `data`, cells from `cells` (strings are escaped). */
function tr(data, cells) {
  const attrs = Object.entries(data)
    .map(([k, v]) => ` data-${k}="${fmt.esc(v)}"`)
    .join("");
  const tds = cells.map((c) => (typeof c === "object" ? c.html : `<td>${fmt.esc(c)}</td>`));
  return `<tr${attrs}>${tds.join("")}</tr>`;
}

const raw = (html) => ({ html }); // a cell given as HTML
const badge = (cls, text) =>
  raw(`<td><span class="badge ${fmt.esc(cls)}">${fmt.esc(text)}</span></td>`);
const emptyRow = (columns, text) =>
  `<tr><td colspan="${columns}" class="empty">${fmt.esc(text)}</td></tr>`;

function renderOrders() {
  const orders = [...state.orders.values()]
    .sort((a, b) => (b.order_id || Infinity) - (a.order_id || Infinity))
    .slice(0, ORDERS_SHOWN_MAX);
  $("executions").innerHTML = orders.length
    ? orders.map(orderRow).join("")
    : emptyRow(9, state.demo?.trader ? "no orders yet" : "order entry is off");
  const open = orders.filter((o) => OPEN_STATUSES.has(o.status)).length;
  $("exec-meta").textContent = orders.length ? `${open} open · ${orders.length} shown` : "";
}

function orderRow(o) {
  const id = o.order_id;
  const cancel = OPEN_STATUSES.has(o.status)
    ? `<button class="cancel" data-order-id="${id}" title="cancel order ${id}">cancel</button>`
    : "";
  const status = o.status === "rejected" ? `${o.status}: ${o.reject_code ?? ""}` : o.status;
  const symbol = o.symbol ?? "";
  return tr({ "order-id": id, status: o.status, symbol }, [
    id || "–",
    raw(`<td title="${fmt.esc(symbol)}">${fmt.esc(fmt.shortSymbol(symbol))}</td>`),
    raw(`<td class="side-${fmt.esc(o.side)}">${fmt.esc(o.side ?? "–")}</td>`),
    o.price ?? "–",
    o.qty,
    o.cum_qty,
    (o.tif ?? "").toUpperCase(),
    badge(o.status, status),
    raw(`<td>${cancel}</td>`),
  ]);
}

/** Deliveries: active ones by obligation id, then settled ones newest first. */
function deliveryOrder(a, b) {
  const settled = (a.state === "settled") - (b.state === "settled");
  if (settled !== 0) return settled;
  if (a.state !== "settled") return a.obligation_id - b.obligation_id;
  return BigInt(b.ts_ns) > BigInt(a.ts_ns) ? 1 : -1;
}

const windowText = (d) => `${fmt.stamp(d.start_ns)}–${fmt.hhmm(d.end_ns)}`;
const stateText = (d) => (d.outcome ? `${d.state} · ${d.outcome}` : d.state);
const windowHours = (d) => Number((BigInt(d.end_ns) - BigInt(d.start_ns)) / HOUR_NS);

/** A table cell of plain text (never parsed as HTML: access comes from the provider). */
function textCell(text, className = "") {
  const td = document.createElement("td");
  td.textContent = String(text ?? "");
  if (className) td.className = className;
  return td;
}

function accessCell(d) {
  const td = textCell("", "access");
  if (!d.access) {
    td.textContent = d.state === "assigned" ? "waiting for the provider" : "–";
    td.classList.add("muted");
    return td;
  }
  const { host, port, user, instructions } = d.access;
  const command = document.createElement("code");
  command.className = "ssh";
  command.textContent = `ssh -p ${port} ${user}@${host}`;
  td.append(command);
  if (instructions) {
    const note = document.createElement("div");
    note.className = "instructions";
    note.textContent = instructions;
    td.append(note);
  }
  return td;
}

function renderHolderDeliveries() {
  const body = $("holder-deliveries");
  const mine = [...state.deliveries.values()]
    .filter((d) => d.holder === state.account)
    .sort(deliveryOrder)
    .slice(0, DELIVERIES_SHOWN_MAX);
  if (!mine.length) {
    body.innerHTML = emptyRow(8, state.demo?.trader ? "no deliveries" : "sign in to see deliveries");
    $("holder-deliveries-meta").textContent = "";
    return;
  }
  body.replaceChildren(
    ...mine.map((d) => {
      const row = document.createElement("tr");
      row.dataset.obligationId = d.obligation_id;
      row.dataset.state = d.state;
      row.dataset.symbol = d.symbol;
      const symbol = textCell(fmt.shortSymbol(d.symbol));
      symbol.title = d.symbol;
      const badge = document.createElement("span");
      badge.className = `badge ${d.outcome ?? d.state}`;
      badge.textContent = stateText(d);
      const stateTd = textCell("");
      stateTd.append(badge);
      const action = textCell("");
      if (isDisputable(d)) {
        const button = document.createElement("button");
        button.className = "dispute";
        button.dataset.obligationId = d.obligation_id;
        button.title = "the machines cannot be reached: hold the payment until an operator looks";
        button.textContent = "Dispute";
        button.disabled = state.disputing.has(d.obligation_id);
        action.append(button);
      }
      const refund = d.state === "settled" ? fmt.usd(d.refund) : "–";
      row.append(
        textCell(d.obligation_id),
        symbol,
        textCell(d.gpus),
        textCell(windowText(d)),
        stateTd,
        textCell(refund),
        accessCell(d),
        action,
      );
      return row;
    }),
  );
  const active = mine.filter((d) => d.state !== "settled").length;
  $("holder-deliveries-meta").textContent = `${active} active · ${mine.length} shown`;
}

function providedDelivery(d) {
  const id = fmt.esc(d.obligation_id);
  const row = tr({}, [
    raw(`<td title="${fmt.esc(d.symbol)}">${fmt.esc(fmt.shortSymbol(d.symbol))}</td>`),
    d.gpus,
    windowText(d),
    badge(d.outcome ?? d.state, d.outcome ?? d.state),
  ]);
  const paid =
    `<tr class="paid"><td colspan="4">released <b class="released">${fmt.esc(d.hours_released)}` +
    `/${windowHours(d)} h</b> · refund <b class="refund">${fmt.esc(fmt.usd(d.refund))}</b>` +
    ` · penalty <b class="penalty">${fmt.esc(fmt.usd(d.penalty))}</b></td></tr>`;
  return (
    `<tbody data-obligation-id="${id}" data-state="${fmt.esc(d.state)}" ` +
    `title="obligation ${id}: ${fmt.esc(stateText(d))}">${row}${paid}</tbody>`
  );
}

function renderProvider() {
  const p = state.provider;
  $("capacity").innerHTML = p.capacity.length
    ? p.capacity
        .map((c) =>
          tr({ gpu: c.gpu, region: c.region }, [
            `${c.gpu} · ${c.region}`,
            fmt.stamp(c.start_ns),
            fmt.stamp(c.end_ns),
            c.gpus,
          ]),
        )
        .join("")
    : emptyRow(4, "no capacity streamed");
  // One tbody a delivery: its row, then a line of what it paid (the panel is narrow).
  const table = $("provider-deliveries");
  for (const body of [...table.tBodies]) body.remove();
  table.insertAdjacentHTML(
    "beforeend",
    p.deliveries.length
      ? p.deliveries.map(providedDelivery).join("")
      : `<tbody>${emptyRow(4, "no deliveries")}</tbody>`,
  );
  const meta = $("provider-meta");
  meta.className = `meta${p.error ? " bad" : ""}`;
  const updated = p.updated?.toISOString().slice(11, 19) ?? "–";
  meta.textContent = p.error ?? `account ${state.demo.provider.account} · updated ${updated}`;
}

function renderFeedInfo() {
  const s = state.stats;
  const f = feed.stats;
  $("feed-info").textContent =
    `conn_seq ${feed.connSeq} · heartbeats ${s.heartbeats} · book snapshots ${s.snapshots}, ` +
    `updates ${s.updates}, resyncs ${s.resyncs}, resumes ${s.bookResumes} · ` +
    `reconnects ${Math.max(0, f.connects - 1)}`;
}
