// Scenario 25: connection (and subscription) tokens verified with keys from a JWKS endpoint
// (`client.token.jwks_public_endpoint`, no static key). The test process runs the issuer: an
// HTTPS server on 127.0.0.1 with a self-signed certificate (openssl CLI) that counts the GETs
// it serves and whose key sets change at runtime. Spinwire trusts that certificate only through
// `SSL_CERT_FILE`. Covered: RSA/EC/OKP keys, caching (one fetch for many tokens), the
// rate-limited refetch for unknown `kid`s, key rotation, certificate verification, and the
// startup check against unsafe endpoint templates (CVE-2026-32301) plus templates filled from
// the token's `iss`.
//
// Tokens are a concern of the connect command, not of the wire format, so the SDK runs with
// the JSON protocol only.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { generateKeyPairSync, sign as cryptoSign } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  PROTOCOLS, SPINWIRE_BIN, startServer, makeConfig, freePort, newClient, subscribeAndWait,
  waitForEvent, waitFor, withTimeout, closeAll, delay, uid, nowSec,
} from '../harness.mjs';

const JSON_PROTO = PROTOCOLS.find(p => p.name === 'json');

/** Spinwire's least time between two fetches of one URL caused by unknown key ids. */
const REFETCH_INTERVAL_MS = 10_000;

// ---------------------------------------------------------------------------------------
// The issuer: certificate, keys, tokens, JWKS server
// ---------------------------------------------------------------------------------------

/** Why the file cannot run (no openssl CLI), or false. */
function opensslMissing() {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore', timeout: 5000 });
    return false;
  } catch (e) {
    return `the openssl CLI is not on PATH (${e.code || e.message}): cannot make the JWKS server's certificate`;
  }
}

/**
 * A self-signed certificate for IP 127.0.0.1. It is an end-entity certificate (CA:FALSE,
 * serverAuth) because webpki refuses a CA certificate as a server's leaf; being self-signed,
 * it is its own trust anchor when given to spinwire as SSL_CERT_FILE.
 */
function makeSelfSignedCert() {
  const dir = mkdtempSync(join(tmpdir(), 'spinwire-jwks-cert-'));
  const cnf = join(dir, 'openssl.cnf');
  writeFileSync(cnf, [
    '[req]', 'distinguished_name = dn', 'x509_extensions = leaf', 'prompt = no',
    '[dn]', 'CN = 127.0.0.1',
    '[leaf]', 'basicConstraints = critical, CA:FALSE', 'keyUsage = critical, digitalSignature, keyEncipherment',
    'extendedKeyUsage = serverAuth', 'subjectAltName = IP:127.0.0.1', '',
  ].join('\n'));
  const certPath = join(dir, 'cert.pem');
  const keyPath = join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-config', cnf, '-keyout', keyPath, '-out', certPath,
  ], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10000 });
  return { dir, certPath, certPem: readFileSync(certPath), keyPem: readFileSync(keyPath) };
}

/**
 * The issuer's HTTPS endpoint. `setKeys(path, jwks)` decides what GET <path> answers
 * (`{"keys": [...]}`, 404 for a path with no set), `setFailing(path, status)` makes it answer
 * an error instead; `gets(path)` lists the GETs served for a path, in order, with their
 * arrival time; `tlsFailures` counts handshakes a client gave up.
 */
async function startJwksServer(cert) {
  const sets = new Map();
  const requests = [];
  const state = { tlsFailures: 0 };
  const server = createHttpsServer({ key: cert.keyPem, cert: cert.certPem }, (req, res) => {
    requests.push({ method: req.method, path: req.url, at: Date.now() });
    const keys = req.method === 'GET' ? sets.get(req.url) : undefined;
    if (typeof keys === 'number') {
      res.writeHead(keys, { 'content-type': 'text/plain' }).end('issuer failing');
      return;
    }
    if (!keys) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('no such key set');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys }));
  });
  server.on('tlsClientError', () => { state.tlsFailures += 1; });
  await new Promise((res, rej) => {
    server.once('error', rej);
    server.listen(0, '127.0.0.1', res);
  });
  const { port } = server.address();
  return {
    port,
    url: path => `https://127.0.0.1:${port}${path}`,
    setKeys: (path, keys) => sets.set(path, keys),
    setFailing: (path, status) => sets.set(path, status),
    gets: path => requests.filter(r => r.method === 'GET' && (path === undefined || r.path === path)),
    get tlsFailures() { return state.tlsFailures; },
    close: () => new Promise(res => {
      server.closeAllConnections();
      server.close(() => res());
    }),
  };
}

