// dashboard.mjs -- drives the /ui dashboard in Debian's chromium (playwright-core, pinned in
// package.json with its lock file; no browser is downloaded) against a running batchd.
//
//   BATCHD_URL=http://127.0.0.1:PORT BATCHD_KEY=<a configured key> \
//   BD_UI_SLOW_MODEL=<model with latency> BD_UI_FAST_MODEL=<hashing model> \
//   BD_UI_ARTIFACTS=<dir for screenshots> node dashboard.mjs <scenario>...
//   ... node dashboard.mjs --serve     (one scenario name per line on stdin)
//
// Scenarios: key, progress, cancel, retry, pause, xss, list. Each opens a fresh browser context (so
// sessionStorage starts empty and the page has to ask for the key) and fails on any page
// error or Content-Security-Policy violation. Given names, runs them and exits 0 only when
// all passed. With --serve (test/it_ui.c: one cmocka case per scenario, one browser for them
// all, since starting chromium costs seconds), reads names from stdin and answers each with
// one line on stdout, "ok <name>" or "fail <name>"; diagnostics go to stderr.
// SPDX-License-Identifier: MIT
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const BASE = process.env.BATCHD_URL;
const KEY = process.env.BATCHD_KEY || '';
const SLOW = process.env.BD_UI_SLOW_MODEL || 'fake';
const FAST = process.env.BD_UI_FAST_MODEL || 'hashmodel';
const DEAD = process.env.BD_UI_DEAD_MODEL || 'dead';        // a model nobody answers for
const ARTIFACTS = process.env.BD_UI_ARTIFACTS || 'artifacts';
const CHROMIUM = process.env.BD_CHROMIUM || '/usr/bin/chromium';
const API = `${BASE}/api/v1/batch`;
const RUN = `${process.pid}_${Date.now()}`;        // texts unique to this run: no cache hits

function check(cond, msg) {
  if (!cond) throw new Error('check failed: ' + msg);
}

async function api(method, path, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (KEY) headers['X-API-Key'] = KEY;
  const res = await fetch(API + path, { method, headers,
                                        body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json().catch(() => null);
  return { status: res.status, json };
}

async function submit(model, n, batchSize, metadata, options = {}) {
  const data = Array.from({ length: n }, (_, i) => ({ text: `ui ${RUN} ${model} ${n} ${i}` }));
  const r = await api('POST', '/jobs', { operation: 'bulk_embed', model, data,
                                         options: { batch_size: batchSize, ...options }, metadata });
  check(r.status === 202, `submit answered ${r.status} ${JSON.stringify(r.json)}`);
  return r.json.job_id;
}

async function jobStatus(id) {
  const r = await api('GET', `/jobs/${id}/status`);
  check(r.status === 200, `status of ${id}: ${r.status}`);
  return r.json.status;
}

// A page of the dashboard with the key entered (the page must ask for it: keys are set).
async function open(browser, path = '/ui') {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text()))
      problems.push('CSP: ' + m.text());
  });
  const res = await page.goto(BASE + path);
  check(res.status() === 200, `GET ${path}: ${res.status()}`);
  if (KEY) {
    await page.locator('#key-dialog').waitFor({ state: 'visible', timeout: 10000 });
    await page.fill('#key-input', KEY);
    await page.click('#key-submit');
    await page.locator('#key-dialog').waitFor({ state: 'hidden', timeout: 5000 });
  }
  await page.waitForFunction(() => document.getElementById('st-total').textContent !== '–',
                             null, { timeout: 10000 });
  await page.selectOption('#interval', '2000');    // auto-refresh every 2 s
  return { context, page, res, problems };
}

async function badge(page) {
  return (await page.textContent('#job-status')).trim();
}

// ---- scenarios -------------------------------------------------------------------------------

