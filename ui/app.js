/* app.js -- the batchd dashboard (GET /ui): queue overview, per-model queues, a metrics strip,
 * the job list and a job view with live progress. Plain JavaScript, no framework, nothing
 * from the network but this batchd's own API.
 *
 * Rules this file keeps:
 * - Text that comes from the server (ids, metadata, error messages, model names) is only ever
 *   put into the page as text (textContent / text nodes, via el() below); never innerHTML.
 *   The page's Content-Security-Policy (src/api_ui.c) would block an injected script anyway.
 * - Every API call goes through api(): it sends the key kept in sessionStorage as X-API-Key,
 *   and on 401 asks for a key and tries again.
 * - The event stream is read with fetch and a stream reader (not EventSource), so the key
 *   header is sent with it.
 * - Every action that changes something (cancel, retry, pause, resume, retry all failed)
 *   asks for a confirmation first.
 * SPDX-License-Identifier: MIT
 */
'use strict';

(() => {
  const API = '/api/v1/batch';
  const KEY_STORE = 'batchd.apiKey';
  const PAGE = 25;                 /* jobs per page unless the URL says limit= */
  const SAMPLES = 120;             /* metrics samples kept for the chart */
  const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

  const $ = (id) => document.getElementById(id);

  /* ---- DOM helpers: text only ----------------------------------------------------------- */

  /* A new element; props: class, text, title, role, aria-*, data-*, hidden, type, onclick.
   * Children: nodes, or strings (inserted as text nodes, never parsed). */
  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'title') e.title = v;
      else if (k === 'hidden') e.hidden = v;
      else if (k === 'type') e.type = v;
      else if (k === 'onclick') e.addEventListener('click', v);
      else if (k.startsWith('data-')) e.dataset[k.slice(5)] = v;
      else if (k === 'role' || k.startsWith('aria-')) e.setAttribute(k, v);
      else throw new Error('el: unexpected property ' + k);
    }
    for (const kid of kids)
      if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }

  function setText(id, v) { $(id).textContent = v === null || v === undefined ? '–' : String(v); }

  function setBar(bar, pct, cls) {
    const p = Math.max(0, Math.min(100, Number(pct) || 0));
    bar.querySelector('.fill').style.width = p + '%';      /* CSSOM: allowed under the CSP */
    bar.setAttribute('aria-valuenow', String(p));
    bar.classList.toggle('done', cls === 'done');
    bar.classList.toggle('bad', cls === 'bad');
  }

  function miniBar(pct, cls) {
    const bar = el('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': '0',
                            'aria-valuemax': '100' }, el('div', { class: 'fill' }));
    setBar(bar, pct, cls);
    return bar;
  }

  function statusBadge(status) {
    const s = String(status || '');
    return el('span', { class: 'status ' + s.replace(/[^a-z_]/g, ''), text: s });
  }

  /* ---- formatting ---------------------------------------------------------------------- */

  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const fmtInt = (v) => (isNum(v) ? Math.round(v).toLocaleString('en-US') : '–');
  const fmtPct = (v) => (isNum(v) ? v.toFixed(1) + ' %' : '–');

  function fmtMs(ms) {
    if (!isNum(ms)) return '–';
    if (ms < 1000) return Math.round(ms) + ' ms';
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + Math.round(s - m * 60) + ' s';
    return Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
  }

  function fmtTime(t) {
    if (!t) return '–';
    const d = new Date(t);
    return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
  }

  function jobDuration(s) {
    const t = s.timing || {};
    return isNum(t.total_processing_time_ms) ? t.total_processing_time_ms : t.processing_time_ms;
  }

  /* ---- the API key ----------------------------------------------------------------------- */

  function getKey() {
    try { return sessionStorage.getItem(KEY_STORE) || ''; } catch (e) { return ''; }
  }

  let keyWait = null;              /* one dialog for every request that got 401 meanwhile */
  let keyDone = null;

  /* Show the key dialog (once, however many requests wait) and resolve when a key is in. */
  function askKey(refused) {
    if (keyWait === null) {
      keyWait = new Promise((resolve) => { keyDone = resolve; });
      $('key-error').hidden = !refused;
      $('key-error').textContent = refused ? 'This key was refused (401). Try another.' : '';
      $('key-input').value = '';
      const dlg = $('key-dialog');
      if (!dlg.open) dlg.showModal();
      $('key-input').focus();
    }
    return keyWait;
  }

  function onKeySubmit(ev) {
    ev.preventDefault();           /* no form submission: the CSP has form-action 'none' */
    const key = $('key-input').value.trim();
    if (!key) return;
    try { sessionStorage.setItem(KEY_STORE, key); } catch (e) { /* private mode: kept nowhere */ }
    $('key-dialog').close();
    $('key-button').hidden = false;
    const done = keyDone;
    keyWait = null;
    keyDone = null;
    done();
  }

  /* ---- the API --------------------------------------------------------------------------- */

  class ApiError extends Error {
    constructor(status, body) {
      const e = body && body.error;
      super(e && e.message ? `${status} ${e.code || ''}: ${e.message}` : `HTTP ${status}`);
      this.status = status;
      this.code = e && e.code;
    }
  }

  function qs(params) {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {}))
      if (v !== '' && v !== null && v !== undefined) u.set(k, String(v));
    const s = u.toString();
    return s ? '?' + s : '';
  }

  const enc = encodeURIComponent;

  /* method path (under /api/v1/batch; at the root with opt.root) with query; the key header
   * when one is kept; JSON Content-Type on POST/DELETE (batchd refuses a POST a form could
   * send). Resolves to the parsed JSON (or the Response itself with raw), rejects with
   * ApiError on an error status. On 401 asks for a key and tries again. */
  async function api(method, path, opt = {}) {
    for (;;) {
      const key = getKey();
      const headers = {};
      if (key) headers['X-API-Key'] = key;
      if (method !== 'GET') headers['Content-Type'] = 'application/json';
      if (opt.accept) headers.Accept = opt.accept;
      const res = await fetch((opt.root ? '' : API) + path + qs(opt.query), {
        method, headers, signal: opt.signal, cache: 'no-store', credentials: 'same-origin',
      });
      if (res.status === 401) {
        await askKey(key !== '');
        continue;
      }
      if (opt.raw && res.ok) return res;
      const body = await res.json().catch(() => null);
      if (!res.ok) throw new ApiError(res.status, body);
      return body;
    }
  }

  function banner(msg) {
    const b = $('banner');
    b.hidden = !msg;
    b.textContent = msg || '';
  }

  /* ---- state and the URL ------------------------------------------------------------------ */

  const state = {
    filters: { status: 'all', operation: '', model: '', q: '' },
    limit: PAGE,
    cursor: '',
    older: [],                     /* cursors of the pages before this one ('' = first) */
    job: '',                       /* the open job */
    refreshing: true,
    interval: 5000,
    timer: null,
    queue: null,                   /* the last queue status */
    samples: [],                   /* {t, ok, failed, bsum, bcount} from /metrics */
    busy: {},                      /* model -> {t, s}: busy_seconds_total last seen */
    stream: null,                  /* AbortController of the job's event stream */
    failedCursor: null,
  };

  function readUrl() {
    const u = new URLSearchParams(location.search);
    const st = u.get('status') || 'all';
    state.filters = {
      status: ['all', 'queued', 'processing', 'completed', 'failed', 'cancelled'].includes(st)
        ? st : 'all',
      operation: ['bulk_embed', 'bulk_insert'].includes(u.get('operation'))
        ? u.get('operation') : '',
      model: u.get('model') || '',
      q: u.get('q') || '',
    };
    state.cursor = u.get('cursor') || '';
    state.job = u.get('job') || '';
    const limit = Number(u.get('limit'));
    state.limit = Number.isInteger(limit) && limit >= 1 && limit <= 1000 ? limit : PAGE;
    if (u.get('refresh') === 'off') state.refreshing = false;
  }

  function writeUrl(push) {
    const f = state.filters;
    const q = qs({ status: f.status === 'all' ? '' : f.status, operation: f.operation,
                   model: f.model, q: f.q, limit: state.limit === PAGE ? '' : state.limit,
                   cursor: state.cursor, job: state.job });
    const url = location.pathname + q;
    if (url !== location.pathname + location.search) {
      if (push) history.pushState(null, '', url);
      else history.replaceState(null, '', url);
    }
  }

  function showFilters() {
    $('f-status').value = state.filters.status;
    $('f-operation').value = state.filters.operation;
    ensureModelOption(state.filters.model);
    $('f-model').value = state.filters.model;
    $('f-q').value = state.filters.q;
  }

  function ensureModelOption(name) {
    if (!name) return;
    const sel = $('f-model');
    if (![...sel.options].some((o) => o.value === name))
      sel.append(el('option', { text: name }));
  }

  /* ---- overview: queue status ------------------------------------------------------------- */

  async function refreshQueue() {
    const q = await api('GET', '/queue/status');
    state.queue = q;
    const qs_ = q.queue_status || {};
    setText('st-pending', fmtInt(qs_.pending_jobs));
    setText('st-processing', fmtInt(qs_.processing_jobs));
    setText('st-completed', fmtInt(qs_.completed_jobs));
    setText('st-failed', fmtInt(qs_.failed_jobs));
    setText('st-cancelled', fmtInt(qs_.cancelled_jobs));
    setText('st-total', fmtInt(qs_.total_jobs));

    const cap = q.processing_capacity || {};
    setText('cap-active', fmtInt(cap.active_workers));
    setText('cap-max', fmtInt(cap.max_concurrent_jobs));
    setBar($('cap-bar'), cap.max_concurrent_jobs
      ? (100 * cap.active_workers) / cap.max_concurrent_jobs : 0);
    setText('cap-items', q.queue_depth ? fmtInt(q.queue_depth.queued_items) : 'Redis unreachable');

    const h = q.queue_health || {};
    setText('h-throughput', isNum(h.throughput_items_per_minute)
      ? h.throughput_items_per_minute.toFixed(1) + ' items/min' : '–');
    setText('h-success', fmtPct(h.success_rate));
    setText('h-wait', isNum(h.average_wait_time_seconds)
      ? fmtMs(h.average_wait_time_seconds * 1000) : '–');
    setText('h-proc', isNum(h.average_processing_time_seconds)
      ? fmtMs(h.average_processing_time_seconds * 1000) : '–');

    /* Pause and resume exist when queue status says whether the queue is paused. */
    const canPause = typeof q.paused === 'boolean';
    $('paused-badge').hidden = !q.paused;
    $('queue-pause').hidden = !canPause || q.paused;
    $('queue-resume').hidden = !canPause || !q.paused;
    $('retry-failed').hidden = !canPause;
    const qstate = $('queue-state');
    qstate.textContent = !canPause ? 'running' : q.paused
      ? 'paused' + (q.paused_at ? ' since ' + fmtTime(q.paused_at) : '') : 'running';
    qstate.className = q.paused ? 'error' : '';

    renderModels(q.model_queues || {}, canPause);
  }

  function renderModels(models, canPause) {
    const tbody = $('models').querySelector('tbody');
    const now = performance.now() / 1000;
    const rows = [];
    for (const [name, m] of Object.entries(models)) {
      ensureModelOption(name);
      const slots = m.slots;
      let busy = null;
      if (slots && isNum(slots.busy_seconds_total) && slots.limit > 0) {
        const prev = state.busy[name];
        if (prev && now > prev.t)
          busy = (100 * (slots.busy_seconds_total - prev.s)) / ((now - prev.t) * slots.limit);
        state.busy[name] = { t: now, s: slots.busy_seconds_total };
      }
      const paused = m.paused === true;
      const action = canPause && typeof m.paused === 'boolean'
        ? el('button', { type: 'button', class: 'model-' + (paused ? 'resume' : 'pause'),
                         'data-model': name, text: paused ? 'Resume' : 'Pause',
                         onclick: () => pauseQueue(!paused, name) })
        : null;
      rows.push(el('tr', { 'data-model': name },
        el('td', { class: 'id', text: name }),
        el('td', { text: fmtInt(m.pending) }),
        el('td', { text: fmtInt(m.processing) }),
        el('td', { text: isNum(m.avg_time_seconds) ? fmtMs(m.avg_time_seconds * 1000) : '–' }),
        el('td', { text: slots ? `${fmtInt(slots.in_flight)} / ${fmtInt(slots.limit)}`
                                : 'not run here' }),
        el('td', {}, slots && slots.limit > 0
          ? el('span', {}, miniBar(busy === null ? (100 * slots.in_flight) / slots.limit
                                                 : busy),
               el('span', { class: 'muted small',
                            text: busy === null ? '' : ' ' + busy.toFixed(0) + ' %' }))
          : '–'),
        el('td', {}, paused ? el('span', { class: 'status paused', text: 'paused' })
                            : el('span', { class: 'muted', text: 'running' })),
        el('td', {}, action)));
    }
    tbody.replaceChildren(...rows);
  }

  async function refreshHealth() {
    const pill = $('health');
    try {
      const r = await fetch('/readyz', { cache: 'no-store' });
      const j = await r.json().catch(() => ({}));
      pill.textContent = r.ok ? 'ready' : 'not ready' +
        (j.redis === false ? ' (Redis)' : '') + (j.postgres === false ? ' (PostgreSQL)' : '');
      pill.className = 'pill ' + (r.ok ? 'up' : 'down');
    } catch (e) {
      pill.textContent = 'unreachable';
      pill.className = 'pill down';
    }
  }

  /* ---- queue actions ----------------------------------------------------------------------- */

  async function pauseQueue(pause, model) {
    const what = model ? `model ${model}` : 'the whole queue';
    const msg = pause
      ? `Pause ${what}? No new batch will be started${model ? ' for it' : ''}; ` +
        'batches at the model finish.'
      : `Resume ${what}?`;
    if (!confirm(msg)) return;
    try {
      const r = await api('POST', '/queue/' + (pause ? 'pause' : 'resume'),
                          { query: { model } });
      $('queue-msg').textContent = `${pause ? 'Paused' : 'Resumed'} ${what}` +
        (r && r.changed === false ? ' (it already was)' : '') + '.';
      await refreshQueue();
    } catch (e) {
      $('queue-msg').textContent = 'Failed: ' + e.message;
    }
  }

  async function retryAllFailed() {
    const f = state.filters;
    const status = ['completed', 'failed', 'cancelled'].includes(f.status) ? f.status : '';
    const scope = [f.model && `model ${f.model}`, f.operation, status && `${status} jobs`]
      .filter(Boolean).join(', ');
    if (!confirm('Retry the failed items of every finished job' +
                 (scope ? ` (${scope})` : '') + '? Up to 100 jobs are queued again.')) return;
    try {
      const r = await api('POST', '/jobs/retry-failed',
                          { query: { model: f.model, operation: f.operation, status } });
      $('queue-msg').textContent = `Retried ${r.retried} job${r.retried === 1 ? '' : 's'}` +
        (r.has_more ? '; more match: press again.' : '.');
      await Promise.allSettled([refreshQueue(), refreshList()]);
      if (state.job && (r.job_ids || []).includes(state.job)) openJob(state.job, false);
    } catch (e) {
      $('queue-msg').textContent = 'Failed: ' + e.message;
    }
  }

  /* ---- metrics: samples of the Prometheus /metrics taken while the page is open ------------ */

  /* The few families the strip needs, summed over their labels. */
  function parseMetrics(text) {
    const r = { ok: 0, failed: 0, bsum: 0, bcount: 0 };
    for (const line of text.split('\n')) {
      if (line === '' || line[0] === '#') continue;
      const sp = line.lastIndexOf(' ');
      const name = line.slice(0, sp);
      const v = Number(line.slice(sp + 1));
      if (!Number.isFinite(v)) continue;
      if (name.startsWith('batchd_items_total{')) {
        if (name.includes('outcome="succeeded"')) r.ok += v;
        else if (name.includes('outcome="failed"')) r.failed += v;
      } else if (name.startsWith('batchd_batch_duration_seconds_sum')) {
        r.bsum += v;
      } else if (name.startsWith('batchd_batch_duration_seconds_count')) {
        r.bcount += v;
      }
    }
    return r;
  }

  async function sampleMetrics() {
    let res;
    try {                          /* with metrics.require_key it wants the key too */
      res = await api('GET', '/metrics', { root: true, raw: true });
    } catch (e) {
      if (e.status !== 404) throw e;
      $('metrics-note').textContent = 'Metrics are disabled on this server (metrics.enabled).';
      return;
    }
    const s = parseMetrics(await res.text());
    s.t = performance.now() / 1000;
    const prev = state.samples[state.samples.length - 1];
    if (prev && (s.ok < prev.ok || s.bcount < prev.bcount))
      state.samples = [];          /* counters went back: another process, or a restart */
    state.samples.push(s);
    if (state.samples.length > SAMPLES + 1) state.samples.shift();
    renderMetrics();
  }

  /* One point per interval between two samples. */
  function metricPoints() {
    const pts = [];
    for (let i = 1; i < state.samples.length; i++) {
      const a = state.samples[i - 1];
      const b = state.samples[i];
      const dt = b.t - a.t;
      if (dt <= 0) continue;
      const ok = b.ok - a.ok;
      const failed = b.failed - a.failed;
      const batches = b.bcount - a.bcount;
      pts.push({
        perMin: ((ok + failed) * 60) / dt,
        success: ok + failed > 0 ? (100 * ok) / (ok + failed) : null,
        latencyMs: batches > 0 ? ((b.bsum - a.bsum) * 1000) / batches : null,
      });
    }
    return pts;
  }

  function renderMetrics() {
    const pts = metricPoints();
    const last = pts[pts.length - 1];
    const health = state.queue && state.queue.queue_health;
    setText('m-throughput', last ? last.perMin.toFixed(1) + ' items/min' : '–');
    setText('m-success', last && last.success !== null ? fmtPct(last.success)
      : health ? fmtPct(health.success_rate) + ' (all jobs)' : '–');
    setText('m-latency', last && last.latencyMs !== null ? fmtMs(last.latencyMs) : '–');
    $('metrics-note').textContent = pts.length
      ? `This process, over the last ${pts.length} refresh interval${pts.length === 1 ? '' : 's'}` +
        ' (samples of /metrics taken while this page is open).'
      : 'Collecting samples of /metrics…';
    drawChart(pts);
  }

  function drawChart(pts) {
    const c = $('chart');
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 900;
    const h = c.clientHeight || 90;
    if (c.width !== Math.round(w * dpr)) { c.width = Math.round(w * dpr); }
    if (c.height !== Math.round(h * dpr)) { c.height = Math.round(h * dpr); }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const line = (values, color) => {
      const max = Math.max(...values.filter((v) => v !== null), 0);
      if (max <= 0) return 0;
      g.strokeStyle = color;
      g.lineWidth = 1.5;
      g.beginPath();
      let started = false;
      values.forEach((v, i) => {
        if (v === null) { started = false; return; }
        const x = values.length === 1 ? w - 4 : 4 + ((w - 8) * i) / (values.length - 1);
        const y = h - 6 - ((h - 20) * v) / max;
        if (started) g.lineTo(x, y); else g.moveTo(x, y);
        started = true;
      });
      g.stroke();
      const lastV = values[values.length - 1];
      if (lastV !== null) {                        /* the latest point, visible when alone */
        g.fillStyle = color;
        g.beginPath();
        g.arc(w - 4, h - 6 - ((h - 20) * lastV) / max, 2.5, 0, 2 * Math.PI);
        g.fill();
      }
      return max;
    };
    const maxT = line(pts.map((p) => p.perMin), css.getPropertyValue('--accent').trim());
    const maxL = line(pts.map((p) => p.latencyMs), css.getPropertyValue('--warn').trim());
    g.fillStyle = css.getPropertyValue('--muted').trim();
    g.font = '11px system-ui, sans-serif';
    g.fillText(maxT ? `max ${maxT.toFixed(0)} items/min` : 'no items in this window', 6, 12);
    if (maxL) {
      const t = `max ${fmtMs(maxL)} per batch`;
      g.fillText(t, w - 6 - g.measureText(t).width, 12);
    }
  }

  /* ---- the job list ------------------------------------------------------------------------- */

  function jobRow(s) {
    const p = s.progress || {};
    const cls = s.status === 'completed' ? 'done' : s.status === 'failed' ? 'bad' : '';
    return el('tr', { class: 'job-row', 'data-job': s.job_id, 'data-status': s.status,
                      onclick: () => openJob(s.job_id, true) },
      el('td', { class: 'id', text: s.job_id }),
      el('td', {}, statusBadge(s.status)),
      el('td', { text: s.operation || '' }),
      el('td', { text: s.model || '–' }),
      el('td', {}, el('span', {}, miniBar(p.percentage, cls),
                      el('span', { class: 'muted small', text: fmtPct(p.percentage) }))),
      el('td', { text: fmtInt(p.total_items) }),
      el('td', { text: fmtInt(p.failed_items) }),
      el('td', { text: fmtTime(s.timing && s.timing.created_at) }),
      el('td', { text: fmtMs(jobDuration(s)) }));
  }

  async function refreshList() {
    const tbody = $('job-list').querySelector('tbody');
    const f = state.filters;
    const note = $('list-note');
    if (f.q) {
      /* The id search: one job, by its exact id. */
      let rows = [];
      if (!/^[A-Za-z0-9_-]{1,128}$/.test(f.q)) {
        note.textContent = 'A job id has only letters, digits, _ and -.';
      } else {
        try {
          rows = [jobRow(await api('GET', `/jobs/${enc(f.q)}/status`))];
          note.textContent = '';
        } catch (e) {
          if (e.status !== 404) throw e;
          note.textContent = `No job with id ${f.q}.`;
        }
      }
      tbody.replaceChildren(...rows);
      $('page-next').disabled = true;
      $('page-prev').disabled = true;
      $('page-first').disabled = true;
      return;
    }
    const r = await api('GET', '/jobs', { query: {
      status: f.status, operation: f.operation, model: f.model, limit: state.limit,
      cursor: state.cursor } });
    tbody.replaceChildren(...(r.jobs || []).map(jobRow));
    state.nextCursor = r.next_cursor || '';
    $('page-next').disabled = !state.nextCursor;
    $('page-prev').disabled = !state.cursor;
    $('page-first').disabled = !state.cursor;
    note.textContent = (r.jobs || []).length ? '' : 'No jobs match.';
  }

  function applyFilters(ev) {
    if (ev) ev.preventDefault();
    state.filters = {
      status: $('f-status').value, operation: $('f-operation').value,
      model: $('f-model').value, q: $('f-q').value.trim(),
    };
    state.cursor = '';
    state.older = [];
    writeUrl(true);
    refreshList().catch((e) => banner(e.message));
  }

  function page(dir) {
    if (dir === 'next' && state.nextCursor) {
      state.older.push(state.cursor);
      state.cursor = state.nextCursor;
    } else if (dir === 'prev') {
      state.cursor = state.older.length ? state.older.pop() : '';
    } else {
      state.cursor = '';
      state.older = [];
    }
    writeUrl(true);
    refreshList().catch((e) => banner(e.message));
  }

  /* ---- the job view ------------------------------------------------------------------------- */

  function kv(dl, pairs) {
    const kids = [];
    for (const [k, v] of pairs) {
      if (v === undefined) continue;
      kids.push(el('dt', { text: k }), el('dd', {}, v instanceof Node ? v : String(v ?? '–')));
    }
    dl.replaceChildren(...kids);
  }

  /* Show a status object (GET /status, an SSE event, a cancel or retry answer). */
  function renderStatus(s) {
    if (!s || s.job_id !== state.job) return;
    const p = s.progress || {};
    const t = s.timing || {};
    const r = s.results || {};
    const terminal = TERMINAL.has(s.status);
    $('job-status').replaceWith(Object.assign(statusBadge(s.status), { id: 'job-status' }));
    const cls = s.status === 'completed' ? 'done' : s.status === 'failed' ? 'bad' : '';
    setBar($('job-bar'), p.percentage, cls);
    $('job-pct').textContent = fmtPct(p.percentage);
    $('job-counts').textContent =
      `${fmtInt(p.processed_items)} succeeded · ${fmtInt(p.failed_items)} failed · ` +
      `${fmtInt(p.total_items)} items · batch ${fmtInt(p.current_batch)} of ` +
      `${fmtInt(p.total_batches)}` + (s.cancel_requested ? ' · cancelling…' : '');
    kv($('job-timing'), [
      ['created', fmtTime(t.created_at)],
      ['started', fmtTime(t.started_at)],
      ['estimated completion', t.estimated_completion === undefined ? undefined
                                                                    : fmtTime(t.estimated_completion)],
      ['completed', t.completed_at === undefined ? undefined : fmtTime(t.completed_at)],
      [terminal ? 'total time' : 'running for', fmtMs(jobDuration(s))],
    ]);
    kv($('job-results'), [
      ['success rate', fmtPct(r.success_rate)],
      ['avg per item', isNum(r.average_processing_time_ms) ? fmtMs(r.average_processing_time_ms)
                                                           : '–'],
      ['stored vectors', fmtInt(r.stored_vectors)],
      ['cache hits', fmtInt(r.cache_hits)],
      ['collection', r.output_collection || '–'],
    ]);
    const err = $('job-error');
    err.hidden = !s.error;
    err.textContent = s.error ? `${s.error.code || 'error'}: ${s.error.message || ''}` : '';
    $('job-cancel').hidden = terminal || !!s.cancel_requested;
    $('job-retry').hidden = !terminal || (s.status === 'completed' && !(p.failed_items > 0));
  }

  /* Show the whole job (GET /jobs/{id}): the status plus settings and metadata. */
  function renderDetail(j) {
    const md = j.metadata || {};
    const openai = typeof md.openai_batch_id === 'string' ? md.openai_batch_id : null;
    kv($('job-info'), [
      ['operation', j.operation],
      ['model', j.model || '–'],
      ['priority', j.priority],
      ['batch size', j.batch_size],
      ['run', j.run_attempt],
      ['submitted by', typeof md.submitted_by === 'string' ? md.submitted_by : '–'],
      ['OpenAI batch', openai === null ? undefined : openai],
      ['item errors', fmtInt(j.errors_count)],
    ]);
    $('job-metadata').textContent = JSON.stringify(md, null, 2);
    renderStatus(j);
  }

  async function loadFailed(more) {
    const tbody = $('job-failed').querySelector('tbody');
    const id = state.job;
    if (!more) state.failedCursor = null;
    const r = await api('GET', `/jobs/${enc(id)}/items`,
                        { query: { status: 'failed', limit: 50, cursor: state.failedCursor } });
    if (id !== state.job) return;
    const rows = (r.items || []).map((it) => el('tr', {},
      el('td', { text: fmtInt(it.index) }),
      el('td', { class: 'id', text: it.id === null || it.id === undefined ? '–' : String(it.id) }),
      el('td', { text: (it.error && it.error.code) || '' }),
      el('td', { text: (it.error && it.error.message) || '' })));
    if (more) tbody.append(...rows); else tbody.replaceChildren(...rows);
    state.failedCursor = r.has_more ? r.next_cursor : null;
    $('job-failed-more').hidden = !r.has_more;
    $('job-failed-note').textContent = tbody.children.length ? '' : 'None.';
  }

  function setDownload(id) {
    const a = $('job-download');
    a.href = `${API}/jobs/${enc(id)}/results?format=ndjson`;
    a.download = `${id}.jsonl`;
  }

  /* With a key the link cannot carry it: fetch with the header, then save the blob. */
  async function onDownload(ev) {
    if (!getKey()) return;         /* the plain link streams straight to disk */
    ev.preventDefault();
    const id = state.job;
    try {
      const res = await api('GET', `/jobs/${enc(id)}/results`,
                            { query: { format: 'ndjson' }, accept: 'application/x-ndjson',
                              raw: true });
      const url = URL.createObjectURL(await res.blob());
      const a = el('a', {});
      a.href = url;
      a.download = `${id}.jsonl`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      banner('Download failed: ' + e.message);
    }
  }

  async function openJob(id, push) {
    if (!/^[A-Za-z0-9_-]{1,128}$/.test(id)) return;
    stopStream();
    state.job = id;
    writeUrl(push);
    const sec = $('job');
    sec.hidden = false;
    $('job-id').textContent = id;
    $('job-live').textContent = '';
    $('job-metadata').textContent = '';
    $('job-failed').querySelector('tbody').replaceChildren();
    setDownload(id);
    sec.scrollIntoView({ block: 'start' });
    try {
      renderDetail(await api('GET', `/jobs/${enc(id)}`));
    } catch (e) {
      $('job-live').textContent = e.status === 404 ? 'No such job.' : 'Failed: ' + e.message;
      return;
    }
    loadFailed(false).catch((e) => { $('job-failed-note').textContent = 'Failed: ' + e.message; });
    streamJob(id);
  }

  function closeJob() {
    stopStream();
    state.job = '';
    $('job').hidden = true;
    writeUrl(true);
  }

  function stopStream() {
    if (state.stream) state.stream.abort();
    state.stream = null;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /* GET /jobs/{id}/events read with fetch: progress events until the final one. On a broken
   * stream (503 too_many_streams, a restart) the status is polled and the stream retried. */
  async function streamJob(id) {
    const ctl = new AbortController();
    state.stream = ctl;
    const live = $('job-live');
    let backoff = 1000;
    let ended = false;
    const dispatch = (event, data) => {
      let j = null;
      try { j = JSON.parse(data); } catch (e) { return; }
      if (event === 'progress') {
        renderStatus(j);
      } else if (event === 'final') {
        ended = true;
        renderStatus(j);
        live.textContent = 'Finished.';
        api('GET', `/jobs/${enc(id)}`).then(renderDetail).catch(() => {});
        loadFailed(false).catch(() => {});
        refreshList().catch(() => {});
      } else if (event === 'error') {
        ended = true;
        live.textContent = 'Stream ended: ' + ((j.error && j.error.message) || 'error');
      }
    };
    while (!ctl.signal.aborted && !ended) {
      try {
        const res = await api('GET', `/jobs/${enc(id)}/events`,
                              { accept: 'text/event-stream', signal: ctl.signal, raw: true });
        live.textContent = 'Live (server-sent events).';
        backoff = 1000;
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        let ev = { event: 'message', data: [] };
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            let line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (line.endsWith('\r')) line = line.slice(0, -1);
            if (line === '') {
              if (ev.data.length) dispatch(ev.event, ev.data.join('\n'));
              ev = { event: 'message', data: [] };
            } else if (line[0] !== ':') {
              const c = line.indexOf(':');
              const field = c < 0 ? line : line.slice(0, c);
              let v = c < 0 ? '' : line.slice(c + 1);
              if (v[0] === ' ') v = v.slice(1);
              if (field === 'event') ev.event = v;
              else if (field === 'data') ev.data.push(v);
            }
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
        live.textContent = `Live view interrupted (${e.message}); polling.`;
        try { renderStatus(await api('GET', `/jobs/${enc(id)}/status`)); } catch (e2) { /* next */ }
      }
      if (ended || ctl.signal.aborted) break;
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
    if (state.stream === ctl) state.stream = null;
  }

  async function cancelJob() {
    const id = state.job;
    if (!confirm(`Cancel job ${id}? Items already written stay; no further batch starts.`))
      return;
    try {
      renderStatus(await api('DELETE', `/jobs/${enc(id)}`));
      refreshList().catch(() => {});
    } catch (e) {
      $('job-live').textContent = 'Cancel failed: ' + e.message;
    }
  }

  async function retryJob() {
    const id = state.job;
    if (!confirm(`Retry job ${id}? Its failed items (and batches that never ran) run again.`))
      return;
    try {
      renderStatus(await api('POST', `/jobs/${enc(id)}/retry`));
      refreshList().catch(() => {});
      if (!state.stream) streamJob(id);
    } catch (e) {
      $('job-live').textContent = 'Retry failed: ' + e.message;
    }
  }

  /* ---- refresh loop --------------------------------------------------------------------------- */

  async function refreshAll() {
    const results = await Promise.allSettled([refreshQueue(), refreshList(), refreshHealth()]);
    /* After the queue: the success rate shown when no item ended falls back on its health. */
    const m = await Promise.allSettled([sampleMetrics()]);
    const bad = [...results, ...m].find((r) => r.status === 'rejected');
    banner(bad ? 'Refresh failed: ' + bad.reason.message : '');
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = null;
    if (state.refreshing)
      state.timer = setTimeout(async () => { await refreshAll(); schedule(); }, state.interval);
    const b = $('refresh-toggle');
    b.textContent = state.refreshing ? 'Pause refresh' : 'Resume refresh';
    b.setAttribute('aria-pressed', String(!state.refreshing));
  }

  /* ---- start ------------------------------------------------------------------------------------ */

  function start() {
    $('key-form').addEventListener('submit', onKeySubmit);
    $('key-dialog').addEventListener('cancel', (ev) => ev.preventDefault());
    $('key-button').hidden = !getKey();
    $('key-button').addEventListener('click', () => {
      try { sessionStorage.removeItem(KEY_STORE); } catch (e) { /* nothing kept */ }
      askKey(false).then(refreshAll);
    });
    $('filters').addEventListener('submit', applyFilters);
    for (const id of ['f-status', 'f-operation', 'f-model'])
      $(id).addEventListener('change', applyFilters);
    $('page-next').addEventListener('click', () => page('next'));
    $('page-prev').addEventListener('click', () => page('prev'));
    $('page-first').addEventListener('click', () => page('first'));
    $('refresh-toggle').addEventListener('click', () => {
      state.refreshing = !state.refreshing;
      schedule();
    });
    $('refresh-now').addEventListener('click', () => refreshAll());
    $('interval').addEventListener('change', () => {
      state.interval = Number($('interval').value) || 5000;
      schedule();
    });
    $('queue-pause').addEventListener('click', () => pauseQueue(true, ''));
    $('queue-resume').addEventListener('click', () => pauseQueue(false, ''));
    $('retry-failed').addEventListener('click', retryAllFailed);
    $('job-close').addEventListener('click', closeJob);
    $('job-cancel').addEventListener('click', cancelJob);
    $('job-retry').addEventListener('click', retryJob);
    $('job-download').addEventListener('click', onDownload);
    $('job-failed-more').addEventListener('click', () => loadFailed(true).catch(() => {}));
    window.addEventListener('popstate', () => {
      readUrl();
      showFilters();
      refreshList().catch((e) => banner(e.message));
      if (state.job) openJob(state.job, false); else { stopStream(); $('job').hidden = true; }
    });

    readUrl();
    showFilters();
    state.interval = Number($('interval').value) || 5000;
    refreshAll().then(schedule);
    if (state.job) openJob(state.job, false);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
