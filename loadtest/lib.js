// Shared pieces of paygate's k6 scripts: configuration from the environment, payment
// requests, the processors' admin API, summary comparisons (the contest's auditor), the
// settle-then-compare end check, and small formatting helpers for handleSummary.
//
// k6 v1.x. No remote imports: everything runs offline on loopback.

import http from 'k6/http';
import { sleep } from 'k6';
import { Counter } from 'k6/metrics';

function env(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : v;
}

function trimSlash(url) {
  return url.replace(/\/+$/, '');
}

export function envNumber(name, fallback) {
  const raw = env(name, undefined);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n)) throw new Error(`${name}=${raw} is not a number`);
  return n;
}

export { env };

export const cfg = {
  gateway: trimSlash(env('GATEWAY_URL', 'http://127.0.0.1:9999')),
  processors: {
    default: trimSlash(env('DEFAULT_URL', 'http://127.0.0.1:8001')),
    fallback: trimSlash(env('FALLBACK_URL', 'http://127.0.0.1:8002')),
  },
  adminToken: env('ADMIN_TOKEN', ''),
  processorToken: env('PROCESSOR_TOKEN', '123'),
};

export const PROCESSORS = ['default', 'fallback'];

// ---------------------------------------------------------------- ids and money

// A random (version 4) UUID. k6 v1 has the Web Crypto global with randomUUID(); the
// fallback keeps the scripts usable on runtimes without it.
export function uuidv4() {
  if (typeof crypto !== 'undefined' && typeof crypto.randomUUID === 'function') {
    return crypto.randomUUID();
  }
  return 'xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx'.replace(/[xy]/g, (c) => {
    const r = (Math.random() * 16) | 0;
    return (c === 'x' ? r : (r & 0x3) | 0x8).toString(16);
  });
}

// Amounts travel as JSON numbers with two decimals; compare them as integer cents.
export function cents(x) {
  return Math.round(Number(x) * 100);
}

export function money(c) {
  const sign = c < 0 ? '-' : '';
  const a = Math.abs(Math.round(c));
  return `${sign}${Math.floor(a / 100)}.${String(a % 100).padStart(2, '0')}`;
}

// ---------------------------------------------------------------- payments

// Statuses other than 202 get their own counter, so handleSummary can list errors by status
// (k6 reports submetrics only where a threshold names them). 0 = no HTTP response at all.
const ERROR_STATUSES = [0, 400, 404, 405, 408, 409, 413, 415, 422, 429, 500, 502, 503, 504];
const errorCounters = {};
for (const s of ERROR_STATUSES) errorCounters[s] = new Counter(`errors_status_${s}`);
const errorOther = new Counter('errors_status_other');

export const paymentsAccepted = new Counter('payments_accepted');
export const paymentErrors = new Counter('payment_errors');

// Request parameters of POST /payments, with extra tags (build them once, in the init context).
export function paymentParams(extraTags) {
  return {
    headers: { 'Content-Type': 'application/json' },
    tags: Object.assign({ name: 'POST /payments', kind: 'payment' }, extraTags || {}),
    responseType: 'none',
  };
}

const PAY_PARAMS = paymentParams();

// Posts one payment; counts it as accepted (202) or as an error by status, and adds 1 to
// each of extraCounters on a 202. Returns the response.
export function postPayment(amountText, extraCounters, params) {
  const body = `{"correlationId":"${uuidv4()}","amount":${amountText}}`;
  const res = http.post(`${cfg.gateway}/payments`, body, params || PAY_PARAMS);
  if (res.status === 202) {
    paymentsAccepted.add(1);
    if (extraCounters) for (const c of extraCounters) c.add(1);
  } else {
    paymentErrors.add(1);
    (errorCounters[res.status] || errorOther).add(1);
  }
  return res;
}

// ---------------------------------------------------------------- admin calls

function adminParams(name) {
  return {
    headers: { 'Content-Type': 'application/json', 'X-Rinha-Token': cfg.processorToken },
    tags: { name, kind: 'admin' },
    responseType: 'text',
    timeout: '10s',
  };
}

