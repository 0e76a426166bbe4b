// A client's copy of one order book at one depth, kept from the `book` channel and verified
// message by message: `prev_seq` must continue `seq`, and the CRC32 checksum (exchange/wire.py
// `book_checksum`) must match after every message. A failed check tells the caller to resubscribe.

import { crc32 } from "./crc32.js";

export const CHECKSUM_LEVELS = 10; // levels per side in a checksum (wire.CHECKSUM_LEVELS)

/** The text a checksum covers: top asks ascending, then top bids descending, as received. */
export function checksumText(asks, bids) {
  const part = (levels) =>
    levels
      .slice(0, CHECKSUM_LEVELS)
      .map(([price, qty]) => `${price}:${qty}`)
      .join(",");
  return `${part(asks)}|${part(bids)}`;
}

/** CRC32 of the top levels, as `book_checksum` computes it on the server. */
export function bookChecksum(asks, bids) {
  return crc32(checksumText(asks, bids));
}

export class OrderBook {
  constructor(symbol, depth) {
    this.symbol = symbol;
    this.depth = depth;
    this.seq = null;
    this.synced = false; // false until a snapshot arrives, and again after a failed check
    this.bids = new Map(); // price string -> qty string, exactly as received
    this.asks = new Map();
    this.checksum = null;
    this.tsNs = "0";
  }

  /** Replace the book with a snapshot; return `{ok, reason}`. */
  snapshot(msg) {
    this.bids = new Map(msg.bids);
    this.asks = new Map(msg.asks);
    this.seq = msg.seq;
    this.tsNs = msg.ts_ns;
    this.synced = true;
    return this._verify(msg.checksum);
  }

  /** Apply an update; return `{ok, reason}`; not ok means the book must be fetched again. */
  update(msg) {
    if (!this.synced) return { ok: true, ignored: true }; // waiting for a snapshot
    if (msg.prev_seq !== this.seq) {
      this.synced = false;
      return { ok: false, reason: `gap: prev_seq ${msg.prev_seq} after seq ${this.seq}` };
    }
    for (const [side, levels] of [
      [this.bids, msg.bids],
      [this.asks, msg.asks],
    ]) {
      for (const [price, qty] of levels) {
        if (qty === "0") side.delete(price);
        else side.set(price, qty);
      }
    }
    this.seq = msg.seq;
    this.tsNs = msg.ts_ns;
    return this._verify(msg.checksum);
  }

  /** Asks ascending and bids descending, best first, as `[price, qty]` string pairs. */
  levels() {
    const sorted = (side, sign) =>
      [...side.entries()].sort((a, b) => sign * (Number(a[0]) - Number(b[0])));
    return { asks: sorted(this.asks, 1), bids: sorted(this.bids, -1) };
  }

  _verify(expected) {
    const { asks, bids } = this.levels();
    this.checksum = bookChecksum(asks, bids);
    if (this.checksum !== expected) {
      this.synced = false;
      return { ok: false, reason: `checksum ${this.checksum} != ${expected} at seq ${this.seq}` };
    }
    return { ok: true };
  }
}
