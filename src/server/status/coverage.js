// The status page's coverage panel: yesterday's share of expected slots
// read per meter, worst first, from GET /api/coverage (computed in the
// background on the server, so this only reads a cache). Kept apart from
// status.js so the panel can change without touching the meter table.
// Built with DOM calls only, like the rest of the page.
(() => {
  'use strict';

  const TOKEN_KEY = 'rainforest.token';
  const REFRESH_MS = 5 * 60 * 1000;
  const RETRY_MS = 30 * 1000;
  const ROWS = 20;
  const $ = (id) => document.getElementById(id);

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
  }
  function cell(row, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }
  function hours(s) {
    if (s < 90) return s + ' s';
    if (s < 5400) return Math.round(s / 60) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }

  async function load() {
    const note = $('coverage-note');
    const body = $('coverage-rows');
    const t = token();
    if (!t) { setTimeout(load, RETRY_MS); return; }
    let r;
    try {
      r = await fetch('/api/coverage', { headers: { Authorization: 'Bearer ' + t }, cache: 'no-store' });
    } catch (_) {
      note.textContent = 'Coverage: the server did not answer.';
      setTimeout(load, RETRY_MS);
      return;
    }
    if (!r.ok) {
      let detail = 'HTTP ' + r.status;
      try { detail = (await r.json()).detail || detail; } catch (_) { /* not problem+json */ }
      note.textContent = detail;
      body.replaceChildren();
      setTimeout(load, r.status === 503 ? RETRY_MS : REFRESH_MS);
      return;
    }
    const a = await r.json();
    const days = a.report.days;
    note.textContent = days.length === 0
      ? 'No meter has readings in the archive for ' + a.day + '.'
      : a.day + ', ' + days.length + ' meters, worst first (computed ' + a.computed_at + ')' +
        (a.report.problems.length ? '; ' + a.report.problems.length + ' objects unreadable' : '');
    const rows = days.slice(0, ROWS).map((d) => {
      const tr = document.createElement('tr');
      cell(tr, d.cloud_id, 'mono');
      cell(tr, (d.share * 100).toFixed(1) + ' %', 'num');
      cell(tr, d.present + ' / ' + d.expected, 'num');
      cell(tr, d.longest_gap_s ? hours(d.longest_gap_s) : '–', 'num');
      cell(tr, String(d.gaps.length), 'num');
      if (d.share < 0.9) tr.className = 'alert';
      return tr;
    });
    body.replaceChildren(...rows);
    setTimeout(load, REFRESH_MS);
  }

  document.addEventListener('DOMContentLoaded', load);
  if (document.readyState !== 'loading') load();
})();