function expectStatus(res, ok, what) {
  if (!ok.includes(res.status)) {
    throw new Error(`${what}: HTTP ${res.status} ${res.error || ''} ${String(res.body || '').slice(0, 200)}`);
  }
  return res;
}

// Sets delay and failure of processors at once: {default: {delay, failure}, fallback: {...}}.
export function configureProcessors(conf) {
  const reqs = [];
  const what = [];
  for (const name of Object.keys(conf)) {
    const url = cfg.processors[name];
    const c = conf[name];
    reqs.push(['PUT', `${url}/admin/configurations/delay`, JSON.stringify({ delay: c.delay }), adminParams('processor admin')]);
    what.push(`${name} delay=${c.delay}`);
    reqs.push(['PUT', `${url}/admin/configurations/failure`, JSON.stringify({ failure: c.failure }), adminParams('processor admin')]);
    what.push(`${name} failure=${c.failure}`);
  }
  const out = http.batch(reqs);
  out.forEach((r, i) => expectStatus(r, [200, 204], `set ${what[i]}`));
}

export function purgeProcessors() {
  for (const name of PROCESSORS) {
    expectStatus(http.post(`${cfg.processors[name]}/admin/purge-payments`, null, adminParams('processor admin')),
      [200, 204], `purge processor ${name} (${cfg.processors[name]})`);
  }
}

export function purgeGateway() {
  if (!cfg.adminToken) throw new Error('ADMIN_TOKEN is not set: cannot purge the gateway (POST /purge-payments)');
  const res = http.post(`${cfg.gateway}/purge-payments`, null, {
    headers: { 'X-Admin-Token': cfg.adminToken }, tags: { name: 'POST /purge-payments', kind: 'admin' }, responseType: 'text', timeout: '10s',
  });
  expectStatus(res, [200, 204], `purge gateway (${cfg.gateway})`);
}

// Both processors healthy with no delay, every payment forgotten (processors and gateway).
export function resetAll() {
  configureProcessors({ default: { delay: 0, failure: false }, fallback: { delay: 0, failure: false } });
  purgeProcessors();
  purgeGateway();
}

// ---------------------------------------------------------------- summaries

function query(from, to) {
  const q = [];
  if (from) q.push(`from=${encodeURIComponent(from)}`);
  if (to) q.push(`to=${encodeURIComponent(to)}`);
  return q.length ? `?${q.join('&')}` : '';
}

function parse(res, what) {
  if (res.status !== 200) return { error: `${what}: HTTP ${res.status} ${res.error || ''}`.trim() };
  try {
    return { body: JSON.parse(res.body) };
  } catch (e) {
    return { error: `${what}: unparsable body ${String(res.body).slice(0, 200)}` };
  }
}

// Fetches, in parallel, the gateway's summary and both processors' admin summaries for one
// window (all time when from/to are null). Returns {error} or
// {gateway: {default: {requests, cents}, ...}, processors: {default: {requests, cents, feeCents}, ...}}.
export function fetchSummaries(from, to) {
  const q = query(from, to);
  const reqs = [['GET', `${cfg.gateway}/payments-summary${q}`, null,
    { tags: { name: 'GET /payments-summary', kind: 'audit' }, responseType: 'text', timeout: '10s' }]];
  for (const name of PROCESSORS) {
    reqs.push(['GET', `${cfg.processors[name]}/admin/payments-summary${q}`, null, adminParams('processor summary')]);
  }
  const res = http.batch(reqs);
  const gw = parse(res[0], 'gateway summary');
  if (gw.error) return { error: gw.error };
  const out = { gateway: {}, processors: {} };
  for (let i = 0; i < PROCESSORS.length; i++) {
    const name = PROCESSORS[i];
    const p = parse(res[i + 1], `processor ${name} summary`);
    if (p.error) return { error: p.error };
    const g = gw.body[name];
    if (!g || typeof g.totalRequests !== 'number') return { error: `gateway summary has no "${name}" entry: ${res[0].body}` };
    out.gateway[name] = { requests: g.totalRequests, cents: cents(g.totalAmount) };
    out.processors[name] = {
      requests: p.body.totalRequests, cents: cents(p.body.totalAmount), feeCents: cents(p.body.totalFee),
      feePerTransaction: p.body.feePerTransaction,
    };
  }
  return out;
}

