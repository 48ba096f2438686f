// insert.js -- BullMQ peer of batchd's `insert` scenario: the same rows (common.js), one
// BullMQ job per batch of --batch items (addBulk per batchd job, C jobs' adds in flight),
// processed by a Worker of concurrency C in a second process that writes each batch with
// node-pg COPY FROM STDIN (text format, pg-copy-streams) into --table, one transaction per
// batch. Timed from the first add to the last completed batch; the vectors are generated
// before the clock starts. Prints {"label","items","total_s","items_per_s"}.
'use strict';
const { fork } = require('child_process');
const { pipeline } = require('stream/promises');
const { Readable } = require('stream');
const { Queue, Worker } = require('bullmq');
const pg = require('pg');
const { from: copyFrom } = require('pg-copy-streams');
const { parseArgs, jobItems, now } = require('./common');

const args = parseArgs(process.argv.slice(2).filter((a) => a !== '--role-worker'), {
  redis_port: 16390, pg: 'postgresql://batchd@127.0.0.1:15440/batchd', table: 'bench_bull',
  jobs: 2, items: 1000, dim: 768, batch: 500, concurrency: 4, seed: 42, collection: 'bench',
  queue: `bench-insert-${process.pid}`, timeout: 600,
});
const connection = { host: '127.0.0.1', port: args.redis_port, maxRetriesPerRequest: null };
const batchesTotal = args.jobs * Math.ceil(args.items / args.batch);

async function worker() {
  const pool = new pg.Pool({ connectionString: args.pg, max: args.concurrency });
  let done = 0;
  const w = new Worker(args.queue, async (job) => {
    const { j, first, items } = job.data;
    const client = await pool.connect();
    try {
      const stream = client.query(copyFrom(
        `COPY ${args.table} (collection, id, embedding, job_id, item_index) FROM STDIN`));
      const lines = items.map((it, k) =>
        `${args.collection}\t${it.id}\t{${it.embedding.join(',')}}\tbench_j${j}\t${first + k}\n`);
      await pipeline(Readable.from(lines), stream);
    } finally {
      client.release();
    }
  }, { connection, concurrency: args.concurrency });
  w.on('completed', () => {
    if (++done === batchesTotal) {
      process.send({ done: now() });
      w.close().then(() => pool.end()).then(() => process.exit(0));
    }
  });
  w.on('failed', (job, err) => { console.error('bullmq batch failed:', err && err.message); process.exit(1); });
  await w.waitUntilReady();
  process.send({ ready: true });
}

async function producer() {
  const data = [];
  for (let j = 0; j < args.jobs; j++) data.push(jobItems(args.seed, j, args.items, args.dim));
  const child = fork(__filename, [...process.argv.slice(2), '--queue', args.queue, '--role-worker']);
  // Listen at once: the worker's messages may come before anything below is awaited.
  const msg = (key) => new Promise((resolve) => child.on('message', (m) => { if (m[key]) resolve(m[key]); }));
  const ready = msg('ready');
  const finished = msg('done');
  child.on('exit', (code) => { if (code) { console.error('insert: worker exited', code); process.exit(1); } });
  const timer = setTimeout(() => { console.error('insert: timed out'); child.kill(); process.exit(1); },
                           args.timeout * 1000);
  const queue = new Queue(args.queue, { connection });
  await queue.waitUntilReady();
  await ready;
  const t0 = now();
  let next = 0;
  const opts = { removeOnComplete: true, removeOnFail: true };
  async function adder() {
    while (next < args.jobs) {
      const j = next++;
      const bulk = [];
      for (let first = 0; first < args.items; first += args.batch)
        bulk.push({ name: 'batch', data: { j, first, items: data[j].slice(first, first + args.batch) }, opts });
      await queue.addBulk(bulk);
    }
  }
  await Promise.all(Array.from({ length: args.concurrency }, adder));
  const tAdded = now();
  const tDone = await finished;
  const total = (tDone - t0) / 1000;
  const items = args.jobs * args.items;
  console.log(JSON.stringify({ label: 'bullmq_insert', items, dim: args.dim, batch: args.batch,
    concurrency: args.concurrency, add_s: +((tAdded - t0) / 1000).toFixed(3),
    total_s: +total.toFixed(3), items_per_s: +(items / total).toFixed(1) }));
  clearTimeout(timer);
  await queue.obliterate({ force: true });
  await queue.close();
}

(process.argv.includes('--role-worker') ? worker() : producer()).catch((e) => {
  console.error(e);
  process.exit(1);
});
