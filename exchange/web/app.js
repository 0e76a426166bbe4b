// The market page: instrument picker, verified order book, trades, candles, index, forward curve,
// and (with the sandbox's demo keys) an order ticket, the trader's orders and deliveries, and a
// provider panel.
//
// Data flow: REST fills each view once, the WebSocket (ws.js) keeps it current. Every stream is
// checked for continuity; a break is repaired by resubscribing (book: fresh snapshot; others:
// REST reload), and a reconnect resubscribes with `resume_from_seq` where a seq is known.

import { OrderBook } from "./book.js";
import * as fmt from "./format.js";
import { defaultSymbol, fillPicker } from "./picker.js";
import { logonParams, publicFetch, signedFetch } from "./sign.js";
import { isDisputable, noteEngineTime, OPEN_STATUSES, state } from "./state.js";
import { $, bindFeed, log, schedule, ticketValues } from "./views.js";
import { Feed } from "./ws.js";

const CANDLES_KEPT_MAX = 300;
const INDEX_HISTORY_MAX = 120;
const TRADES_SHOWN_MAX = 100;
const DELIVERIES_KEPT_MAX = 200; // settled deliveries kept beyond this are dropped, oldest first
const PROVIDER_REFRESH_MS = 4_000;
const INSTRUMENTS_REFRESH_MS = 60_000;
const RETRY_MS = 1_000;
const DEMO_RETRY_MS = 2_000;

const feed = new Feed(wsUrl(), { onOpen, onPush, onHeartbeat, onState });
window.gx = { state, feed }; // for the console and the browser test
bindFeed(feed);

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

// ------------------------------------------------------------------ start

async function main() {
  bindPicker();
  bindTicket();
  bindDeliveries();
  new ResizeObserver(() => schedule("depth", "candles", "curve")).observe(document.body);
  await loadDemo();
  await loadInstruments();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("symbol");
  const first = state.bySymbol.has(wanted) ? wanted : defaultSymbol();
  if (first) await selectSymbol(first);
  feed.start();
  setInterval(() => loadInstruments().catch((e) => log(e.message, true)), INSTRUMENTS_REFRESH_MS);
  setInterval(everySecond, 1000);
}

let disputableShown = ""; // the obligation ids that showed a Dispute button at the last check

function everySecond() {
  schedule("feedInfo");
  // A delivery's first hour ends (or starts) without a push: redraw only when that changes.
  const disputable = [...state.deliveries.values()]
    .filter(isDisputable)
    .map((d) => d.obligation_id)
    .join();
  if (disputable !== disputableShown) {
    disputableShown = disputable;
    schedule("deliveries");
  }
}

/** Fetch the sandbox's demo keys; without them the page is a read-only market view. */
async function loadDemo() {
  let demo;
  try {
    demo = await publicFetch("/sandbox/demo.json");
  } catch {
    demo = null; // not the sandbox
  }
  if (demo && !demo.trader && !demo.provider) {
    setTimeout(loadDemo, DEMO_RETRY_MS); // the sandbox serves the keys once it has made them
    demo = null;
  }
  state.demo = demo;
  $("ticket-off").hidden = Boolean(demo?.trader);
  $("ticket").setAttribute("aria-disabled", demo?.trader ? "false" : "true");
  $("provider").hidden = !demo?.provider;
  $("holdings").hidden = !demo?.trader;
  document.body.classList.toggle("readonly", !demo?.trader);
  schedule("orders", "ticket", "deliveries");
  if (demo?.provider) refreshProvider();
  // Keys that arrive after the socket opened: reconnect, and log on as the socket opens.
  if (demo?.trader && feed.ws) feed.drop("the demo keys are ready: logging on");
}

// ------------------------------------------------------------------ instruments and the picker

async function loadInstruments() {
  const data = await publicFetch("/api/v1/instruments");
  state.catalog = data.catalog;
  state.decimals = fmt.tickDecimals(data.catalog.tick);
  state.instruments = data.instruments;
  state.bySymbol = new Map(data.instruments.map((i) => [i.symbol, i]));
  if (!state.symbol) return;
  const current = state.bySymbol.get(state.symbol);
  fillPicker(current ?? null);
  if (!current) {
    log(`${state.symbol} is no longer trading (gate closure)`);
    const next = $("pick-delivery").value;
    if (next) await selectSymbol(next);
  }
}

