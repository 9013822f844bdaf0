// meshd dashboard: a client of the admin API (the same API as meshctl). No framework, no
// build step. Data from the network only ever reaches the page as text (textContent), never
// as HTML.
'use strict';

const TOKEN_KEY = 'meshd.token';
const PAGE_SIZE = 50;
const HISTORY = 300;
const TYPE_NAMES = {
  'type.mesh.v1/Listener': 'Listener',
  'type.mesh.v1/RouteTable': 'RouteTable',
  'type.mesh.v1/Cluster': 'Cluster',
  'type.mesh.v1/AuthorizationPolicy': 'AuthorizationPolicy',
  'type.mesh.v1/RateLimitPolicy': 'RateLimitPolicy',
  'type.mesh.v1/TlsPolicy': 'TlsPolicy',
  'type.mesh.v1/TrustBundle': 'TrustBundle',
  'type.mesh.v1/IdentityDirective': 'IdentityDirective',
};

const app = {
  token: null,
  role: null,
  view: null,
  // The page of the sidecar list: what is asked, and what is shown (id -> row data).
  page: { offset: 0, q: '', state: '' },
  shown: new Map(),
  matched: 0,
  fetching: false,
  refetchWanted: false,
  lastFetch: 0,
  refetchTimer: null,
  series: [],
  ca: null,
  detailId: null,
  stream: null,
  retry: 1000,
};

// --- helpers ---------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('data-')) el.setAttribute(k, v);
    else el[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

const typeName = (url) => TYPE_NAMES[url] || String(url || '').replace(/^.*\//, '');
const now = () => Date.now() / 1000;

/** "in 59m", "3m ago", for a unix time. */
function relative(t) {
  if (t === null || t === undefined) return '–';
  const d = Math.round(t - now());
  const a = Math.abs(d);
  let text;
  if (a < 60) text = `${a}s`;
  else if (a < 3600) text = `${Math.floor(a / 60)}m`;
  else if (a < 86400 * 2) text = `${Math.floor(a / 3600)}h ${Math.floor((a % 3600) / 60)}m`;
  else text = `${Math.floor(a / 86400)}d`;
  return d >= 0 ? `in ${text}` : `${text} ago`;
}

function absolute(t) {
  if (t === null || t === undefined) return '';
  return new Date(t * 1000).toISOString().replace('.000Z', 'Z');
}

/** A cell that keeps saying how long ago (or until) `t` is; refreshed every second. */
function timeCell(t, tag = 'td', label) {
  const el = h(tag, { class: 'ago', title: absolute(t), 'data-label': label });
  if (t !== null && t !== undefined) el.setAttribute('data-t', String(t));
  el.textContent = relative(t);
  return el;
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  const v = seconds * 1000;
  return v < 10 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`;
}

function fmtRate(r) {
  if (r === null || r === undefined) return '–';
  return r < 10 ? r.toFixed(2) : r.toFixed(0);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** A call to the admin API with the token; JSON back, or an ApiError with the server's text. */
async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${app.token}` }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers, cache: 'no-store' }));
  const text = await res.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  if (!res.ok) {
    const message = (body && body.error) || `${res.status} ${res.statusText}`;
    if (res.status === 401 && path !== '/api/v1/whoami') signOut('The token is no longer accepted; sign in again.');
    throw new ApiError(res.status, message);
  }
  return body;
}

// --- login -----------------------------------------------------------------------------------

async function signIn(token) {
  app.token = token;
  const me = await api('/api/v1/whoami');
  app.role = me.role;
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  app.token = null;
  app.role = null;
  if (app.stream) app.stream.abort();
  app.stream = null;
  $('top').hidden = true;
  $('login-token').value = '';
  $('login-error').textContent = message || '';
  show('login');
}

