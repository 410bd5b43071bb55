// Back ends for the multi-node suites: redis-server (single, Cluster, Sentinel), nats-server
// and PostgreSQL from Debian's packages, a single-node KRaft Kafka broker from Maven Central's
// jars (tests/interop/kafka/fetch.sh), each on free loopback ports in a temporary directory,
// plus a tiny TCP load balancer that plays the part of the one in front of a cluster.
//
// Everything started here is killed by its `stop()`; tests call it in `after()`.

import { spawn, execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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

/**
 * A server process on a fixed free port that tests can kill and bring back on the same port.
 * Subclasses give `command()`: [name, binary, args].
 */
class RestartableServer {
  async _spawn() {
    const [name, binary, args] = this.command();
    this.proc = new Proc(name, binary, args);
    await waitForPort(this.port, 10000, this.proc);
  }

  /** Kills the server (SIGKILL: no shutdown, nothing persisted). */
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

/** One redis-server without persistence. `restart()` brings it back on the same port, empty. */
export class Redis extends RestartableServer {
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

  command() {
    return [`redis-server:${this.port}`, 'redis-server', [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--dir', this.dir, ...this.extraArgs,
    ]];
  }

  async stop() {
    await super.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * nats-server on a free port; `restart()` reuses the port. With `jetstream`, JetStream keeps
 * its streams in a temporary directory, so they survive `kill()` + `restart()`.
 */
export class Nats extends RestartableServer {
  static async start({ jetstream = false } = {}) {
    const nats = new Nats();
    nats.port = await freePort();
    nats.storeDir = jetstream ? mkdtempSync(join(tmpdir(), 'spinwire-js-')) : null;
    await nats._spawn();
    return nats;
  }

  async stop() {
    await super.stop();
    if (this.storeDir) rmSync(this.storeDir, { recursive: true, force: true });
  }

  get url() {
    return `nats://127.0.0.1:${this.port}`;
  }

  command() {
    const jetstream = this.storeDir ? ['-js', '-sd', this.storeDir] : [];
    return [`nats-server:${this.port}`, 'nats-server', ['-a', '127.0.0.1', '-p', String(this.port), ...jetstream]];
  }
}

/** Debian's PostgreSQL binaries (the newest version installed), or the ones on the path. */
function postgresBin(name) {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root).filter(v => existsSync(join(root, v, 'bin', name))).sort((a, b) => Number(a) - Number(b))
    : [];
  return versions.length ? join(root, versions.at(-1), 'bin', name) : name;
}

/** `[cmd, args]` running `binary` as the `postgres` user when we are root (initdb refuses root). */
function asPostgres(binary, args) {
  return process.getuid?.() === 0
    ? ['setpriv', ['--reuid', 'postgres', '--regid', 'postgres', '--init-groups', '--', binary, ...args]]
    : [binary, args];
}

/**
 * A throwaway PostgreSQL (trust auth, no fsync) on a free port; `sql()` runs statements via psql.
 * `durable` keeps synchronous commits, so a committed row survives `kill()` + `restart()`.
 */
export class Postgres {
  static async start({ durable = false } = {}) {
    const pg = new Postgres();
    pg.durable = durable;
    pg.port = await freePort();
    pg.dir = mkdtempSync(join(tmpdir(), 'spinwire-pg-'));
    if (process.getuid?.() === 0) chownSync(pg.dir, Number(execFileSync('id', ['-u', 'postgres']).toString()), 0);
    const data = join(pg.dir, 'data');
    const [initCmd, initArgs] = asPostgres(postgresBin('initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync']);
    execFileSync(initCmd, initArgs, { stdio: 'ignore', timeout: 60000 });
    pg.data = data;
    await pg._spawn();
    return pg;
  }

  async _spawn() {
    const settings = ['listen_addresses=127.0.0.1', 'unix_socket_directories=', 'fsync=off'];
    if (!this.durable) settings.push('synchronous_commit=off');
    const [cmd, args] = asPostgres(postgresBin('postgres'),
      ['-D', this.data, '-p', String(this.port), ...settings.flatMap(s => ['-c', s])]);
    this.proc = new Proc(`postgres:${this.port}`, cmd, args);
    await waitForPort(this.port, 20000, this.proc);
    const deadline = Date.now() + 20000;
    while (true) {
      try { this.sql('SELECT 1'); break; } catch (e) {
        if (Date.now() > deadline) throw new Error(`postgres not ready: ${e.message}\n${this.proc.log}`);
        await delay(100);
      }
    }
  }

  /** Kills the server (SIGKILL: what was committed stays, the connections drop). */
  async kill() {
    await this.proc.stop('SIGKILL');
  }

  /** Starts it again on the same port and data (after crash recovery). */
  async restart() {
    await this._spawn();
  }

  get dsn() {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres?sslmode=disable`;
  }

  /** Runs `statements` in one psql session (stops at the first error) and returns its output. */
  sql(statements) {
    return execFileSync(postgresBin('psql'),
      ['-h', '127.0.0.1', '-p', String(this.port), '-U', 'postgres', '-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-At', '-c', statements],
      { encoding: 'utf8', timeout: 10000, stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  }

  async stop() {
    await this.proc.stop('SIGINT').catch(() => this.proc.stop('SIGKILL'));
    rmSync(this.dir, { recursive: true, force: true });
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
    lb.connections = targets.map(() => 0); // connections made to each target
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
      this.connections[index] += 1;
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

/** Parses `redis-cli cluster nodes` into [{ id, port, role, masterId, slots: [[from, to]] }]. */
export function clusterNodes(port) {
  return redisCli(port, 'cluster', 'nodes').split('\n').filter(Boolean).map(line => {
    const parts = line.split(' ');
    const flags = parts[2].split(',');
    return {
      id: parts[0],
      port: Number(parts[1].split('@')[0].split(':').pop()),
      role: flags.includes('master') ? 'master' : 'replica',
      failed: flags.includes('fail'),
      masterId: parts[3],
      slots: parts.slice(8).filter(s => /^\d/.test(s)).map(s => s.split('-').map(Number)).map(r => [r[0], r[1] ?? r[0]]),
    };
  });
}

/**
 * A Redis Cluster of `masters` masters with `replicas` replicas each, on free loopback ports,
 * `cluster-node-timeout` 2000 ms so a killed master fails over in a few seconds.
 */
export class RedisCluster {
  static async start({ masters = 3, replicas = 0 } = {}) {
    const cluster = new RedisCluster();
    cluster.nodes = [];
    for (let i = 0; i < masters * (1 + replicas); i++) {
      cluster.nodes.push(await Redis.start(['--cluster-enabled', 'yes', '--cluster-node-timeout', '2000']));
    }
    execFileSync('redis-cli', ['--cluster', 'create', ...cluster.nodes.map(n => `127.0.0.1:${n.port}`),
      '--cluster-replicas', String(replicas), '--cluster-yes'], { encoding: 'utf8', timeout: 30000 });
    await cluster.waitHealthy();
    return cluster;
  }

  get addresses() {
    return this.nodes.map(n => n.address);
  }

  /** Waits until every live node reports cluster_state:ok and every replica is linked. */
  async waitHealthy(timeoutMs = 30000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const live = this.nodes.filter(n => n.proc.exited === null);
      const ok = live.every(n => redisCli(n.port, 'cluster', 'info').includes('cluster_state:ok'))
        && live.filter(n => redisCli(n.port, 'role').startsWith('slave')).every(n => redisCli(n.port, 'info', 'replication').includes('master_link_status:up'));
      if (ok) return;
      if (Date.now() > deadline) throw new Error('redis cluster did not become healthy');
      await delay(200);
    }
  }

  /** The node process serving `slot` as master now. */
  masterOf(slot) {
    const live = this.nodes.find(n => n.proc.exited === null);
    const master = clusterNodes(live.port).find(n => n.role === 'master' && !n.failed && n.slots.some(([a, b]) => slot >= a && slot <= b));
    return this.nodes.find(n => n.port === master.port);
  }

  async stop() {
    for (const node of this.nodes) await node.stop();
  }
}

/**
 * One master, two replicas and three sentinels (quorum 2) watching it as `mymaster`, with
 * short timeouts so a killed master is replaced within a few seconds.
 */
export class RedisSentinel {
  static async start() {
    const s = new RedisSentinel();
    s.master = await Redis.start();
    s.replicas = [];
    for (let i = 0; i < 2; i++) s.replicas.push(await Redis.start(['--replicaof', '127.0.0.1', String(s.master.port)]));
    s.sentinels = [];
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const dir = mkdtempSync(join(tmpdir(), 'spinwire-sentinel-'));
      const conf = join(dir, 'sentinel.conf');
      writeFileSync(conf, [
        `port ${port}`, 'bind 127.0.0.1', `dir ${dir}`,
        `sentinel monitor mymaster 127.0.0.1 ${s.master.port} 2`,
        'sentinel down-after-milliseconds mymaster 1000',
        'sentinel failover-timeout mymaster 5000',
        'sentinel parallel-syncs mymaster 1',
      ].join('\n') + '\n');
      const proc = new Proc(`redis-sentinel:${port}`, 'redis-sentinel', [conf]);
      await waitForPort(port, 10000, proc);
      s.sentinels.push({ port, dir, proc });
    }
    // Ready once every sentinel knows both replicas and the others.
    const deadline = Date.now() + 30000;
    for (;;) {
      const ready = s.sentinels.every(({ port }) => {
        const info = redisCli(port, 'sentinel', 'master', 'mymaster');
        return /num-slaves\n2\b/.test(info) && /num-other-sentinels\n2\b/.test(info);
      });
      if (ready) break;
      if (Date.now() > deadline) throw new Error('sentinels did not settle');
      await delay(200);
    }
    return s;
  }

  get sentinelAddresses() {
    return this.sentinels.map(({ port }) => `127.0.0.1:${port}`);
  }

  /** Port of the master the sentinels announce now. */
  currentMasterPort() {
    const [, port] = redisCli(this.sentinels[0].port, 'sentinel', 'get-master-addr-by-name', 'mymaster').split('\n');
    return Number(port);
  }

  async stop() {
    for (const { proc, dir } of this.sentinels) {
      await proc.stop('SIGKILL').catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
    for (const r of [this.master, ...this.replicas]) await r.stop();
  }
}

/**
 * A TCP proxy in front of one Redis that can make its PUB/SUB connections go silent: the
 * connection stays open and the client's bytes still reach Redis, but nothing comes back
 * (the #1189 class of failure, R8). Connections opened afterwards are not affected.
 */
export class SilencingProxy {
  static async start(targetPort) {
    const proxy = new SilencingProxy();
    proxy.pairs = new Set();
    proxy.server = createServer(client => {
      const pair = { client, pubsub: false, silent: false };
      const upstream = tcpConnect(targetPort, '127.0.0.1');
      pair.upstream = upstream;
      proxy.pairs.add(pair);
      const close = () => { client.destroy(); upstream.destroy(); proxy.pairs.delete(pair); };
      client.on('error', close);
      upstream.on('error', close);
      client.on('close', close);
      upstream.on('close', close);
      client.on('data', chunk => {
        if (/SUBSCRIBE/i.test(chunk.toString('latin1'))) pair.pubsub = true;
        upstream.write(chunk);
      });
      upstream.on('data', chunk => { if (!pair.silent) client.write(chunk); });
    });
    proxy.port = await freePort();
    await new Promise(r => proxy.server.listen(proxy.port, '127.0.0.1', r));
    return proxy;
  }

  get address() {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Silences every PUB/SUB connection open now; returns how many. */
  silencePubSub() {
    let count = 0;
    for (const pair of this.pairs) {
      if (pair.pubsub) { pair.silent = true; count++; }
    }
    return count;
  }

  async stop() {
    for (const pair of this.pairs) { pair.client.destroy(); pair.upstream.destroy(); }
    await new Promise(r => this.server.close(r));
  }
}

/** Where tests/interop/kafka/fetch.sh puts the broker's jars (run.sh runs it first). */
export const KAFKA_LIBS = process.env.SPINWIRE_KAFKA_LIBS
  || join(dirname(fileURLToPath(import.meta.url)), '..', '.tools', 'kafka', 'libs');

// A quick-starting JVM for a small test broker on 2 cores: C1 only, serial GC, small heap.
const KAFKA_JVM = ['-Xms128m', '-Xmx512m', '-XX:+UseSerialGC', '-XX:TieredStopAtLevel=1',
  '-XX:+ExitOnOutOfMemoryError', '-Djava.awt.headless=true'];

/**
 * One Kafka 4.x broker in combined KRaft mode (broker and controller in one JVM) on two free
 * loopback ports, its data in a temporary directory. `kill()` is SIGKILL; `restart()` brings it
 * back on the same ports over the same data (what was acknowledged with acks=all survives: a
 * SIGKILL loses nothing the kernel already holds). Measured on 2 cores: 2.3-3.7 s to start
 * (about 1 s formatting the storage, the rest the broker's JVM) and 3-3.6 s to restart (the
 * controller turns the new incarnation away until the old one's session,
 * broker.session.timeout.ms = 1500 here, has expired).
 */
export class Kafka extends RestartableServer {
  static async start({ config = {} } = {}) {
    if (!existsSync(join(KAFKA_LIBS, '.fetched'))) {
      throw new Error(`no Kafka jars in ${KAFKA_LIBS}: run tests/interop/kafka/fetch.sh`);
    }
    const kafka = new Kafka();
    kafka.port = await freePort();
    kafka.controllerPort = await freePort();
    kafka.dir = mkdtempSync(join(tmpdir(), 'spinwire-kafka-'));
    const data = join(kafka.dir, 'data');
    mkdirSync(data);
    const settings = {
      'process.roles': 'broker,controller',
      'node.id': 1,
      'listeners': `PLAINTEXT://127.0.0.1:${kafka.port},CONTROLLER://127.0.0.1:${kafka.controllerPort}`,
      'advertised.listeners': `PLAINTEXT://127.0.0.1:${kafka.port}`,
      'listener.security.protocol.map': 'PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT',
      'controller.listener.names': 'CONTROLLER',
      'inter.broker.listener.name': 'PLAINTEXT',
      'controller.quorum.bootstrap.servers': `127.0.0.1:${kafka.controllerPort}`,
      'log.dirs': data,
      'auto.create.topics.enable': true,
      'offsets.topic.replication.factor': 1,
      'transaction.state.log.replication.factor': 1,
      'transaction.state.log.min.isr': 1,
      'share.coordinator.state.topic.replication.factor': 1,
      'share.coordinator.state.topic.min.isr': 1,
      'group.initial.rebalance.delay.ms': 0,
      // A restarted broker is a new incarnation that the controller refuses until the old
      // one's session expires (9 s by default).
      'broker.session.timeout.ms': 1500,
      'broker.heartbeat.interval.ms': 300,
      ...config,
    };
    kafka.properties = join(kafka.dir, 'server.properties');
    writeFileSync(kafka.properties, Object.entries(settings).map(([k, v]) => `${k}=${v}`).join('\n') + '\n');
    kafka.log4j = join(kafka.dir, 'log4j2.properties');
    writeFileSync(kafka.log4j, [
      'rootLogger.level = WARN',
      'rootLogger.appenderRef.stdout.ref = STDOUT',
      'appender.stdout.type = Console',
      'appender.stdout.name = STDOUT',
      'appender.stdout.layout.type = PatternLayout',
      'appender.stdout.layout.pattern = [%d] %p %m (%c)%n',
    ].join('\n') + '\n');
    // A cluster id is 16 random bytes in unpadded base64url; --standalone makes this node the
    // whole (dynamic) controller quorum.
    const clusterId = randomBytes(16).toString('base64url');
    try {
      await new Promise((resolve, reject) => {
        execFile('java', [...kafka.jvmArgs(), 'kafka.tools.StorageTool', 'format', '--standalone',
          '--cluster-id', clusterId, '--config', kafka.properties], { timeout: 60000 },
        (err, stdout, stderr) => err
          ? reject(new Error(`kafka storage format failed: ${err.message}\n${stdout}${stderr}`))
          : resolve());
      });
      await kafka._spawn();
    } catch (e) {
      await kafka.stop();
      throw e;
    }
    return kafka;
  }

  /** `host:port` for a client's bootstrap servers. */
  get bootstrap() {
    return `127.0.0.1:${this.port}`;
  }

  jvmArgs() {
    return [...KAFKA_JVM, `-Dlog4j2.configurationFile=${this.log4j}`, '-cp', join(KAFKA_LIBS, '*')];
  }

  command() {
    return [`kafka:${this.port}`, 'java', [...this.jvmArgs(), 'kafka.Kafka', this.properties]];
  }

  /** Starts the JVM and waits until the broker lists itself (unfenced) in a Metadata response. */
  async _spawn() {
    const [name, binary, args] = this.command();
    this.proc = new Proc(name, binary, args);
    const deadline = Date.now() + 60000;
    await waitForPort(this.port, 60000, this.proc);
    for (;;) {
      if (this.proc.exited) throw new Error(`${name} exited: ${JSON.stringify(this.proc.exited)}\n${this.proc.log}`);
      if (await kafkaBrokerCount(this.port).catch(() => 0) > 0) return;
      if (Date.now() > deadline) throw new Error(`${name} did not answer Metadata with itself\n${this.proc.log}`);
      await delay(100);
    }
  }

  async stop() {
    if (this.proc) await super.stop();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Sends one Metadata request (v4: all topics, no auto-creation) to 127.0.0.1:port and resolves
 * with the number of live brokers in the answer; rejects on any error or after 2 s.
 */
function kafkaBrokerCount(port) {
  return new Promise((resolve, reject) => {
    const clientId = Buffer.from('spinwire-infra');
    const req = Buffer.alloc(4 + 2 + 2 + 4 + 2 + clientId.length + 4 + 1);
    let o = req.writeInt32BE(req.length - 4, 0);
    o = req.writeInt16BE(3, o); // api_key: Metadata
    o = req.writeInt16BE(4, o); // api_version
    o = req.writeInt32BE(1, o); // correlation_id
    o = req.writeInt16BE(clientId.length, o);
    o += clientId.copy(req, o);
    o = req.writeInt32BE(-1, o); // topics: null = all
    req.writeInt8(0, o); // allow_auto_topic_creation
    const socket = tcpConnect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const done = (err, value) => { clearTimeout(timer); socket.destroy(); err ? reject(err) : resolve(value); };
    const timer = setTimeout(() => done(new Error('metadata timeout')), 2000);
    socket.once('error', e => done(e));
    socket.once('close', () => done(new Error('closed before a metadata response')));
    socket.once('connect', () => socket.write(req));
    socket.on('data', chunk => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < 4 || buf.length < 4 + buf.readInt32BE(0)) return;
      // size, correlation_id, throttle_time_ms, brokers: [node_id, host, port, rack]
      if (buf.readInt32BE(4) !== 1) return done(new Error('metadata: wrong correlation id'));
      done(null, buf.readInt32BE(12));
    });
  });
}