function bindPicker() {
  for (const id of ["pick-gpu", "pick-region", "pick-product"]) {
    $(id).addEventListener("change", () => {
      fillPicker(null);
      const symbol = $("pick-delivery").value;
      if (symbol) selectSymbol(symbol);
    });
  }
  $("pick-delivery").addEventListener("change", () => selectSymbol($("pick-delivery").value));
  $("pick-depth").addEventListener("change", () => changeDepth(Number($("pick-depth").value)));
  window.addEventListener("hashchange", () => {
    const wanted = new URLSearchParams(location.hash.slice(1)).get("symbol");
    if (wanted && wanted !== state.symbol && state.bySymbol.has(wanted)) selectSymbol(wanted);
  });
}

// ------------------------------------------------------------------ selecting an instrument

function curveNameOf(inst) {
  return `${inst.gpu}.${inst.region}.${inst.product}`;
}

async function selectSymbol(symbol) {
  const inst = state.bySymbol.get(symbol);
  if (!inst || symbol === state.symbol) return;
  const old = state.bySymbol.get(state.symbol);
  state.symbol = symbol;
  fillPicker(inst);
  history.replaceState(null, "", `#symbol=${encodeURIComponent(symbol)}`);
  state.book = new OrderBook(symbol, state.depth);
  state.shownLevels.clear();
  state.trades = [];
  state.tradeSeq = null;
  state.candles = new Map();
  state.candleSeq = null;
  state.halt = { status: "trading", reason: null, untilNs: null, seq: null };
  if (state.index.gpu !== inst.gpu) {
    state.index = { gpu: inst.gpu, price: null, volume: null, history: [], seq: null };
  }
  if (state.curve.name !== curveNameOf(inst)) {
    state.curve = { name: curveNameOf(inst), points: new Map(), seq: null };
  }
  schedule("instrument", "book", "depth", "trades", "candles", "index", "curve", "ticket");
  if (!isOpen()) return; // onOpen subscribes when the socket is up
  if (old) {
    const drop = [
      { channel: "book", symbols: [old.symbol] },
      { channel: "trades", symbols: [old.symbol] },
      { channel: "candles", symbols: [old.symbol] },
      { channel: "ticker", symbols: [old.symbol] },
    ];
    if (old.gpu !== inst.gpu) drop.push({ channel: "index", symbols: [old.gpu] });
    if (curveNameOf(old) !== curveNameOf(inst)) {
      drop.push({ channel: "curve", symbols: [curveNameOf(old)] });
    }
    for (const params of drop) feed.request("unsubscribe", params).catch(() => {});
  }
  await subscribeMarket({
    resume: false,
    index: !old || old.gpu !== inst.gpu,
    curve: !old || curveNameOf(old) !== curveNameOf(inst),
  });
}

async function changeDepth(depth) {
  if (depth === state.depth) return;
  state.depth = depth;
  state.book = new OrderBook(state.symbol, depth);
  state.shownLevels.clear();
  schedule("book", "depth");
  if (!isOpen()) return;
  await feed.request("unsubscribe", { channel: "book", symbols: [state.symbol] }).catch(() => {});
  await subscribeBook({ resume: false });
}

function isOpen() {
  return feed.ws?.readyState === WebSocket.OPEN && feed.state !== "connecting";
}

// ------------------------------------------------------------------ subscriptions

/** Run `job`; retry it while the same connection lasts when the gateway says "retry". */
async function retrying(what, job) {
  const connection = feed.stats.connects;
  for (;;) {
    try {
      return await job();
    } catch (error) {
      const again = ["UNAVAILABLE", "TIMEOUT", "RATE_LIMITED"].includes(error.code);
      if (!again || feed.stats.connects !== connection) {
        if (error.code !== "DISCONNECTED" && error.code !== "OFFLINE") {
          log(`${what}: ${error.message}`, true);
        }
        return null;
      }
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      if (feed.stats.connects !== connection || !isOpen()) return null;
    }
  }
}