function start() {
  $('top').hidden = false;
  const viewer = app.role !== 'admin';
  $('role').textContent = viewer ? 'viewer · read-only' : 'admin';
  $('role').dataset.role = app.role;
  $('nav-apply').hidden = viewer;
  $('apply-panel').hidden = viewer;
  $('apply-readonly').hidden = !viewer;
  openStream();
  route();
}

// --- routing ---------------------------------------------------------------------------------

function show(name) {
  for (const v of ['login', 'fleet', 'sidecar', 'ca', 'apply']) $(`view-${v}`).hidden = v !== name;
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.route === name);
  }
  app.view = name;
}

function route() {
  if (!app.token) return show('login');
  const hash = location.hash.replace(/^#/, '') || '/';
  if (hash.startsWith('/sidecar/')) {
    const id = decodeURIComponent(hash.slice('/sidecar/'.length));
    show('sidecar');
    loadSidecar(id);
    document.title = `${id} · meshd`;
    return;
  }
  app.detailId = null;
  if (hash === '/ca') {
    show('ca');
    document.title = 'CA & TLS · meshd';
    loadCa();
    loadTls();
  } else if (hash === '/apply') {
    show('apply');
    document.title = 'Apply · meshd';
  } else {
    show('fleet');
    document.title = 'meshd';
    drawCharts();
  }
}

// --- the live feed ---------------------------------------------------------------------------

/** Reads GET /api/v1/events (server-sent events) with fetch, which can send the token. */
async function openStream() {
  if (app.stream) app.stream.abort();
  const ctl = new AbortController();
  app.stream = ctl;
  setConn('connecting');
  try {
    const res = await fetch('/api/v1/events', {
      headers: { Authorization: `Bearer ${app.token}`, Accept: 'text/event-stream' },
      signal: ctl.signal,
      cache: 'no-store',
    });
    if (res.status === 401) {
      signOut('The token is no longer accepted; sign in again.');
      return;
    }
    if (!res.ok || !res.body) throw new Error(`events: ${res.status}`);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        dispatch(block);
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  if (ctl.signal.aborted || app.stream !== ctl) return;
  setConn('reconnecting');
  setTimeout(() => {
    if (app.stream === ctl && app.token) openStream();
  }, app.retry);
  app.retry = Math.min(app.retry * 2, 15000);
}

function setConn(state) {
  const el = $('conn');
  el.dataset.state = state;
  el.textContent = state;
}

function dispatch(block) {
  let name = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') name = value;
    else if (field === 'data') data.push(value);
  }
  if (!data.length) return;
  let body;
  try {
    body = JSON.parse(data.join('\n'));
  } catch (_) {
    return;
  }
  const handler = EVENTS[name];
  if (handler) handler(body);
}

const EVENTS = {
  hello(body) {
    app.retry = 1000;
    setConn('live');
    if (body.role && body.role !== app.role) start();
    loadPage();
    loadStats();
    loadCa();
    if (app.detailId) loadSidecar(app.detailId);
  },
  summary(body) {
    renderSummary(body);
  },
  sidecars(body) {
    if (body.resync) return wantPage();
    for (const s of body.upserted || []) {
      if (app.detailId === s.id) renderSidecar(s);
      const row = app.shown.get(s.id);
      if (row && matches(s)) {
        app.shown.set(s.id, s);
        const tr = document.querySelector(`#sidecar-rows tr[data-id="${CSS.escape(s.id)}"]`);
        if (tr) tr.replaceWith(sidecarRow(s));
      } else if (row || matches(s)) {
        wantPage();
      }
    }
    for (const id of body.removed || []) {
      if (app.shown.has(id)) wantPage();
      if (app.detailId === id) sidecarGone(id);
    }
  },
  stats(body) {
    const last = app.series[app.series.length - 1];
    if (body.point && (!last || body.point.t > last.t)) {
      app.series.push(body.point);
      if (app.series.length > HISTORY) app.series.splice(0, app.series.length - HISTORY);
    }
    renderNow(body);
    if (app.view === 'fleet') drawCharts();
  },
  ca(body) {
    renderCa(body);
  },
};

// --- fleet -----------------------------------------------------------------------------------

function renderSummary(s) {
  renderCounts(s.total, s.counts || {});
  const list = $('nacks');
  list.replaceChildren();
  const nacks = s.nacks || [];
  $('nacks-count').textContent = s.nacked_types ? String(s.nacked_types) : '';
  if (!nacks.length) list.append(h('li', { class: 'none', text: 'No NACKs: every sidecar accepted its newest config.' }));
  for (const n of nacks) {
    list.append(
      h('li', { 'data-id': n.id },
        h('a', { href: `#/sidecar/${encodeURIComponent(n.id)}`, class: 'id', text: n.id }),
        ' rejected ',
        h('strong', { text: typeName(n.type_url) }),
        ': ',
        h('span', { class: 'nack', text: n.nack || '' })),
    );
  }
  if ((s.nacked_types || 0) > nacks.length) {
    list.append(h('li', { class: 'none', text: `… and ${s.nacked_types - nacks.length} more (filter by NACKED below)` }));
  }
}

function renderCounts(total, counts) {
  $('count-total').textContent = total;
  for (const [state, n] of Object.entries(counts)) {
    const el = $(`count-${state}`);
    if (el) el.textContent = n;
  }
  const bar = $('statebar');
  bar.replaceChildren();
  for (const [state, n] of Object.entries(counts)) {
    if (!n) continue;
    const seg = h('span', { class: `seg ${state.toLowerCase()}`, title: `${state}: ${n}` });
    seg.style.flexGrow = String(n);
    bar.append(seg);
  }
}

function renderNow(body) {
  const lat = body.push_latency;
  if (lat) $('latency-now').textContent = `${ms(lat.p50_seconds)} / ${ms(lat.p99_seconds)}`;
  const rates = body.rates;
  if (rates) $('rate-now').textContent = fmtRate(rates.pushes_per_second);
}

function matches(s) {
  const { q, state } = app.page;
  if (state && s.state !== state) return false;
  if (!q) return true;
  const needle = q.toLowerCase();
  return [s.id, s.identity, s.namespace, s.service, s.workload].some((f) => String(f || '').toLowerCase().includes(needle));
}

/** Fetches the page again soon: at most once a second, one request at a time. */
function wantPage() {
  app.refetchWanted = true;
  if (app.fetching || app.refetchTimer) return;
  const wait = Math.max(0, 1000 - (Date.now() - app.lastFetch));
  app.refetchTimer = setTimeout(() => {
    app.refetchTimer = null;
    loadPage();
  }, wait);
}

async function loadPage() {
  if (!app.token) return;
  if (app.fetching) {
    app.refetchWanted = true;
    return;
  }
  app.fetching = true;
  app.refetchWanted = false;
  app.lastFetch = Date.now();
  const { offset, q, state } = app.page;
  const params = new URLSearchParams({ offset: String(offset), limit: String(PAGE_SIZE) });
  if (q) params.set('q', q);
  if (state) params.set('state', state);
  try {
    const body = await api(`/api/v1/sidecars?${params}`);
    if (body.sidecars.length === 0 && offset > 0 && body.matched > 0) {
      app.page.offset = Math.max(0, Math.floor((body.matched - 1) / PAGE_SIZE) * PAGE_SIZE);
      app.refetchWanted = true;
    } else {
      renderPage(body);
    }
  } catch (e) {
    if (e.status !== 401) $('page-info').textContent = `Could not load the sidecars: ${e.message}`;
  } finally {
    app.fetching = false;
    if (app.refetchWanted) wantPage();
  }
}

function renderPage(body) {
  app.shown = new Map(body.sidecars.map((s) => [s.id, s]));
  app.matched = body.matched;
  const rows = $('sidecar-rows');
  rows.replaceChildren(...body.sidecars.map(sidecarRow));
  $('sidecars-empty').hidden = body.sidecars.length > 0;
  $('sidecars-empty').textContent = body.total === 0 ? 'No sidecar is connected.' : 'No sidecar matches.';
  const from = body.sidecars.length ? body.offset + 1 : 0;
  const to = body.offset + body.sidecars.length;
  $('page-info').textContent = `${from}–${to} of ${body.matched}` + (body.matched !== body.total ? ` (${body.total} connected)` : '');
  $('page-prev').disabled = body.offset === 0;
  $('page-next').disabled = to >= body.matched;
}

function syncText(s) {
  const types = s.types || [];
  if (!types.length) return 'CONNECTING';
  const by = (state) => types.filter((t) => t.state === state).map((t) => typeName(t.type_url));
  const parts = ['NACKED', 'STALE'].map((st) => [st, by(st)]).filter(([, names]) => names.length)
    .map(([st, names]) => `${st} ${names.join(',')}`);
  return parts.length ? parts.join('; ') : `SYNCED (${types.length}/${types.length})`;
}

function sidecarRow(s) {
  const nack = (s.types || []).find((t) => t.state === 'NACKED' && t.nack);
  const link = h('a', { href: `#/sidecar/${encodeURIComponent(s.id)}`, text: s.id });
  return h('tr', { 'data-id': s.id, 'data-state': s.state },
    h('td', { class: 'id', 'data-label': 'Name' }, link),
    h('td', { class: 'identity', 'data-label': 'Identity', text: s.identity }),
    h('td', { 'data-label': 'Service', text: s.service ? `${s.service}.${s.namespace}` : s.namespace }),
    h('td', { class: 'sync', 'data-label': 'Sync' },
      h('span', { class: `badge ${String(s.state).toLowerCase()}`, text: syncText(s) }),
      nack ? h('div', { class: 'nack', text: nack.nack }) : null),
    timeCell(s.cert_expires_at, 'td', 'Cert expires'),
    timeCell(s.last_seen, 'td', 'Last seen'),
  );
}

// --- charts ----------------------------------------------------------------------------------

/** Lines on an SVG of 300×90 user units, scaled to the largest value; returns that value. */
function drawLines(el, series) {
  el.replaceChildren();
  const n = HISTORY;
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  const top = max > 0 ? max * 1.15 : 1;
  for (const y of [30, 60]) el.append(svg('line', { x1: 0, x2: 300, y1: y, y2: y, class: 'grid' }));
  for (const s of series) {
    const offset = n - s.values.length;
    let d = '';
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      const x = ((offset + i) / (n - 1)) * 300;
      const y = 88 - (v / top) * 84;
      d += `${pen ? 'L' : 'M'}${x.toFixed(1)} ${y.toFixed(1)} `;
      pen = true;
    });
    if (d) el.append(svg('path', { d, class: `line ${s.cls}`, 'vector-effect': 'non-scaling-stroke' }));
  }
  return max;
}

