// The status page's script: asks /api/status for one page of meters with
// a bearer token, draws totals, the table and sparklines, and refreshes.
// Everything is built with DOM calls (never innerHTML), so nothing from
// the server can become markup.
(() => {
  'use strict';

  const TOKEN_KEY = 'rainforest.token';
  const REFRESH_MS = 10000;
  const PER_PAGE = 100;
  const REQUEST_TIMEOUT_MS = 8000;
  // A reading older than this is shown as late (the pinger polls every few seconds).
  const LATE_S = 120;
  // Sparkline geometry: 60 minutes plus the latest reading.
  const SPARK_W = 160, SPARK_H = 26, SPARK_SLOTS = 61;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);
  const view = { page: 1, sort: 'state', order: null, state: '', q: '' };
  let memoryToken = null; // when sessionStorage is unavailable
  let last = null;        // the latest answer
  let clockOffset = 0;    // server clock minus ours, in seconds
  let fetchedAt = 0;
  let inflight = false;
  let searchTimer = null;

  // --- token -------------------------------------------------------------

  // sessionStorage, not localStorage: the token ends with the tab instead
  // of staying on the disk of every browser that ever signed in.
  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || memoryToken; } catch (_) { return memoryToken; }
  }
  function setToken(t) {
    memoryToken = t;
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage disabled: the in-memory copy lasts this visit */ }
  }
  // Earlier versions kept the token in localStorage for good; drop it.
  try { localStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing to drop */ }
  // `#token=...` (e.g. the link `rainforest run --demo` prints): keep it,
  // then take it out of the address bar and history.
  function tokenFromFragment() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (!m) return;
    try { setToken(decodeURIComponent(m[1])); } catch (_) { setToken(m[1]); }
    history.replaceState(null, '', location.pathname + location.search);
  }

  // --- formatting ----------------------------------------------------------

  const nf0 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const nf1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const nf3 = new Intl.NumberFormat(undefined, { minimumFractionDigits: 3, maximumFractionDigits: 3 });

  function count(n) { return n == null ? '–' : nf0.format(n); }
  function duration(s) {
    if (s == null || !isFinite(s)) return '–';
    s = Math.max(0, s);
    if (s < 90) return Math.round(s) + ' s';
    if (s < 5400) return Math.round(s / 60) + ' min';
    if (s < 172800) return nf1.format(s / 3600) + ' h';
    return nf1.format(s / 86400) + ' d';
  }
  function serverNow() { return Date.now() / 1000 + clockOffset; }
  function ago(unixSecs) { return unixSecs == null ? null : serverNow() - unixSecs; }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  // `alert` marks the value as trouble, `subAlert` only the line below it.
  function setCard(id, value, sub, alert, subAlert) {
    const card = $(id);
    card.querySelector('.value').textContent = value;
    card.querySelector('.sub').textContent = sub || '';
    card.classList.toggle('alert', !!alert);
    card.classList.toggle('sub-alert', !!subAlert);
  }

  // --- sparkline -----------------------------------------------------------

  // Points are kW per minute, oldest first, null for a minute without a
  // reading, the last one the latest reading; right-aligned on a fixed
  // hour so lines of different meters compare at a glance.
  function sparkline(points) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('viewBox', `0 0 ${SPARK_W} ${SPARK_H}`);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    const vals = points.filter((v) => v != null);
    if (!vals.length) return null;
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (hi - lo < 0.05) { const mid = (hi + lo) / 2; lo = mid - 0.05; hi = mid + 0.05; }
    const pad = 2;
    const step = SPARK_W / (SPARK_SLOTS - 1);
    const start = SPARK_SLOTS - Math.min(points.length, SPARK_SLOTS);
    const shown = points.slice(-SPARK_SLOTS);
    const x = (i) => (start + i) * step;
    const y = (v) => pad + (SPARK_H - 2 * pad) * (1 - (v - lo) / (hi - lo));
    // The hour's track, so a meter with only a few minutes of data reads
    // as "started recently" rather than as a stray mark.
    const track = document.createElementNS(SVG_NS, 'line');
    track.setAttribute('class', 'track');
    track.setAttribute('x1', '0'); track.setAttribute('x2', String(SPARK_W));
    track.setAttribute('y1', String(SPARK_H - 0.5)); track.setAttribute('y2', String(SPARK_H - 0.5));
    svg.appendChild(track);
    if (lo < 0 && hi > 0) {
      const zero = document.createElementNS(SVG_NS, 'line');
      zero.setAttribute('class', 'zero');
      zero.setAttribute('x1', '0'); zero.setAttribute('x2', String(SPARK_W));
      zero.setAttribute('y1', y(0).toFixed(1)); zero.setAttribute('y2', y(0).toFixed(1));
      svg.appendChild(zero);
    }
    // One polyline per run of consecutive minutes: a gap stays a gap.
    let run = [];
    const flush = () => {
      if (!run.length) return;
      // A lone point still gets a (one-slot) line, so it shows as a mark.
      if (run.length === 1) run.push([run[0][0] - step, run[0][1]]);
      const line = document.createElementNS(SVG_NS, 'polyline');
      line.setAttribute('points', run.map(([px, py]) => px.toFixed(1) + ',' + py.toFixed(1)).join(' '));
      svg.appendChild(line);
      run = [];
    };
    shown.forEach((v, i) => {
      if (v == null) flush(); else run.push([x(i), y(v)]);
    });
    flush();
    const lastIdx = shown.length - 1;
    if (shown[lastIdx] != null) {
      const dot = document.createElementNS(SVG_NS, 'circle');
      dot.setAttribute('cx', x(lastIdx).toFixed(1));
      dot.setAttribute('cy', y(shown[lastIdx]).toFixed(1));
      dot.setAttribute('r', '2');
      svg.appendChild(dot);
    }
    const title = document.createElementNS(SVG_NS, 'title');
    title.textContent = `last hour: ${nf3.format(Math.min(...vals))} – ${nf3.format(Math.max(...vals))} kW`;
    svg.appendChild(title);
    return svg;
  }

  // --- rendering -----------------------------------------------------------

  const STATE_LABEL = { ok: 'ok', backoff: 'backoff', auth_failed: 'auth failed' };

  function renderTotals(t) {
    setCard('c-meters', count(t.meters),
      (t.inactive ? count(t.inactive) + ' inactive' : '') +
      (t.stale_10m ? (t.inactive ? ' · ' : '') + count(t.stale_10m) + ' silent > 10 min' : ''),
      false, t.stale_10m > 0);
    setCard('c-ok', count(t.ok), t.without_reading ? count(t.without_reading) + ' without a reading yet' : '');
    setCard('c-backoff', count(t.backoff), '', false);
    setCard('c-auth', count(t.auth_failed), '', t.auth_failed > 0);
    setCard('c-polls', t.polls_per_s == null ? '–' : nf1.format(t.polls_per_s),
      t.polls_per_s == null ? 'no pinger reporting'
        : (t.lines_per_s == null ? '' : nf1.format(t.lines_per_s) + ' lines/s'));
    setCard('c-gaps', t.gaps_open == null ? '–' : count(t.gaps_open),
      t.backfilled_readings == null ? 'no pinger reporting'
        : count(t.backfilled_readings) + ' readings backfilled');
    const backlog = t.upload_backlog;
    setCard('c-backlog', backlog == null ? '–' : count(backlog) + (backlog === 1 ? ' file' : ' files'),
      backlog == null ? 'no rotator reporting'
        : (backlog > 0 && t.oldest_pending_age_s != null ? 'oldest ' + duration(t.oldest_pending_age_s) : 'nothing waiting'),
      // Hour files wait for their hour to end; two hours means uploads stall.
      backlog > 0 && t.oldest_pending_age_s != null && t.oldest_pending_age_s > 7200);
    let uploadValue = '–', uploadSub = t.upload_backlog == null ? 'no rotator reporting' : 'none yet';
    if (t.last_upload_at) {
      const at = Date.parse(t.last_upload_at);
      if (!isNaN(at)) {
        uploadValue = duration(serverNow() - at / 1000) + ' ago';
        uploadSub = new Date(at).toLocaleString();
      }
    }
    setCard('c-upload', uploadValue, uploadSub);
    for (const card of document.querySelectorAll('.card[data-filter]')) {
      card.classList.toggle('active', card.dataset.filter === view.state && view.state !== '');
    }
  }

  function ageCell(td, at) {
    const a = ago(at);
    td.textContent = a == null ? 'never' : duration(a) + ' ago';
    td.classList.toggle('never', a == null);
    td.classList.toggle('old', a != null && a > LATE_S);
  }

  function renderRows(meters) {
    const body = $('rows');
    const frag = document.createDocumentFragment();
    for (const m of meters) {
      const tr = el('tr', 'meter state-' + m.state);
      tr.dataset.cloudId = m.cloud_id;
      tr.appendChild(el('td', 'id', m.cloud_id));
      const st = el('td');
      st.appendChild(el('span', 'pill ' + m.state, STATE_LABEL[m.state] || m.state));
      // The error kind, when it says more than the state does.
      if (m.state === 'backoff' && m.last_error_kind) st.appendChild(el('span', 'why', m.last_error_kind));
      tr.appendChild(st);
      tr.appendChild(el('td', 'num', m.last_demand_kw == null ? '–' : nf3.format(m.last_demand_kw)));
      const sp = el('td', 'sparkcell');
      const svg = sparkline(m.spark || []);
      if (svg) sp.appendChild(svg);
      else sp.appendChild(el('span', 'nodata', m.spark && m.spark.length ? 'no reading this hour' : 'no data yet'));
      tr.appendChild(sp);
      const age = el('td', 'num age');
      age.dataset.at = m.last_reading_at == null ? '' : String(m.last_reading_at);
      ageCell(age, m.last_reading_at);
      tr.appendChild(age);
      tr.appendChild(el('td', 'num streak' + (m.consecutive_failures > 0 ? ' bad' : ''), count(m.consecutive_failures)));
      tr.appendChild(el('td', 'num', count(m.total_events_logged)));
      tr.appendChild(el('td', 'owner', m.owner || '–'));
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
    $('empty').hidden = meters.length > 0;
  }

  function renderPaging(d) {
    const first = d.matching === 0 ? 0 : (d.page - 1) * d.per_page + 1;
    const lastRow = Math.min(d.page * d.per_page, d.matching);
    $('range').textContent = `${count(first)}–${count(lastRow)} of ${count(d.matching)}`;
    $('pageinfo').textContent = `page ${count(d.page)} / ${count(d.pages)}`;
    $('prev').disabled = d.page <= 1;
    $('next').disabled = d.page >= d.pages;
    for (const th of document.querySelectorAll('th[data-sort]')) {
      const on = th.dataset.sort === d.sort;
      th.classList.toggle('sorted', on);
      th.classList.toggle('desc', on && d.order === 'desc');
      th.setAttribute('aria-sort', on ? (d.order === 'desc' ? 'descending' : 'ascending') : 'none');
    }
    const chip = $('filter');
    if (view.state) {
      chip.textContent = 'state: ' + (STATE_LABEL[view.state] || view.state) + ' ✕';
      chip.hidden = false;
    } else {
      chip.hidden = true;
    }
  }

  function render(d) {
    // A tab left open shows trouble in its title.
    const failing = d.totals.backoff + d.totals.auth_failed;
    document.title = (failing ? `(${failing} failing) ` : '') + 'rainforest status';
    renderTotals(d.totals);
    renderRows(d.meters);
    renderPaging(d);
  }

  function tick() {
    if (fetchedAt) {
      const s = (Date.now() - fetchedAt) / 1000;
      $('updated').textContent = 'updated ' + (s < 2 ? 'just now' : duration(s) + ' ago');
    }
    for (const td of document.querySelectorAll('#rows td.age, #member-rows td.age')) {
      ageCell(td, td.dataset.at === '' ? null : Number(td.dataset.at));
    }
  }

  const MODE_LABEL = { membership: 'sharing by membership', shard: 'static shards', single: 'one pinger' };

  // The pingers sharing the meters: /api/fleet without its owner pages
  // (each meter's owner is a column of the meters table).
  function renderFleet(f) {
    $('fleet-mode').textContent = '(' + (MODE_LABEL[f.mode] || f.mode) + ', ' + count(f.members.length) + ' live)';
    const frag = document.createDocumentFragment();
    for (const m of f.members) {
      const tr = el('tr', 'member');
      tr.dataset.member = m.id;
      tr.appendChild(el('td', 'id', m.shard ? `${m.id} (${m.shard})` : m.id));
      const at = m.last_heartbeat ? Date.parse(m.last_heartbeat) / 1000 : null;
      const hb = el('td', 'num age');
      hb.dataset.at = at == null ? '' : String(at);
      ageCell(hb, at);
      tr.appendChild(hb);
      tr.appendChild(el('td', 'num', count(m.meters)));
      frag.appendChild(tr);
    }
    $('member-rows').replaceChildren(frag);
    $('fleet').hidden = f.mode === 'single';
  }

  async function loadFleet(headers) {
    try {
      const r = await fetch('/api/fleet?per_page=1', { headers, cache: 'no-store' });
      if (r.ok) renderFleet(await r.json());
    } catch (_) {
      // The meters table is what matters; the fleet shows at the next load.
    }
  }

  // --- screens -------------------------------------------------------------

  function showLogin(why) {
    $('dashboard').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    $('login-why').textContent = why || 'This page needs an API token with the read scope.';
    $('token').focus();
  }
  function showDashboard() {
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('logout').hidden = !getToken();
  }
  function banner(text) {
    const b = $('banner');
    b.textContent = text || '';
    b.hidden = !text;
  }

  // --- data ----------------------------------------------------------------

  async function problemDetail(r) {
    try { const p = await r.json(); return p.detail || r.statusText; } catch (_) { return r.statusText; }
  }

  async function load() {
    if (inflight) return;
    inflight = true;
    const params = new URLSearchParams({ page: String(view.page), per_page: String(PER_PAGE), sort: view.sort });
    if (view.order) params.set('order', view.order);
    if (view.state) params.set('state', view.state);
    if (view.q) params.set('q', view.q);
    const headers = { Accept: 'application/json' };
    const token = getToken();
    if (token) headers.Authorization = 'Bearer ' + token;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    try {
      const r = await fetch('/api/status?' + params, { headers, cache: 'no-store', signal: abort.signal });
      if (r.status === 401 || r.status === 403) {
        const why = await problemDetail(r);
        if (token && r.status === 401) setToken(null);
        banner('');
        showLogin(token ? 'The server refused the token: ' + why : 'This page needs an API token with the read scope.');
        return;
      }
      if (!r.ok) {
        banner('The server answered ' + r.status + ': ' + await problemDetail(r) + ' Showing the last data; retrying.');
        return;
      }
      const d = await r.json();
      clockOffset = d.generated_at - Date.now() / 1000;
      fetchedAt = Date.now();
      // Past the last page (meters went away): go to the last one.
      if (d.meters.length === 0 && d.page > d.pages) {
        view.page = d.pages;
        setTimeout(load, 0);
        return;
      }
      last = d;
      banner('');
      showDashboard();
      render(d);
      await loadFleet(headers);
      tick();
    } catch (e) {
      banner('Cannot reach the server (' + (e.name === 'AbortError' ? 'timed out' : e.message) + '). Showing the last data; retrying.');
    } finally {
      clearTimeout(timer);
      inflight = false;
    }
  }

  // --- events --------------------------------------------------------------

  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (!t) return;
    setToken(t);
    $('token').value = '';
    load();
  });
  $('logout').addEventListener('click', () => {
    setToken(null);
    last = null;
    showLogin('Signed out. The token was removed from this browser.');
  });
  $('refresh').addEventListener('click', () => load());
  $('prev').addEventListener('click', () => { if (view.page > 1) { view.page--; load(); } });
  $('next').addEventListener('click', () => { if (!last || view.page < last.pages) { view.page++; load(); } });
  for (const th of document.querySelectorAll('th[data-sort]')) {
    th.addEventListener('click', () => {
      const key = th.dataset.sort;
      if (last && last.sort === key) {
        view.order = last.order === 'asc' ? 'desc' : 'asc';
      } else {
        view.order = null; // the server's natural order for the column
      }
      view.sort = key;
      view.page = 1;
      load();
    });
  }
  for (const card of document.querySelectorAll('.card[data-filter]')) {
    card.addEventListener('click', () => {
      view.state = card.dataset.filter === view.state ? '' : card.dataset.filter;
      view.page = 1;
      load();
    });
  }
  $('filter').addEventListener('click', () => { view.state = ''; view.page = 1; load(); });
  $('search').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      const q = $('search').value.trim().toLowerCase();
      if (q && !/^[0-9a-f]{1,6}$/.test(q)) { banner('A cloud id has only hex digits (0-9, a-f).'); return; }
      banner('');
      view.q = q;
      view.page = 1;
      load();
    }, 250);
  });
  // A hidden tab does not poll; it catches up as soon as it is shown.
  document.addEventListener('visibilitychange', () => { if (!document.hidden) load(); });
  window.addEventListener('hashchange', () => { tokenFromFragment(); load(); });

  tokenFromFragment();
  load();
  setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
  setInterval(tick, 1000);
})();
