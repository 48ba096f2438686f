// batches.mjs -- the official openai npm package (pinned in package.json), unchanged, runs an
// embeddings batch end to end against batchd's /v1/files and /v1/batches. Run by
// test/it_batches.c with BATCHD_URL, BATCHD_KEY, BATCHD_MODEL (a model batchd serves through
// the fake model server, inputs over 2,000 characters refused), FAKE_URL (that fake model
// server: its own /v1/embeddings gives the vectors to compare with, its /config the latency)
// in the environment. Exit 0 when every check passed; else the failed assertion is printed
// and the exit code is 1. Only baseURL and the key differ from a script written for
// api.openai.com.  SPDX-License-Identifier: MIT
import OpenAI, { toFile } from 'openai';
import { File } from 'node:buffer';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// The SDK's own requirement on Node 18 (Debian 12's): uploads need a global File.
globalThis.File ??= File;

const MODEL = process.env.BATCHD_MODEL;
const client = new OpenAI({ baseURL: `${process.env.BATCHD_URL}/v1`, apiKey: process.env.BATCHD_KEY });
const fake = new OpenAI({ baseURL: `${process.env.FAKE_URL}/v1`, apiKey: 'unused', maxRetries: 0 });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const TERMINAL = new Set(['completed', 'failed', 'expired', 'cancelled']);

async function fakeConfig(json) {
  const r = await fetch(`${process.env.FAKE_URL}/config`, { method: 'POST', body: JSON.stringify(json) });
  assert.equal(r.status, 200, 'fake model /config');
}

async function poll(id, seconds = 90) {
  const deadline = Date.now() + seconds * 1000;
  let b;
  do {
    b = await client.batches.retrieve(id);
    if (TERMINAL.has(b.status)) return b;
    await sleep(200);
  } while (Date.now() < deadline);
  assert.fail(`batch ${id} still ${b.status} after ${seconds} s`);
}

async function jsonLines(id) {
  const res = await client.files.content(id);
  return (await res.text()).split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l));
}

// The requests: strings and arrays of strings, some asking for base64, line 137 with an input
// the model refuses (longer than its max_input_chars, overlong: fail).
const BAD_LINE = 136;
function request(i, tag) {
  let input = `${tag} document ${i}: ${'the quick brown fox '.repeat(i % 9)}`;
  if (i % 4 === 0) input = [input, `${tag} second input of ${i}`, `${tag} third ${i}`];
  if (i === BAD_LINE) input = 'x'.repeat(3000);
  const body = { model: MODEL, input };
  if (i % 5 === 0) body.encoding_format = 'base64';
  return { custom_id: `${tag}-${i}`, method: 'POST', url: '/v1/embeddings', body };
}
const lines = (n, tag) => Array.from({ length: n }, (_, i) => request(i, tag));
const toJsonl = (reqs) => reqs.map((r) => JSON.stringify(r)).join('\n') + '\n';

function decode(e) {
  if (Array.isArray(e)) return e;
  const b = Buffer.from(e, 'base64');
  return Array.from(new Float32Array(b.buffer, b.byteOffset, b.length / 4));
}