function drawCharts() {
  const pts = app.series;
  const rmax = drawLines($('chart-rates'), [
    { cls: 's1', values: pts.map((p) => p.pushes_per_second) },
    { cls: 's2', values: pts.map((p) => p.nacks_per_second) },
    { cls: 's3', values: pts.map((p) => p.certificates_per_second) },
  ]);
  $('chart-rates-max').textContent = `max ${fmtRate(rmax)}/s`;
  const lmax = drawLines($('chart-latency'), [
    { cls: 's1', values: pts.map((p) => p.p50_seconds) },
    { cls: 's2', values: pts.map((p) => p.p99_seconds) },
  ]);
  $('chart-latency-max').textContent = lmax > 0 ? `max ${ms(lmax)}` : 'no push in the window';
}

async function loadStats() {
  try {
    const body = await api('/api/v1/stats');
    app.series = (body.series || []).slice(-HISTORY);
    renderNow(body);
    drawCharts();
  } catch (_) {
    // the feed's next stats event fills in
  }
}

// --- one sidecar -----------------------------------------------------------------------------

async function loadSidecar(id) {
  app.detailId = id;
  $('sc-id').textContent = id;
  $('sc-error').hidden = true;
  try {
    const [s, dump] = await Promise.all([
      api(`/api/v1/sidecars/${encodeURIComponent(id)}`),
      api(`/api/v1/sidecars/${encodeURIComponent(id)}/config`),
    ]);
    if (app.detailId !== id) return;
    renderSidecar(s);
    renderDump(dump);
  } catch (e) {
    if (app.detailId !== id) return;
    if (e.status === 404) sidecarGone(id);
    else if (e.status !== 401) showError('sc-error', e.message);
  }
}