// Per processor: how many payments and how much money the gateway's books and the
// processor's differ by. `payments` is the contest's count of inconsistencies: the number
// of payments by which the counts differ, plus 1 per processor whose counts agree but whose
// amounts do not.
export function compare(s) {
  let payments = 0;
  let amountCents = 0;
  const lines = [];
  for (const name of PROCESSORS) {
    const g = s.gateway[name];
    const p = s.processors[name];
    const dn = Math.abs(g.requests - p.requests);
    const da = Math.abs(g.cents - p.cents);
    payments += dn > 0 ? dn : (da > 0 ? 1 : 0);
    amountCents += da;
    if (dn || da) lines.push(`${name}: gateway ${g.requests} / ${money(g.cents)}, processor ${p.requests} / ${money(p.cents)}`);
  }
  return { payments, amountCents, detail: lines.join('; ') };
}

export function totalRequests(book) {
  return PROCESSORS.reduce((n, name) => n + book[name].requests, 0);
}

// Polls all-time summaries until the gateway agrees with the processors and nothing has
// changed for `stableS` seconds, or `timeoutS` passes. Returns {first, last, settled, ms}.
export function settle(timeoutS, stableS) {
  const t0 = Date.now();
  let first = null;
  let last = null;
  let lastKey = null;
  let stableSince = 0;
  for (;;) {
    const s = fetchSummaries(null, null);
    if (!first && !s.error) first = s;
    if (!s.error) last = s;
    const now = Date.now();
    if (!s.error && compare(s).payments === 0) {
      const key = JSON.stringify(s);
      if (key !== lastKey) {
        lastKey = key;
        stableSince = now;
      } else if (now - stableSince >= stableS * 1000) {
        return { first, last, settled: true, ms: stableSince - t0 };
      }
    } else {
      lastKey = null;
    }
    if (now - t0 >= timeoutS * 1000) return { first, last, settled: false, ms: now - t0, error: s.error };
    sleep(0.25);
  }
}

// ---------------------------------------------------------------- handleSummary helpers

export function metricValue(data, name, stat) {
  const m = data.metrics[name];
  if (!m || !m.values || m.values[stat] === undefined) return null;
  return m.values[stat];
}

export function count(data, name) {
  return metricValue(data, name, 'count') || 0;
}

// {status: count} of the payment errors recorded by postPayment.
export function errorsByStatus(data) {
  const out = {};
  for (const name of Object.keys(data.metrics)) {
    const m = /^errors_status_(.+)$/.exec(name);
    if (m && data.metrics[name].values.count > 0) out[m[1]] = data.metrics[name].values.count;
  }
  return out;
}

// Trend percentiles (ms) of one trend metric, keyed like `paygate loadgen`'s JSON.
export function latency(data, name) {
  const v = (data.metrics[name] || {}).values || {};
  const r = (x) => (x === undefined || x === null ? null : Math.round(x * 1000) / 1000);
  return {
    count: v.count === undefined ? null : v.count,
    avg: r(v.avg), min: r(v.min), p50: r(v['p(50)']), p90: r(v['p(90)']), p99: r(v['p(99)']),
    p999: r(v['p(99.9)']), max: r(v.max),
  };
}

// Lines "✓ metric: expression" for every threshold, and whether all passed. Thresholds
// "max>=0" only make k6 compute a submetric for handleSummary; they are left out of the lines.
export function thresholdLines(data) {
  const lines = [];
  let ok = true;
  for (const name of Object.keys(data.metrics).sort()) {
    const t = data.metrics[name].thresholds;
    if (!t) continue;
    for (const expr of Object.keys(t)) {
      if (!t[expr].ok) ok = false;
      if (expr === 'max>=0' && t[expr].ok) continue;
      lines.push(`    ${t[expr].ok ? '✓' : '✗'} ${name}: ${expr}`);
    }
  }
  return { lines, ok };
}

export function fmtMs(x) {
  if (x === null || x === undefined) return 'n/a';
  return x < 10 ? x.toFixed(3) : x.toFixed(1);
}

export function resultsPath(scenario) {
  return env('RESULTS', `target/loadtest/${scenario}.json`);
}