async function subscribeMarket({ resume, index = true, curve = true }) {
  const jobs = [
    subscribeBook({ resume }),
    subscribeTrades({ resume }),
    subscribeCandles({ resume }),
    subscribeTicker(),
  ];
  if (index) jobs.push(subscribeIndex({ resume }));
  if (curve) jobs.push(subscribeCurve({ resume }));
  await Promise.all(jobs);
}

async function subscribeBook({ resume }) {
  const symbol = state.symbol;
  const depth = state.depth;
  const book = state.book;
  const params = { channel: "book", symbols: [symbol], depth };
  if (!book || book.symbol !== symbol || book.depth !== depth) {
    state.book = new OrderBook(symbol, depth);
  } else if (resume && book.synced) {
    params.resume_from_seq = book.seq;
  } else {
    book.synced = false; // keep showing it, marked stale, until the snapshot replaces it
  }
  state.bookPending = true;
  const result = await retrying("book", () => feed.request("subscribe", params));
  if (result?.resumed && symbol === state.symbol && depth === state.depth) {
    state.stats.bookResumes++;
    state.bookPending = false;
    log(`book resumed from seq ${params.resume_from_seq}`);
  }
}

/** Resubscribe for a fresh snapshot after a gap, a checksum mismatch or resync_required. */
function resyncBook(reason) {
  state.stats.resyncs++;
  log(`book resync: ${reason}`, true);
  if (state.book) state.book.synced = false;
  schedule("book");
  if (state.bookPending || !isOpen()) return;
  subscribeBook({ resume: false });
}

async function subscribeTrades({ resume }) {
  const symbol = state.symbol;
  const params = { channel: "trades", symbols: [symbol] };
  if (resume && state.tradeSeq !== null) params.resume_from_seq = state.tradeSeq;
  const result = await retrying("trades", () => feed.request("subscribe", params));
  if (result && !result.resumed && symbol === state.symbol) {
    state.tradeSeq = null;
    await loadTrades(symbol);
  }
}

async function loadTrades(symbol) {
  const path = `/api/v1/trades/${encodeURIComponent(symbol)}?limit=${TRADES_SHOWN_MAX}`;
  const data = await publicFetch(path).catch((e) => log(e.message, true));
  if (data && symbol === state.symbol) mergeTrades(data.trades, false);
}

function mergeTrades(rows, fresh) {
  const byId = new Map(state.trades.map((t) => [t.trade_id, t]));
  for (const row of rows) if (!byId.has(row.trade_id)) byId.set(row.trade_id, { ...row, fresh });
  state.trades = [...byId.values()]
    .sort((a, b) => b.trade_id - a.trade_id)
    .slice(0, TRADES_SHOWN_MAX);
  schedule("trades", "instrument");
}

// Only the ticker's halt status is drawn (the book and trades give the rest): a fresh subscribe
// and a REST read of where it stands, so a halt that began before the page opened shows too.
async function subscribeTicker() {
  const symbol = state.symbol;
  const params = { channel: "ticker", symbols: [symbol] };
  const result = await retrying("ticker", () => feed.request("subscribe", params));
  if (!result || symbol !== state.symbol) return;
  const data = await publicFetch(`/api/v1/ticker/${encodeURIComponent(symbol)}`).catch(() => null);
  if (data && symbol === state.symbol && state.halt.seq === null) setHalt(data, null);
}

function setHalt(ticker, seq) {
  state.halt = {
    status: ticker.status ?? "trading",
    reason: ticker.halt_reason ?? null,
    untilNs: ticker.halt_until_ns ?? null,
    seq,
  };
  schedule("instrument", "ticket");
}

async function subscribeCandles({ resume }) {
  const symbol = state.symbol;
  const params = { channel: "candles", symbols: [symbol], interval: "1m" };
  if (resume && state.candleSeq !== null) params.resume_from_seq = state.candleSeq;
  const result = await retrying("candles", () => feed.request("subscribe", params));
  if (result && !result.resumed && symbol === state.symbol) {
    state.candleSeq = null;
    await loadCandles(symbol);
  }
}

