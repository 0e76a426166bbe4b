// CRC-32 (IEEE 802.3, the polynomial zlib.crc32 uses), unsigned, over the UTF-8 bytes of a string.

const TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

const encoder = new TextEncoder();

/** CRC-32 of `text` as an unsigned integer, equal to Python's `zlib.crc32(text.encode())`. */
export function crc32(text) {
  let c = 0xffffffff;
  for (const byte of encoder.encode(text)) c = TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
