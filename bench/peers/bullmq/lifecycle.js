// lifecycle.js -- BullMQ peer of batchd's `lifecycle` scenario: N no-op jobs added with C
// adds in flight, processed by a Worker of concurrency C in a second process, on the same
// Redis. Prints {"label","jobs","concurrency","total_s","jobs_per_s"} once the worker has
// completed every job. Bounded by --timeout seconds.
'use strict';
const { fork } = require('child_process');
const { Queue, Worker } = require('bullmq');
const { parseArgs, now } = require('./common');

const args = parseArgs(process.argv.slice(2).filter((a) => a !== '--role-worker'), {
  redis_port: 16390, jobs: 1000, concurrency: 8, queue: `bench-lifecycle-${process.pid}`,
  timeout: 300,
});
const connection = { host: '127.0.0.1', port: args.redis_port, maxRetriesPerRequest: null };

async function worker() {
  let done = 0;
  const w = new Worker(args.queue, async () => {}, { connection, concurrency: args.concurrency });
  w.on('completed', () => {
    if (++done === args.jobs) {
      process.send({ done: now() });
      w.close().then(() => process.exit(0));
    }
  });
  w.on('failed', (job, err) => console.error('bullmq job failed', err && err.message));
  await w.waitUntilReady();
  process.send({ ready: true });
}

async function producer() {
  const child = fork(__filename, [...process.argv.slice(2), '--queue', args.queue, '--role-worker']);
  // Listen at once: the worker's messages may come before anything below is awaited.
  const msg = (key) => new Promise((resolve) => child.on('message', (m) => { if (m[key]) resolve(m[key]); }));
  const ready = msg('ready');
  const finished = msg('done');
  const timer = setTimeout(() => { console.error('lifecycle: timed out'); child.kill(); process.exit(1); },
                           args.timeout * 1000);
  const queue = new Queue(args.queue, { connection });
  await queue.waitUntilReady();
  await ready;
  const t0 = now();
  let next = 0;
  const opts = { removeOnComplete: true, removeOnFail: true };
  async function adder() {
    while (next < args.jobs) {
      const i = next++;
      await queue.add('noop', { i }, opts);
    }
  }
  await Promise.all(Array.from({ length: args.concurrency }, adder));
  const tAdded = now();
  const tDone = await finished;
  const total = (tDone - t0) / 1000;
  console.log(JSON.stringify({ label: 'bullmq_lifecycle', jobs: args.jobs, concurrency: args.concurrency,
    add_s: +((tAdded - t0) / 1000).toFixed(3), total_s: +total.toFixed(3),
    jobs_per_s: +(args.jobs / total).toFixed(1) }));
  clearTimeout(timer);
  await queue.obliterate({ force: true });
  await queue.close();
}

(process.argv.includes('--role-worker') ? worker() : producer()).catch((e) => {
  console.error(e);
  process.exit(1);
});
