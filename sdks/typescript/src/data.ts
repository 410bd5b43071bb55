/**
 * Payload encoding shared by the API client and the uni stream.
 *
 * Centrifugo payloads are bytes on the gRPC wire. The SDK's convention:
 * a `Uint8Array` is sent as is; any other value is JSON-encoded (UTF-8).
 * On the way back, bytes that parse as UTF-8 JSON are decoded to a JS
 * value, anything else stays a `Uint8Array`.
 */

/** What a `data`/`info` argument accepts: raw bytes or any JSON-serialisable value. */
export type DataInput = Uint8Array | JsonValue;

export type JsonValue =
  | string
  | number
  | boolean
  | null
  | JsonValue[]
  | { [key: string]: JsonValue | undefined };

const encoder = new TextEncoder();
// fatal: invalid UTF-8 must fail decoding so binary payloads stay bytes.
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Bytes for the wire: raw bytes untouched, everything else as JSON. */
export function encodeData(value: DataInput): Uint8Array {
  if (value instanceof Uint8Array) return value;
  const json = JSON.stringify(value);
  if (json === undefined) {
    throw new TypeError(`cannot JSON-encode a value of type ${typeof value}`);
  }
  return encoder.encode(json);
}

/** Same as {@link encodeData} but keeps "not given" as empty bytes. */
export function encodeOptionalData(value: DataInput | undefined): Uint8Array {
  return value === undefined ? new Uint8Array(0) : encodeData(value);
}

/**
 * The JSON value the bytes hold, or the bytes themselves when they are not
 * UTF-8 JSON. Empty bytes decode to `undefined` (an absent payload).
 */
export function decodeData(bytes: Uint8Array): unknown {
  if (bytes.length === 0) return undefined;
  try {
    return JSON.parse(decoder.decode(bytes));
  } catch {
    return bytes;
  }
}
