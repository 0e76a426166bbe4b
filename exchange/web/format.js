// Formatting of wire values for display. Wire values stay strings everywhere else (a checksum
// covers them exactly as received); numbers are made only to draw and to sort.

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/** Milliseconds since the epoch from a `ts_ns` string. */
export function nsToMs(ns) {
  return Number(BigInt(ns) / 1_000_000n);
}

const pad = (n) => String(n).padStart(2, "0");

/** `HH:MM:SS` UTC of a `ts_ns`. */
export function clock(ns) {
  const d = new Date(nsToMs(ns));
  return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}

/** `HH:MM` UTC of a `ts_ns`. */
export function hhmm(ns) {
  const d = new Date(nsToMs(ns));
  return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
}

/** `30 Nov` of a `ts_ns`. */
export function dayMonth(ns) {
  const d = new Date(nsToMs(ns));
  return `${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]}`;
}

/** `30/11 22:00` of a `ts_ns`, for narrow tables. */
export function stamp(ns) {
  const d = new Date(nsToMs(ns));
  return `${d.getUTCDate()}/${d.getUTCMonth() + 1} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
}

/** A delivery start as a product shows it: `Mon 30 Nov 22:00Z`, `Tue 1 Dec`, `week of 7 Dec`. */
export function delivery(ns, product) {
  const d = new Date(nsToMs(ns));
  const day = `${DAYS[d.getUTCDay()]} ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]}`;
  if (product === "1h") return `${day} ${pad(d.getUTCHours())}:00Z`;
  if (product === "1w") return `week of ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]}`;
  return day;
}

/** A short delivery label for chart axes. */
export function deliveryShort(ns, product) {
  const d = new Date(nsToMs(ns));
  if (product === "1h") return `${pad(d.getUTCHours())}h`;
  return `${d.getUTCDate()}/${d.getUTCMonth() + 1}`;
}

/** A USD amount string (`"999987.500000"`) as `$999,987.50`. */
export function usd(text) {
  if (text === null || text === undefined) return "–";
  const value = Number(text);
  return value.toLocaleString("en-US", {
    style: "currency",
    currency: "USD",
    minimumFractionDigits: 2,
    maximumFractionDigits: 2,
  });
}

/** Decimals of a tick string (`"0.001"` -> 3). */
export function tickDecimals(tick) {
  const dot = tick.indexOf(".");
  return dot < 0 ? 0 : tick.length - dot - 1;
}

/** The symbol without its GPU and region, for narrow tables: `1h.2026-11-30T22`. */
export function shortSymbol(symbol) {
  return symbol.split(".").slice(2).join(".");
}

/** Escape text for HTML. */
export function esc(text) {
  return String(text ?? "").replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  );
}
