// Consumer throughput: how fast each consumer type executes publish commands, and the server
// CPU each command costs, for Spinwire and (when CENTRIFUGO_BIN is set) Centrifugo on the same
// sources in the same run, alternating.
//
//   node tests/bench/consumers.mjs <spinwire binary> [commands] [repeat]
//
// Each run gets a fresh source (table, stream, topic) pre-filled with `commands` publish
// commands (16 channels, no subscribers), then a freshly started server consumes it. The
// clock and the CPU (utime + stime of the server process) run from the first processed
// command to the last, read from `centrifugo_consumers_messages_processed_total`. One JSON
// line per run goes to stdout (scenario "consumer").
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const nodeDir = resolve(here, '..', 'interop', 'node');
const require = createRequire(join(nodeDir, 'package.json'));
const { Postgres, Redis, Nats, Kafka } = await import(join(nodeDir, 'infra.mjs'));
const { freePort, delay } = await import(join(nodeDir, 'harness.mjs'));

const [spinwireBin, commandsArg, repeatArg] = process.argv.slice(2);
const COMMANDS = Number(commandsArg || 50000);
const REPEAT = Number(repeatArg || 3);
const servers = [['spinwire', spinwireBin]];
if (process.env.CENTRIFUGO_BIN) servers.push(['centrifugo', process.env.CENTRIFUGO_BIN]);
const TICKS_PER_SECOND = 100;

const command = i => ({ channel: `bench_c${i % 16}`, data: { i }, idempotency_key: `k${i}` });

/** utime + stime of `pid`, in seconds. */
function cpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

async function processed(port, name) {
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
    const line = text.split('\n').find(l => l.startsWith('centrifugo_consumers_messages_processed_total') && l.includes(`"${name}"`));
    return line ? Number(line.split(' ').pop()) : 0;
  } catch {
    return 0;
  }
}