// 0. The model is there (scripts often check first): models.list() and models.retrieve().
const models = [];
for await (const m of client.models.list()) models.push(m);
const listed = models.find((m) => m.id === MODEL);
assert.ok(listed, `${MODEL} in models.list()`);
assert.equal(listed.object, 'model');
assert.ok(Number.isInteger(listed.created) && listed.created > 1.7e9, 'created is unix seconds');
assert.equal((await client.models.retrieve(MODEL)).id, MODEL);
await assert.rejects(client.models.retrieve('no-such-model'),
                     (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');

// 1. A 300-request file streamed with fs.createReadStream; create; poll to completed.
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bd-batches-'));
const reqs = lines(300, 'main');
const inPath = path.join(dir, 'requests.jsonl');
fs.writeFileSync(inPath, toJsonl(reqs));
const input = await client.files.create({ file: fs.createReadStream(inPath), purpose: 'batch' });
const created = await client.batches.create({
  input_file_id: input.id, endpoint: '/v1/embeddings', completion_window: '24h',
  metadata: { project: 'sdk-test' },
});
assert.match(created.id, /^batch_/);
assert.equal(created.object, 'batch');
assert.equal(created.input_file_id, input.id);
assert.ok(['validating', 'in_progress', 'finalizing', 'completed'].includes(created.status), created.status);
assert.deepEqual(created.metadata, { project: 'sdk-test' });
const done = await poll(created.id);
assert.equal(done.status, 'completed', JSON.stringify(done));
assert.deepEqual(done.request_counts, { total: 300, completed: 299, failed: 1 });
assert.equal(typeof done.completed_at, 'number');
assert.ok(done.output_file_id && done.error_file_id);

// Every output vector is the fake model's own for that input (asked through the SDK too).
const out = await jsonLines(done.output_file_id);
assert.equal(out.length, 299);
const byId = new Map(reqs.map((r) => [r.custom_id, r]));
for (const line of out) {
  const req = byId.get(line.custom_id);
  assert.ok(req, line.custom_id);
  assert.equal(line.error, null);
  assert.equal(line.response.status_code, 200);
  assert.match(line.id, /^batch_req_/);
  const want = await fake.embeddings.create({ model: MODEL, input: req.body.input, encoding_format: 'float' });
  const got = line.response.body.data;
  assert.equal(got.length, want.data.length, line.custom_id);
  for (let k = 0; k < got.length; k++) {
    assert.equal(got[k].index, k);
    if (req.body.encoding_format === 'base64') assert.equal(typeof got[k].embedding, 'string');
    const g = decode(got[k].embedding), w = want.data[k].embedding.map(Math.fround);
    assert.deepEqual(g.map(Math.fround), w, `${line.custom_id}[${k}]`);
  }
}
// The failing request is in the error file, as the endpoint would have answered it.
const errs = await jsonLines(done.error_file_id);
assert.equal(errs.length, 1);
assert.equal(errs[0].custom_id, `main-${BAD_LINE}`);
assert.equal(errs[0].response.status_code, 400);
assert.equal(errs[0].response.body.error.code, 'input_too_long');

// 2. A file made with toFile; a duplicate custom_id fails validation with its line number.
const dup = [request(1, 'dup'), request(2, 'dup'), { ...request(3, 'dup'), custom_id: 'dup-1' }];
const dupFile = await client.files.create({ file: await toFile(Buffer.from(toJsonl(dup)), 'dup.jsonl'), purpose: 'batch' });
const invalid = await poll((await client.batches.create({
  input_file_id: dupFile.id, endpoint: '/v1/embeddings', completion_window: '24h' })).id);
assert.equal(invalid.status, 'failed');
assert.equal(invalid.errors.data[0].code, 'duplicate_custom_id');
assert.equal(invalid.errors.data[0].line, 3);
assert.equal(invalid.output_file_id, null);

// 3. Cancel a slow batch: cancelling, then cancelled; what finished stays in the output.
await fakeConfig({ latency_ms: 400 });
const slowFile = await client.files.create({ file: await toFile(Buffer.from(toJsonl(lines(120, 'slow'))), 'slow.jsonl'), purpose: 'batch' });
const slow = await client.batches.create({ input_file_id: slowFile.id, endpoint: '/v1/embeddings', completion_window: '24h' });
await sleep(300);
const cancelling = await client.batches.cancel(slow.id);
assert.ok(['cancelling', 'cancelled'].includes(cancelling.status), cancelling.status);
assert.equal(typeof cancelling.cancelling_at, 'number');
const cancelled = await poll(slow.id);
await fakeConfig({ reset: true });
assert.equal(cancelled.status, 'cancelled');
assert.equal(typeof cancelled.cancelled_at, 'number');
const rc = cancelled.request_counts;
assert.equal(rc.total, 120);
assert.equal(rc.completed + rc.failed, 120);
assert.ok(rc.failed > 0, JSON.stringify(rc));
const notRun = (await jsonLines(cancelled.error_file_id)).filter((l) => l.error?.code === 'batch_cancelled');
assert.ok(notRun.length > 0);
if (rc.completed > 0) assert.equal((await jsonLines(cancelled.output_file_id)).length, rc.completed);

// 4. batches.list pages newest first with after = the last id, through the SDK's iterator.
const mine = [slow.id, invalid.id, created.id];
const seen = [];
for await (const b of client.batches.list({ limit: 1 }))
  if (mine.includes(b.id)) seen.push(b.id);
assert.deepEqual(seen, mine);

// 5. Unknown batch: NotFoundError.
await assert.rejects(client.batches.retrieve('batch_000000000000000000000000'),
                     (e) => e instanceof OpenAI.NotFoundError && e.status === 404);

fs.rmSync(dir, { recursive: true, force: true });
const sdk = JSON.parse(fs.readFileSync(new URL('./node_modules/openai/package.json', import.meta.url))).version;
console.log(`openai ${sdk} on node ${process.version}: batch of 300 (vectors match the model, ` +
            `1 error line), validation failure at line 3, cancel (${rc.completed} kept), list, 404, ` +
            `models (${models.length}): ok`);
