// Steady open-model load: payments arrive at a fixed rate whatever the responses do
// (constant-arrival-rate), so a slow response does not slow the arrivals down.
//
//   RATE        arrivals per second (default 1000)
//   DURATION    how long (default 30s)
//   PRE_VUS     VUs allocated before the start (default max(20, RATE/50): 20 ms of
//               concurrency at RATE); MAX_VUS ceiling (default max(100, RATE/4): 250 ms of
//               stall at RATE); past it k6 drops arrivals and counts dropped_iterations
//   P99_MAX_MS  optional: fail the run when POST /payments p99 exceeds it
//   PURGE       1 (default when ADMIN_TOKEN is set) purges the gateway and the processors
//               (DEFAULT_URL, FALLBACK_URL) and resets the processors to healthy, no delay
//
// Fails (exit 99) on any non-202 answer. Results: $RESULTS (default target/loadtest/steady.json)
// with p50/p90/p99/p99.9/max in ms, errors by status and dropped iterations.

import {
  cfg, env, envNumber, postPayment, resetAll, count, errorsByStatus, latency, thresholdLines, fmtMs,
  resultsPath,
} from './lib.js';

const RATE = envNumber('RATE', 1000);
const DURATION = env('DURATION', '30s');
const PRE_VUS = envNumber('PRE_VUS', Math.max(20, Math.ceil(RATE / 50)));
const MAX_VUS = Math.max(PRE_VUS, envNumber('MAX_VUS', Math.max(100, Math.ceil(RATE / 4))));
const P99_MAX_MS = envNumber('P99_MAX_MS', null);
const PURGE = env('PURGE', cfg.adminToken ? '1' : '0') === '1';

const thresholds = {
  payment_errors: ['count==0'],
  'http_req_duration{kind:payment}': P99_MAX_MS === null ? ['max>=0'] : [`p(99)<=${P99_MAX_MS}`],
};

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'p(50)', 'p(90)', 'p(99)', 'p(99.9)', 'max', 'count'],
  setupTimeout: '30s',
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate', exec: 'pay', rate: RATE, timeUnit: '1s', duration: DURATION,
      preAllocatedVUs: PRE_VUS, maxVUs: MAX_VUS, gracefulStop: '10s',
    },
  },
  thresholds,
};

export function setup() {
  if (PURGE) resetAll();
}

export function pay() {
  postPayment('19.90');
}

export function handleSummary(data) {
  const { lines, ok } = thresholdLines(data);
  const lat = latency(data, 'http_req_duration{kind:payment}');
  const durS = data.state.testRunDurationMs / 1000;
  const result = {
    scenario: 'steady',
    ok,
    rate: RATE,
    duration: DURATION,
    pre_allocated_vus: PRE_VUS,
    max_vus: MAX_VUS,
    requests: lat.count,
    acknowledged: count(data, 'payments_accepted'),
    achieved_rate: lat.count === null ? null : Math.round((lat.count / durS) * 10) / 10,
    latency_ms: lat,
    errors: errorsByStatus(data),
    error_count: count(data, 'payment_errors'),
    dropped_iterations: count(data, 'dropped_iterations'),
    vus_allocated: data.metrics.vus_max ? data.metrics.vus_max.values.max : null,
    gateway: cfg.gateway,
  };
  const path = resultsPath('steady');
  const text = [
    '',
    `paygate steady (open model): ${RATE}/s for ${DURATION} against ${cfg.gateway}`,
    `  requests ${result.requests} (${result.achieved_rate}/s), 202 ${result.acknowledged}, errors ${JSON.stringify(result.errors)}, dropped iterations ${result.dropped_iterations}, VUs ${PRE_VUS}..${MAX_VUS} (allocated ${result.vus_allocated})`,
    `  POST /payments ms: p50 ${fmtMs(lat.p50)}  p90 ${fmtMs(lat.p90)}  p99 ${fmtMs(lat.p99)}  p99.9 ${fmtMs(lat.p999)}  max ${fmtMs(lat.max)}`,
    '  thresholds:',
    ...lines,
    `  ${ok ? 'PASS' : 'FAIL'}; results: ${path}`,
    '',
  ].join('\n');
  return { stdout: text, [path]: JSON.stringify(result, null, 1) + '\n' };
}