const KEY_TYPES = {
  rsa: ['rsa', { modulusLength: 2048 }],
  ec: ['ec', { namedCurve: 'P-256' }],
  ed25519: ['ed25519', {}],
};

/** A fresh key pair: 'rsa' (2048), 'ec' (P-256) or 'ed25519'. */
function newKeyPair(type) {
  const [kind, options] = KEY_TYPES[type];
  return generateKeyPairSync(kind, options);
}

/** The public half as a JWK with `kid`; `use` defaults to 'sig' (null leaves it out). */
function publicJwk(keyPair, kid, { use = 'sig', alg } = {}) {
  const jwk = { ...keyPair.publicKey.export({ format: 'jwk' }), kid };
  if (use !== null) jwk.use = use;
  if (alg) jwk.alg = alg;
  return jwk;
}

const DIGESTS = { RS256: 'sha256', RS384: 'sha384', RS512: 'sha512', ES256: 'sha256', ES384: 'sha384', EdDSA: null };

function b64url(data) {
  return Buffer.from(data).toString('base64url');
}

/**
 * A JWT signed with `privateKey`: RS* are RSASSA-PKCS1-v1_5 (node's default RSA padding), ES*
 * use the fixed-size r||s (ieee-p1363) encoding JWS asks for, EdDSA signs without a digest.
 * `kid: undefined` leaves the header without a key id.
 */
function signJwt(privateKey, { alg, kid }, claims) {
  const header = { alg, typ: 'JWT' };
  if (kid !== undefined) header.kid = kid;
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const key = alg.startsWith('ES') ? { key: privateKey, dsaEncoding: 'ieee-p1363' } : privateKey;
  const signature = cryptoSign(DIGESTS[alg], Buffer.from(input), key);
  return `${input}.${b64url(signature)}`;
}

/** Connection token claims: `sub`, valid for an hour, plus `extra`. */
function claims(user, extra = {}) {
  return { sub: user, iat: nowSec(), exp: nowSec() + 3600, ...extra };
}

/** A connection token for `user` signed with `keyPair` under `kid`. */
function token(keyPair, { alg, kid }, user = uid('jwks-'), extra = {}) {
  return signJwt(keyPair.privateKey, { alg, kid }, claims(user, extra));
}

// ---------------------------------------------------------------------------------------
// Spinwire with a JWKS endpoint, and what a client sees
// ---------------------------------------------------------------------------------------

/**
 * Spinwire verifying tokens with the JWKS at `endpoint` only (the base config's HMAC secret
 * is emptied). `trustCertFile` becomes SSL_CERT_FILE; without it the variable is removed so
 * the self-signed certificate is not trusted. `token` adds client.token options.
 */
function startJwksSpinwire(endpoint, { trustCertFile, token: tokenOptions = {} } = {}) {
  const env = trustCertFile ? { SSL_CERT_FILE: trustCertFile } : { SSL_CERT_FILE: undefined, SSL_CERT_DIR: undefined };
  return startServer({
    client: { token: { hmac_secret_key: '', jwks_public_endpoint: endpoint, ...tokenOptions } },
  }, { env });
}

/** Run `fn(server)` against a spinwire of its own; a failure prints that server's log. */
async function withSpinwire(endpoint, options, fn) {
  const server = await startJwksSpinwire(endpoint, options);
  try {
    await fn(server);
  } catch (e) {
    server.markFailed();
    throw e;
  } finally {
    await server.stop();
  }
}

/**
 * Connect with `token` and report the SDK's first verdict: { client, connected } or
 * { client, disconnected }. Bounded by 8 s: a key fetch is two attempts of at most 1 s each.
 */
async function tryConnect(server, connToken, timeoutMs = 8000) {
  const client = newClient(server, JSON_PROTO, { token: connToken });
  const verdict = new Promise(resolve => {
    client.on('connected', ctx => resolve({ connected: ctx }));
    client.on('disconnected', ctx => resolve({ disconnected: ctx }));
  });
  client.connect();
  try {
    return { client, ...await withTimeout(verdict, timeoutMs, 'connected or disconnected') };
  } catch (e) {
    closeAll(client);
    throw e;
  }
}

