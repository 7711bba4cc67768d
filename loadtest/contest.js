// SPEC §5, the contest scenario (closed model).
//
//   t = 0 s   processors healthy, no delay; gateway and processors purged (setup)
//   0–60 s    VUs ramp 1 → 550; each posts one payment of 19.90 with a fresh UUID, sleeps 1 s
//   t = 10 s  default delay 100 ms
//   t = 20 s  default failing
//   t = 30 s  default 2000 ms + failing, fallback 1000 ms + failing
//   t = 40 s  both healthy, 20 ms
//   t = 50 s  default 0 ms, fallback 5000 ms
//   every 10 s (t = 10 … 70 s) the auditor compares the gateway's summary with both
//             processors' over [now − 15 s, now − 1.5 s]
//   t = 62 s  the final check lets the gateway settle, then compares all-time totals:
//             lag = payments acknowledged (202) − payments processed (gateway summary)
//
// Thresholds fail the run (exit 99) on any inconsistency, audit or stage error, or lag ≠ 0.
// Results: JSON at $RESULTS (default target/loadtest/contest.json) and a text summary.
//
//   k6 run loadtest/contest.js   (with GATEWAY_URL, DEFAULT_URL, FALLBACK_URL, ADMIN_TOKEN)
//   just loadtest contest        (starts processors and gateway itself; see loadtest/run.sh)

import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Gauge } from 'k6/metrics';
import {
  cfg, env, envNumber, PROCESSORS, postPayment, configureProcessors, resetAll, fetchSummaries,
  compare, settle, totalRequests, paymentParams, count, metricValue, errorsByStatus, latency, thresholdLines, fmtMs,
  money, resultsPath,
} from './lib.js';

const MAX_VUS = envNumber('MAX_VUS', 550);
const SETTLE_TIMEOUT_S = envNumber('SETTLE_TIMEOUT_S', 30);
const SETTLE_STABLE_S = envNumber('SETTLE_STABLE_S', 3);
const FINAL_AT_S = 62; // load ends at 60 s; the last iterations' 1 s sleep ends by ~61 s

// The processors' state from each stage on (complete state each time, so a stage is
// idempotent and does not depend on the one before it).
const STAGES = {
  10: { default: { delay: 100, failure: false }, fallback: { delay: 0, failure: false } },
  20: { default: { delay: 100, failure: true }, fallback: { delay: 0, failure: false } },
  30: { default: { delay: 2000, failure: true }, fallback: { delay: 1000, failure: true } },
  40: { default: { delay: 20, failure: false }, fallback: { delay: 20, failure: false } },
  50: { default: { delay: 0, failure: false }, fallback: { delay: 5000, failure: false } },
};

// POST /payments is tagged with its 10 s phase of the load (0 = 0–10 s … 5 = 50–60 s), so
// the results show which processor stage the latency tail comes from.
const PHASES = [0, 1, 2, 3, 4, 5];
const PHASE_PARAMS = PHASES.map((i) => paymentParams({ phase: String(i) }));

function stageScenarios() {
  const out = {};
  for (const t of Object.keys(STAGES)) {
    out[`stage_${t}`] = {
      executor: 'per-vu-iterations', exec: 'stage', vus: 1, iterations: 1,
      startTime: `${t}s`, maxDuration: '9s', env: { STAGE: t },
    };
  }
  return out;
}

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'p(50)', 'p(90)', 'p(99)', 'p(99.9)', 'max', 'count'],
  setupTimeout: '30s',
  teardownTimeout: '10s',
  scenarios: {
    payments: {
      executor: 'ramping-vus', exec: 'payments', startVUs: 1,
      stages: [{ duration: '60s', target: MAX_VUS }],
      gracefulRampDown: '0s', gracefulStop: '5s',
    },
    ...stageScenarios(),
    auditor: {
      executor: 'constant-arrival-rate', exec: 'audit', rate: 1, timeUnit: '10s',
      startTime: '10s', duration: '61s', preAllocatedVUs: 2, maxVUs: 2,
    },
    final: {
      executor: 'per-vu-iterations', exec: 'finalCheck', vus: 1, iterations: 1,
      startTime: `${FINAL_AT_S}s`, maxDuration: `${SETTLE_TIMEOUT_S + 15}s`,
    },
  },
  thresholds: {
    inconsistencies: ['count==0'],
    final_inconsistencies: ['count==0'],
    audit_errors: ['count==0'],
    stage_errors: ['count==0'],
    audits: ['count>=6'],
    // +1 per 202, −(payments processed) once by the final check: 0 means no lag. If the
    // final check never ran, lag = every acknowledged payment and the threshold fails.
    lag: ['count==0'],
    // Listed only so that k6 computes these submetrics for handleSummary.
    'http_req_duration{kind:payment}': ['max>=0'],
    'http_req_duration{expected_response:true}': ['max>=0'],
    ...Object.fromEntries(PHASES.map((i) => [`http_req_duration{kind:payment,phase:${i}}`, ['max>=0']])),
  },
};

