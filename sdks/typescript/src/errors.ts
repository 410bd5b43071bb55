/**
 * Error types of the SDK.
 *
 * Two families, so callers can tell "the server refused" from "we never got
 * an answer":
 * - {@link ApiError}: the server answered and set `error` in the response;
 *   `.code` is the Centrifugo server API code (100 internal, 102 unknown
 *   channel, 107 bad request, 108 not available, 112 unrecoverable position…).
 * - {@link TransportError}: the gRPC-web call itself failed (network, HTTP
 *   status, gRPC status such as unauthenticated, deadline, cancellation);
 *   `.code` is the Connect/gRPC status code and `.cause` the ConnectError.
 */
import { Code, ConnectError } from "@connectrpc/connect";

export { Code };

/** Base class of every error this SDK throws on purpose. */
export class SpinwireError extends Error {
  override name = "SpinwireError";
}

/** The server API answered with `error {code, message}`. */
export class ApiError extends SpinwireError {
  override name = "ApiError";
  /** Centrifugo server API error code (protocol spec §4.4). */
  readonly code: number;
  /** The server's message, unprefixed. */
  readonly serverMessage: string;

  constructor(code: number, message: string) {
    super(`api error ${code}: ${message}`);
    this.code = code;
    this.serverMessage = message;
  }
}

/** A gRPC-web call failed below the API layer. */
export class TransportError extends SpinwireError {
  override name = "TransportError";
  /** gRPC status code, e.g. `Code.Unauthenticated` (16). */
  readonly code: Code;
  /** The status message without the "[code]" prefix Connect adds. */
  readonly rawMessage: string;
  override readonly cause: ConnectError;

  constructor(cause: ConnectError) {
    super(`transport error (${codeName(cause.code)}): ${cause.rawMessage}`);
    this.code = cause.code;
    this.rawMessage = cause.rawMessage;
    this.cause = cause;
  }

  /** Wraps anything thrown by a Connect call; keeps our own errors as they are. */
  static from(err: unknown): SpinwireError {
    if (err instanceof SpinwireError) return err;
    return new TransportError(ConnectError.from(err));
  }
}

/** gRPC's lower_snake name of a status code ("unauthenticated"), as in the gRPC docs. */
export function codeName(code: Code): string {
  const name = Code[code];
  if (name === undefined) return `code ${code}`;
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}
