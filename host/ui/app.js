// Lantern's dashboard: one page, no build step, no dependencies. It only calls the public HTTP
// API (api.md) with the token typed into the header, which is kept in sessionStorage: for this
// tab only, gone when it closes. Every value from the server is put in the page as text, never
// as HTML.

const view = document.getElementById('view');
const banner = document.getElementById('banner');

// ---------------------------------------------------------------------------------------------
// Small helpers

/** Makes an element: h('td', {class: 'num'}, 'text', child...). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key in el && key !== 'list') el[key] = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const fmt = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));
const rate = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US', {maximumFractionDigits: 1}));
const pretty = (value) => JSON.stringify(value, null, 2);

function showBanner(message, kind = 'error') {
  if (!message) {
    banner.hidden = true;
    return;
  }
  banner.hidden = false;
  banner.className = kind;
  banner.textContent = message;
}

// ---------------------------------------------------------------------------------------------
// The token and the API

const TOKEN_KEY = 'lantern.token';
const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

function authHeaders(extra = {}) {
  const headers = {...extra};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  return headers;
}

/** Calls the API; resolves to {body, headers, status}, rejects with ApiError on 4xx/5xx. */
async function api(path, {method = 'GET', body, headers = {}, signal} = {}) {
  const response = await fetch(path, {method, body, signal, headers: authHeaders(headers)});
  const type = response.headers.get('content-type') || '';
  let parsed = null;
  if (response.status !== 204) {
    parsed = type.includes('json') ? await response.json() : await response.text();
  }
  if (!response.ok) {
    const error = parsed && parsed.error ? parsed.error : {};
    const failure = new ApiError(response.status, error.code || 'http_' + response.status,
      error.message || `${method} ${path}: ${response.status}`, parsed);
    if (response.status === 401) {
      showBanner(`Not allowed without a valid token (${failure.message}). Type a token in the box at the top right.`);
    }
    throw failure;
  }
  return {body: parsed, headers: response.headers, status: response.status};
}

/** Whether this tab's token may deploy, rebuild and delete: GET /tokens needs the admin role. */
let isAdmin = false;
async function learnRole() {
  const who = document.getElementById('who');
  try {
    await api('/tokens');
    isAdmin = true;
    who.textContent = token() ? 'admin' : 'open mode (loopback)';
  } catch (error) {
    isAdmin = false;
    who.textContent = error.status === 401 ? 'no access' : (token() ? 'read-only token' : '');
  }
}

document.getElementById('token-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = document.getElementById('token');
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = '';
  showBanner(null);
  await learnRole();
  route();
});
document.getElementById('token-forget').addEventListener('click', async () => {
  sessionStorage.removeItem(TOKEN_KEY);
  await learnRole();
  route();
});

/** Runs `tick` now and every `ms` until the view is left. A failure shows in the banner until
 *  a later tick succeeds. */
