// common.js -- argument parsing and the bench data generator, a line-for-line port of
// bench/bench_common.c (xorshift32 per job, components k / 1e6 printed as [-]I.DDDDDD,
// ids "j<job>-<item>"), so the BullMQ peer writes exactly the rows batchd writes.
'use strict';

function parseArgs(argv, defaults) {
  const out = Object.assign({}, defaults);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const key = a.slice(2).replace(/-/g, '_');
    if (!(key in out)) throw new Error(`unknown option ${a}`);
    const v = argv[++i];
    out[key] = typeof defaults[key] === 'number' ? Number(v) : v;
  }
  return out;
}

class Rng {
  constructor(seed, job) {
    this.s = ((seed + Math.imul(0x9e3779b9 | 0, job + 1)) | 1) >>> 0;
  }
  next() {
    let x = this.s;
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    this.s = x;
    return x;
  }
  component() {
    return (this.next() % 2000001) - 1000000;
  }
}

// The vector of every item of job `job`, as the JSON numbers batchd receives.
function jobItems(seed, job, items, dim) {
  const rng = new Rng(seed, job);
  const out = new Array(items);
  for (let i = 0; i < items; i++) {
    const v = new Array(dim);
    for (let k = 0; k < dim; k++) v[k] = rng.component() / 1e6;
    out[i] = { id: `j${job}-${i}`, embedding: v };
  }
  return out;
}

const now = () => performance.timeOrigin + performance.now();   // ms, comparable across processes

module.exports = { parseArgs, Rng, jobItems, now };