function sidecarGone(id) {
  showError('sc-error', `${id} is not connected (any more).`);
}

function showError(id, text) {
  const el = $(id);
  el.textContent = text;
  el.hidden = false;
}

function fields(el, pairs) {
  el.replaceChildren();
  for (const [k, v] of pairs) {
    el.append(h('dt', { text: k }), v instanceof Node ? h('dd', {}, v) : h('dd', { text: v === null || v === undefined || v === '' ? '–' : String(v) }));
  }
}

function renderSidecar(s) {
  $('sc-error').hidden = true;
  const labels = Object.entries(s.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ');
  fields($('sc-fields'), [
    ['Sync', h('span', { class: `badge ${String(s.state).toLowerCase()}`, text: syncText(s) })],
    ['Identity', s.identity],
    ['Service', s.service],
    ['Namespace', s.namespace],
    ['Workload', s.workload],
    ['Inbound', s.inbound_address],
    ['Admin', s.admin_address],
    ['Labels', labels],
    ['Proxy version', s.proxy_version],
    ['Remote', s.remote],
    ['Control plane', s.control_plane],
    ['Certificate', s.cert_serial ? `serial ${s.cert_serial}` : '—'],
    ['Cert expires', timeCell(s.cert_expires_at, 'span')],
    ['Connected', timeCell(s.connected_at, 'span')],
    ['Last seen', timeCell(s.last_seen, 'span')],
  ]);
  const body = $('sc-types').tBodies[0];
  body.replaceChildren(...(s.types || []).map((t) => h('tr', { 'data-type': typeName(t.type_url), 'data-state': t.state },
    h('td', { 'data-label': 'Type', text: typeName(t.type_url) }),
    h('td', { 'data-label': 'State' }, h('span', { class: `badge ${t.state.toLowerCase()}`, text: t.state })),
    h('td', { class: 'mono', 'data-label': 'Sent', text: t.sent_version }),
    h('td', { class: 'mono', 'data-label': 'ACKed', text: t.acked_version }),
    h('td', { class: 'nack', 'data-label': 'NACK', text: t.nack || '' }))));
}

function renderDump(dump) {
  const box = $('sc-config');
  box.replaceChildren();
  for (const [url, list] of Object.entries(dump.resources || {})) {
    const items = list.map((r) => h('div', { class: 'resource' },
      h('div', { class: 'rname' }, h('strong', { text: r.name }), ' ', h('span', { class: 'mono hint', text: r.version })),
      h('pre', { text: JSON.stringify(r.body, null, 2) })));
    box.append(h('details', { 'data-type': typeName(url) },
      h('summary', {}, `${typeName(url)} `, h('span', { class: 'count', text: String(list.length) })),
      items.length ? items : h('p', { class: 'hint', text: 'none' })));
  }
}

// --- CA and TLS ------------------------------------------------------------------------------

async function loadCa() {
  try {
    renderCa(await api('/api/v1/ca'));
  } catch (e) {
    if (e.status !== 401) $('ca-phase').textContent = `unknown (${e.message})`;
  }
}

function renderCa(ca) {
  app.ca = ca;
  const rotation = ca.rotation && typeof ca.rotation === 'object' ? ca.rotation : {};
  const phase = ca.rotation_phase || rotation.phase || 'unknown';
  $('ca-phase').textContent = phase;
  $('ca-phase').dataset.phase = phase;
  $('phase-card').textContent = phase;
  const signing = ca.signing || {};
  fields($('ca-fields'), [
    ['Trust domain', ca.trust_domain],
    ['Signing certificate', signing.subject],
    ['Signing expires', timeCell(signing.not_after, 'span')],
    ['Leaf TTL', ca.leaf_ttl_seconds ? `${Math.round(ca.leaf_ttl_seconds / 60)} min (max ${Math.round(ca.max_leaf_ttl_seconds / 60)} min)` : ''],
    ...(ca.store_error ? [['Store', ca.store_error]] : []),
  ]);
  // The rotation: progress of the current phase, what it waits for, who is late.
  const progress = rotation.progress || null;
  const bar = $('ca-progress');
  bar.hidden = !progress;
  if (progress) {
    bar.max = Math.max(progress.total, 1);
    bar.value = progress.total ? progress.done : 1;
  }
  $('ca-progress-text').textContent = progress
    ? `${progress.done}/${progress.total} sidecars done with ${phase}${rotation.paused ? ' (paused)' : ''}`
    : '';
  const short = (f) => (f ? `${String(f).slice(0, 16)}…` : '');
  fields($('ca-rotation'), phase === 'idle' ? [] : [
    ['Rotation', `#${rotation.generation} (${rotation.mode})`],
    ['Waiting for', rotation.waiting_for || ''],
    ['Stragglers', (rotation.stragglers || []).join(', ')],
    ['Old root', short(rotation.old_root)],
    ['New root', short(rotation.new_root)],
    ['Started by', rotation.started_by || ''],
    ['Phase since', timeCell(rotation.phase_started_at, 'span')],
  ]);
  // While a rotation moves, follow it.
  clearTimeout(app.caTimer);
  if (progress && location.hash === '#/ca') app.caTimer = setTimeout(loadCa, 1000);
  const body = $('ca-roots').tBodies[0];
  body.replaceChildren(...(ca.roots || []).map((r) => h('tr', { 'data-fingerprint': r.fingerprint },
    h('td', { 'data-label': 'Subject', text: r.subject }),
    h('td', { class: 'mono', 'data-label': 'Fingerprint', text: r.fingerprint }),
    timeCell(r.not_after, 'td', 'Expires'),
    h('td', { 'data-label': 'Signing', text: r.active ? 'yes' : '' }))));
}

// As typed in documents and by `meshctl tls set` (`1.3`), not as rustls names it (`TLSv1_3`).
function tlsVersion(v) {
  return ({ TLSv1_3: '1.3', TLSv1_2: '1.2' })[v] || v;
}

async function loadInventory() {
  try {
    const inv = await api('/api/v1/tls');
    $('tls-reporting').textContent = `${inv.reporting} of ${inv.sidecars} sidecars report what they negotiate.`;
    $('tls-inventory').tBodies[0].replaceChildren(...(inv.negotiated || []).map((n) => h('tr', {},
      h('td', { 'data-label': 'Direction', text: n.direction }),
      h('td', { 'data-label': 'Version', text: tlsVersion(n.version) }),
      h('td', { class: 'mono', 'data-label': 'Cipher suite', text: n.cipher_suite }),
      h('td', { 'data-label': 'Group', text: n.group }),
      h('td', { 'data-label': 'Open', text: String(n.open_connections) }),
      h('td', { 'data-label': 'Handshakes', text: String(n.handshakes) }))));
  } catch (e) {
    if (e.status !== 401) $('tls-reporting').textContent = `unknown (${e.message})`;
  }
}

async function loadTls() {
  loadInventory();
  const box = $('tls-policies');
  try {
    const body = await api('/api/v1/documents?kind=TlsPolicy');
    box.replaceChildren();
    const docs = body.documents || [];
    if (!docs.length) box.append(h('p', { class: 'hint', text: 'No TlsPolicy: sidecars use TLS 1.2–1.3 with the provider defaults.' }));
    for (const d of docs) {
      const spec = (d.document && d.document.spec) || {};
      const dl = h('dl', { class: 'fields' });
      fields(dl, [
        ['Versions', `${spec.minVersion || '1.2'} – ${spec.maxVersion || '1.3'}`],
        ['Cipher suites', (spec.cipherSuites || []).join(', ') || 'provider defaults'],
        ['Key exchange', (spec.keyExchangeGroups || []).join(', ') || 'provider defaults'],
        ['Inbound mode', spec.inboundMode || 'STRICT'],
        ['Selector', spec.selector ? JSON.stringify(spec.selector) : 'all workloads'],
        ['Revision', d.revision],
      ]);
      box.append(h('h3', { text: `${d.namespace}/${d.name}` }), dl);
    }
  } catch (e) {
    if (e.status !== 401) box.replaceChildren(h('p', { class: 'error', text: e.message }));
  }
}

// --- apply (admin only) ----------------------------------------------------------------------

async function applyDocs(dryRun) {
  const out = $('apply-result');
  out.hidden = false;
  out.className = 'result';
  if (app.role !== 'admin') {
    out.textContent = 'Read-only: sign in with the admin token to change anything.';
    out.classList.add('error');
    return;
  }
  out.textContent = dryRun ? 'Checking…' : 'Applying…';
  try {
    const body = await api(`/api/v1/documents${dryRun ? '?dryRun=true' : ''}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/yaml' },
      body: $('apply-text').value,
    });
    const lines = (body.results || []).map((r) => `${r.kind} ${r.namespace}/${r.name}: ${r.outcome}` + (r.revision ? ` (revision ${r.revision})` : ''));
    out.textContent = (dryRun ? 'Dry run, nothing stored:\n' : '') + (lines.join('\n') || 'nothing to do');
    out.classList.add('ok');
  } catch (e) {
    out.textContent = e.message;
    out.classList.add('error');
  }
}

// --- wiring ----------------------------------------------------------------------------------

function debounce(fn, wait) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), wait);
  };
}

function init() {
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = $('login-token').value.trim();
    $('login-error').textContent = '';
    if (!token) {
      $('login-error').textContent = 'Paste a token.';
      return;
    }
    $('login-submit').disabled = true;
    try {
      await signIn(token);
    } catch (e) {
      app.token = null;
      $('login-error').textContent = e.status === 401 ? 'That token was not accepted.' : `Could not sign in: ${e.message}`;
    } finally {
      $('login-submit').disabled = false;
    }
  });
  $('logout').addEventListener('click', () => signOut(''));
  $('filter-q').addEventListener('input', debounce(() => {
    app.page.q = $('filter-q').value.trim();
    app.page.offset = 0;
    loadPage();
  }, 250));
  $('filter-state').addEventListener('change', () => {
    app.page.state = $('filter-state').value;
    app.page.offset = 0;
    loadPage();
  });
  $('page-prev').addEventListener('click', () => {
    app.page.offset = Math.max(0, app.page.offset - PAGE_SIZE);
    loadPage();
  });
  $('page-next').addEventListener('click', () => {
    app.page.offset += PAGE_SIZE;
    loadPage();
  });
  $('apply-dry').addEventListener('click', () => applyDocs(true));
  $('apply-submit').addEventListener('click', () => applyDocs(false));
  window.addEventListener('hashchange', route);
  setInterval(() => {
    for (const el of document.querySelectorAll('.ago[data-t]')) el.textContent = relative(Number(el.dataset.t));
  }, 1000);

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (!saved) return route();
  signIn(saved).catch((e) => {
    if (e.status === 401) return signOut('The saved token is no longer accepted; sign in again.');
    // meshd did not answer: keep the token for a reload.
    app.token = null;
    show('login');
    $('login-error').textContent = `meshd did not answer (${e.message}); reload to try again.`;
  });
}

init();