let pollingFailed = false;
function every(ms, tick, cleanups) {
  let stopped = false;
  let timer = null;
  const run = async () => {
    try {
      await tick();
      if (pollingFailed && !stopped) {
        pollingFailed = false;
        showBanner(null);
      }
    } catch (error) {
      if (!stopped) {
        pollingFailed = true;
        showBanner(error.message);
      }
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  cleanups.push(() => {
    stopped = true;
    clearTimeout(timer);
  });
}

// ---------------------------------------------------------------------------------------------
// Overview: head, append rate, subscribers, projections at a glance

function metricValue(text, name) {
  const line = text.split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'));
  return line ? Number(line.trim().split(/\s+/).pop()) : null;
}

function overview(cleanups) {
  const cards = h('div', {class: 'cards'});
  const spark = h('canvas', {class: 'spark'});
  const problems = h('div');
  const summary = h('span');
  // The link stays put while the summary beside it is refreshed: a link remade every second
  // would lose a click that straddles a refresh.
  view.replaceChildren(h('h1', {}, 'Overview'), cards, h('h2', {}, 'Appends per second, last 2 minutes'),
    spark, problems, h('h2', {}, 'Projections'), h('p', {}, summary, ' ', h('a', {href: '#/projections'}, 'Details')));
  const history = [];
  let last = null;
  every(1000, async () => {
    const [{body: health}, metrics, projections] = await Promise.all([
      api('/health'),
      api('/metrics').then((r) => r.body).catch(() => ''),
      api('/projections').then((r) => r.body.projections).catch(() => null),
    ]);
    const now = performance.now();
    let perSecond = null;
    if (last) perSecond = Math.max(0, (health.head - last.head) / ((now - last.at) / 1000));
    last = {head: health.head, at: now};
    if (perSecond !== null) history.push(perSecond);
    if (history.length > 120) history.shift();
    const card = (label, value, id, cls) =>
      h('div', {class: 'card'}, h('div', {class: 'label'}, label), h('div', {class: 'value ' + (cls || ''), id}, value));
    cards.replaceChildren(
      card('status', health.status, 'overview-status', 'status ' + health.status),
      card('head position', fmt(health.head), 'overview-head'),
      card('appended events / s', perSecond === null ? '…' : rate(perSecond), 'overview-rate'),
      card('open subscriptions', fmt(metricValue(metrics, 'lantern_subscribers')), 'overview-subscribers'),
      card('role', health.role + (health.role === 'follower' ? ` (lag ${fmt(health.lag)})` : ''), 'overview-role', 'status ' + health.role),
      card('version', health.version, 'overview-version'),
    );
    drawSpark(spark, history);
    problems.replaceChildren(...(health.problems.length
      ? [h('h2', {}, 'Problems'), h('ul', {}, health.problems.map((p) => h('li', {class: 'error-text'}, `${p.code}: ${p.message}`)))]
      : []));
    if (projections === null) {
      summary.replaceChildren(h('span', {class: 'muted'}, 'This token cannot list projections.'));
    } else {
      const count = (s) => projections.filter((p) => p.status === s).length;
      const rebuilding = projections.filter((p) => p.rebuild).length;
      summary.replaceChildren(
        `${projections.length} deployed: ${count('running')} running, ${count('catching_up')} catching up, `,
        h('span', {class: count('faulted') ? 'error-text' : ''}, `${count('faulted')} faulted`),
        `, ${rebuilding} rebuilding.`);
    }
  }, cleanups);
}

function drawSpark(canvas, values) {
  // Draw at the size the canvas is shown at, so lines and text are not stretched.
  const scale = window.devicePixelRatio || 1;
  canvas.width = canvas.clientWidth * scale;
  canvas.height = canvas.clientHeight * scale;
  const ctx = canvas.getContext('2d');
  ctx.scale(scale, scale);
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  ctx.clearRect(0, 0, width, height);
  if (values.length < 2) return;
  const max = Math.max(...values, 1);
  ctx.strokeStyle = '#b35c00';
  ctx.lineWidth = 2;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / 119) * width;
    const y = height - 4 - (v / max) * (height - 8);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = '#6a737d';
  ctx.font = '11px sans-serif';
  ctx.fillText(`max ${rate(max)}/s`, 4, 12);
}

/** A list shown in pages. `fetchPage(cursor)` asks for the page after `cursor` (`null`: the
 *  first) and resolves to `{rows, next, shown}`; `shown()`, if given, runs when the page is put in
 *  the list. `load(true)` starts again (the answers still coming for earlier loads are dropped,
 *  so a list never mixes two searches); `load(false)` adds the next page, once however often it
 *  is clicked. */
function paged(list, more, fetchPage, empty) {
  let next = null;
  let generation = 0;
  let loading = false;
  return async (reset) => {
    if (!reset && (loading || next === null)) return;
    const mine = reset ? ++generation : generation;
    loading = true;
    try {
      let page;
      try {
        page = await fetchPage(reset ? null : next);
      } catch (error) {
        // A failed search shows nothing rather than the last one's answer under its prefix.
        if (reset && mine === generation) {
          list.replaceChildren();
          next = null;
          more.hidden = true;
        }
        throw error;
      }
      if (mine !== generation) return;
      if (reset) list.replaceChildren();
      list.append(...page.rows);
      if (!list.children.length) list.append(empty());
      next = page.next ?? null;
      more.hidden = next === null;
      if (page.shown) page.shown();
    } finally {
      if (mine === generation) loading = false;
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Streams: names by prefix, then one stream's events

function streams(cleanups, prefix = '') {
  const input = h('input', {id: 'stream-prefix', placeholder: 'name prefix, e.g. order-', value: prefix});
  const rows = h('tbody');
  const more = h('button', {id: 'streams-more', hidden: true}, 'More');
  const load = paged(rows, more, async (after) => {
    const params = new URLSearchParams({prefix: input.value, limit: '50'});
    if (after !== null) params.set('after', after);
    const {body} = await api('/streams?' + params);
    return {
      next: body.next,
      rows: body.streams.map((s) => h('tr', {'data-stream': s.name},
        h('td', {}, h('a', {href: '#/streams/' + encodeURIComponent(s.name)}, s.name)),
        h('td', {class: 'num'}, fmt(s.last_revision + 1)),
        h('td', {class: 'num'}, fmt(s.last_position)))),
    };
  }, () => h('tr', {}, h('td', {colSpan: 3, class: 'muted'}, 'No stream has this prefix.')));
  const failing = (promise) => promise.catch((e) => showBanner(e.message));
  view.replaceChildren(
    h('h1', {}, 'Streams'),
    h('form', {class: 'toolbar', onsubmit: (e) => { e.preventDefault(); failing(load(true)); }},
      input, h('button', {type: 'submit'}, 'Search')),
    h('table', {id: 'streams'}, h('thead', {}, h('tr', {}, h('th', {}, 'stream'), h('th', {class: 'num'}, 'events'),
      h('th', {class: 'num'}, 'last position'))), rows),
    h('div', {class: 'toolbar'}, more));
  more.addEventListener('click', () => failing(load(false)));
  failing(load(true));
}

function eventCard(event) {
  return h('li', {class: 'event', 'data-position': event.position},
    h('div', {class: 'head mono'},
      h('span', {}, '#', event.position),
      h('a', {href: '#/streams/' + encodeURIComponent(event.stream)}, `${event.stream}@${event.revision}`),
      h('strong', {}, event.type),
      h('span', {class: 'muted'}, event.recorded_at),
      h('span', {class: 'muted'}, event.id)),
    h('pre', {}, pretty({data: event.data, metadata: event.metadata})));
}

function stream(cleanups, name) {
  const list = h('ol', {class: 'events', id: 'stream-events'});
  const more = h('button', {hidden: true}, 'Older');
  const newest = h('input', {type: 'checkbox', checked: true});
  const load = paged(list, more, async (from) => {
    const backward = newest.checked;
    const params = new URLSearchParams({limit: '50', direction: backward ? 'backward' : 'forward'});
    if (from !== null) params.set('from', from);
    const {body} = await api(`/streams/${encodeURIComponent(name)}?` + params);
    return {
      next: body.next,
      rows: body.events.map(eventCard),
      shown: () => { more.textContent = backward ? 'Older' : 'Newer'; },
    };
  }, () => h('li', {class: 'muted'}, 'This stream has no events.'));
  const failing = (promise) => promise.catch((e) => showBanner(e.message));
  newest.addEventListener('change', () => failing(load(true)));
  more.addEventListener('click', () => failing(load(false)));
  view.replaceChildren(
    h('h1', {}, h('a', {href: '#/streams'}, 'Streams'), ' / ', name),
    h('div', {class: 'toolbar'}, h('label', {}, newest, ' newest first'),
      h('a', {href: '#/tail?stream=' + encodeURIComponent(name)}, 'follow live')),
    list, h('div', {class: 'toolbar'}, more));
  failing(load(true));
}

// ---------------------------------------------------------------------------------------------
// Live tail: /subscribe read with fetch, so the token goes in a header (EventSource cannot send
// one); the same text/event-stream, resumed after a drop with Last-Event-ID like EventSource.

function tail(cleanups, query) {
  const category = h('input', {id: 'tail-category', placeholder: 'category, e.g. order', value: query.get('category') || ''});
  const types = h('input', {id: 'tail-types', placeholder: 'types, comma-separated', value: query.get('types') || ''});
  const streamName = query.get('stream') || '';
  const state = h('span', {id: 'tail-state', class: 'muted'}, 'connecting…');
  const list = h('ol', {class: 'events', id: 'tail-events'});
  const counter = h('span', {class: 'muted'});
  let seen = 0;
  let controller = null;
  let stopped = false;
  let lastId = null;
  // Each connection's number: only the newest may show events or reconnect. An aborted one (the
  // filter changed) fails as a dropped one does, and must not start a second subscription.
  let current = 0;

  const connect = async () => {
    const mine = ++current;
    controller = new AbortController();
    state.textContent = 'connecting…';
    state.className = 'muted';
    const params = new URLSearchParams();
    if (category.value) params.set('category', category.value);
    if (types.value) params.set('types', types.value);
    if (streamName) params.set('stream', streamName);
    const headers = {Accept: 'text/event-stream'};
    if (lastId !== null) headers['Last-Event-ID'] = lastId;
    try {
      const response = await fetch('/subscribe?' + params, {headers: authHeaders(headers), signal: controller.signal});
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error(body.error ? body.error.message : `subscribe: ${response.status}`);
      }
      state.textContent = 'live';
      state.className = 'status running';
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const message = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let data = '';
          for (const line of message.split('\n')) {
            if (line.startsWith('id:')) lastId = line.slice(3).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trimStart();
          }
          if (data && mine === current) show(JSON.parse(data));
        }
      }
      throw new Error('the server closed the subscription');
    } catch (error) {
      if (stopped || mine !== current) return;
      state.textContent = `reconnecting (${error.message})`;
      state.className = 'status error';
      setTimeout(() => { if (!stopped && mine === current) connect(); }, 1000);
    }
  };
  const show = (event) => {
    seen += 1;
    counter.textContent = `${fmt(seen)} event${seen === 1 ? '' : 's'} received`;
    list.prepend(eventCard(event));
    while (list.children.length > 200) list.lastChild.remove();
  };
  const restart = () => {
    if (controller) controller.abort();
    lastId = null;
    list.replaceChildren();
    seen = 0;
    counter.textContent = '';
    connect();
  };
  view.replaceChildren(
    h('h1', {}, 'Live tail', streamName ? ` of ${streamName}` : ''),
    h('form', {class: 'toolbar', onsubmit: (e) => { e.preventDefault(); restart(); }},
      category, types, h('button', {type: 'submit'}, 'Apply'), state, counter),
    h('p', {class: 'muted'}, 'Events committed from now on, newest first (the last 200 are kept).'),
    list);
  cleanups.push(() => {
    stopped = true;
    if (controller) controller.abort();
  });
  connect();
}

// ---------------------------------------------------------------------------------------------
// Projections: status table with rebuild progress; deploy, rebuild, delete for admins

function statusCell(p) {
  return h('span', {class: 'status ' + p.status}, p.status);
}

function errorText(error) {
  if (!error) return '';
  return `${error.message}` + (error.position ? ` (event at position ${error.position})` : '');
}

function rebuildCell(p) {
  const r = p.rebuild;
  if (!r) return '';
  return h('span', {class: 'rebuild'},
    h('progress', {max: 1, value: r.progress || 0, 'data-progress': r.progress || 0}),
    ` v${r.version} ${r.status} ${Math.floor((r.progress || 0) * 100)}% (${fmt(r.position)} / ${fmt(r.head)})`,
    r.reason ? h('div', {class: 'muted rebuild-reason'}, `why: ${r.reason}`) : '',
    r.error ? h('div', {class: 'error-text'}, errorText(r.error)) : '');
}

async function adminAction(label, promise) {
  try {
    const {status} = await promise;
    showBanner(`${label}: ${status === 202 ? 'started' : 'done'}`, 'info');
  } catch (error) {
    showBanner(`${label}: ${error.message}`);
  }
}

function projections(cleanups) {
  const rows = h('tbody');
  const deploy = h('form', {id: 'deploy', class: 'toolbar', hidden: !isAdmin},
    h('input', {name: 'name', placeholder: 'name', required: true, pattern: '[a-z0-9][a-z0-9_\\-]{0,63}'}),
    h('input', {name: 'module', type: 'file', accept: '.wasm,application/wasm', required: true}),
    h('button', {type: 'submit'}, 'Deploy'));
  deploy.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = deploy.elements.name.value;
    const file = deploy.elements.module.files[0];
    adminAction(`deploy ${name}`, api(`/projections/${name}`, {
      method: 'PUT', body: file, headers: {'Content-Type': 'application/wasm'},
    }));
  });
  view.replaceChildren(
    h('h1', {}, 'Projections'),
    h('table', {id: 'projections'},
      h('thead', {}, h('tr', {}, ['name', 'version', 'status', 'position', 'head', 'lag', 'events/s', 'error', 'rebuild', '']
        .map((c) => h('th', {class: ['position', 'head', 'lag', 'events/s', 'version'].includes(c) ? 'num' : ''}, c)))),
      rows),
    isAdmin ? h('h2', {}, 'Deploy a module') : h('p', {class: 'muted'}, 'Deploy, rebuild and delete need an admin token.'),
    deploy);
  // A token limited to some projections may not list them all: it opens its own by name.
  const byName = h('form', {id: 'open-projection', class: 'toolbar', hidden: true,
    onsubmit: (e) => { e.preventDefault(); location.hash = '#/projections/' + encodeURIComponent(e.target.elements.name.value); }},
    h('span', {}, 'This token cannot list every projection. Open one by name: '),
    h('input', {name: 'name', placeholder: 'projection name', required: true}),
    h('button', {type: 'submit'}, 'Open'));
  view.append(byName);
  // Each projection keeps one row, and its buttons, across refreshes: only the figures are
  // replaced. A button rebuilt every half second would swallow a click that straddles a refresh.
  const rowsByName = new Map();
  const projectionRow = (p) => {
    let row = rowsByName.get(p.name);
    if (!row) {
      row = h('tr', {'data-name': p.name}, h('td', {}, isAdmin ? [
        h('button', {class: 'rebuild-button', onclick: () => adminAction(`rebuild ${p.name}`,
          api(`/projections/${p.name}/rebuild`, {method: 'POST'}))}, 'Rebuild'), ' ',
        h('button', {class: 'danger', onclick: () => confirm(`Delete ${p.name} and its read model?`) &&
          adminAction(`delete ${p.name}`, api(`/projections/${p.name}`, {method: 'DELETE'}))}, 'Delete'),
      ] : ''));
      rowsByName.set(p.name, row);
    }
    row.replaceChildren(
      h('td', {}, h('a', {href: '#/projections/' + p.name}, p.name)),
      h('td', {class: 'num'}, p.version),
      h('td', {class: 'status-cell'}, statusCell(p)),
      h('td', {class: 'num position'}, fmt(p.position)),
      h('td', {class: 'num'}, fmt(p.head)),
      h('td', {class: 'num lag'}, fmt(p.lag)),
      h('td', {class: 'num'}, rate(p.events_per_second)),
      h('td', {class: 'error-text'}, errorText(p.error)),
      h('td', {class: 'rebuild-cell'}, rebuildCell(p)),
      row.lastElementChild);
    return row;
  };
  every(500, async () => {
    let body;
    try {
      ({body} = await api('/projections'));
    } catch (error) {
      if (error.status !== 403) throw error;
      byName.hidden = false;
      rows.replaceChildren(h('tr', {}, h('td', {colSpan: 10, class: 'muted'}, error.message)));
      return;
    }
    byName.hidden = true;
    const listed = new Set(body.projections.map((p) => p.name));
    for (const name of [...rowsByName.keys()]) if (!listed.has(name)) rowsByName.delete(name);
    const wanted = body.projections.map(projectionRow);
    if (wanted.length !== rows.children.length || wanted.some((row, i) => rows.children[i] !== row)) {
      rows.replaceChildren(...wanted);
    }
    if (!body.projections.length) rows.append(h('tr', {}, h('td', {colSpan: 10, class: 'muted'}, 'No projection is deployed.')));
  }, cleanups);
}