async function loadCandles(symbol) {
  const path = `/api/v1/candles/${encodeURIComponent(symbol)}?interval=1m&limit=${CANDLES_KEPT_MAX}`;
  const data = await publicFetch(path).catch((e) => log(e.message, true));
  if (!data || symbol !== state.symbol) return;
  for (const row of data.candles) {
    const known = state.candles.get(row.start_ns);
    if (!known || known.trades <= row.trades) state.candles.set(row.start_ns, row);
  }
  schedule("candles", "instrument");
}

async function subscribeIndex({ resume }) {
  const gpu = state.index.gpu;
  const params = { channel: "index", symbols: [gpu] };
  if (resume && state.index.seq !== null) params.resume_from_seq = state.index.seq;
  const result = await retrying("index", () => feed.request("subscribe", params));
  if (result && !result.resumed && gpu === state.index.gpu) {
    const data = await publicFetch(`/api/v1/index/${encodeURIComponent(gpu)}`).catch(() => null);
    if (data?.price && gpu === state.index.gpu && state.index.price === null) {
      setIndex(data.price, data.volume_gpu_hours);
    }
  }
}

function setIndex(price, volume) {
  state.index.price = price;
  state.index.volume = volume;
  state.index.history.push(Number(price));
  if (state.index.history.length > INDEX_HISTORY_MAX) state.index.history.shift();
  schedule("index");
}

async function subscribeCurve({ resume }) {
  const name = state.curve.name;
  const params = { channel: "curve", symbols: [name] };
  if (resume && state.curve.seq !== null) params.resume_from_seq = state.curve.seq;
  const result = await retrying("curve", () => feed.request("subscribe", params));
  if (result && !result.resumed && name === state.curve.name) await loadCurve(name);
}

async function loadCurve(name) {
  const [gpu, region, product] = name.split(".");
  const path = `/api/v1/curve/${gpu}/${region}/${product}`;
  const data = await publicFetch(path).catch((e) => log(e.message, true));
  if (!data || name !== state.curve.name) return;
  for (const point of data.points) state.curve.points.set(point.symbol, point);
  schedule("curve");
}

async function subscribePrivate() {
  await Promise.all([
    retrying("executions", () => feed.request("subscribe", { channel: "executions" })),
    retrying("balances", () => feed.request("subscribe", { channel: "balances" })),
    subscribeDeliveries(),
  ]);
}

/** Subscribe (the snapshot has the active deliveries), then list the settled ones too. */
async function subscribeDeliveries() {
  const subscribed = await retrying("deliveries", () =>
    feed.request("subscribe", { channel: "deliveries" }),
  );
  if (!subscribed) return;
  const listed = await retrying("deliveries", () =>
    feed.request("delivery.list", { role: "holder" }),
  );
  for (const d of listed?.deliveries ?? []) upsertDelivery(d);
}

// Private channels whose pushes are checked for gaps (`prev_account_seq`, heartbeats).
const SEQUENCED_CHANNELS = ["executions", "deliveries"];

/** Start a private channel again from its snapshot. */
function resubscribePrivate(channel, why) {
  log(`${channel}: ${why}; resubscribing`, true);
  state.accountSeqs[channel] = null;
  if (channel === "deliveries") return subscribeDeliveries();
  return retrying(channel, () => feed.request("subscribe", { channel }));
}

/** Follow a private update's `account_seq`; resubscribe when one was missed. */
function followAccountSeq(msg) {
  const had = state.accountSeqs[msg.channel];
  if (had !== null && msg.prev_account_seq !== had) {
    resubscribePrivate(msg.channel, `gap (prev ${msg.prev_account_seq}, had ${had})`);
  } else {
    state.accountSeqs[msg.channel] = msg.account_seq;
  }
}

// ------------------------------------------------------------------ the socket's callbacks

async function onOpen() {
  state.loggedOn = false;
  state.bookPending = false;
  if (state.demo?.trader) {
    const result = await feed.request("session.logon", await logonParams(state.demo.trader));
    state.account = result.account;
    state.loggedOn = true;
    schedule("ticket");
  }
  const jobs = [];
  if (state.symbol) jobs.push(subscribeMarket({ resume: true }));
  if (state.loggedOn) jobs.push(subscribePrivate());
  await Promise.all(jobs);
}

