// Scenario 35: `http_server.tls_autocert` against a local ACME server, Let's Encrypt's pebble
// (installed from the Go module proxy by tests/interop/run.sh; $PEBBLE_BIN overrides). Spinwire
// obtains a certificate for `localhost` (TLS-ALPN-01 on its TLS port; HTTP-01 on `http_addr`
// with `http: true`), npm `centrifuge` connects over wss:// trusting only pebble's root, and a
// restart serves the certificate from `cache_dir` with the ACME server gone.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  REPO_ROOT, startServer, tracked, connToken, uid, api, freePort, WebSocket, withTimeout,
  connectClient, subscribeAndWait, waitForEvent,
} from '../harness.mjs';
import { Centrifuge } from 'centrifuge';

const PEBBLE_VERSION = 'v2.10.3';
const PEBBLE_BIN = process.env.PEBBLE_BIN || join(REPO_ROOT, 'tests', 'interop', '.tools', 'pebble');

/** Pebble's own test certificates (its HTTPS listener's, and the root that signed it). */
function pebbleCerts() {
  try {
    const modcache = execFileSync('go', ['env', 'GOMODCACHE'], { encoding: 'utf8' }).trim();
    const dir = join(modcache, 'github.com', 'letsencrypt', 'pebble', `v2@${PEBBLE_VERSION}`, 'test', 'certs');
    return existsSync(join(dir, 'pebble.minica.pem')) ? dir : null;
  } catch {
    return null;
  }
}

const certs = pebbleCerts();
const skip = !existsSync(PEBBLE_BIN) || !certs
  ? `pebble ${PEBBLE_VERSION} is not installed (tests/interop/run.sh installs it with go install)`
  : false;

