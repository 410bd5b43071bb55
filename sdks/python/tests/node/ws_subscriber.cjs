// WebSocket subscriber built on the npm `centrifuge` SDK, driven by the Python tests.
//
//   node ws_subscriber.cjs <ws url> <connection token> <channel>
//
// Resolves `centrifuge` (and `ws`) from $INTEROP_NODE_DIR/node_modules. Prints one JSON
// object per line on stdout: {"event":"subscribed"} first, then
// {"event":"publication","data":...,"offset":N} for each publication; errors and
// disconnects are printed too. Exits when stdin closes.
'use strict';

const path = require('node:path');
const { createRequire } = require('node:module');

const nodeDir = process.env.INTEROP_NODE_DIR;
if (!nodeDir) {
  console.error('INTEROP_NODE_DIR is not set');
  process.exit(2);
}
const requireFromInterop = createRequire(path.join(nodeDir, 'package.json'));
const { Centrifuge } = requireFromInterop('centrifuge');

// Node 20 has no global WebSocket unless flagged; the interop suite ships `ws`.
let WebSocketImpl;
try {
  WebSocketImpl = requireFromInterop('ws');
} catch (err) {
  WebSocketImpl = globalThis.WebSocket;
}
if (!WebSocketImpl) {
  console.error('no WebSocket implementation: install `ws` next to `centrifuge`');
  process.exit(2);
}

const [url, token, channel] = process.argv.slice(2);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const client = new Centrifuge(url, { token, websocket: WebSocketImpl });
const sub = client.newSubscription(channel);
sub.on('subscribed', (ctx) => emit({ event: 'subscribed', recovered: ctx.recovered }));
sub.on('publication', (ctx) => emit({ event: 'publication', data: ctx.data, offset: ctx.offset }));
sub.on('error', (ctx) => emit({ event: 'error', error: String(ctx.error && ctx.error.message) }));
client.on('disconnected', (ctx) => emit({ event: 'disconnected', code: ctx.code, reason: ctx.reason }));
sub.subscribe();
client.connect();

process.stdin.on('end', () => {
  client.disconnect();
  process.exit(0);
});
process.stdin.resume();