/** Starts `bin` with `consumer`, waits for it to drain COMMANDS commands, stops it. */
async function consume(bin, consumer) {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'bench-consumer-'));
  const config = {
    http_server: { port }, prometheus: { enabled: true }, health: { enabled: true },
    log: { level: 'warn' }, consumers: [consumer],
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  const proc = spawn(bin, ['--config', join(dir, 'config.json')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr.on('data', c => { log = (log + c).slice(-8000); });
  try {
    let first = null;
    const deadline = Date.now() + 180000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`server exited: ${log}`);
      if (Date.now() > deadline) throw new Error(`not drained in time: ${log}`);
      const done = await processed(port, consumer.name);
      if (first === null && done > 0) first = { at: process.hrtime.bigint(), cpu: cpuSeconds(proc.pid), done };
      if (done >= COMMANDS) {
        const seconds = Number(process.hrtime.bigint() - first.at) / 1e9;
        const cpu = cpuSeconds(proc.pid) - first.cpu;
        return { seconds, cpu, counted: done - first.done };
      }
      await delay(20);
    }
  } finally {
    if (proc.exitCode === null && proc.signalCode === null) {
      const gone = new Promise(r => proc.once('exit', r));
      proc.kill('SIGTERM');
      await gone;
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

function redisPipe(port, entries) {
  const bulk = s => `$${Buffer.byteLength(s)}\r\n${s}\r\n`;
  const text = entries.map(args => `*${args.length}\r\n${args.map(bulk).join('')}`).join('');
  const out = spawnSync('redis-cli', ['-p', String(port), '--pipe'], { input: text, encoding: 'utf8', maxBuffer: 1 << 28 });
  if (out.status !== 0) throw new Error(out.stdout + out.stderr);
}

/** Each type: its backend, and per run a fresh, filled source and the consumer config for it. */
const TYPES = {
  async postgresql() {
    const pg = await Postgres.start();
    return {
      async prepare(run) {
        const table = `outbox_${run}`;
        pg.sql(`CREATE TABLE ${table} (id BIGSERIAL PRIMARY KEY, method text NOT NULL, payload JSONB NOT NULL, partition INTEGER NOT NULL DEFAULT 0);
          INSERT INTO ${table} (method, payload) SELECT 'publish', jsonb_build_object('channel', 'bench_c' || (i % 16), 'data', jsonb_build_object('i', i), 'idempotency_key', 'k' || i)
          FROM generate_series(0, ${COMMANDS - 1}) AS i`);
        return { postgresql: { dsn: pg.dsn, outbox_table_name: table } };
      },
      stop: () => pg.stop(),
    };
  },
  async redis_stream() {
    const redis = await Redis.start();
    return {
      async prepare(run) {
        const stream = `cmds_${run}`;
        redisPipe(redis.port, [['XGROUP', 'CREATE', stream, 'bench', '0', 'MKSTREAM']]);
        for (let from = 0; from < COMMANDS; from += 10000) {
          const entries = [];
          for (let i = from; i < Math.min(from + 10000, COMMANDS); i++) {
            entries.push(['XADD', stream, '*', 'method', 'publish', 'payload', JSON.stringify(command(i))]);
          }
          redisPipe(redis.port, entries);
        }
        return { redis_stream: { address: redis.address, streams: [stream], consumer_group: 'bench' } };
      },
      stop: () => redis.stop(),
    };
  },
  async nats_jetstream() {
    const nats = await Nats.start({ jetstream: true });
    const { connect, headers } = require('nats');
    const nc = await connect({ servers: nats.url });
    const jsm = await nc.jetstreamManager();
    const js = nc.jetstream();
    return {
      async prepare(run) {
        const stream = `CMDS${run}`;
        await jsm.streams.add({ name: stream, subjects: [`cmds${run}.>`], storage: 'file' });
        const h = headers();
        h.set('centrifugo-method', 'publish');
        for (let from = 0; from < COMMANDS; from += 500) {
          const acks = [];
          for (let i = from; i < Math.min(from + 500, COMMANDS); i++) {
            acks.push(js.publish(`cmds${run}.c${i % 16}`, new TextEncoder().encode(JSON.stringify(command(i))), { headers: h }));
          }
          await Promise.all(acks);
        }
        // No `subjects` filter: Centrifugo 6.9.1 sends even one as a list, which needs
        // nats-server 2.10 (Debian has 2.9).
        return {
          nats_jetstream: { url: nats.url, stream_name: stream, durable_consumer_name: `bench${run}`, deliver_policy: 'all' },
        };
      },
      async stop() {
        await nc.close();
        await nats.stop();
      },
    };
  },
  async kafka() {
    const kafka = await Kafka.start();
    const { Kafka: KafkaJs, logLevel } = require('kafkajs');
    const client = new KafkaJs({ clientId: 'bench', brokers: [kafka.bootstrap], logLevel: logLevel.NOTHING });
    const admin = client.admin();
    await admin.connect();
    const producer = client.producer();
    await producer.connect();
    return {
      async prepare(run) {
        const topic = `cmds_${run}`;
        await admin.createTopics({ topics: [{ topic, numPartitions: 1 }], waitForLeaders: true });
        for (let from = 0; from < COMMANDS; from += 5000) {
          const messages = [];
          for (let i = from; i < Math.min(from + 5000, COMMANDS); i++) {
            messages.push({ value: JSON.stringify(command(i)), headers: { 'centrifugo-method': 'publish' } });
          }
          await producer.send({ topic, messages, acks: -1 });
        }
        return { kafka: { brokers: [kafka.bootstrap], topics: [topic], consumer_group: `bench_${run}` } };
      },
      async stop() {
        await producer.disconnect();
        await admin.disconnect();
        await kafka.stop();
      },
    };
  },
};

const only = process.env.CONSUMER_TYPES ? process.env.CONSUMER_TYPES.split(',') : Object.keys(TYPES);
let run = 0;
for (const type of only) {
  const backend = await TYPES[type]();
  try {
    for (let r = 0; r < REPEAT; r++) {
      for (const [server, bin] of servers) {
        run += 1;
        const source = await backend.prepare(run);
        const result = await consume(bin, { name: `bench_${type}`, type, enabled: true, ...source });
        console.log(JSON.stringify({
          scenario: 'consumer', type, server, commands: COMMANDS, run: r + 1,
          commands_per_s: Math.round(result.counted / result.seconds),
          cpu_us_per_command: Number((result.cpu / result.counted * 1e6).toFixed(1)),
          seconds: Number(result.seconds.toFixed(3)),
        }));
      }
    }
  } finally {
    await backend.stop();
  }
}
