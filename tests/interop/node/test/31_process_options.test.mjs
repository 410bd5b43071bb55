// Scenario 31: process and listener options an operator sets: `pid_file` (written at start,
// removed at exit), `log.file` (JSON lines instead of stderr) and `http_server.h2c_external`
// (prior-knowledge HTTP/2 on the plain external port, for a load balancer that speaks h2c;
// the internal port stays HTTP/1.1 and closes a connection that opens with the h2 preface).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http2 from 'node:http2';

import {
  startServer, tracked, connToken, uid, api, freePort, waitFor, withTimeout,
} from '../harness.mjs';

describe('pid_file and log.file', () => {
  let server;
  let pidPath;
  let logPath;

  before(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'spinwire-proc-'));
    pidPath = join(dir, 'spinwire.pid');
    logPath = join(dir, 'spinwire.log');
    // An unknown SPINWIRE_ variable is a startup warning: something the level lets through.
    server = await startServer(
      { pid_file: pidPath, log: { level: 'WARN', file: logPath } },
      { env: { SPINWIRE_NOT_A_KEY: '1' } },
    );
  });
  after(async () => { if (server) await server.stop(); });

  test('the pid file holds the process id; the log file gets JSON lines', tracked(() => server, async () => {
    assert.equal(readFileSync(pidPath, 'utf8').trim(), String(server.proc.pid));
    await api(server, 'info', {});
    await waitFor(() => existsSync(logPath) && readFileSync(logPath, 'utf8').trim() !== '', { what: 'log lines' });
    const lines = readFileSync(logPath, 'utf8').trim().split('\n');
    for (const line of lines) {
      const entry = JSON.parse(line);
      assert.ok(entry.level && entry.timestamp, `log line without level/timestamp: ${line}`);
    }
    const levels = new Set(lines.map(line => JSON.parse(line).level));
    assert.ok(levels.has('WARN'), `no WARN line in ${lines.join('\n')}`);
    assert.ok(!levels.has('INFO'), 'log.level warn (any case) keeps INFO lines out');
    assert.ok(lines.some(line => line.includes('SPINWIRE_NOT_A_KEY')));
  }));

  test('the pid file is removed when the server exits', tracked(() => server, async () => {
    server.signal('SIGTERM');
    await waitFor(() => server.exited !== null, { what: 'server exit', timeoutMs: 10000 });
    assert.equal(existsSync(pidPath), false);
  }));
});

describe('http_server.h2c_external', () => {
  let server;

  before(async () => {
    server = await startServer({
      http_server: { internal_port: await freePort(), h2c_external: true },
      uni_http_stream: { enabled: true },
    });
  });
  after(async () => { if (server) await server.stop(); });

  /** Opens a prior-knowledge HTTP/2 session; resolves once connected or rejects on error. */
  function h2session(port) {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    return withTimeout(new Promise((resolve, reject) => {
      session.once('connect', () => resolve(session));
      session.once('error', reject);
      session.once('close', () => reject(new Error('closed before the HTTP/2 handshake')));
    }), 5000, 'h2c session');
  }

  test('a uni HTTP stream over h2c receives its connect push and a publication', tracked(() => server, async () => {
    const session = await h2session(server.port);
    const channel = uid('news:h2c_');
    try {
      const stream = session.request({ ':method': 'POST', ':path': '/connection/uni_http_stream', 'content-type': 'application/json' });
      stream.end(JSON.stringify({ token: connToken(server, 'h2c-user', { channels: [channel] }) }));
      const lines = [];
      let buffered = '';
      stream.setEncoding('utf8');
      stream.on('data', chunk => {
        buffered += chunk;
        let newline;
        while ((newline = buffered.indexOf('\n')) >= 0) {
          lines.push(JSON.parse(buffered.slice(0, newline)));
          buffered = buffered.slice(newline + 1);
        }
      });
      const headers = await new Promise(r => stream.once('response', r));
      assert.equal(headers[':status'], 200);
      await waitFor(() => lines.some(l => l.connect), { what: 'connect push' });
      await api(server, 'publish', { channel, data: { via: 'h2c' } });
      await waitFor(() => lines.some(l => l.pub?.data?.via === 'h2c'), { what: 'publication over h2c' });
      stream.close();
    } finally {
      session.destroy();
    }
  }));

  test('the internal port speaks HTTP/1.1 only and drops an h2 preface', tracked(() => server, async () => {
    const session = http2.connect(`http://127.0.0.1:${server.apiPort}`);
    session.on('error', () => {});
    const outcome = await withTimeout(new Promise(resolve => {
      const stream = session.request({ ':path': '/health' });
      stream.on('response', headers => resolve(`status ${headers[':status']}`));
      stream.on('error', () => resolve('error'));
      stream.on('close', () => resolve('closed'));
    }), 5000, 'h2 request to the internal port');
    session.destroy();
    assert.notEqual(outcome, 'status 200');
    const health = await fetch(`http://127.0.0.1:${server.apiPort}/health`);
    assert.equal(health.status, 200);
  }));
});