/** The token is accepted: returns the connected context (the client is closed unless `keep`). */
async function assertConnects(server, connToken, what, { keep = false } = {}) {
  const { client, connected, disconnected } = await tryConnect(server, connToken);
  if (!keep) closeAll(client);
  assert.ok(connected, `${what}: expected connected, got disconnected ${JSON.stringify(disconnected)}`);
  return { client, ctx: connected };
}

/** The token is refused the way Centrifugo refuses it: disconnected 3500 "invalid token". */
async function assertRejected(server, connToken, what) {
  const { client, connected, disconnected } = await tryConnect(server, connToken);
  closeAll(client);
  assert.ok(disconnected, `${what}: expected disconnected 3500, got connected ${JSON.stringify(connected)}`);
  assert.equal(disconnected.code, 3500, `${what}: ${JSON.stringify(disconnected)}`);
  assert.equal(disconnected.reason, 'invalid token', what);
  return disconnected;
}

/** The user the server attached to a connected client, as presence in a `chat:` channel shows it. */
async function userOf(client, clientId) {
  const sub = client.newSubscription(uid('chat:jwks-user-'));
  await subscribeAndWait(sub);
  const presence = await sub.presence();
  return presence.clients[clientId] && presence.clients[clientId].user;
}

/**
 * Run spinwire on `extra` config expecting it to refuse to start: resolves with
 * { code, signal, stderr, stdout } once it exits; a process still running after `timeoutMs`
 * (it started) is killed and reported as { started: true }.
 */
