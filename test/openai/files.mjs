// files.mjs -- the official openai npm package (pinned in package.json), unchanged, against
// batchd's /v1/files. Run by test/it_files.c: BATCHD_URL (http://127.0.0.1:PORT) and
// BATCHD_KEY in the environment; exit 0 when every check passed, else the failed assertion
// is printed and the exit code is 1. Only baseURL and the key differ from a script written
// for api.openai.com.  SPDX-License-Identifier: MIT
import OpenAI, { toFile } from 'openai';
import { File } from 'node:buffer';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// The SDK's own requirement on Node 18 (Debian 12's), whatever the server: uploads need a
// global File, which Node 20 has and Node 18 keeps in node:buffer (the SDK's error says so).
globalThis.File ??= File;

const client = new OpenAI({
  baseURL: `${process.env.BATCHD_URL}/v1`,
  apiKey: process.env.BATCHD_KEY,
  maxRetries: 0,
});

// A batch input file as users write them: one embeddings request per line.
function jsonl(lines, tag) {
  let s = '';
  for (let i = 0; i < lines; i++) {
    s += JSON.stringify({
      custom_id: `${tag}-${i}`, method: 'POST', url: '/v1/embeddings',
      body: { model: 'hashmodel', input: `document ${i} of ${tag}: ${'lorem ipsum '.repeat(i % 7)}` },
    }) + '\n';
  }
  return Buffer.from(s);
}

const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');

async function readAll(id) {
  const res = await client.files.content(id);
  return Buffer.from(await res.arrayBuffer());
}

// 1. fs.createReadStream: the SDK streams the multipart body (chunked).
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bd-openai-'));
const big = jsonl(30000, 'stream');
const bigPath = path.join(dir, 'input.jsonl');
fs.writeFileSync(bigPath, big);
const f1 = await client.files.create({ file: fs.createReadStream(bigPath), purpose: 'batch' });
assert.match(f1.id, /^file-/);
assert.equal(f1.object, 'file');
assert.equal(f1.bytes, big.length);
assert.equal(f1.filename, 'input.jsonl');
assert.equal(f1.purpose, 'batch');
assert.equal(typeof f1.created_at, 'number');
assert.equal(sha(await readAll(f1.id)), sha(big));

// 2. toFile from a Buffer.
const small = jsonl(3, 'buffer');
const f2 = await client.files.create({ file: await toFile(small, 'small.jsonl'), purpose: 'batch' });
assert.equal(f2.bytes, small.length);
assert.equal(f2.filename, 'small.jsonl');
const got = await client.files.retrieve(f2.id);
assert.equal(got.id, f2.id);
assert.equal(got.bytes, small.length);
assert.equal((await readAll(f2.id)).toString(), small.toString());

// 3. Listing pages with the SDK's auto-pagination (after = the last id of a page).
const more = [];
for (let i = 0; i < 3; i++)
  more.push((await client.files.create({ file: await toFile(jsonl(1, `p${i}`), `p${i}.jsonl`),
                                          purpose: 'batch' })).id);
const mine = new Set([f1.id, f2.id, ...more]);
const seen = [];
for await (const f of client.files.list({ limit: 2, purpose: 'batch' }))
  if (mine.has(f.id)) seen.push(f.id);
assert.equal(seen.length, mine.size);
assert.equal(new Set(seen).size, mine.size);
const firstPage = await client.files.list({ limit: 2 });
assert.equal(firstPage.data.length, 2);
assert.equal(firstPage.hasNextPage(), true);

// 4. Delete, then 404 as the SDK's NotFoundError; an unknown id too.
const del = await client.files.delete(f2.id);
assert.deepEqual({ id: del.id, object: del.object, deleted: del.deleted },
                 { id: f2.id, object: 'file', deleted: true });
for (const id of [f2.id, 'file-doesnotexist']) {
  await assert.rejects(client.files.retrieve(id), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, `${id}: ${e}`);
    assert.equal(e.status, 404);
    return true;
  });
}

// 5. A purpose batchd does not take: a 400 the SDK reports as BadRequestError.
await assert.rejects(
  client.files.create({ file: await toFile(small, 'x.jsonl'), purpose: 'fine-tune' }),
  (e) => e instanceof OpenAI.BadRequestError && e.status === 400);

for (const id of [f1.id, ...more])
  await client.files.delete(id);
fs.rmSync(dir, { recursive: true, force: true });
const sdk = JSON.parse(fs.readFileSync(new URL('./node_modules/openai/package.json',
                                              import.meta.url))).version;
console.log(`openai ${sdk} on node ${process.version}: files create (stream ${big.length} B, buffer), ` +
            'retrieve, content, list pages, delete, 404, 400: ok');
