// add.js -- BullMQ peer of batchd's one-item submits: N jobs added with Queue.add, C adds in
// flight, the same options as lifecycle.js, and no worker: the add's answer is the end, as
// batchd's 202 is. Prints {"label","jobs","concurrency","add_s","adds_per_s"}, then removes
// the queue. Bounded by --timeout seconds.
'use strict';
const { Queue } = require('bullmq');
const { parseArgs, now } = require('./common');

const args = parseArgs(process.argv.slice(2), {
  redis_port: 16390, jobs: 1000, concurrency: 8, queue: `bench-add-${process.pid}`, timeout: 300,
});
const connection = { host: '127.0.0.1', port: args.redis_port, maxRetriesPerRequest: null };

async function main() {
  const timer = setTimeout(() => { console.error('add: timed out'); process.exit(1); },
                           args.timeout * 1000);
  const queue = new Queue(args.queue, { connection });
  await queue.waitUntilReady();
  const opts = { removeOnComplete: true, removeOnFail: true };
  const t0 = now();
  let next = 0;
  async function adder() {
    while (next < args.jobs) {
      const i = next++;
      await queue.add('noop', { i }, opts);
    }
  }
  await Promise.all(Array.from({ length: args.concurrency }, adder));
  const s = (now() - t0) / 1000;
  console.log(JSON.stringify({ label: 'bullmq_add', jobs: args.jobs, concurrency: args.concurrency,
    add_s: +s.toFixed(3), adds_per_s: +(args.jobs / s).toFixed(1) }));
  clearTimeout(timer);
  await queue.obliterate({ force: true });
  await queue.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
