// Scenario 32: WebSocket permessage-deflate (`websocket.compression`, `uni_websocket.compression`).
// The `ws` package (npm `centrifuge`'s WebSocket in Node) offers the extension; Spinwire accepts
// it with no context takeover, compresses what it sends from `compression_min_size` bytes on,
// inflates what the client compresses, and holds an inflated message to
// `decompressed_message_size_limit` (closing with 1009 past it, like any oversized message).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { deflateRawSync } from 'node:zlib';

import {
  startServer, tracked, connToken, uid, api, WebSocket, PROTOCOLS,
  connectClient, subscribeAndWait, waitForEvent, withTimeout,
} from '../harness.mjs';

/** A compressible document of about `size` bytes. */
function document(size) {
  const words = [];
  for (let i = 0; words.join(' ').length < size; i++) words.push(`item-${i % 50}`);
  return { text: words.join(' ') };
}

/** `ws` offering permessage-deflate on every message (no size threshold). */
class DeflatingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { perMessageDeflate: { threshold: 0 } });
  }
}

function openSocket(url, options) {
  const ws = new WebSocket(url, options);
  return withTimeout(new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  }), 5000, 'websocket open');
}

describe('websocket.compression', () => {
  let server;
  before(async () => {
    server = await startServer({
      websocket: { compression: true, compression_min_size: 64, decompressed_message_size_limit: 200000 },
      uni_websocket: { enabled: true, compression: true },
    });
  });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`${proto.name}: npm centrifuge negotiates deflate, receives a large publication compressed, publishes compressed`, tracked(() => server, async () => {
      const channel = uid('chat:deflate_');
      const make = user => new proto.Centrifuge(server.wsUrl, {
        websocket: DeflatingWebSocket,
        token: connToken(server, user),
      });
      const [reader, writer] = [make('reader'), make('writer')];
      try {
        await Promise.all([connectClient(reader), connectClient(writer)]);
        const readerSocket = reader._transport._transport;
        assert.match(readerSocket.extensions, /permessage-deflate/);
        const sub = reader.newSubscription(channel);
        const writerSub = writer.newSubscription(channel);
        await Promise.all([subscribeAndWait(sub), subscribeAndWait(writerSub)]);

        const big = document(100_000);
        const bytesBefore = readerSocket._socket.bytesRead;
        let received = waitForEvent(sub, 'publication');
        await api(server, 'publish', { channel, data: big });
        assert.deepEqual(proto.decode((await received).data), big);
        const onWire = readerSocket._socket.bytesRead - bytesBefore;
        assert.ok(onWire < 20_000, `a 100 kB publication took ${onWire} bytes on the wire`);

        // The writer's publish is compressed by ws; the server inflates it.
        received = waitForEvent(sub, 'publication');
        const small = document(20_000);
        await writerSub.publish(proto.encode(small));
        assert.deepEqual(proto.decode((await received).data), small);
      } finally {
        reader.disconnect();
        writer.disconnect();
      }
    }));
  }

  test('a client that does not offer the extension gets plain frames', tracked(() => server, async () => {
    const ws = await openSocket(server.wsUrl, { perMessageDeflate: false });
    try {
      assert.equal(ws.extensions, '');
      const reply = new Promise(resolve => ws.once('message', (data, isBinary) => resolve({ data, isBinary })));
      ws.send(JSON.stringify({ id: 1, connect: { token: connToken(server, 'plain') } }));
      const { data } = await withTimeout(reply, 5000, 'connect reply');
      assert.equal(JSON.parse(data.toString()).id, 1);
    } finally {
      ws.close();
    }
  }));

  test('a message inflating past decompressed_message_size_limit closes with 1009', tracked(() => server, async () => {
    const ws = await openSocket(server.wsUrl, { perMessageDeflate: { threshold: 0 } });
    const closed = new Promise(resolve => ws.on('close', code => resolve(code)));
    ws.send(JSON.stringify({ id: 1, connect: { token: connToken(server, 'bomb') } }));
    // 300 kB of one repeated character compresses to well under the 64 kB wire limit.
    ws.send(JSON.stringify({ id: 2, rpc: { method: 'x', data: { pad: 'a'.repeat(300_000) } } }));
    assert.equal(await withTimeout(closed, 5000, 'close'), 1009);
    assert.ok(deflateRawSync(Buffer.from('a'.repeat(300_000))).length < 65536);
  }));

  test('uni_websocket: pushes arrive compressed', tracked(() => server, async () => {
    const channel = uid('news:uni_deflate_');
    const token = connToken(server, 'uni', { channels: [channel] });
    const url = `ws://127.0.0.1:${server.port}/connection/uni_websocket?cf_connect=${encodeURIComponent(JSON.stringify({ token }))}`;
    const ws = await openSocket(url, { perMessageDeflate: { threshold: 0 } });
    try {
      assert.match(ws.extensions, /permessage-deflate/);
      const messages = [];
      ws.on('message', data => messages.push(JSON.parse(data.toString())));
      const big = document(50_000);
      await withTimeout((async () => {
        while (!messages.some(m => m.connect)) await new Promise(r => setTimeout(r, 20));
      })(), 5000, 'connect push');
      const before = ws._socket.bytesRead;
      await api(server, 'publish', { channel, data: big });
      await withTimeout((async () => {
        while (!messages.some(m => m.pub)) await new Promise(r => setTimeout(r, 20));
      })(), 5000, 'publication push');
      assert.deepEqual(messages.find(m => m.pub).pub.data, big);
      assert.ok(ws._socket.bytesRead - before < 10_000);
    } finally {
      ws.close();
    }
  }));
});
