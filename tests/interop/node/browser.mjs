// Headless Chromium for the browser scenarios: Debian's /usr/bin/chromium driven by
// playwright-core (which cannot download browsers here), a localhost page server that serves
// the npm `centrifuge` browser build, and a development certificate from `spinwire gencert`.

import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

import { chromium } from 'playwright-core';

import { SPINWIRE_BIN, REPO_ROOT } from './harness.mjs';

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** Where screenshots go; CI keeps the directory as an artifact. */
export const ARTIFACTS = process.env.SPINWIRE_ARTIFACTS || join(REPO_ROOT, 'target', 'interop-artifacts');

const require = createRequire(import.meta.url);

/** The SDK's browser bundles (each defines the global `Centrifuge`). */
function centrifugeBundle(name) {
  const main = require.resolve('centrifuge');
  return readFileSync(join(main, '..', '..', 'dist', name));
}

/**
 * Serves `/` (a page with a `#log` element, `show(line)`, `pinnedWebTransport(hashHex)` and
 * the SDK's JSON build loaded; `/?protobuf` loads
 * the Protobuf build instead) and the bundles, on 127.0.0.1. Pages are opened as
 * http://localhost:PORT, a secure context, which WebTransport requires.
 */
export async function startPageServer() {
  const bundles = {
    '/centrifuge.js': centrifugeBundle('centrifuge.js'),
    '/centrifuge.protobuf.js': centrifugeBundle('centrifuge.protobuf.js'),
  };
  const page = (bundle) => `<!doctype html>
<html><head><meta charset="utf-8"><title>spinwire browser test</title>
<style>body{font:16px sans-serif;margin:2em} #log div{padding:4px 0}</style></head>
<body><h1>Spinwire in Chromium</h1><div id="log"></div>
<script src="${bundle}"></script>
<script>
  // A WebTransport class that trusts the test certificate by hash, for code (like the SDK)
  // that calls \`new WebTransport(url)\` without options.
  const NativeWebTransport = window.WebTransport;
  window.pinnedWebTransport = (hashHex) => {
    const value = new Uint8Array(hashHex.match(/../g).map(h => parseInt(h, 16)));
    return class extends NativeWebTransport {
      constructor(url, options = {}) {
        super(url, { ...options, serverCertificateHashes: [{ algorithm: 'sha-256', value }] });
      }
    };
  };
  window.show = (line) => {
    const div = document.createElement('div');
    div.textContent = line;
    document.getElementById('log').appendChild(div);
  };
</script></body></html>`;
  const server = createServer((req, res) => {
    if (bundles[req.url]) {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(bundles[req.url]);
    } else if (req.url === '/' || req.url === '/?protobuf') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(page(req.url === '/' ? '/centrifuge.js' : '/centrifuge.protobuf.js'));
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise(r => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  return {
    origin: `http://localhost:${port}`,
    close: () => new Promise(r => server.close(r)),
  };
}

/** Launches headless Chromium with the flags this machine needs (QUIC stays enabled). */
export async function launchChromium() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`chromium not found at ${CHROMIUM}: the test command installs Debian's chromium`);
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * A fresh certificate from `spinwire gencert` in a temp directory: file paths for the config
 * and the SHA-256 (hex) for `serverCertificateHashes`.
 */
export function generateCertificate() {
  const dir = mkdtempSync(join(tmpdir(), 'spinwire-cert-'));
  const hash = execFileSync(SPINWIRE_BIN, ['gencert', '-o', dir, '-q', 'localhost', '127.0.0.1'], {
    encoding: 'utf8',
  }).trim();
  if (!/^[0-9a-f]{64}$/.test(hash)) throw new Error(`gencert printed ${JSON.stringify(hash)}`);
  return {
    certPath: join(dir, 'spinwire-cert.pem'),
    keyPath: join(dir, 'spinwire-key.pem'),
    certPem: readFileSync(join(dir, 'spinwire-cert.pem'), 'utf8'),
    sha256Hex: hash,
  };
}