// One projection: its status, a state browser and a query console.
function projection(cleanups, name) {
  const summary = h('div', {class: 'cards'});
  const prefix = h('input', {id: 'state-prefix', placeholder: 'key prefix'});
  const items = h('tbody');
  const more = h('button', {hidden: true}, 'Next page');
  const position = h('span', {class: 'muted'});
  const loadState = paged(items, more, async (after) => {
    const params = new URLSearchParams({prefix: prefix.value, limit: '50'});
    if (after !== null) params.set('after', after);
    const {body} = await api(`/projections/${name}/state?` + params);
    return {
      next: body.next,
      rows: body.items.map((item) => h('tr', {},
        h('td', {class: 'mono'}, item.key), h('td', {}, h('pre', {}, pretty(item.value))))),
      shown: () => { position.textContent = `as of position ${fmt(body.position)}`; },
    };
  }, () => h('tr', {}, h('td', {colSpan: 2, class: 'muted'}, 'No key has this prefix.')));
  const queryName = h('input', {id: 'query-name', placeholder: 'query name, e.g. top'});
  const queryParams = h('input', {id: 'query-params', placeholder: 'parameters, e.g. n=3&since=2026-01-01'});
  const answer = h('pre', {id: 'query-answer', class: 'card', hidden: true}, '');
  let queries = 0;
  const runQuery = async () => {
    const mine = ++queries;
    const started = performance.now();
    answer.hidden = false;
    try {
      const {body, headers} = await api(`/projections/${name}/query/${encodeURIComponent(queryName.value)}?${queryParams.value}`);
      if (mine !== queries) return; // a later query's answer is the one to show
      answer.textContent = typeof body === 'string' ? body : pretty(body);
      answer.className = 'card';
      answer.dataset.position = headers.get('Lantern-Position');
      answer.prepend(h('div', {class: 'muted'},
        `position ${headers.get('Lantern-Position')}, ${Math.round(performance.now() - started)} ms`));
    } catch (error) {
      if (mine !== queries) return;
      answer.textContent = `${error.code}: ${error.message}`;
      answer.className = 'card error-text';
    }
  };
  const failing = (promise) => promise.catch((e) => showBanner(e.message));
  view.replaceChildren(
    h('h1', {}, h('a', {href: '#/projections'}, 'Projections'), ' / ', name),
    summary,
    h('div', {class: 'split'},
      h('section', {},
        h('h2', {}, 'State'),
        h('form', {class: 'toolbar', onsubmit: (e) => { e.preventDefault(); failing(loadState(true)); }},
          prefix, h('button', {type: 'submit'}, 'Browse'), position),
        h('table', {id: 'state'}, h('thead', {}, h('tr', {}, h('th', {}, 'key'), h('th', {}, 'value'))), items),
        h('div', {class: 'toolbar'}, more)),
      h('section', {},
        h('h2', {}, 'Query'),
        h('form', {class: 'toolbar', onsubmit: (e) => { e.preventDefault(); runQuery(); }},
          queryName, queryParams, h('button', {type: 'submit'}, 'Run')),
        answer)));
  more.addEventListener('click', () => failing(loadState(false)));
  every(1000, async () => {
    const {body: p} = await api(`/projections/${name}`);
    const card = (label, ...value) => h('div', {class: 'card'}, h('div', {class: 'label'}, label), h('div', {class: 'value'}, ...value));
    const subscription = p.subscription;
    summary.replaceChildren(
      card('status', statusCell(p)),
      card('version', p.version),
      card('position / head', `${fmt(p.position)} / ${fmt(p.head)}`),
      card('events / s', rate(p.events_per_second)),
      h('div', {class: 'card'}, h('div', {class: 'label'}, 'subscription'), h('pre', {},
        ['categories', 'streams', 'types'].filter((k) => subscription[k].length).map((k) => `${k}: ${subscription[k].join(', ')}`).join('\n') || 'every event')),
      h('div', {class: 'card'}, h('div', {class: 'label'}, 'module sha-256'), h('div', {class: 'mono'}, p.module_sha256.slice(0, 16) + '…')),
      p.error ? h('div', {class: 'card error-text'}, h('div', {class: 'label'}, 'fault'), errorText(p.error)) : '',
      p.rebuild ? h('div', {class: 'card'}, h('div', {class: 'label'}, 'rebuild'), rebuildCell(p)) : '',
    );
  }, cleanups);
  failing(loadState(true));
}

// ---------------------------------------------------------------------------------------------
// Routing: #/, #/streams, #/streams/NAME, #/tail?category=..., #/projections, #/projections/NAME

let cleanups = [];
function route() {
  for (const cleanup of cleanups) cleanup();
  cleanups = [];
  if (!banner.hidden && banner.className !== 'error') showBanner(null);
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, search] = hash.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(search || '');
  const section = parts[0] || 'overview';
  for (const link of document.querySelectorAll('nav a')) {
    link.classList.toggle('active', link.dataset.view === section);
  }
  document.title = `Lantern · ${parts.join(' / ') || 'overview'}`;
  if (section === 'streams' && parts[1]) stream(cleanups, parts[1]);
  else if (section === 'streams') streams(cleanups, query.get('prefix') || '');
  else if (section === 'tail') tail(cleanups, query);
  else if (section === 'projections' && parts[1]) projection(cleanups, parts[1]);
  else if (section === 'projections') projections(cleanups);
  else overview(cleanups);
}

window.addEventListener('hashchange', route);
learnRole().then(route);