function onState(status, detail) {
  const el = $("status");
  el.dataset.state = status;
  if (status === "reconnecting") {
    el.textContent = `reconnecting in ${(detail.delayMs / 1000).toFixed(1)} s`;
    el.title = detail.reason;
    log(`connection lost: ${detail.reason}`, true);
  } else if (status === "live") {
    el.textContent = state.loggedOn ? "live · logged on" : "live";
    el.title = "";
    if (feed.stats.connects > 1) log("reconnected");
  } else {
    el.textContent = status === "syncing" ? "syncing" : "connecting";
  }
  schedule("feedInfo");
}

function onHeartbeat(msg) {
  state.stats.heartbeats++;
  state.stats.lastHeartbeatNs = msg.ts_ns;
  const book = state.book;
  const seq = msg.seqs?.[`book:${state.symbol}:${state.depth}`];
  // Every update up to the heartbeat's seq was queued before it: a higher seq means one was lost.
  if (book?.synced && !state.bookPending && seq !== undefined && seq > book.seq) {
    resyncBook(`heartbeat at seq ${seq}, book at ${book.seq}`);
  }
  for (const channel of SEQUENCED_CHANNELS) {
    const seq = msg.seqs?.[channel];
    const had = state.accountSeqs[channel];
    if (had !== null && seq !== undefined && seq > had) {
      resubscribePrivate(channel, `heartbeat at ${seq}, list at ${had}`);
    }
  }
}

// Channels whose `ts_ns` is engine time (the heartbeat's is the gateway's wall clock).
const ENGINE_TIME_CHANNELS = new Set(["trades", "executions", "balances", "deliveries"]);

function onPush(msg) {
  if (msg.type === "resync_required") return onResyncRequired(msg);
  if (ENGINE_TIME_CHANNELS.has(msg.channel)) noteEngineTime(msg.ts_ns);
  switch (msg.channel) {
    case "book":
      return onBook(msg);
    case "trades":
      return onTrade(msg);
    case "candles":
      return onCandle(msg);
    case "index":
      if (msg.symbol !== state.index.gpu) return;
      state.index.seq = msg.seq;
      return setIndex(msg.price, msg.volume_gpu_hours);
    case "curve":
      return onCurve(msg);
    case "ticker":
      if (msg.symbol === state.symbol) setHalt(msg, msg.seq);
      return;
    case "executions":
      return onExecution(msg);
    case "balances":
      state.balances = msg;
      return schedule("ticket");
    case "deliveries":
      return onDelivery(msg);
  }
}

function onResyncRequired(msg) {
  log(`${msg.channel} ${msg.symbol ?? ""}: resync required (${msg.reason})`, true);
  if (msg.channel === "book" && msg.symbol === state.symbol) return resyncBook(msg.reason);
  if (!isOpen()) return;
  if (msg.channel === "trades") subscribeTrades({ resume: false });
  else if (msg.channel === "candles") subscribeCandles({ resume: false });
  else if (msg.channel === "index") subscribeIndex({ resume: false });
  else if (msg.channel === "curve") subscribeCurve({ resume: false });
  else if (msg.channel === "ticker") subscribeTicker();
  else if (SEQUENCED_CHANNELS.includes(msg.channel)) resubscribePrivate(msg.channel, msg.reason);
  else if (msg.channel === "balances") {
    retrying(msg.channel, () => feed.request("subscribe", { channel: msg.channel }));
  }
}

function onBook(msg) {
  const book = state.book;
  if (!book || msg.symbol !== state.symbol || msg.depth !== state.depth) return; // a stale push
  let result;
  if (msg.type === "snapshot") {
    state.stats.snapshots++;
    state.bookPending = false;
    state.centerLadder = true;
    result = book.snapshot(msg);
  } else {
    if (!book.synced) return; // waiting for the snapshot asked for
    state.stats.updates++;
    result = book.update(msg);
  }
  if (!result.ok) {
    if (result.reason.startsWith("checksum")) state.stats.checksumFailures++;
    else state.stats.gaps++;
    resyncBook(result.reason);
    return;
  }
  schedule("book", "depth", "instrument", "ticket");
}

