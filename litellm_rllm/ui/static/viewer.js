/* litellm-rllm trace viewer.
 *
 * Reads only the JSON routes a trainer uses: GET /rllm/sessions, /rllm/sessions/{id}/traces,
 * and where the proxy has them /rllm/sessions/{id}/trajectories?view=merged and /rllm/changes.
 * Rules kept throughout:
 *  - everything a model, a user or a tool wrote goes into the page as text (textContent or text
 *    nodes), never as markup: no innerHTML anywhere in this file;
 *  - the key lives in this tab's sessionStorage and travels only in the Authorization header;
 *  - a 32,000-token completion is one DocumentFragment of spans, coloured by class, with one
 *    delegated listener for hover / focus (no per-token listeners or attributes).
 */
'use strict';
(function () {
  const KEY_NAME = 'litellm-rllm.viewer.key';
  const POLL_MS = 2000;
  // Tokens go in blocks of CHUNK; blocks out of view skip layout and paint (content-visibility),
  // so a 32,000-token completion costs about what its visible part costs.
  const CHUNK = 1024;
  const main = document.getElementById('main');
  const tip = document.getElementById('tip');
  const announce = document.getElementById('announce');
  const crumbs = document.getElementById('crumbs');
  const liveEl = document.getElementById('live');
  const forgetBtn = document.getElementById('forget');

  // ------------------------------------------------------------------ small DOM helpers
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'text') node.textContent = String(v);
        else if (k === 'className') node.className = v;
        else if (k === 'on') for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
        else if (k === 'dataset') Object.assign(node.dataset, v);
        else node.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children) append(node, c);
    return node;
  }
  function append(node, c) {
    if (c === undefined || c === null || c === false) return;
    if (Array.isArray(c)) { for (const x of c) append(node, x); return; }
    node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function badge(text, cls, title) { return el('span', { className: 'badge ' + (cls || 'b-plain'), text, title }); }
  function fmtNum(n) { return n === null || n === undefined ? '' : Number(n).toLocaleString('en-US'); }
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return '';
    return ms >= 1000 ? (ms / 1000).toFixed(2) + ' s' : Math.round(ms) + ' ms';
  }
  function pad(n) { return String(n).padStart(2, '0'); }
  function fmtTime(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
      pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }
  function timeEl(iso) { return el('time', { datetime: iso, title: iso, text: fmtTime(iso) }); }
  function fmtValue(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }
  function quoteToken(t) { return t === null || t === undefined ? '(no text)' : JSON.stringify(t); }
  function prob(lp) { return Math.exp(lp); }
  function pct(lp) { const p = prob(lp) * 100; return (p >= 10 ? p.toFixed(1) : p.toPrecision(2)) + '%'; }
  function say(text) { announce.textContent = text; }
  function mark(name) { try { performance.mark(name); } catch (e) { /* old browsers */ } }
  // "<name>-painted" once the browser has laid out and painted what was just rendered
  function markRendered(name) {
    mark(name);
    requestAnimationFrame(() => setTimeout(() => mark(name + '-painted'), 0));
  }

  // ------------------------------------------------------------------ key + API
  function getKey() { return sessionStorage.getItem(KEY_NAME); }
  function setKey(k) { sessionStorage.setItem(KEY_NAME, k); }
  function dropKey() { sessionStorage.removeItem(KEY_NAME); }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, opts) {
    const key = (opts && opts.key) || getKey();
    if (!key) throw new ApiError(401, 'no key');
    const resp = await fetch(path, {
      headers: { Authorization: 'Bearer ' + key, Accept: 'application/json' },
      cache: 'no-store', credentials: 'omit', signal: opts && opts.signal,
    });
    if (resp.ok) return resp.json();
    let detail = '';
    try {
      const body = await resp.json();
      detail = (body && (typeof body.detail === 'string' ? body.detail : body.error && body.error.message)) || '';
      if (!detail && body) detail = JSON.stringify(body).slice(0, 300);
    } catch (e) { /* not JSON */ }
    throw new ApiError(resp.status, detail || resp.statusText);
  }

  function authMessage(err) {
    if (err.status === 401) return 'The proxy refused this key (HTTP 401' + (err.message && err.message !== 'no key' ? ': ' + err.message : '') + '). Enter the master key, an admin key or a team key.';
    if (err.status === 403) return 'This key is valid but may not read traces (HTTP 403' + (err.message ? ': ' + err.message : '') + '). Use the master key, an admin key or a key that belongs to a team.';
    return null;
  }

  function handleError(err, where) {
    const msg = authMessage(err);
    if (msg && err.status === 401) { dropKey(); showKeyForm(msg); return; }
    clear(main);
    main.appendChild(el('div', { className: 'alert', role: 'alert' },
      msg || ('Could not load ' + where + ': ' + (err.status ? 'HTTP ' + err.status + ' ' : '') + err.message)));
    main.appendChild(el('p', null, el('a', { href: '#/', text: 'Back to sessions' })));
  }

  // ------------------------------------------------------------------ key form
  function showKeyForm(message) {
    stopLive();
    forgetBtn.hidden = true;
    setCrumbs([]);
    clear(main);
    const input = el('input', { type: 'password', id: 'key', name: 'key', autocomplete: 'off', required: true,
      'aria-describedby': 'key-help', spellcheck: 'false' });
    const status = el('div', { id: 'key-status', role: 'alert' });
    if (message) status.appendChild(el('div', { className: 'alert', text: message }));
    const form = el('form', { className: 'panel keyform', id: 'key-form' },
      el('label', { for: 'key', text: 'Proxy key' }), input,
      el('p', { id: 'key-help', className: 'muted', text: 'The master key, an admin key or a team key (a team key sees its team\'s sessions only). It is kept in this tab\'s session storage and sent only as an Authorization header.' }),
      el('div', { className: 'row' }, el('button', { type: 'submit', className: 'primary', text: 'Open' })),
      status);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      clear(status);
      try {
        await api('/rllm/sessions?limit=1', { key });
      } catch (err) {
        status.appendChild(el('div', { className: 'alert', text: authMessage(err) || ('The proxy did not answer: ' + err.message) }));
        input.select();
        return;
      }
      setKey(key);
      input.value = '';
      route();
    });
    main.appendChild(form);
    input.focus();
  }

  forgetBtn.addEventListener('click', () => { dropKey(); cache.clear(); showKeyForm('Key forgotten.'); });

  // ------------------------------------------------------------------ routing
  // #/?filters            sessions list
  // #/s/<session>         a session
  // #/s/<session>/t/<id>  a call
  function parseHash() {
    const h = location.hash.replace(/^#/, '') || '/';
    const [path, query] = h.split('?');
    let parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    const params = new URLSearchParams(query || '');
    let team = null;  // #/team/<team>/s/...: a session in a team's namespace (docs/sessions.md)
    if (parts[0] === 'team' && parts.length >= 2) { team = parts[1]; parts = parts.slice(2); }
    if (parts[0] === 's' && parts.length >= 2) {
      if (parts[2] === 't' && parts.length >= 4) return { view: 'call', session: parts[1], trace: parts[3], team, params };
      return { view: 'session', session: parts[1], team, params };
    }
    return { view: 'list', params };
  }
  let curTeam = null;  // the shown session's team namespace (null: sessions of callers without a team)
  const teamQ = (sep) => (curTeam ? sep + 'team=' + encodeURIComponent(curTeam) : '');
  const sessionKey = (sid) => (curTeam || '') + '\u001f' + sid;
  const sessionHref = (sid, team = curTeam) => (team ? '#/team/' + encodeURIComponent(team) : '#') + '/s/' + encodeURIComponent(sid);
  const callHref = (sid, tid) => sessionHref(sid) + '/t/' + encodeURIComponent(tid);

  function setCrumbs(items) {
    clear(crumbs);
    items.forEach((it, i) => {
      if (i) crumbs.appendChild(el('span', { className: 'sep', text: '/', 'aria-hidden': 'true' }));
      crumbs.appendChild(it.href ? el('a', { href: it.href, text: it.text }) : el('span', { text: it.text, 'aria-current': 'page' }));
    });
  }

  let renderToken = 0;
  async function route() {
    const token = ++renderToken;
    mark('rllm:route');
    hideTip();
    if (!getKey()) { showKeyForm(); return; }
    forgetBtn.hidden = false;
    const r = parseHash();
    curTeam = r.team || null;
    if (r.view !== 'session') stopLive();
    try {
      if (r.view === 'list') await showList(r.params, token);
      else if (r.view === 'session') await showSession(r.session, token);
      else await showCall(r.session, r.trace, token);
    } catch (err) {
      if (token === renderToken) handleError(err, r.view === 'list' ? 'the sessions' : 'the session');
    }
  }
  window.addEventListener('hashchange', route);

  // ------------------------------------------------------------------ sessions list
  const FILTERS = ['q', 'model', 'status', 'since', 'until', 'meta'];

  function listQuery(params) {
    const q = new URLSearchParams();
    for (const f of ['q', 'model', 'status', 'cursor', 'limit']) if (params.get(f)) q.set(f, params.get(f));
    for (const f of ['since', 'until']) {
      const v = params.get(f);
      if (v) { const d = new Date(v); q.set(f, isNaN(d) ? v : d.toISOString()); }
    }
    for (const m of (params.get('meta') || '').split(',').map((s) => s.trim()).filter(Boolean)) q.append('meta', m);
    return q;
  }

  async function showList(params, token) {
    setCrumbs([{ text: 'Sessions' }]);
    const q = listQuery(params);
    let page = await api('/rllm/sessions?' + q.toString());
    // A filtered walk is time-boxed per request: an empty page with a cursor means "nothing in
    // this stretch, keep looking further back". Follow it for up to 20 s, saying so.
    const began = performance.now();
    while (page.sessions.length === 0 && page.next && performance.now() - began < 20000) {
      if (token !== renderToken) return;
      clear(main);
      main.appendChild(el('p', { className: 'muted', role: 'status', text: 'Searching older sessions… (' + Math.round((performance.now() - began) / 1000) + ' s)' }));
      q.set('cursor', page.next);
      page = await api('/rllm/sessions?' + q.toString());
    }
    if (token !== renderToken) return;
    clear(main);
    main.appendChild(el('h1', { text: 'Sessions' }));
    main.appendChild(filterForm(params));
    const shown = page.sessions.length;
    const summary = [];
    if (page.total !== null && page.total !== undefined) summary.push(fmtNum(page.total) + ' sessions in the store');
    summary.push(shown ? 'showing ' + shown + (params.get('cursor') ? ' (older page)' : ', most recently active first') : 'no session matches');
    main.appendChild(el('p', { className: 'muted', id: 'list-summary', text: summary.join(' · ') }));
    if (shown) main.appendChild(sessionsTable(page.sessions));
    main.appendChild(pager(params, page.next));
    markRendered('rllm:list-rendered');
  }

  function filterForm(params) {
    const field = (name, label, input) => el('label', { for: 'f-' + name }, label, input);
    const inputs = {
      q: el('input', { type: 'search', id: 'f-q', name: 'q', placeholder: 'session id or metadata', value: params.get('q') || '' }),
      model: el('input', { type: 'text', id: 'f-model', name: 'model', placeholder: 'model group', value: params.get('model') || '', size: 14 }),
      status: el('select', { id: 'f-status', name: 'status' },
        ['', 'ok', 'error', 'incomplete'].map((s) => el('option', { value: s, text: s || 'any', selected: (params.get('status') || '') === s }))),
      since: el('input', { type: 'datetime-local', id: 'f-since', name: 'since', value: params.get('since') || '' }),
      until: el('input', { type: 'datetime-local', id: 'f-until', name: 'until', value: params.get('until') || '' }),
      meta: el('input', { type: 'text', id: 'f-meta', name: 'meta', placeholder: 'key:value, key:value', value: params.get('meta') || '', size: 20 }),
    };
    const form = el('form', { className: 'filters', role: 'search', id: 'filters' },
      field('q', 'Search', inputs.q), field('model', 'Model', inputs.model), field('status', 'A call with status', inputs.status),
      field('since', 'Active since', inputs.since), field('until', 'Active before', inputs.until), field('meta', 'Metadata', inputs.meta),
      el('button', { type: 'submit', className: 'primary', text: 'Apply' }),
      el('button', { type: 'button', text: 'Reset', on: { click: () => { location.hash = '#/'; } } }),
      el('button', { type: 'button', text: 'Refresh', on: { click: () => route() } }));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      for (const f of FILTERS) { const v = inputs[f].value.trim(); if (v) p.set(f, v); }
      const next = '#/' + (p.toString() ? '?' + p.toString() : '');
      if (location.hash === next) route(); else location.hash = next;
    });
    return form;
  }

  function statusBadges(statuses) {
    return Object.entries(statuses || {}).sort().map(([s, n]) => badge(n + ' ' + s, 'b-' + (['ok', 'error', 'incomplete'].includes(s) ? s : 'plain')));
  }

  function rewardText(r) {
    if (r === null || r === undefined) return '';
    if (typeof r === 'number') return String(Math.round(r * 1e4) / 1e4);
    if (typeof r === 'object' && 'value' in r && Object.keys(r).length <= 3) return rewardText(r.value);
    return JSON.stringify(r);
  }

  function sessionsTable(sessions) {
    const tbody = el('tbody');
    for (const s of sessions) {
      const flags = [];
      if (s.errors) flags.push(badge(s.errors + ' error' + (s.errors > 1 ? 's' : ''), 'b-error', 'calls that failed'));
      if (s.completeness_failed) flags.push(badge(s.completeness_failed + ' token check ✗', 'b-warn', 'completeness check failed: ids, logprobs and usage disagree'));
      if (s.drift) flags.push(badge(s.drift + ' drift', 'rel-drift', 'prompt re-tokenized: does not extend the previous call\'s tokens'));
      const start = new Date(s.first_at), end = new Date(s.last_at);
      tbody.appendChild(el('tr', null,
        el('td', null, el('a', { className: 'sid', href: sessionHref(s.session_id, s.team || null), text: s.session_id, title: s.team ? 'team ' + s.team : '' })),
        el('td', { className: 'num', text: fmtNum(s.traces) }),
        el('td', null, timeEl(s.last_at)),
        el('td', { className: 'num', text: fmtMs(end - start) }),
        el('td', { text: (s.models || []).join(', ') }),
        el('td', null, statusBadges(s.statuses)),
        el('td', null, flags),
        el('td', { className: 'num', text: rewardText(s.reward) }),
        el('td', { className: 'meta', text: Object.keys(s.metadata || {}).length ? JSON.stringify(s.metadata).slice(0, 160) : '' })));
    }
    return el('table', { id: 'sessions' },
      el('caption', { className: 'sr-only', text: 'Sessions, most recently active first' }),
      el('thead', null, el('tr', null, ['Session', 'Calls', 'Last activity', 'Span', 'Models', 'Statuses', 'Flags', 'Reward', 'Metadata']
        .map((h, i) => el('th', { scope: 'col', className: [1, 3, 7].includes(i) ? 'num' : null, text: h })))),
      tbody);
  }

  function pager(params, next) {
    const nav = el('nav', { className: 'pager', 'aria-label': 'Pages' });
    const back = params.get('back');
    const stack = back ? back.split('~') : [];
    if (params.get('cursor')) {
      const prev = new URLSearchParams(params);
      const prevCursor = stack.pop();
      if (prevCursor) prev.set('cursor', prevCursor); else prev.delete('cursor');
      if (stack.length) prev.set('back', stack.join('~')); else prev.delete('back');
      nav.appendChild(el('a', { href: '#/?' + prev.toString(), text: '← Newer' }));
      nav.appendChild(el('a', { href: '#/' + stripPaging(params), text: 'First page' }));
    }
    if (next) {
      const p = new URLSearchParams(params);
      p.set('cursor', next);
      const back2 = (params.get('back') ? params.get('back') + '~' : '') + (params.get('cursor') || '');
      if (params.get('cursor')) p.set('back', back2); else p.delete('back');
      nav.appendChild(el('a', { href: '#/?' + p.toString(), id: 'older', text: 'Older →' }));
    }
    return nav;
  }
  function stripPaging(params) {
    const p = new URLSearchParams(params); p.delete('cursor'); p.delete('back');
    return p.toString() ? '?' + p.toString() : '';
  }

  // ------------------------------------------------------------------ session data
  const cache = new Map(); // session id -> {traces, reward, summary, merged}

  async function loadSession(sid, force) {
    let entry = cache.get(sessionKey(sid));
    if (entry && !force) return entry;
    const enc = encodeURIComponent(sid);
    const [data, summary] = await Promise.all([
      api('/rllm/sessions/' + enc + '/traces' + teamQ('?')),
      api('/rllm/sessions?session=' + enc + teamQ('&')).then((p) => p.sessions[0] || null, () => null),
    ]);
    entry = { traces: data.traces || [], response: data, summary, merged: undefined }; // merged view re-read too
    cache.set(sessionKey(sid), entry);
    return entry;
  }

  function sessionReward(entry) {
    const d = entry.response || {};
    for (const v of [d.reward, d.episode && d.episode.reward, d.finish && d.finish.reward, entry.summary && entry.summary.reward]) {
      if (v !== undefined && v !== null) return v;
    }
    return null;
  }

  // ------------------------------------------------------------------ live updates
  let live = null;
  function stopLive() {
    if (live) { live.stop = true; if (live.abort) live.abort.abort(); clearTimeout(live.timer); }
    live = null;
    liveEl.textContent = '';
  }

  // What the page shows, as the session summary would say it: the live view's baseline. Taken from
  // the loaded entry, never from the first poll, so a call that lands between the page's load and
  // the first poll (or the feed's catch-up) still counts as news.
  function summarySig(s) {
    return s ? [s.traces, s.last_seq, s.last_at, JSON.stringify(s.reward)].join('|') : '';
  }

  function startLive(sid, shown, onChange) {
    stopLive();
    const state = { sid: sessionKey(sid), stop: false, timer: null, abort: null, seen: summarySig(shown.summary), shown };
    live = state;
    const changed = async () => {
      try {
        const entry = await loadSession(sid, true);
        state.shown = entry;
        state.seen = summarySig(entry.summary);
        if (!state.stop) onChange(entry);
      } catch (e) { /* shown on the next navigation */ }
    };
    const known = (item) => item.kind !== 'trace' || state.shown.traces.some((t) => t.trace_id === item.trace_id);
    const poll = async () => {
      if (state.stop) return;
      try {
        const page = await api('/rllm/sessions?session=' + encodeURIComponent(sid) + teamQ('&'));
        const s = page.sessions[0];
        if (summarySig(s) !== state.seen) await changed();
      } catch (e) { if (e.status === 401) { handleError(e); return; } }
      if (!state.stop) state.timer = setTimeout(poll, POLL_MS);
    };
    const follow = async () => {
      // The change feed, where the proxy has it: long-polls, then re-reads the session on news.
      let after = null, caughtUp = false, pages = 0;
      while (!state.stop) {
        const q = new URLSearchParams({ session: sid, limit: '200', wait: caughtUp ? '25' : '0' });
        if (curTeam) q.set('team', curTeam);
        if (after !== null) q.set('after', after);
        state.abort = new AbortController();
        const body = await api('/rllm/changes?' + q.toString(), { signal: state.abort.signal });
        if (state.stop) return;
        const items = body.items || [];
        if (body.next !== undefined && body.next !== null) after = body.next;
        if (items.length && (caughtUp || !items.every(known))) await changed();
        if (!items.length) caughtUp = true;
        if (!caughtUp && ++pages > 50) throw new Error('feed too long to catch up');
      }
    };
    (async () => {
      liveEl.textContent = '● live (polling every ' + POLL_MS / 1000 + ' s)';
      poll();  // the session's summary every POLL_MS as well: a feed that misses a wake-up is covered
      try {
        await api('/rllm/changes?limit=1&wait=0&session=' + encodeURIComponent(sid) + teamQ('&'));
        liveEl.textContent = '● live (change feed)';
        await follow();
      } catch (e) {
        if (!state.stop) liveEl.textContent = '● live (polling every ' + POLL_MS / 1000 + ' s)';
      }
    })();
  }

  // ------------------------------------------------------------------ a session
  async function showSession(sid, token) {
    setCrumbs([{ text: 'Sessions', href: '#/' }, { text: sid }]);
    if (!cache.has(sessionKey(sid))) { clear(main); main.appendChild(el('p', { className: 'muted', text: 'Loading session…' })); }
    const entry = await loadSession(sid, !live || live.sid !== sessionKey(sid));
    if (token !== renderToken) return;
    renderSession(sid, entry);
    if (!live || live.sid !== sessionKey(sid)) {
      startLive(sid, entry, (e) => {
        const r = parseHash();
        if (r.view === 'session' && r.session === sid) { renderSession(sid, e, true); loadMerged(sid, e, renderToken); }
      });
    }
    loadMerged(sid, entry, token);
  }

  function renderSession(sid, entry, keepFocus) {
    const traces = entry.traces;
    const scrollY = window.scrollY;
    clear(main);
    main.appendChild(el('h1', { text: sid }));
    if (!traces.length) {
      main.appendChild(el('p', { className: 'note', text: 'No calls visible to this key in this session.' }));
      return;
    }
    const t0 = Math.min(...traces.map((t) => Date.parse(t.created_at)));
    const ends = traces.map((t) => Date.parse(t.created_at) + (t.latency_ms || 0));
    const span = Math.max(1, Math.max(...ends) - t0);
    const statuses = {};
    traces.forEach((t) => { statuses[t.status] = (statuses[t.status] || 0) + 1; });
    const models = [...new Set(traces.map((t) => t.model).filter(Boolean))];
    const reward = sessionReward(entry);
    const info = el('dl', { className: 'kv' },
      el('dt', { text: 'Calls' }), el('dd', null, String(traces.length), ' ', statusBadges(statuses)),
      el('dt', { text: 'Time' }), el('dd', null, timeEl(traces[0].created_at), ' · ' + fmtMs(span)),
      el('dt', { text: 'Models' }), el('dd', { text: models.join(', ') }));
    if (reward !== null) info.append(el('dt', { text: 'Reward' }), el('dd', { className: 'mono', id: 'session-reward', text: rewardText(reward) }));
    const meta = traces[traces.length - 1].metadata;
    if (meta && Object.keys(meta).length) info.append(el('dt', { text: 'Metadata' }), el('dd', { className: 'meta', text: JSON.stringify(meta) }));
    if (traces[0].session_uids && traces[0].session_uids.length) info.append(el('dt', { text: 'Session uids' }), el('dd', { className: 'mono', text: traces[0].session_uids.join(' › ') }));
    main.appendChild(el('div', { className: 'panel' }, info));

    const bySeqId = new Map(traces.map((t) => [t.trace_id, t]));
    const childCount = new Map();
    traces.forEach((t) => { const p = t.lineage && t.lineage.parent; if (p) childCount.set(p, (childCount.get(p) || 0) + 1); });
    main.appendChild(el('h2', { id: 'timeline-h', text: 'Calls' }));
    const tbody = el('tbody');
    for (const t of traces) {
      const start = Date.parse(t.created_at) - t0;
      const lat = t.latency_ms || 0;
      const bar = el('div', { className: 'bar s-' + t.status });
      bar.style.left = (100 * start / span).toFixed(3) + '%';
      bar.style.width = (100 * lat / span).toFixed(3) + '%';
      const u = t.usage || {};
      const lin = t.lineage || null;
      const linCell = [];
      if (lin) {
        if (lin.relation) linCell.push(badge(lin.relation, 'rel-' + lin.relation, relationTitle(lin)));
        if (lin.parent) { const p = bySeqId.get(lin.parent); linCell.push(el('a', { href: callHref(sid, lin.parent), text: p ? '↳ #' + p.seq : '↳ parent', title: 'parent ' + lin.parent })); }
        if (lin.retry_of) { const p = bySeqId.get(lin.retry_of); linCell.push(' ', badge('retry of ' + (p ? '#' + p.seq : lin.retry_of.slice(0, 8)), 'b-warn')); }
        if (lin.orphan) linCell.push(' ', badge('orphan', 'b-warn', 'a completion nothing continued (the agent retried)'));
      }
      if (childCount.get(t.trace_id) > 1) linCell.push(' ', badge(childCount.get(t.trace_id) + ' branches', 'b-info'));
      const flags = [];
      (t.choices || []).forEach((c) => { if (c.completeness && c.completeness.ok === false) flags.push(badge('tokens ✗', 'b-warn', (c.completeness.problems || []).join('; '))); });
      if (t.error) flags.push(badge(t.error.type || 'error', 'b-error', t.error.message));
      if (t.reward !== undefined && t.reward !== null) flags.push(badge('reward ' + rewardText(t.reward), 'b-info'));
      tbody.appendChild(el('tr', { className: lin && lin.orphan ? 'orphan' : null },
        el('td', { className: 'num' }, el('a', { href: callHref(sid, t.trace_id), text: '#' + t.seq, 'aria-label': 'call ' + t.seq + ' ' + (t.model || '') })),
        el('td', { className: 'num', text: '+' + fmtMs(start) }),
        el('td', { className: 'bar-cell' }, el('div', { className: 'bar-track', title: fmtMs(lat) }, bar)),
        el('td', { className: 'num', text: fmtMs(t.latency_ms) }),
        el('td', { className: 'num', text: t.ttft_ms !== null && t.ttft_ms !== undefined ? fmtMs(t.ttft_ms) : '' }),
        el('td', null, el('div', { text: t.model || '' }), el('div', { className: 'muted mono', text: t.deployment_model || '' })),
        el('td', null, badge(t.status, 'b-' + t.status), t.stream ? badge('stream', 'b-plain') : null),
        el('td', { className: 'num', text: fmtNum(u.prompt_tokens ?? u.input_tokens) + ' → ' + fmtNum(u.completion_tokens ?? u.output_tokens) }),
        el('td', { className: 'mono', text: versionText(t.policy_version) }),
        el('td', null, linCell),
        el('td', null, flags)));
    }
    main.appendChild(el('table', { id: 'timeline', 'aria-labelledby': 'timeline-h' },
      el('thead', null, el('tr', null, ['#', 'Start', 'Timeline', 'Latency', 'TTFT', 'Model / deployment', 'Status', 'Tokens in → out', 'Policy', 'Lineage', 'Flags']
        .map((h, i) => el('th', { scope: 'col', className: [0, 1, 3, 4, 7].includes(i) ? 'num' : null, text: h })))),
      tbody));
    const mergedBox = el('section', { id: 'merged', 'aria-labelledby': 'merged-h' });
    main.appendChild(mergedBox);
    if (entry.merged) renderMerged(mergedBox, entry);
    if (keepFocus) window.scrollTo(0, scrollY);
    markRendered('rllm:session-rendered');
  }

  function relationTitle(lin) {
    const parts = [lin.relation];
    if (lin.offset !== undefined) parts.push('first differing token at ' + lin.offset);
    if (lin.drift && lin.drift.offset !== undefined) parts.push('first differing token at ' + lin.drift.offset);
    return parts.join(': ');
  }
  function versionText(v) {
    if (v === null || v === undefined) return '';
    if (typeof v !== 'object') return String(v);
    const [a, b] = 'start' in v || 'end' in v ? [v.start, v.end] : 'min' in v || 'max' in v ? [v.min, v.max] : [undefined, undefined];
    if (a === undefined && b === undefined) return JSON.stringify(v);
    if (a === b || b === undefined || b === null) return fmtValue(a);
    if (a === undefined || a === null) return fmtValue(b);
    return fmtValue(a) + ' → ' + fmtValue(b);
  }

  // ------------------------------------------------------------------ merged trajectories
  async function loadMerged(sid, entry, token) {
    if (entry.merged === undefined) {
      try {
        const resp = await fetch('/rllm/sessions/' + encodeURIComponent(sid) + '/trajectories?view=merged' + teamQ('&'),
          { headers: { Authorization: 'Bearer ' + getKey() }, cache: 'no-store', credentials: 'omit' });
        const body = resp.status === 200 ? await resp.json() : null;
        entry.merged = body ? rowsOf(body) : null;
        entry.mergedLeftOut = body && !Array.isArray(body) ? (body.orphans_left_out ?? body.left_out ?? body.orphans ?? 0) : 0;
      } catch (e) { entry.merged = null; }
    }
    if (token !== renderToken) return;
    const box = document.getElementById('merged');
    if (box && entry.merged) renderMerged(box, entry);
  }
  function rowsOf(body) {
    if (Array.isArray(body)) return body;
    for (const k of ['rows', 'trajectories', 'items', 'data']) if (Array.isArray(body && body[k])) return body[k];
    return null;
  }

  function renderMerged(box, entry) {
    clear(box);
    const rows = entry.merged || [];
    box.appendChild(el('h2', { id: 'merged-h', text: 'Merged trajectories (' + rows.length + ')' }));
    box.appendChild(el('p', { className: 'muted' }, 'Tokens the model sampled (loss mask 1) are ', el('span', { className: 'm1', text: 'green' }),
      '; prompt, tool and template tokens (mask 0) are plain. Hover or focus a token for its id, mask and logprob.'));
    const bySeqId = new Map(entry.traces.map((t) => [t.trace_id, t]));
    rows.forEach((row, k) => {
      const ids = row.input_ids || [];
      const mask = row.loss_mask || [];
      const sampled = mask.reduce((a, b) => a + (b ? 1 : 0), 0);
      const seqs = (row.trace_ids || []).map((id) => (bySeqId.has(id) ? '#' + bySeqId.get(id).seq : id.slice(0, 8)));
      const head = [badge(fmtNum(ids.length) + ' tokens', 'b-plain'), badge(fmtNum(sampled) + ' in the loss', 'b-ok')];
      if (seqs.length) head.push(' calls ' + seqs.join(' → '));
      if (row.reward !== undefined && row.reward !== null) head.push(' ', badge('reward ' + rewardText(row.reward), 'b-info'));
      if (row.policy_version !== undefined) head.push(' ', badge('policy ' + versionText(row.policy_version), 'b-plain'));
      box.appendChild(el('h3', null, 'Trajectory ' + (k + 1) + ' ', head));
      const strip = el('div', { className: 'tokens merged', tabindex: '0', role: 'group',
        'aria-label': 'trajectory ' + (k + 1) + ' tokens; arrow keys move, Home and End jump' });
      const frag = document.createDocumentFragment();
      const spans = new Array(ids.length);
      let chunk = null;
      for (let i = 0; i < ids.length; i++) {
        if (i % CHUNK === 0) { chunk = document.createElement('div'); chunk.className = 'tkc'; frag.appendChild(chunk); }
        const s = document.createElement('span');
        s.className = 'tk tid ' + (mask[i] ? 'm1' : 'm0');
        s.textContent = String(ids[i]);
        s.__i = i;
        spans[i] = s;
        chunk.appendChild(s);
        chunk.appendChild(document.createTextNode(' '));
      }
      strip.appendChild(frag);
      strip.__spans = spans;
      attachTokenNav(strip, ids.length, (i) => mergedInfo(row, i));
      box.appendChild(strip);
    });
    const left = entry.mergedLeftOut;
    if (left) box.appendChild(el('p', { className: 'muted', id: 'merged-left-out', text: left + ' orphan completion' + (left > 1 ? 's' : '') + ' left out (the agent retried them).' }));
  }
  function mergedInfo(row, i) {
    const lp = row.logprobs ? row.logprobs[i] : null;
    const lines = [['position', String(i)], ['token id', String(row.input_ids[i])], ['loss mask', String(row.loss_mask ? row.loss_mask[i] : '')]];
    if (row.loss_mask && row.loss_mask[i] && lp !== null && lp !== undefined) lines.push(['logprob', lp.toFixed(4) + ' (' + pct(lp) + ')']);
    return { lines, alts: null, text: 'position ' + i + ', id ' + row.input_ids[i] + ', mask ' + (row.loss_mask ? row.loss_mask[i] : '') };
  }

  // ------------------------------------------------------------------ a call
  async function showCall(sid, tid, token) {
    const entry = await loadSession(sid, false);
    if (token !== renderToken) return;
    const idx = entry.traces.findIndex((t) => t.trace_id === tid);
    const t = entry.traces[idx];
    setCrumbs([{ text: 'Sessions', href: '#/' }, { text: sid, href: sessionHref(sid) }, { text: t ? 'call #' + t.seq : tid }]);
    clear(main);
    if (!t) {
      main.appendChild(el('div', { className: 'alert', role: 'alert', text: 'No call ' + tid + ' in session ' + sid + ' that this key may read.' }));
      return;
    }
    renderCall(sid, entry, idx);
    markRendered('rllm:call-rendered');
  }

  function kvList(pairs) {
    const dl = el('dl', { className: 'kv' });
    for (const [k, v] of pairs) {
      if (v === undefined || v === null || v === '' || (Array.isArray(v) && !v.length)) continue;
      dl.append(el('dt', { text: k }), el('dd', null, v instanceof Node || Array.isArray(v) ? v : String(v)));
    }
    return dl;
  }

  function renderCall(sid, entry, idx) {
    const t = entry.traces[idx];
    const prev = entry.traces[idx - 1], next = entry.traces[idx + 1];
    main.appendChild(el('h1', null, 'Call #' + t.seq + ' ', badge(t.status, 'b-' + t.status)));
    const jsonPath = '/rllm/sessions/' + encodeURIComponent(sid) + '/traces' + teamQ('?');
    const actions = el('div', { className: 'toolbar' },
      prev ? el('a', { href: callHref(sid, prev.trace_id), text: '← #' + prev.seq }) : null,
      next ? el('a', { href: callHref(sid, next.trace_id), text: '#' + next.seq + ' →' }) : null,
      el('button', { type: 'button', id: 'copy-json', text: 'Copy as JSON', on: { click: () => copyJson(t) } }),
      el('button', { type: 'button', text: 'Download JSON', on: { click: () => downloadJson(t) } }),
      el('a', { href: jsonPath, id: 'json-route', title: 'needs the Authorization header: curl -H "Authorization: Bearer $KEY" ' + location.origin + jsonPath, text: 'GET ' + jsonPath }),
      el('span', { id: 'copy-status', className: 'muted', role: 'status' }));
    main.appendChild(actions);

    const u = t.usage || {};
    const lin = t.lineage;
    const caller = t.caller || {};
    const overview = kvList([
      ['Trace id', el('span', { className: 'mono', text: t.trace_id })],
      ['Created', timeEl(t.created_at)],
      ['Route', t.route], ['Model', t.model], ['Provider', t.provider],
      ['Deployment', t.deployment_model], ['API base', t.api_base],
      ['Stream', t.stream ? 'yes' : 'no'],
      ['Latency', fmtMs(t.latency_ms)], ['Time to first token', t.ttft_ms !== null && t.ttft_ms !== undefined ? fmtMs(t.ttft_ms) : null],
      ['Cost', t.cost_usd !== null && t.cost_usd !== undefined ? '$' + Number(t.cost_usd).toPrecision(3) : null],
      ['Policy version', versionText(t.policy_version)],
      ['Lineage', lin ? [badge(lin.relation || '?', 'rel-' + lin.relation, relationTitle(lin)),
        lin.parent ? el('a', { href: callHref(sid, lin.parent), text: ' parent ' + lin.parent.slice(0, 12) }) : null,
        lin.retry_of ? badge('retry of ' + lin.retry_of.slice(0, 12), 'b-warn') : null,
        lin.orphan ? badge('orphan', 'b-warn') : null] : null],
      ['Reward', t.reward !== undefined && t.reward !== null ? rewardText(t.reward) : null],
      ['Caller', [caller.key_alias, caller.team_id ? 'team ' + caller.team_id : null, caller.user_id].filter(Boolean).join(' · ')],
      ['Error', t.error ? [t.error.status_code ? 'HTTP ' + t.error.status_code + ' ' : '', t.error.type || '', t.error.message ? ': ' + t.error.message : ''].join('') : null],
    ]);
    const usage = kvList(Object.entries(u).map(([k, v]) => [k, fmtValue(v)]));
    const injected = kvList(Object.entries(t.injected || {}).map(([k, v]) => [k, fmtValue(v)]));
    main.appendChild(el('div', { className: 'grid2' },
      el('section', { className: 'panel', 'aria-label': 'Overview' }, el('h2', { text: 'Overview' }), overview),
      el('section', { className: 'panel', 'aria-label': 'Usage and injected parameters' },
        el('h2', { text: 'Usage' }), Object.keys(u).length ? usage : el('p', { className: 'muted', text: 'none reported' }),
        el('h2', { text: 'Injected by the policy' }), Object.keys(t.injected || {}).length ? injected : el('p', { className: 'muted', text: 'nothing injected' }))));
    if (t.metadata && Object.keys(t.metadata).length) main.appendChild(el('details', null, el('summary', { text: 'Metadata' }), el('pre', { className: 'json', text: JSON.stringify(t.metadata, null, 2) })));

    // request as sent
    const req = t.request || {};
    main.appendChild(el('h2', { text: 'Request' }));
    const params = Object.entries(req).filter(([k]) => !['messages', 'tools', 'prompt', 'input', 'instructions', 'system'].includes(k));
    if (params.length) main.appendChild(el('div', { className: 'panel' }, kvList(params.map(([k, v]) => [k, fmtValue(v)]))));
    if (req.system !== undefined) main.appendChild(messageCard({ role: 'system', content: req.system }));
    if (req.instructions !== undefined) main.appendChild(messageCard({ role: 'instructions', content: req.instructions }));
    for (const m of req.messages || []) main.appendChild(messageCard(m));
    if (req.prompt !== undefined) main.appendChild(messageCard({ role: 'prompt', content: req.prompt }));
    if (req.input !== undefined) main.appendChild(messageCard({ role: 'input', content: req.input }));
    if (req.tools && req.tools.length) {
      main.appendChild(el('h3', { text: 'Tools (' + req.tools.length + ')' }));
      for (const tool of req.tools) {
        const fn = tool.function || tool;
        main.appendChild(el('details', { className: 'msg' }, el('summary', { className: 'role' }, (fn.name || tool.type || 'tool') + (fn.description ? ' — ' + fn.description : '')),
          el('pre', { className: 'json', text: JSON.stringify(tool, null, 2) })));
      }
    }
    if (t.prompt_token_ids) {
      main.appendChild(el('details', null, el('summary', { text: 'Prompt token ids (' + fmtNum(t.prompt_token_ids.length) + ')' }),
        el('div', { className: 'ids', text: t.prompt_token_ids.join(' ') })));
    }

    // completion
    (t.choices || []).forEach((c) => renderChoice(c, t));
  }

  function contentText(content) {
    if (content === null || content === undefined) return null;
    if (typeof content === 'string') return content;
    if (Array.isArray(content)) {
      return content.map((p) => (p && typeof p === 'object' ? (typeof p.text === 'string' ? p.text : JSON.stringify(p)) : String(p))).join('\n');
    }
    return JSON.stringify(content, null, 2);
  }

  function messageCard(m) {
    const role = String(m.role || 'message');
    const card = el('div', { className: 'msg r-' + role.replace(/[^a-z]/g, '') });
    card.appendChild(el('div', { className: 'role' }, role, m.name ? ' (' + m.name + ')' : null, m.tool_call_id ? ' · for ' + m.tool_call_id : null));
    const text = contentText(m.content);
    if (text !== null) card.appendChild(el('pre', { className: 'text', text }));
    for (const call of m.tool_calls || []) card.appendChild(toolCallBlock(call));
    if (m.function_call) card.appendChild(toolCallBlock({ function: m.function_call }));
    return card;
  }

  function toolCallBlock(call) {
    const fn = call.function || {};
    let args = fn.arguments;
    try { args = JSON.stringify(JSON.parse(args), null, 2); } catch (e) { /* keep as sent */ }
    return el('div', null, el('div', { className: 'role', text: 'tool call ' + (fn.name || '') + (call.id ? ' · ' + call.id : '') }),
      el('pre', { className: 'json', text: typeof args === 'string' ? args : JSON.stringify(args, null, 2) }));
  }

  // probability buckets: b0 = p >= 0.9 ... b6 = p < 0.01
  const BUCKETS = [-0.10536, -0.35667, -0.69315, -1.20397, -2.30259, -4.60517];
  function bucket(lp) {
    for (let i = 0; i < BUCKETS.length; i++) if (lp >= BUCKETS[i]) return i;
    return 6;
  }

  function renderChoice(c, t) {
    const box = el('section', { className: 'choice', 'aria-label': 'choice ' + c.index });
    box.appendChild(el('h2', null, 'Completion' + ((t.choices || []).length > 1 ? ' (choice ' + c.index + ')' : ''), ' ',
      c.finish_reason ? badge('finish: ' + c.finish_reason, 'b-plain') : null,
      c.stop_reason !== null && c.stop_reason !== undefined ? badge('stop: ' + fmtValue(c.stop_reason), 'b-plain') : null));
    if (c.message) box.appendChild(messageCard(c.message));
    else if (c.text !== null && c.text !== undefined) box.appendChild(messageCard({ role: 'completion', content: c.text }));

    const ids = c.token_ids || null, lps = c.logprobs || null, toks = c.tokens || null, tops = c.top_logprobs || null;
    const comp = c.completeness || null;
    const nIds = ids ? ids.length : 0, nLp = lps ? lps.length : 0, nTok = toks ? toks.length : 0;
    const n = Math.max(nIds, nLp, nTok);
    // where the arrays stop agreeing: the first token a problem is visible at
    let firstBad = -1;
    if (comp && comp.ok === false) {
      const lens = [ids ? nIds : n, lps ? nLp : n];
      firstBad = Math.min(...lens) < n ? Math.min(...lens) : -1;
    }
    if (comp) {
      const cbox = el('div', { className: comp.ok === false ? 'alert' : 'muted', role: comp.ok === false ? 'alert' : null, id: 'completeness-' + c.index });
      if (comp.ok === false) {
        cbox.appendChild(el('strong', { text: 'Completeness check failed' }));
        cbox.appendChild(el('ul', { className: 'problems' }, (comp.problems || []).map((p) => el('li', { text: p }))));
        if (firstBad >= 0) cbox.appendChild(el('button', { type: 'button', text: 'Go to token ' + firstBad, on: { click: () => focusToken(strip, firstBad) } }));
        else if (comp.usage_completion_tokens > n) cbox.appendChild(el('span', { text: 'The usage counts ' + (comp.usage_completion_tokens - n) + ' more token(s) than were captured (marked after the last token).' }));
      } else {
        cbox.textContent = 'Completeness: ' + nIds + ' token ids, ' + nLp + ' logprobs' + (comp.usage_completion_tokens !== null && comp.usage_completion_tokens !== undefined ? ', usage ' + comp.usage_completion_tokens : '') + ' ✓';
      }
      box.appendChild(cbox);
    }
    if (!n) { main.appendChild(box); return; }

    const legend = el('div', { className: 'legend', 'aria-hidden': 'true' }, 'p(sampled):',
      ['≥90%', '≥70%', '≥50%', '≥30%', '≥10%', '≥1%', '<1%'].map((label, i) => el('span', { className: 'tk b' + i, text: ' ' + label + ' ' })),
      el('span', { className: 'tk nolp', text: ' no logprob ' }));
    box.appendChild(el('div', { className: 'toolbar' },
      el('span', { className: 'muted', text: fmtNum(n) + ' completion tokens' + (tops ? ', top ' + (tops[0] ? tops[0].length : 0) + ' alternatives each' : '') }), legend));
    box.appendChild(el('p', { className: 'muted sr-hint', text: 'Hover a token, or focus the tokens (Tab) and move with the arrow keys, for its id, logprob and alternatives.' }));

    const strip = el('div', { className: 'tokens', tabindex: '0', role: 'group', id: 'tokens-' + c.index,
      'aria-label': 'completion tokens coloured by probability; arrow keys move, Home and End jump' });
    const frag = document.createDocumentFragment();
    const spans = new Array(n);
    const usageMissing = comp && comp.ok === false && comp.usage_completion_tokens > n ? comp.usage_completion_tokens - n : 0;
    let chunk = null;
    for (let i = 0; i < n; i++) {
      if (i % CHUNK === 0) { chunk = document.createElement('div'); chunk.className = 'tkc'; frag.appendChild(chunk); }
      if (i === firstBad) {
        chunk.appendChild(problemMark(comp, 'from here: '));
      }
      const s = document.createElement('span');
      const lp = lps && i < nLp ? lps[i] : null;
      let cls = lp === null ? 'tk nolp' : 'tk b' + bucket(lp);
      if (firstBad >= 0 && i >= firstBad) cls += ' bad';
      s.className = cls;
      let text = toks && i < nTok ? toks[i] : (ids && i < nIds ? '⟨' + ids[i] + '⟩' : '⟨?⟩');
      if (text === '') text = '∅';
      else if (text.indexOf('\n') >= 0) text = text.replace(/\n/g, '↵\n');
      s.textContent = text;
      s.__i = i;
      spans[i] = s;
      chunk.appendChild(s);
    }
    if (usageMissing) chunk.appendChild(problemMark(comp, usageMissing + ' missing: '));
    strip.appendChild(frag);
    strip.__spans = spans;
    attachTokenNav(strip, n, (i) => tokenInfo(c, i, n));
    box.appendChild(strip);
    if (ids) box.appendChild(el('details', null, el('summary', { text: 'Completion token ids (' + fmtNum(nIds) + ')' }), el('div', { className: 'ids', text: ids.join(' ') })));
    main.appendChild(box);
  }

  function problemMark(comp, prefix) {
    return el('span', { className: 'mark', role: 'note', title: (comp.problems || []).join('; '), text: '⚠ ' + prefix + (comp.problems || []).join('; ') });
  }

  function tokenInfo(c, i, n) {
    const lp = c.logprobs && i < c.logprobs.length ? c.logprobs[i] : null;
    const tok = c.tokens && i < c.tokens.length ? c.tokens[i] : null;
    const id = c.token_ids && i < c.token_ids.length ? c.token_ids[i] : null;
    const lines = [['token', quoteToken(tok)], ['position', i + ' of ' + n], ['token id', id === null ? 'missing' : String(id)],
      ['logprob', lp === null ? 'missing' : lp.toFixed(4) + '  (p = ' + pct(lp) + ')']];
    const alts = c.top_logprobs && c.top_logprobs[i] ? c.top_logprobs[i] : null;
    const text = 'token ' + i + ' ' + quoteToken(tok) + ', id ' + (id === null ? 'missing' : id) + ', logprob ' + (lp === null ? 'missing' : lp.toFixed(3)) +
      (alts ? '; alternatives: ' + alts.map((a) => quoteToken(a.token) + ' ' + Number(a.logprob).toFixed(3)).join(', ') : '');
    return { lines, alts, sampled: tok, text };
  }

  // One delegated handler per strip: hover, click and keyboard share the tooltip.
  function attachTokenNav(strip, n, info) {
    let active = -1;
    const spanAt = (i) => strip.__spans[i]; // position -> span, kept while rendering
    const activate = (i, fromKeyboard) => {
      if (i < 0 || i >= n) return;
      const prev = active >= 0 ? spanAt(active) : null;
      if (prev) { prev.classList.remove('active'); prev.removeAttribute('id'); }
      active = i;
      const s = spanAt(i);
      s.classList.add('active');
      s.id = strip.id ? strip.id + '-active' : 'tk-active';
      strip.setAttribute('aria-activedescendant', s.id);
      if (fromKeyboard) s.scrollIntoView({ block: 'nearest', inline: 'nearest' });
      const data = info(i);
      showTip(s, data);
      if (fromKeyboard) say(data.text);
    };
    strip.__activate = activate;
    strip.addEventListener('mouseover', (ev) => {
      const s = ev.target;
      if (s.__i !== undefined) activate(s.__i, false);
    });
    strip.addEventListener('mouseleave', () => { if (document.activeElement !== strip) hideTip(); });
    strip.addEventListener('click', (ev) => { const s = ev.target; if (s.__i !== undefined) { strip.focus({ preventScroll: true }); activate(s.__i, false); } });
    strip.addEventListener('focus', () => activate(active >= 0 ? active : 0, true));
    strip.addEventListener('blur', hideTip);
    strip.addEventListener('keydown', (ev) => {
      const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: 10, ArrowUp: -10, PageDown: 100, PageUp: -100 }[ev.key];
      if (step) { ev.preventDefault(); activate(Math.max(0, Math.min(n - 1, active + step)), true); }
      else if (ev.key === 'Home') { ev.preventDefault(); activate(0, true); }
      else if (ev.key === 'End') { ev.preventDefault(); activate(n - 1, true); }
      else if (ev.key === 'Escape') hideTip();
    });
  }

  function focusToken(strip, i) {
    strip.focus({ preventScroll: true });
    strip.__activate(i, true);
  }

  function showTip(anchor, data) {
    clear(tip);
    const table = el('table');
    for (const [k, v] of data.lines) table.appendChild(el('tr', null, el('th', { scope: 'row', text: k }), el('td', { className: k === 'token' ? 'q' : null, text: v })));
    tip.appendChild(table);
    if (data.alts && data.alts.length) {
      const alts = el('table', { className: 'alts' }, el('tr', null, el('th', { text: 'alternative' }), el('th', { text: 'logprob' }), el('th', { text: 'p' })));
      for (const a of data.alts) {
        const pick = a.token === data.sampled;
        alts.appendChild(el('tr', null, el('td', { className: 'q' + (pick ? ' pick' : ''), text: quoteToken(a.token) + (pick ? ' ✓' : '') }),
          el('td', { text: Number(a.logprob).toFixed(4) }), el('td', { text: pct(a.logprob) })));
      }
      tip.appendChild(alts);
    }
    tip.hidden = false;
    const r = anchor.getBoundingClientRect();
    const w = tip.offsetWidth, h = tip.offsetHeight;
    let left = window.scrollX + r.left;
    if (left + w > window.scrollX + document.documentElement.clientWidth - 8) left = window.scrollX + document.documentElement.clientWidth - w - 8;
    let top = window.scrollY + r.bottom + 6;
    if (r.bottom + h + 6 > window.innerHeight && r.top > h + 6) top = window.scrollY + r.top - h - 6;
    tip.style.left = Math.max(4, left) + 'px';
    tip.style.top = top + 'px';
  }
  function hideTip() { tip.hidden = true; }

  // ------------------------------------------------------------------ copy / download
  async function copyJson(t) {
    const text = JSON.stringify(t, null, 2);
    const status = document.getElementById('copy-status');
    try {
      await navigator.clipboard.writeText(text);
      status.textContent = 'Copied ' + fmtNum(text.length) + ' characters.';
    } catch (e) {
      // no clipboard (plain http on a remote host): show the JSON to copy by hand
      const area = el('textarea', { readonly: true, rows: '12', cols: '100', 'aria-label': 'trace JSON', className: 'mono' });
      area.value = text;
      status.textContent = 'The browser blocked the clipboard: the JSON is below, selected.';
      status.after(area);
      area.select();
    }
  }
  function downloadJson(t) {
    const url = URL.createObjectURL(new Blob([JSON.stringify(t, null, 2)], { type: 'application/json' }));
    const a = el('a', { href: url, download: 'trace-' + t.trace_id.replace(/[^A-Za-z0-9_.-]/g, '_') + '.json' });
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  route();
})();