const audits = new Counter('audits');
const inconsistencies = new Counter('inconsistencies');
const inconsistencyCents = new Counter('inconsistency_amount_cents');
const auditErrors = new Counter('audit_errors');
const finalInconsistencies = new Counter('final_inconsistencies');
const lag = new Counter('lag');
const stageErrors = new Counter('stage_errors');
const processedAtLoadEnd = new Gauge('processed_at_load_end');
const settleMs = new Gauge('settle_ms');
const settled = new Gauge('settled');
const book = {};
for (const name of PROCESSORS) {
  book[name] = {
    requests: new Gauge(`gw_${name}_requests`), cents: new Gauge(`gw_${name}_cents`),
    procRequests: new Gauge(`proc_${name}_requests`), procCents: new Gauge(`proc_${name}_cents`),
    procFeeCents: new Gauge(`proc_${name}_fee_cents`),
  };
}

export function setup() {
  resetAll();
  return { startedAt: new Date().toISOString() };
}

export function payments() {
  const phase = Math.floor((Date.now() - exec.scenario.startTime) / 10000);
  postPayment('19.90', [lag], PHASE_PARAMS[Math.max(0, Math.min(5, phase))]);
  sleep(1);
}

export function stage() {
  const t = __ENV.STAGE;
  try {
    configureProcessors(STAGES[t]);
    stageErrors.add(0);
    console.log(`stage t=${t}s: ${JSON.stringify(STAGES[t])}`);
  } catch (e) {
    stageErrors.add(1);
    console.error(`stage t=${t}s could not be set: ${e.message || e}`);
  }
}

export function audit() {
  const now = Date.now();
  const from = new Date(now - 15000).toISOString();
  const to = new Date(now - 1500).toISOString();
  const s = fetchSummaries(from, to);
  audits.add(1);
  if (s.error) {
    auditErrors.add(1);
    console.error(`audit [${from}, ${to}]: ${s.error}`);
    return;
  }
  auditErrors.add(0);
  const d = compare(s);
  inconsistencies.add(d.payments);
  inconsistencyCents.add(d.amountCents);
  if (d.payments) console.error(`audit [${from}, ${to}]: ${d.payments} inconsistent payment(s): ${d.detail}`);
}

export function finalCheck() {
  const r = settle(SETTLE_TIMEOUT_S, SETTLE_STABLE_S);
  if (r.first) processedAtLoadEnd.add(totalRequests(r.first.gateway));
  settleMs.add(r.ms);
  settled.add(r.settled ? 1 : 0);
  if (!r.last) {
    auditErrors.add(1);
    console.error(`final check: no summary could be read: ${r.error}`);
    return;
  }
  const s = r.last;
  for (const name of PROCESSORS) {
    book[name].requests.add(s.gateway[name].requests);
    book[name].cents.add(s.gateway[name].cents);
    book[name].procRequests.add(s.processors[name].requests);
    book[name].procCents.add(s.processors[name].cents);
    book[name].procFeeCents.add(s.processors[name].feeCents);
  }
  const d = compare(s);
  finalInconsistencies.add(d.payments);
  if (d.payments) console.error(`final check (all time): ${d.payments} inconsistent payment(s): ${d.detail}`);
  lag.add(-totalRequests(s.gateway));
  if (!r.settled) console.error(`final check: gateway did not settle within ${SETTLE_TIMEOUT_S} s${r.error ? `: ${r.error}` : ''}`);
}

function r3(x) {
  return x === null ? null : Math.round(x * 1000) / 1000;
}

