// Back ends for the multi-node suites: redis-server (single, Cluster, Sentinel) and
// nats-server from Debian's packages, each on free loopback ports in a temporary directory,
// plus a tiny TCP load balancer that plays the part of the one in front of a cluster.
//
// Everything started here is killed by its `stop()`; tests call it in `after()`.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { freePort, delay, withTimeout } from './harness.mjs';

/** A child process with its log tail; `stop()` kills it (SIGKILL) and waits. */
class Proc {
  constructor(name, cmd, args, opts = {}) {
    this.name = name;
    this.log = '';
    this.proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.exited = null;
    const append = c => { this.log = (this.log + c.toString()).slice(-64 * 1024); };
    this.proc.stdout.on('data', append);
    this.proc.stderr.on('data', append);
    this.proc.on('exit', (code, signal) => { this.exited = { code, signal }; });
    this.proc.on('error', e => { this.exited = { error: e.message }; this.log += `spawn error: ${e.message}\n`; });
  }

  signal(sig) {
    if (this.exited === null) this.proc.kill(sig);
  }

  async stop(sig = 'SIGKILL') {
    if (this.exited !== null) return;
    const gone = new Promise(r => this.proc.once('exit', r));
    this.proc.kill(sig);
    await withTimeout(gone, 5000, `${this.name} exit`);
  }
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port. */
export async function waitForPort(port, timeoutMs = 10000, proc = null) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc && proc.exited) throw new Error(`${proc.name} exited: ${JSON.stringify(proc.exited)}\n${proc.log}`);
    const ok = await new Promise(r => {
      const s = tcpConnect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); r(true); });
      s.once('error', () => r(false));
    });
    if (ok) return;
    await delay(50);
  }
  throw new Error(`nothing listening on ${port} after ${timeoutMs} ms${proc ? `\n${proc.log}` : ''}`);
}

/** `redis-cli -p port args…` → trimmed stdout. */
export function redisCli(port, ...args) {
  return execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8', timeout: 10000 }).trim();
}

/** One redis-server without persistence. `restart()` brings it back on the same port, empty. */
export class Redis {
  static async start(extraArgs = []) {
    const redis = new Redis();
    redis.port = await freePort();
    redis.dir = mkdtempSync(join(tmpdir(), 'spinwire-redis-'));
    redis.extraArgs = extraArgs;
    await redis._spawn();
    return redis;
  }

  get address() {
    return `redis://127.0.0.1:${this.port}`;
  }

  async _spawn() {
    this.proc = new Proc(`redis-server:${this.port}`, 'redis-server', [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--dir', this.dir, ...this.extraArgs,
    ]);
    await waitForPort(this.port, 10000, this.proc);
  }

  /** Kills the server (SIGKILL: no shutdown, no persistence). */
  async kill() {
    await this.proc.stop('SIGKILL');
  }

  async restart() {
    await this._spawn();
  }

  async stop() {
    await this.proc.stop('SIGKILL').catch(() => {});
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** nats-server on a free port; `restart()` reuses the port. */
export class Nats {
  static async start() {
    const nats = new Nats();
    nats.port = await freePort();
    await nats._spawn();
    return nats;
  }

  get url() {
    return `nats://127.0.0.1:${this.port}`;
  }

  async _spawn() {
    this.proc = new Proc(`nats-server:${this.port}`, 'nats-server', ['-a', '127.0.0.1', '-p', String(this.port)]);
    await waitForPort(this.port, 10000, this.proc);
  }

  async kill() {
    await this.proc.stop('SIGKILL');
  }

  async restart() {
    await this._spawn();
  }

  async stop() {
    await this.proc.stop('SIGKILL').catch(() => {});
  }
}

/**
 * A TCP load balancer on a free port: each new connection goes to the next live target
 * (round robin, skipping targets that refuse). `only(i)` pins new connections to one target,
 * `hold()` parks new connections until `release()`, `dropAll()` cuts every open connection
 * (what clients see when a node or the balancer fails).
 */
export class Balancer {
  static async start(targets) {
    const lb = new Balancer();
    lb.targets = targets.slice();
    lb.next = 0;
    lb.pinned = null;
    lb.held = [];
    lb.holding = false;
    lb.sockets = new Set();
    lb.server = createServer(socket => lb._accept(socket));
    lb.port = await freePort();
    await new Promise(r => lb.server.listen(lb.port, '127.0.0.1', r));
    return lb;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/connection/websocket`;
  }

  only(index) {
    this.pinned = index;
  }

  roundRobin() {
    this.pinned = null;
  }

  hold() {
    this.holding = true;
  }

  release() {
    this.holding = false;
    for (const socket of this.held.splice(0)) this._route(socket, 0);
  }

  dropAll() {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  _accept(socket) {
    socket.on('error', () => {});
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    if (this.holding) {
      socket.pause();
      this.held.push(socket);
      return;
    }
    this._route(socket, 0);
  }

  _route(socket, attempt) {
    if (socket.destroyed) return;
    if (attempt >= this.targets.length) {
      socket.destroy();
      return;
    }
    const index = this.pinned !== null ? this.pinned : (this.next++ % this.targets.length);
    const upstream = tcpConnect(this.targets[index], '127.0.0.1');
    upstream.once('connect', () => {
      this.sockets.add(upstream);
      upstream.once('close', () => { this.sockets.delete(upstream); socket.destroy(); });
      socket.once('close', () => upstream.destroy());
      socket.pipe(upstream);
      upstream.pipe(socket);
      socket.resume();
    });
    upstream.once('error', () => {
      upstream.destroy();
      if (this.pinned !== null) {
        socket.destroy();
      } else {
        this._route(socket, attempt + 1);
      }
    });
  }

  async stop() {
    this.dropAll();
    for (const s of this.held.splice(0)) s.destroy();
    await new Promise(r => this.server.close(r));
  }
}
