// The page's state: what the views draw and the feed handlers keep current. Wire values stay
// strings as received (a checksum covers them exactly); numbers are made only to draw and sort.

import { nsToMs } from "./format.js";

const HOUR_MS = 3_600_000;

export const OPEN_STATUSES = new Set(["new", "partially_filled"]);

export const state = {
  catalog: null,
  instruments: [],
  bySymbol: new Map(),
  decimals: 3,
  symbol: null,
  depth: 10,
  book: null,
  bookPending: false, // a subscribe for a fresh snapshot is on its way
  shownLevels: new Map(), // "a:price" -> qty of the last render, to flash changes
  centerLadder: true, // scroll the ladder to the spread at the next render
  trades: [], // newest first
  tradeSeq: null,
  candles: new Map(), // start_ns -> candle
  candleSeq: null,
  halt: { status: "trading", reason: null, untilNs: null, seq: null }, // from the ticker channel
  index: { gpu: null, price: null, volume: null, history: [], seq: null },
  curve: { name: null, points: new Map(), seq: null },
  demo: null,
  account: null,
  loggedOn: false,
  orders: new Map(), // order_id (or "c:" + client_order_id for a refusal) -> order
  accountSeqs: { executions: null, deliveries: null }, // account_seq of the last push seen
  balances: null,
  deliveries: new Map(), // obligation_id -> the signed-in account's delivery (deliveries channel)
  disputing: new Set(), // obligation ids whose delivery.dispute is on its way
  engineOffsetMs: null, // engine time minus performance.now(), from the latest engine ts_ns seen
  provider: { capacity: [], deliveries: [], updated: null, error: null },
  stats: {
    snapshots: 0,
    updates: 0,
    resyncs: 0,
    checksumFailures: 0,
    gaps: 0,
    bookResumes: 0,
    heartbeats: 0,
    lastHeartbeatNs: null,
  },
};

/**
 * Note an engine timestamp (`ts_ns` of a trade, an order, a balance or a delivery).
 *
 * Engine time is the exchange's clock, moved by its clock ticks: it need not be the wall clock
 * (the sandbox and the tests run their own), so the page keeps the latest engine time seen and
 * lets it run on with the wall clock in between.
 */
export function noteEngineTime(tsNs) {
  if (!tsNs || tsNs === "0") return;
  const offsetMs = nsToMs(tsNs) - performance.now();
  if (state.engineOffsetMs === null || offsetMs > state.engineOffsetMs) {
    state.engineOffsetMs = offsetMs;
  }
}

/** The page's estimate of engine time in milliseconds, or null before any engine time seen. */
export function engineNowMs() {
  return state.engineOffsetMs === null ? null : performance.now() + state.engineOffsetMs;
}

/**
 * Whether the holder may dispute the delivery: confirmed, in the first hour of its window (the
 * engine's rule; it refuses an unconfirmed delivery with OBLIGATION_STATE, and outside the first
 * hour with DISPUTE_WINDOW).
 */
export function isDisputable(delivery) {
  const nowMs = engineNowMs();
  if (delivery.state !== "confirmed" || delivery.holder !== state.account || nowMs === null) {
    return false;
  }
  const startMs = nsToMs(delivery.start_ns);
  return startMs <= nowMs && nowMs < startMs + HOUR_MS;
}