export function handleSummary(data) {
  const p99 = metricValue(data, 'http_req_duration', 'p(99)');
  const accepted = count(data, 'payments_accepted');
  const finalRan = metricValue(data, 'gw_default_requests', 'value') !== null;
  const payments = {};
  const processors = {};
  let amountCents = 0;
  let feeCents = 0;
  for (const name of PROCESSORS) {
    payments[name] = finalRan ? metricValue(data, `gw_${name}_requests`, 'value') : null;
    processors[name] = finalRan ? {
      requests: metricValue(data, `proc_${name}_requests`, 'value'),
      amount: metricValue(data, `proc_${name}_cents`, 'value') / 100,
      fee: metricValue(data, `proc_${name}_fee_cents`, 'value') / 100,
      gateway_amount: metricValue(data, `gw_${name}_cents`, 'value') / 100,
    } : null;
    if (finalRan) {
      amountCents += metricValue(data, `proc_${name}_cents`, 'value');
      feeCents += metricValue(data, `proc_${name}_fee_cents`, 'value');
    }
  }
  const processed = finalRan ? PROCESSORS.reduce((n, name) => n + payments[name], 0) : null;
  const atEnd = metricValue(data, 'processed_at_load_end', 'value');
  const netCents = amountCents - feeCents;
  const bonusPct = p99 === null ? 0 : Math.max(0, 11 - p99) * 0.02;
  const bonusCents = Math.round(netCents * bonusPct);
  const inc = count(data, 'inconsistencies');
  const lagValue = count(data, 'lag');
  const fine = inc > 0 || count(data, 'final_inconsistencies') > 0 || lagValue !== 0 ? 0.35 : 0;
  const { lines: tlines, ok } = thresholdLines(data);

  const result = {
    scenario: 'contest',
    ok,
    p99_ms: r3(p99),
    p99_payments_ms: r3(metricValue(data, 'http_req_duration{kind:payment}', 'p(99)')),
    p99_expected_response_ms: r3(metricValue(data, 'http_req_duration{expected_response:true}', 'p(99)')),
    p99_payments_by_phase_ms: Object.fromEntries(PHASES.map((i) => [`${i * 10}-${i * 10 + 10}s`,
      r3(metricValue(data, `http_req_duration{kind:payment,phase:${i}}`, 'p(99)'))])),
    latency_ms: {
      all: latency(data, 'http_req_duration'),
      payments: latency(data, 'http_req_duration{kind:payment}'),
    },
    audits: count(data, 'audits'),
    audit_errors: count(data, 'audit_errors'),
    stage_errors: count(data, 'stage_errors'),
    inconsistencies: inc,
    inconsistency_amount: count(data, 'inconsistency_amount_cents') / 100,
    final_inconsistencies: count(data, 'final_inconsistencies'),
    acknowledged: accepted,
    processed,
    lag: lagValue,
    lag_at_load_end: atEnd === null ? null : accepted - atEnd,
    settled: metricValue(data, 'settled', 'value') === 1,
    settle_ms: metricValue(data, 'settle_ms', 'value'),
    payments,
    processors,
    payment_errors: errorsByStatus(data),
    payments_sent: count(data, 'http_req_duration{kind:payment}'),
    profit: finalRan ? {
      amount: amountCents / 100,
      fees: feeCents / 100,
      net: netCents / 100,
      p99_bonus_pct: Math.round(bonusPct * 10000) / 100,
      bonus: bonusCents / 100,
      total: (netCents + bonusCents) / 100,
      contest_fine_pct: fine * 100,
      total_after_contest_fine: Math.round(netCents + bonusCents - netCents * fine) / 100,
    } : null,
    max_vus: MAX_VUS,
    gateway: cfg.gateway,
    started_at: data.setup_data ? data.setup_data.startedAt : null,
    duration_s: Math.round(data.state.testRunDurationMs) / 1000,
  };

  const path = resultsPath('contest');
  const pl = result.latency_ms.payments;
  const text = [
    '',
    `paygate contest scenario (SPEC §5), ${result.duration_s} s, up to ${MAX_VUS} VUs, gateway ${cfg.gateway}`,
    `  p99 all requests ${fmtMs(p99)} ms; POST /payments p50 ${fmtMs(pl.p50)} p90 ${fmtMs(pl.p90)} p99 ${fmtMs(pl.p99)} p99.9 ${fmtMs(pl.p999)} max ${fmtMs(pl.max)} ms`,
    `  POST /payments p99 by 10 s phase: ${Object.entries(result.p99_payments_by_phase_ms).map(([k, v]) => `${k} ${fmtMs(v)}`).join(', ')} ms`,
    `  payments sent ${result.payments_sent}, acknowledged (202) ${accepted}, errors ${JSON.stringify(result.payment_errors)}`,
    `  audits ${result.audits}, inconsistencies ${inc} (amount ${result.inconsistency_amount.toFixed(2)}), audit errors ${result.audit_errors}, final all-time inconsistencies ${result.final_inconsistencies}`,
    `  processed ${processed === null ? 'n/a' : processed}: ${PROCESSORS.map((n) => `${n} ${payments[n] === null ? 'n/a' : payments[n]}`).join(', ')}`,
    `  lag ${lagValue} (at load end: ${result.lag_at_load_end === null ? 'n/a' : result.lag_at_load_end}; ${result.settled ? `settled after ${(result.settle_ms / 1000).toFixed(1)} s` : 'did NOT settle'})`,
    result.profit
      ? `  profit ${money(netCents + bonusCents)} = amount ${money(amountCents)} − fees ${money(feeCents)} + p99 bonus ${result.profit.p99_bonus_pct} % (${money(bonusCents)})`
      : '  profit n/a (the final check did not run)',
    '  thresholds:',
    ...tlines,
    `  ${ok ? 'PASS' : 'FAIL'}; results: ${path}`,
    '',
  ].join('\n');
  return { stdout: text, [path]: JSON.stringify(result, null, 1) + '\n' };
}
