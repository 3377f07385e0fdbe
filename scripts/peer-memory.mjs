// The Redis memory a BullMQ job holds, queued and then kept once completed (BullMQ's default:
// completed jobs stay), beside courier-bench's `redis_bytes_per_task`: the same payload
// (`{"n": n, "pad": 64 × "x"}`), added in bulk, processed at concurrency 50 by a worker that
// returns nothing, as the peer harness's worker does. Prints one JSON line per figure, in the
// peer harness's form. Run by scripts/bench.sh after the peer harness, with the BullMQ that
// harness installed: PEER_DIR (its node_modules), REDIS_PORT, and N (jobs, default 100,000).
import { createRequire } from 'node:module';

const require = createRequire(`${process.env.PEER_DIR ?? '/tmp/peer'}/`);
const { Queue, Worker } = require('bullmq');
const IORedis = require('ioredis');

const n = Number(process.env.N ?? 100_000);
const connection = { host: '127.0.0.1', port: Number(process.env.REDIS_PORT), maxRetriesPerRequest: null };
const admin = new IORedis(connection);
const usedMemory = async () => Number((await admin.info('memory')).match(/^used_memory:(\d+)/m)[1]);
const version = require('bullmq/package.json').version;
const emit = (state, bytes) =>
  console.log(JSON.stringify({ peer: 'bullmq', version, metric: 'redis_bytes_per_job', value: Math.round(bytes / n), n, state }));

const name = `memory-${process.pid}`;
const queue = new Queue(name, { connection });
await queue.waitUntilReady();
try {
  const before = await usedMemory();
  for (let i = 0; i < n; i += 1000) {
    const jobs = [];
    for (let j = i; j < Math.min(n, i + 1000); j++) jobs.push({ name: 'n', data: { n: j, pad: 'x'.repeat(64) } });
    await queue.addBulk(jobs);
  }
  emit('queued', (await usedMemory()) - before);
  let completed = 0;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${completed} of ${n} jobs completed in 300 s`)), 300_000);
    const worker = new Worker(name, async () => null, { connection, concurrency: 50 });
    worker.on('completed', () => {
      if (++completed === n) {
        clearTimeout(timer);
        worker.close().then(resolve, reject);
      }
    });
  });
  emit('completed', (await usedMemory()) - before);
} finally {
  await queue.obliterate({ force: true }).catch(() => {});
  await queue.close();
  admin.disconnect();
}