function onTrade(msg) {
  if (msg.symbol !== state.symbol) return;
  if (state.tradeSeq !== null && msg.prev_seq !== state.tradeSeq) {
    log(`trades: gap (prev_seq ${msg.prev_seq}, had ${state.tradeSeq}); reloading`, true);
    loadTrades(state.symbol);
  }
  state.tradeSeq = msg.seq;
  mergeTrades(msg.trades, true);
}

function onCandle(msg) {
  if (msg.symbol !== state.symbol || msg.interval !== "1m") return;
  if (state.candleSeq !== null && msg.prev_seq !== state.candleSeq) loadCandles(state.symbol);
  state.candleSeq = msg.seq;
  state.candles.set(msg.start_ns, msg);
  if (state.candles.size > CANDLES_KEPT_MAX) {
    const oldest = [...state.candles.keys()].sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : 1))[0];
    state.candles.delete(oldest);
  }
  schedule("candles", "instrument");
}

function onCurve(msg) {
  if (msg.symbol !== state.curve.name) return;
  if (state.curve.seq !== null && msg.prev_seq !== state.curve.seq) loadCurve(state.curve.name);
  state.curve.seq = msg.seq;
  if (msg.active) {
    const { instrument, start_ns, hours, last, bid, ask } = msg;
    state.curve.points.set(instrument, { symbol: instrument, start_ns, hours, last, bid, ask });
  } else {
    state.curve.points.delete(msg.instrument);
  }
  schedule("curve");
}

function orderKey(order) {
  return order.order_id ? String(order.order_id) : `c:${order.client_order_id}`;
}

function upsertOrder(order) {
  const key = orderKey(order);
  const known = state.orders.get(key);
  // An answer and a push can arrive in either order: never go back from a final state or from
  // more filled lots.
  if (known && !OPEN_STATUSES.has(known.status) && OPEN_STATUSES.has(order.status)) return;
  if (known && Number(known.cum_qty) > Number(order.cum_qty)) return;
  state.orders.set(key, order);
  schedule("orders");
}

function onExecution(msg) {
  if (msg.type === "snapshot") {
    for (const [key, order] of state.orders) {
      if (OPEN_STATUSES.has(order.status)) state.orders.delete(key); // the snapshot has them
    }
    for (const order of msg.orders) state.orders.set(orderKey(order), order);
    state.accountSeqs.executions = msg.account_seq;
    schedule("orders");
    return;
  }
  followAccountSeq(msg);
  if (msg.order) upsertOrder(msg.order);
}

// ------------------------------------------------------------------ the holder's deliveries

/** Keep the newer of what is known and `d`: pushes, answers and lists arrive in any order. */
function upsertDelivery(d) {
  noteEngineTime(d.ts_ns);
  const known = state.deliveries.get(d.obligation_id);
  if (known) {
    const had = BigInt(known.ts_ns);
    const got = BigInt(d.ts_ns);
    if (got < had || known.state === "settled") return;
    // The same engine step seen twice (a second `confirmed` brings the access): never lose
    // the access or an hour released.
    if (got === had && ((known.access && !d.access) || d.hours_released < known.hours_released)) {
      return;
    }
  }
  state.deliveries.set(d.obligation_id, d);
  pruneDeliveries();
  schedule("deliveries");
}

function pruneDeliveries() {
  if (state.deliveries.size <= DELIVERIES_KEPT_MAX) return;
  const settled = [...state.deliveries.values()]
    .filter((d) => d.state === "settled")
    .sort((a, b) => (BigInt(a.ts_ns) < BigInt(b.ts_ns) ? -1 : 1));
  for (const d of settled.slice(0, state.deliveries.size - DELIVERIES_KEPT_MAX)) {
    state.deliveries.delete(d.obligation_id);
  }
}

function onDelivery(msg) {
  if (msg.type === "snapshot") {
    // The snapshot lists the active deliveries: one known as active and not listed has settled
    // since (the list that follows the subscription brings it back, settled).
    const active = new Set(msg.deliveries.map((d) => d.obligation_id));
    for (const [id, d] of state.deliveries) {
      if (d.state !== "settled" && !active.has(id)) state.deliveries.delete(id);
    }
    for (const d of msg.deliveries) upsertDelivery(d);
    state.accountSeqs.deliveries = msg.account_seq;
    schedule("deliveries");
    return;
  }
  followAccountSeq(msg);
  upsertDelivery(msg.delivery);
  if (msg.type === "confirmed" && msg.delivery.access && msg.delivery.holder === state.account) {
    log(`delivery ${msg.delivery.obligation_id} confirmed: the machines are reachable`);
  }
}

