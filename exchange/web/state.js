// The page's state: what the views draw and the feed handlers keep current. Wire values stay
// strings as received (a checksum covers them exactly); numbers are made only to draw and sort.

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
  index: { gpu: null, price: null, volume: null, history: [], seq: null },
  curve: { name: null, points: new Map(), seq: null },
  demo: null,
  account: null,
  loggedOn: false,
  orders: new Map(), // order_id (or "c:" + client_order_id for a refusal) -> order
  execSeq: null,
  balances: null,
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