const scenarios = {
  // With API keys configured: /ui itself needs none, the API does; the page asks for the key,
  // refuses a wrong one, works with the right one and keeps it for the tab.
  async key(browser) {
    const noKey = await fetch(`${API}/queue/status`);
    check(noKey.status === 401, `queue/status without a key: ${noKey.status}`);
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(BASE + '/ui');
    await page.locator('#key-dialog').waitFor({ state: 'visible', timeout: 10000 });
    await page.fill('#key-input', 'not-the-key');
    await page.click('#key-submit');
    await page.locator('#key-error').waitFor({ state: 'visible', timeout: 10000 });
    check(/refused/.test(await page.textContent('#key-error')), 'a wrong key is said refused');
    await page.fill('#key-input', KEY);
    await page.click('#key-submit');
    await page.locator('#key-dialog').waitFor({ state: 'hidden', timeout: 5000 });
    await page.waitForFunction(() => document.getElementById('st-total').textContent !== '–',
                               null, { timeout: 10000 });
    check(await page.evaluate(() => sessionStorage.getItem('batchd.apiKey')) === KEY,
          'the key is kept in sessionStorage');
    await page.reload();
    await page.waitForFunction(() => document.getElementById('st-total').textContent !== '–',
                               null, { timeout: 10000 });
    check(!(await page.locator('#key-dialog').isVisible()), 'no second question after a reload');
    await context.close();
  },

  // A job submitted through the API appears in the list; opened, its bar reaches 100 % live.
  async progress(browser) {
    const { context, page, problems } = await open(browser);
    const id = await submit(SLOW, 24, 2, { note: 'progress' });
    const row = page.locator(`tr[data-job="${id}"]`);
    await row.waitFor({ timeout: 10000 });         // the next auto-refresh (2 s) at the latest
    await page.evaluate(() => {                    // every value the bar takes, in order
      window.__seen = [];
      const bar = document.getElementById('job-bar');
      new MutationObserver(() => window.__seen.push(Number(bar.getAttribute('aria-valuenow'))))
        .observe(bar, { attributes: true, attributeFilter: ['aria-valuenow'] });
    });
    await row.click();
    await page.waitForFunction(() => document.getElementById('job-bar')
      .getAttribute('aria-valuenow') === '100', null, { timeout: 30000 });
    await page.waitForFunction(() => document.getElementById('job-status').textContent ===
      'completed', null, { timeout: 10000 });
    const seen = await page.evaluate(() => window.__seen);
    check(seen.some((v) => v > 0 && v < 100), `the bar moved through values below 100: ${seen}`);
    check(/24 succeeded/.test(await page.textContent('#job-counts')), 'counts say 24 succeeded');
    check(await jobStatus(id) === 'completed', 'the API says completed');
    // The results link: with a key it cannot be a plain link, the page fetches and saves.
    const [download] = await Promise.all([page.waitForEvent('download', { timeout: 10000 }),
                                          page.click('#job-download')]);
    check(download.suggestedFilename() === `${id}.jsonl`, 'named after the job');
    const lines = readFileSync(await download.path(), 'utf8').trim().split('\n').map(JSON.parse);
    check(lines.length === 24 && lines.every((l, i) => l.index === i && l.embedding.length === 16),
          `the download holds the 24 results (${lines.length} lines)`);
    mkdirSync(ARTIFACTS, { recursive: true });  // the job at 100 %, the chart with its items
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });
    check(problems.length === 0, problems.join('; '));
    await context.close();
  },

  // Cancel asks first: dismissed, nothing happens; accepted, the job ends cancelled.
  async cancel(browser) {
    const id = await submit(SLOW, 400, 1, { note: 'cancel me' });
    const { context, page, problems } = await open(browser, `/ui?job=${id}`);
    await page.waitForFunction(() => document.getElementById('job-status').textContent ===
      'processing', null, { timeout: 20000 });
    let asked = 0;
    page.once('dialog', (d) => { asked++; d.dismiss(); });
    await page.click('#job-cancel');
    await page.waitForTimeout(500);
    check(asked === 1, 'cancel asked for a confirmation');
    check(await jobStatus(id) === 'processing', 'dismissed: the job still runs');
    page.once('dialog', (d) => { asked++; check(/Cancel job/.test(d.message()), 'message'); d.accept(); });
    await page.click('#job-cancel');
    await page.waitForFunction(() => document.getElementById('job-status').textContent ===
      'cancelled', null, { timeout: 20000 });
    check(asked === 2, 'asked again');
    check(await jobStatus(id) === 'cancelled', 'the API says cancelled');
    check(problems.length === 0, problems.join('; '));
    await context.close();
  },

  // A job whose items all failed: the failed items with their errors, Retry (confirmed) runs
  // it again; with the pause endpoints, "Retry all failed" too.
  async retry(browser) {
    const id = await submit(DEAD, 2, 1, { note: 'fails' }, { max_retries: 0 });
    const t0 = Date.now();
    while (await jobStatus(id) !== 'failed') {
      check(Date.now() - t0 < 20000, 'the job on a dead model fails');
      await new Promise((r) => setTimeout(r, 200));
    }
    const { context, page, problems } = await open(browser, `/ui?job=${id}`);
    await page.waitForFunction(() => document.querySelectorAll('#job-failed tbody tr').length === 2,
                               null, { timeout: 10000 });
    check(/connection_error|processing_error|timeout_error/.test(
      await page.textContent('#job-failed tbody')), 'each failed item shows its error code');
    check(!(await page.locator('#job-error').isHidden()), 'the job\'s error is shown');
    page.once('dialog', (d) => d.accept());
    await page.click('#job-retry');
    const t1 = Date.now();
    for (;;) {
      const j = (await api('GET', `/jobs/${id}`)).json;
      if (j.run_attempt === 2 && j.status === 'failed') break;
      check(Date.now() - t1 < 20000, `the retried job runs again and fails (${j.status})`);
      await new Promise((r) => setTimeout(r, 200));
    }
    await page.waitForFunction(() => /run\s*2/.test(document.getElementById('job-info')
      .textContent) && document.getElementById('job-status').textContent === 'failed', null,
    { timeout: 15000 });
    if (await page.locator('#retry-failed').isVisible()) {
      page.once('dialog', (d) => d.accept());
      await page.click('#retry-failed');
      await page.waitForFunction(() => /Retried [1-9]/.test(
        document.getElementById('queue-msg').textContent), null, { timeout: 10000 });
      const t2 = Date.now();
      for (;;) {
        const j = (await api('GET', `/jobs/${id}`)).json;
        if (j.run_attempt === 3) break;
        check(Date.now() - t2 < 20000, 'retry all failed queued the job again');
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    check(problems.length === 0, problems.join('; '));
    await context.close();
  },

  // Pause and resume from the queue card, each confirmed; a job submitted while paused waits
  // and runs after the resume. Skipped (exit 0, said so) on a server without pause.
  async pause(browser) {
    const q = await api('GET', '/queue/status');
    const { context, page, problems } = await open(browser);
    if (typeof q.json.paused !== 'boolean') {
      check(await page.locator('#queue-pause').isHidden(), 'no pause button without pause');
      check(await page.locator('#retry-failed').isHidden(), 'no retry-all without pause');
      console.error('dashboard.mjs pause: this batchd has no pause (queue status has no ' +
                    '"paused"): buttons hidden, checked; the rest skipped');
      await context.close();
      return;
    }
    check(q.json.paused === false, 'the queue starts running');
    page.once('dialog', (d) => d.accept());
    await page.click('#queue-pause');
    await page.locator('#paused-badge').waitFor({ state: 'visible', timeout: 10000 });
    check((await api('GET', '/queue/status')).json.paused === true, 'the API says paused');
    const id = await submit(FAST, 4, 2, { note: 'while paused' });
    await page.click('#refresh-now');
    await page.locator(`tr[data-job="${id}"]`).waitFor({ timeout: 10000 });
    await page.waitForTimeout(1500);
    check(await jobStatus(id) === 'queued', 'a job submitted while paused stays queued');
    page.once('dialog', (d) => d.accept());
    await page.click('#queue-resume');
    await page.locator('#paused-badge').waitFor({ state: 'hidden', timeout: 10000 });
    check((await api('GET', '/queue/status')).json.paused === false, 'the API says running');
    // One model: its row's button, confirmed; the row and the API say paused, then running.
    const modelRow = page.locator(`tr[data-model="${FAST}"]`);
    page.once('dialog', (d) => d.accept());
    await modelRow.locator('button').click();
    await modelRow.locator('.status.paused').waitFor({ timeout: 10000 });
    check((await api('GET', '/queue/status')).json.model_queues[FAST].paused === true,
          'the API says the model is paused');
    page.once('dialog', (d) => d.accept());
    await modelRow.locator('button', { hasText: 'Resume' }).click();
    await modelRow.locator('.status.paused').waitFor({ state: 'detached', timeout: 10000 });
    check((await api('GET', '/queue/status')).json.model_queues[FAST].paused === false,
          'the API says the model runs again');
    const t0 = Date.now();
    while (await jobStatus(id) !== 'completed') {
      check(Date.now() - t0 < 15000, 'the job runs after the resume');
      await new Promise((r) => setTimeout(r, 200));
    }
    await page.click('#refresh-now');
    await page.waitForFunction((jid) => {
      const r = document.querySelector(`tr[data-job="${jid}"]`);
      return r && r.dataset.status === 'completed';
    }, id, { timeout: 10000 });
    check(problems.length === 0, problems.join('; '));
    await context.close();
  },

  // Text from a job is shown as text: markup in its metadata is neither parsed nor run; the
  // page itself comes with the strict CSP; an OpenAI batch id is shown.
  async xss(browser) {
    const evil = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>';
    const id = await submit(FAST, 2, 1, { note: evil, openai_batch_id: 'batch_ui_test' });
    const { context, page, res, problems } = await open(browser, `/ui?job=${id}`);
    const csp = res.headers()['content-security-policy'] || '';
    check(/default-src 'none'/.test(csp) && /script-src 'self'/.test(csp) &&
          /frame-ancestors 'none'/.test(csp), `CSP header: ${csp}`);
    check(res.headers()['x-content-type-options'] === 'nosniff', 'nosniff');
    await page.waitForFunction(() => document.getElementById('job-metadata').textContent
      .includes('onerror'), null, { timeout: 10000 });
    check((await page.textContent('#job-metadata')).includes(evil.replace(/"/g, '\\"')),
          'the metadata is shown as its text');
    check(await page.evaluate(() => document.querySelectorAll('img, main script').length) === 0,
          'no element was made from the metadata');
    check(await page.evaluate(() => window.__xss) === undefined, 'nothing ran');
    check((await page.textContent('#job-info')).includes('batch_ui_test'), 'the OpenAI batch id');
    check(problems.length === 0, problems.join('; '));
    await context.close();
  },

  // Filters and the id search live in the URL; a reload keeps them.
  async list(browser) {
    const { context, page, problems } = await open(browser);
    await page.selectOption('#f-status', 'completed');
    await page.waitForFunction(() => location.search.includes('status=completed'));
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('#job-list tbody tr')];
      return rows.length > 0 && rows.every((r) => r.dataset.status === 'completed');
    }, null, { timeout: 10000 });
    const first = await page.getAttribute('#job-list tbody tr', 'data-job');
    await page.fill('#f-q', first);
    await page.press('#f-q', 'Enter');
    await page.waitForFunction((jid) => {
      const rows = document.querySelectorAll('#job-list tbody tr');
      return rows.length === 1 && rows[0].dataset.job === jid;
    }, first, { timeout: 10000 });
    check(new URL(page.url()).searchParams.get('q') === first, 'the search is in the URL');
    await page.reload();
    await page.waitForFunction((jid) => {
      const rows = document.querySelectorAll('#job-list tbody tr');
      return rows.length === 1 && rows[0].dataset.job === jid;
    }, first, { timeout: 10000 });
    check(await page.inputValue('#f-status') === 'completed', 'the status filter survives');
    await page.fill('#f-q', 'no_such_job_' + RUN);
    await page.press('#f-q', 'Enter');
    await page.waitForFunction(() => /No job with id/.test(
      document.getElementById('list-note').textContent), null, { timeout: 10000 });

    // Paging with the cursor, two jobs a page (limit= in the URL): older, then newer again.
    const ids = async () => page.$$eval('#job-list tbody tr', (rs) => rs.map((r) => r.dataset.job));
    await page.goto(BASE + '/ui?limit=2');
    await page.waitForFunction(() => document.querySelectorAll('#job-list tbody tr').length === 2,
                               null, { timeout: 10000 });
    const page1 = await ids();
    await page.click('#page-next');
    await page.waitForFunction(() => new URL(location.href).searchParams.has('cursor'));
    await page.waitForFunction((p1) => {
      const rs = [...document.querySelectorAll('#job-list tbody tr')].map((r) => r.dataset.job);
      return rs.length > 0 && !rs.some((j) => p1.includes(j));
    }, page1, { timeout: 10000 });
    await page.click('#page-prev');
    await page.waitForFunction((p1) => [...document.querySelectorAll('#job-list tbody tr')]
      .map((r) => r.dataset.job).join() === p1.join(), page1, { timeout: 10000 });

    // Auto-refresh can be paused: nothing is fetched until it is resumed.
    await page.selectOption('#interval', '2000');
    await page.click('#refresh-toggle');
    check(await page.getAttribute('#refresh-toggle', 'aria-pressed') === 'true', 'pressed');
    const before = await page.textContent('#updated');
    await page.waitForTimeout(3000);
    check(await page.textContent('#updated') === before, 'no refresh while paused');
    await page.click('#refresh-toggle');
    await page.waitForFunction((b) => document.getElementById('updated').textContent !== b,
                               before, { timeout: 5000 });
    check(problems.length === 0, problems.join('; '));
    await context.close();
  },
};

async function run(browser, name) {
  const t0 = Date.now();
  try {
    if (!scenarios[name]) throw new Error('no such scenario');
    await scenarios[name](browser);
    console.error(`dashboard.mjs ${name}: ok (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    return true;
  } catch (e) {
    console.error(`dashboard.mjs ${name}: ${e.stack || e}`);
    return false;
  }
}

const names = process.argv.slice(2);
if (!BASE || names.length === 0 ||
    names.some((n) => n !== '--serve' && !Object.hasOwn(scenarios, n))) {
  console.error(`usage: BATCHD_URL=... node dashboard.mjs --serve | ` +
                `<${Object.keys(scenarios).join('|')}>...`);
  process.exit(2);
}
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
let rc = 0;
try {
  if (names[0] === '--serve') {
    for await (const line of createInterface({ input: process.stdin })) {
      const name = line.trim();
      if (name !== '')
        process.stdout.write(`${(await run(browser, name)) ? 'ok' : 'fail'} ${name}\n`);
    }
  } else {
    for (const name of names)
      if (!(await run(browser, name))) rc = 1;
  }
} finally {
  await browser.close();
}
process.exit(rc);