/** A running pebble whose validators reach `tlsPort` (TLS-ALPN-01) and `httpPort` (HTTP-01). */
async function startPebble(tlsPort, httpPort) {
  const dir = mkdtempSync(join(tmpdir(), 'spinwire-pebble-'));
  const port = await freePort();
  const managementPort = await freePort();
  writeFileSync(join(dir, 'pebble.json'), JSON.stringify({
    pebble: {
      listenAddress: `127.0.0.1:${port}`,
      managementListenAddress: `127.0.0.1:${managementPort}`,
      certificate: join(certs, 'localhost', 'cert.pem'),
      privateKey: join(certs, 'localhost', 'key.pem'),
      httpPort, tlsPort, ocspResponderURL: '', externalAccountBindingRequired: false,
    },
  }));
  const proc = spawn(PEBBLE_BIN, ['-config', join(dir, 'pebble.json')], {
    env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  proc.stdout.on('data', c => { log += c; });
  proc.stderr.on('data', c => { log += c; });
  await withTimeout((async () => {
    while (!log.includes('Listening on')) await new Promise(r => setTimeout(r, 50));
  })(), 10000, 'pebble start');
  return {
    directory: `https://127.0.0.1:${port}/dir`,
    /** The root pebble signs certificates with (it makes a new one every start). */
    root() {
      // Its management listener uses pebble's own test certificate: read it without checking.
      return new Promise((resolve, reject) => {
        const socket = tlsConnect({ host: '127.0.0.1', port: managementPort, rejectUnauthorized: false }, () => {
          socket.write(`GET /roots/0 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n`);
        });
        let body = '';
        socket.on('data', c => { body += c; });
        socket.on('end', () => resolve(body.slice(body.indexOf('\r\n\r\n') + 4)));
        socket.on('error', reject);
      });
    },
    log: () => log,
    stop() { proc.kill('SIGTERM'); },
  };
}

/** Resolves once a TLS handshake for `localhost` on `port` verifies against `ca`. */
function verifiedHandshake(port, ca) {
  return new Promise(resolve => {
    const socket = tlsConnect({ host: '127.0.0.1', port, servername: 'localhost', ca }, () => {
      const issuer = socket.getPeerCertificate().issuer?.CN;
      socket.destroy();
      resolve({ ok: true, issuer });
    });
    socket.on('error', error => resolve({ ok: false, error: error.code || String(error) }));
  });
}

async function waitForCertificate(port, ca) {
  let last;
  await withTimeout((async () => {
    for (;;) {
      last = await verifiedHandshake(port, ca);
      if (last.ok) return;
      await new Promise(r => setTimeout(r, 200));
    }
  })(), 30000, `a certificate on port ${port} (last: ${JSON.stringify(last)})`);
  return last;
}

describe('http_server.tls_autocert with pebble', { skip }, () => {
  let pebble;
  let server;
  let port;
  let cacheDir;
  let root;

  const config = (httpPort, extra = {}) => ({
    http_server: {
      port,
      internal_port: String(httpPort),
      tls_external: true,
      tls_autocert: {
        enabled: true, host_whitelist: ['localhost'], cache_dir: cacheDir, email: 'ops@example.com',
        directory_url: pebble.directory, ...extra,
      },
    },
  });

  before(async () => {
    port = await freePort();
    pebble = await startPebble(port, await freePort());
    cacheDir = join(mkdtempSync(join(tmpdir(), 'spinwire-autocert-')), 'cache');
    // Spinwire trusts pebble's HTTPS through the usual variable, like any private CA.
    const env = { SSL_CERT_FILE: join(certs, 'pebble.minica.pem') };
    server = await startServer(config(await freePort()), { port, env });
    root = await pebble.root();
  });
  after(async () => {
    if (server) await server.stop();
    if (pebble) pebble.stop();
  });

  test('a certificate is obtained over TLS-ALPN-01 and npm centrifuge connects over wss://', tracked(() => server, async () => {
    const handshake = await waitForCertificate(port, root);
    assert.match(handshake.issuer, /Pebble/);
    assert.match(server.log, /answering a challenge.*TlsAlpn01/);

    class TrustingWebSocket extends WebSocket {
      constructor(url, protocols) { super(url, protocols, { ca: root }); }
    }
    const client = new Centrifuge(`wss://localhost:${port}/connection/websocket`, {
      websocket: TrustingWebSocket, token: connToken(server, 'acme'),
    });
    try {
      await connectClient(client);
      const channel = uid('news:acme_');
      const sub = client.newSubscription(channel);
      await subscribeAndWait(sub);
      const received = waitForEvent(sub, 'publication');
      await api(server, 'publish', { channel, data: { over: 'acme' } });
      assert.deepEqual((await received).data, { over: 'acme' });
    } finally {
      client.disconnect();
    }
    for (const file of ['acme_account.json', 'localhost.pem']) {
      assert.equal(statSync(join(cacheDir, file)).mode & 0o777, 0o600, file);
    }
  }));

  test('a restart serves the cached certificate without the ACME server', tracked(() => server, async () => {
    const cached = readFileSync(join(cacheDir, 'localhost.pem'), 'utf8');
    await server.stop();
    pebble.stop();
    server = await startServer(config(await freePort()), { port, env: { SSL_CERT_FILE: join(certs, 'pebble.minica.pem') } });
    const handshake = await verifiedHandshake(port, root);
    assert.ok(handshake.ok, JSON.stringify(handshake));
    assert.equal(readFileSync(join(cacheDir, 'localhost.pem'), 'utf8'), cached, 'no new certificate');
    assert.doesNotMatch(server.log, /answering a challenge/);
  }));
});

describe('http_server.tls_autocert over HTTP-01', { skip }, () => {
  let pebble;
  let server;
  let port;
  let httpPort;

  before(async () => {
    port = await freePort();
    httpPort = await freePort();
    pebble = await startPebble(port, httpPort);
    const cacheDir = join(mkdtempSync(join(tmpdir(), 'spinwire-autocert-')), 'cache');
    server = await startServer({
      http_server: {
        port, internal_port: String(await freePort()), tls_external: true,
        tls_autocert: {
          enabled: true, host_whitelist: ['localhost'], cache_dir: cacheDir,
          directory_url: pebble.directory, http: true, http_addr: `127.0.0.1:${httpPort}`,
        },
      },
    }, { port, env: { SSL_CERT_FILE: join(certs, 'pebble.minica.pem') } });
  });
  after(async () => {
    if (server) await server.stop();
    if (pebble) pebble.stop();
  });

  test('the challenge is answered on http_addr, which redirects anything else to HTTPS', tracked(() => server, async () => {
    const root = await pebble.root();
    await waitForCertificate(port, root);
    assert.match(server.log, /answering a challenge.*Http01/);
    const res = await fetch(`http://127.0.0.1:${httpPort}/connection/websocket?x=1`, { redirect: 'manual' });
    assert.equal(res.status, 302);
    // The request's host without its port: HTTPS is on its default port for the outside world.
    assert.equal(res.headers.get('location'), 'https://127.0.0.1/connection/websocket?x=1');
  }));
});