function bindDeliveries() {
  $("holder-deliveries").addEventListener("click", async (event) => {
    const button = event.target.closest("button.dispute");
    if (!button) return;
    const obligationId = Number(button.dataset.obligationId);
    state.disputing.add(obligationId);
    schedule("deliveries");
    try {
      const result = await feed.request("delivery.dispute", { obligation_id: obligationId });
      upsertDelivery(result.delivery);
      log(`delivery ${obligationId} disputed: no hour is paid until an operator resolves it`);
    } catch (error) {
      const why = error.body?.reason ?? error.body?.msg ?? error.message;
      log(`dispute ${obligationId}: ${error.code} ${why}`, true);
    } finally {
      state.disputing.delete(obligationId);
      schedule("deliveries");
    }
  });
}

// ------------------------------------------------------------------ the ticket and orders

let clientOrders = 0;

function bindTicket() {
  const form = $("ticket");
  form.addEventListener("input", () => schedule("ticket"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!state.loggedOn) return showResult(false, "not logged on yet");
    const v = ticketValues();
    const params = {
      symbol: state.symbol,
      side: v.side,
      type: "limit",
      price: v.price,
      qty: v.qty,
      tif: v.tif,
      post_only: v.post_only,
      client_order_id: `web-${Date.now().toString(36)}-${++clientOrders}`,
    };
    const button = $("ticket-submit");
    button.disabled = true;
    try {
      const result = await feed.request("order.place", params);
      const o = result.order;
      upsertOrder(o);
      const fills = result.fills?.length ?? 0;
      const text =
        o.status === "rejected"
          ? `rejected: ${o.reject_code} ${o.reason ?? ""}`
          : `${o.status} · order ${o.order_id} · ${o.side} ${o.qty} @ ${o.price} · ` +
            `${fills} fill${fills === 1 ? "" : "s"}`;
      showResult(o.status !== "rejected", text, o.status);
    } catch (error) {
      const why = error.body?.reason ?? error.body?.msg ?? error.message;
      showResult(false, `${error.code}: ${why}`, "error");
    } finally {
      button.disabled = false;
    }
  });
  $("executions").addEventListener("click", async (event) => {
    const button = event.target.closest("button.cancel");
    if (!button) return;
    button.disabled = true;
    const orderId = Number(button.dataset.orderId);
    try {
      const result = await feed.request("order.cancel", { order_id: orderId });
      upsertOrder(result.order);
    } catch (error) {
      log(`cancel ${orderId}: ${error.code} ${error.message}`, true);
      button.disabled = false;
    }
  });
  for (const id of ["book-asks", "book-bids"]) {
    $(id).addEventListener("click", (event) => {
      const row = event.target.closest("tr[data-price]");
      if (!row) return;
      $("ticket-price").value = row.dataset.price;
      $(id === "book-asks" ? "side-buy" : "side-sell").checked = true;
      schedule("ticket");
    });
  }
}

function showResult(ok, text, status = "") {
  const el = $("ticket-result");
  el.className = `result ${ok ? "ok" : "bad"}`;
  el.dataset.status = status;
  el.textContent = text;
}

// ------------------------------------------------------------------ the provider panel

async function refreshProvider() {
  const creds = state.demo.provider;
  try {
    const [capacity, deliveries] = await Promise.all([
      signedFetch(creds, "GET", "/api/v1/capacity"),
      signedFetch(creds, "GET", "/api/v1/deliveries?role=provider"),
    ]);
    state.provider = {
      capacity: capacity.capacity,
      deliveries: deliveries.deliveries,
      updated: new Date(),
      error: null,
    };
  } catch (error) {
    state.provider.error = error.message;
  }
  schedule("provider");
  setTimeout(refreshProvider, PROVIDER_REFRESH_MS);
}

// ------------------------------------------------------------------ rendering

main().catch((error) => {
  log(`start-up failed: ${error.message}`, true);
  $("status").textContent = "failed";
  $("status").dataset.state = "reconnecting";
});