async function runExpectingExit(extra, timeoutMs = 10000) {
  const dir = mkdtempSync(join(tmpdir(), 'spinwire-jwks-refuse-'));
  const configPath = join(dir, 'config.json');
  const config = makeConfig({ port: await freePort(), secret: '', apiKey: 'jwks-refuse-key' }, extra);
  writeFileSync(configPath, JSON.stringify(config, null, 2));
  const proc = spawn(SPINWIRE_BIN, ['--config', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', c => { stdout += c; });
  proc.stderr.on('data', c => { stderr += c; });
  const exited = new Promise(r => {
    proc.once('exit', (code, signal) => r({ code, signal }));
    proc.once('error', e => r({ code: `spawn failed: ${e.message}`, signal: null }));
  });
  const outcome = await Promise.race([exited, delay(timeoutMs).then(() => ({ started: true }))]);
  if (outcome.started) {
    proc.kill('SIGKILL');
    await exited;
  }
  rmSync(dir, { recursive: true, force: true });
  return { ...outcome, stdout, stderr };
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

const skip = opensslMissing();

describe('JWKS: token keys from an HTTPS key set endpoint', { skip }, () => {
  let cert;
  let jwks;
  // One key of each kind the server accepts, and some it must not use.
  const keys = {};

  before(async () => {
    cert = makeSelfSignedCert();
    jwks = await startJwksServer(cert);
    for (const [name, type] of [['k1', 'rsa'], ['rsaNoAlg', 'rsa'], ['es', 'ec'], ['ed', 'ed25519'],
      ['forger', 'rsa'], ['enc', 'rsa'], ['noUse', 'rsa'], ['k2', 'rsa']]) {
      keys[name] = newKeyPair(type);
    }
  });

  after(async () => {
    if (jwks) await jwks.close();
    if (cert) rmSync(cert.dir, { recursive: true, force: true });
  });

  describe('one spinwire, one key set', () => {
    const PATH = '/jwks';
    let server;

    before(async () => {
      jwks.setKeys(PATH, [
        publicJwk(keys.k1, 'k1', { alg: 'RS256' }),
        publicJwk(keys.rsaNoAlg, 'rsa-no-alg'),
        publicJwk(keys.es, 'es', { alg: 'ES256' }),
        publicJwk(keys.ed, 'ed'),
        publicJwk(keys.enc, 'enc', { use: 'enc' }),
        publicJwk(keys.noUse, 'no-use', { use: null }),
      ]);
      server = await startJwksSpinwire(jwks.url(PATH), { trustCertFile: cert.certPath });
    });

    after(async () => { if (server) await server.stop(); });

    const tracked = fn => async () => {
      try {
        await fn();
      } catch (e) {
        if (server) server.markFailed();
        throw e;
      }
    };

    test('an RS256 token connects as its `sub`; the key set is fetched once and then cached', tracked(async () => {
      assert.equal(jwks.gets(PATH).length, 0, 'nothing fetched before the first token');
      const user = uid('alice-');
      const { client, ctx } = await assertConnects(server, token(keys.k1, { alg: 'RS256', kid: 'k1' }, user),
        'k1 token', { keep: true });
      try {
        assert.equal(await userOf(client, ctx.client), user);
      } finally {
        closeAll(client);
      }
      assert.equal(jwks.gets(PATH).length, 1, 'the first token fetched the key set once');

      // Ten more users, all at once: every one is answered from the cache.
      await Promise.all(Array.from({ length: 10 }, (_, i) => assertConnects(server,
        token(keys.k1, { alg: 'RS256', kid: 'k1' }, uid(`cached${i}-`)), `cached k1 token ${i}`)));
      assert.equal(jwks.gets(PATH).length, 1, 'cached keys: no further GET');
    }));

    test('tokens with unknown kids are refused with 3500 and cost the issuer at most one refetch', tracked(async () => {
      const before = jwks.gets(PATH).length;
      for (let i = 0; i < 15; i++) {
        await assertRejected(server, token(keys.k1, { alg: 'RS256', kid: uid('made-up-') }), `unknown kid ${i}`);
      }
      const fetched = jwks.gets(PATH).length - before;
      assert.ok(fetched <= 2, `15 unknown kids caused ${fetched} GETs of the key set (at most 2 allowed)`);
      // The known key still works: the refused lookups did not spoil the cache.
      await assertConnects(server, token(keys.k1, { alg: 'RS256', kid: 'k1' }), 'k1 after the unknown kids');
    }));

    test('ES256 and EdDSA tokens connect against their EC and OKP keys', tracked(async () => {
      await assertConnects(server, token(keys.es, { alg: 'ES256', kid: 'es' }), 'ES256 token, kid es');
      await assertConnects(server, token(keys.ed, { alg: 'EdDSA', kid: 'ed' }), 'EdDSA token, kid ed');
    }));

    test('the token alg must be the key\'s alg, or of its family when the key names none', tracked(async () => {
      // rsa-no-alg has no `alg`: any RSA algorithm signed by it is fine.
      await assertConnects(server, token(keys.rsaNoAlg, { alg: 'RS384', kid: 'rsa-no-alg' }), 'RS384, key without alg');
      await assertConnects(server, token(keys.rsaNoAlg, { alg: 'RS512', kid: 'rsa-no-alg' }), 'RS512, key without alg');
      // k1 says RS256: a correct RS512 signature by the same key is still refused.
      await assertRejected(server, token(keys.k1, { alg: 'RS512', kid: 'k1' }), 'RS512 token for an RS256 key');
    }));

    test('a wrong key under a known kid, an encryption key, a key without use, no kid -> 3500', tracked(async () => {
      await assertRejected(server, token(keys.forger, { alg: 'RS256', kid: 'k1' }), 'k1 header, signed by another key');
      await assertRejected(server, token(keys.enc, { alg: 'RS256', kid: 'enc' }), 'key with use "enc"');
      await assertRejected(server, token(keys.noUse, { alg: 'RS256', kid: 'no-use' }), 'key without use');
      await assertRejected(server, token(keys.k1, { alg: 'RS256', kid: undefined }), 'no kid in the header');
    }));

    test('subscription tokens are verified with the same key set', tracked(async () => {
      const user = uid('sub-user-');
      const { client } = await assertConnects(server, token(keys.k1, { alg: 'RS256', kid: 'k1' }, user),
        'k1 token', { keep: true });
      try {
        const channel = uid('$chat:jwks-');
        const subClaims = { sub: user, channel, exp: nowSec() + 3600 };
        const good = client.newSubscription(channel, {
          token: signJwt(keys.es.privateKey, { alg: 'ES256', kid: 'es' }, subClaims),
        });
        await subscribeAndWait(good);
        assert.equal(good.state, 'subscribed');

        const otherChannel = uid('$chat:jwks-forged-');
        const forged = client.newSubscription(otherChannel, {
          token: signJwt(keys.forger.privateKey, { alg: 'RS256', kid: 'k1' }, { ...subClaims, channel: otherChannel }),
        });
        const unsubscribed = waitForEvent(forged, 'unsubscribed', { timeoutMs: 5000 });
        forged.subscribe();
        assert.equal((await unsubscribed).code, 103, 'a forged subscription token is permission denied');
        assert.equal(client.state, 'connected', 'a bad subscription token does not cost the connection');
      } finally {
        closeAll(client);
      }
    }));
  });

  test('15 concurrent unknown kids against a cold cache share the fetches: at most 2 GETs', async () => {
    const PATH = '/flood/jwks';
    jwks.setKeys(PATH, [publicJwk(keys.k1, 'k1', { alg: 'RS256' })]);
    await withSpinwire(jwks.url(PATH), { trustCertFile: cert.certPath }, async server => {
      await Promise.all(Array.from({ length: 15 }, (_, i) =>
        assertRejected(server, token(keys.k1, { alg: 'RS256', kid: uid('flood-') }), `concurrent unknown kid ${i}`)));
      const fetched = jwks.gets(PATH).length;
      assert.ok(fetched >= 1 && fetched <= 2, `15 concurrent unknown kids caused ${fetched} GETs (expected 1 or 2)`);
    });
  });

  test('key rotation: a key added to the set is found once the refetch interval has passed', async () => {
    const PATH = '/rot/jwks';
    jwks.setKeys(PATH, [publicJwk(keys.k1, 'k1', { alg: 'RS256' })]);
    await withSpinwire(jwks.url(PATH), { trustCertFile: cert.certPath }, async server => {
      await assertConnects(server, token(keys.k1, { alg: 'RS256', kid: 'k1' }), 'k1 before the rotation');
      const [first] = jwks.gets(PATH);
      assert.ok(first, 'k1 was fetched');

      // The issuer publishes k2 next to k1. Wait out the refetch interval (counted from the
      // last fetch, with a margin), so the unknown kid k2 may cause exactly one refetch.
      jwks.setKeys(PATH, [publicJwk(keys.k1, 'k1', { alg: 'RS256' }), publicJwk(keys.k2, 'k2', { alg: 'RS256' })]);
      await delay(Math.max(0, first.at + REFETCH_INTERVAL_MS + 500 - Date.now()));

      await assertConnects(server, token(keys.k2, { alg: 'RS256', kid: 'k2' }), 'k2 after the rotation');
      assert.equal(jwks.gets(PATH).length, 2, 'k2 caused one refetch');
      await assertConnects(server, token(keys.k1, { alg: 'RS256', kid: 'k1' }), 'k1 after the rotation');
      assert.equal(jwks.gets(PATH).length, 2, 'k1 and k2 are both cached now');
    });
  });

  test('while the issuer fails, unknown kids still cost it at most one refetch per interval', async () => {
    const PATH = '/failing/jwks';
    jwks.setKeys(PATH, [publicJwk(keys.k1, 'k1', { alg: 'RS256' })]);
    await withSpinwire(jwks.url(PATH), { trustCertFile: cert.certPath }, async server => {
      await assertConnects(server, token(keys.k1, { alg: 'RS256', kid: 'k1' }), 'k1 while the issuer works');
      const [first] = jwks.gets(PATH);
      assert.ok(first, 'k1 was fetched');

      // The issuer goes down; past the refetch interval an unknown kid may cause one refetch
      // (two attempts). The limit exists for exactly this flood, so a failing refetch counts.
      jwks.setFailing(PATH, 503);
      await delay(Math.max(0, first.at + REFETCH_INTERVAL_MS + 500 - Date.now()));
      const before = jwks.gets(PATH).length;
      await Promise.all(Array.from({ length: 5 }, (_, i) =>
        assertRejected(server, token(keys.k1, { alg: 'RS256', kid: uid('down-') }), `concurrent unknown kid ${i}`)));
      for (let i = 0; i < 10; i++) {
        await assertRejected(server, token(keys.k1, { alg: 'RS256', kid: uid('down-') }), `unknown kid ${i}`);
      }
      const fetched = jwks.gets(PATH).length - before;
      assert.ok(fetched <= 2, `15 unknown kids against a failing issuer caused ${fetched} GETs (at most 2 allowed)`);
      // The keys fetched before the outage still verify.
      await assertConnects(server, token(keys.k1, { alg: 'RS256', kid: 'k1' }), 'k1 during the outage');
    });
  });

  test('an issuer certificate the system roots do not trust: the token is refused, no GET served', async () => {
    const PATH = '/untrusted/jwks';
    jwks.setKeys(PATH, [publicJwk(keys.k1, 'k1', { alg: 'RS256' })]);
    const tlsFailuresBefore = jwks.tlsFailures;
    // No SSL_CERT_FILE: only the system roots, which know nothing of the self-signed cert.
    await withSpinwire(jwks.url(PATH), {}, async server => {
      await assertRejected(server, token(keys.k1, { alg: 'RS256', kid: 'k1' }), 'valid k1 token, untrusted issuer');
      assert.equal(jwks.gets(PATH).length, 0, 'no GET may complete over an unverified connection');
      // The refusal came from the handshake (spinwire did try the issuer), not from skipping it.
      await waitFor(() => jwks.tlsFailures > tlsFailuresBefore,
        { timeoutMs: 2000, what: 'the JWKS server to see a failed TLS handshake' });
    });
  });

  describe('startup safety check for endpoint templates (CVE-2026-32301)', () => {
    const template = 'https://{{tenant}}.example.com/jwks';
    // Any issuer fills {{tenant}}: a token picks the host its own keys are fetched from.
    const openEnded = '^https://(?P<tenant>.*)\\.example\\.com$';

    for (const claim of ['issuer_regex', 'audience_regex']) {
      test(`a {{tenant}} template with an open-ended ${claim} group: spinwire refuses to start`, async () => {
        const run = await runExpectingExit({
          client: { token: { hmac_secret_key: '', jwks_public_endpoint: template, [claim]: openEnded } },
        });
        assert.ok(!run.started, `spinwire started with an unsafe template; stderr: ${run.stderr}`);
        assert.notEqual(run.code, 0, `exit ${JSON.stringify(run)}`);
        assert.match(run.stderr, /jwks_public_endpoint/, `stderr: ${run.stderr}\nstdout: ${run.stdout}`);
      });
    }

    test('insecure_skip_jwks_endpoint_safety_check lets the unsafe template start', async () => {
      const tokenOptions = { issuer_regex: openEnded, insecure_skip_jwks_endpoint_safety_check: true };
      await withSpinwire(template, { trustCertFile: cert.certPath, token: tokenOptions },
        server => server.assertAlive('unsafe template, check skipped'));
    });

    test('a group that is an explicit list of tenants is accepted', async () => {
      const tokenOptions = { issuer_regex: '^https://(?P<tenant>acme|globex)\\.example\\.com$' };
      await withSpinwire(template, { trustCertFile: cert.certPath, token: tokenOptions },
        server => server.assertAlive('template with (?P<tenant>acme|globex)'));
    });

    test('the template is filled from iss: each tenant gets its own key set, others fetch nothing', async () => {
      // Both tenants publish a key under the same kid; only the tenant's own key may verify.
      const acme = newKeyPair('ec');
      const globex = newKeyPair('ec');
      jwks.setKeys('/acme/jwks', [publicJwk(acme, 'tk', { alg: 'ES256' })]);
      jwks.setKeys('/globex/jwks', [publicJwk(globex, 'tk', { alg: 'ES256' })]);
      const endpoint = jwks.url('/{{tenant}}/jwks');
      const options = { trustCertFile: cert.certPath, token: { issuer_regex: '^(?P<tenant>acme|globex)$' } };
      await withSpinwire(endpoint, options, async server => {
        const es256 = { alg: 'ES256', kid: 'tk' };
        const newPaths = since => jwks.gets().slice(since).map(r => r.path);
        const start = jwks.gets().length;
        await assertConnects(server, token(acme, es256, uid('acme-user-'), { iss: 'acme' }), 'iss acme');
        assert.deepEqual(newPaths(start), ['/acme/jwks'], 'iss acme fetched /acme/jwks, nothing else');

        await assertConnects(server, token(globex, es256, uid('globex-user-'), { iss: 'globex' }), 'iss globex');
        assert.equal(jwks.gets('/globex/jwks').length, 1, 'iss globex fetched /globex/jwks');
        await assertRejected(server, token(acme, es256, uid('cross-'), { iss: 'globex' }),
          'iss globex signed by acme\'s key under the shared kid');

        const total = jwks.gets().length;
        await assertRejected(server, token(acme, es256, uid('evil-'), { iss: 'evil' }), 'iss evil');
        assert.equal(jwks.gets().length, total, 'an issuer outside the list fetches nothing');
      });
    });
  });
});
