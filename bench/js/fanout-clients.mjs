// Fan-out load clients for bench/fanout.py: N socket.io-client 4 clients in one Node process.
//
// Usage: node bench/js/fanout-clients.mjs URL TOKEN N EXPECTED IDLE_SECONDS
//
// Each client connects to URL + '/crm' over its own websocket with auth {token}, as a CRM does,
// and takes every 'whatsapp:message' whose text is "fan PHASE SEQ SENT" (SENT: the webhook's
// send time, Unix seconds): it records now − SENT in a histogram per phase (10 µs buckets up to
// 100 ms, then 1 ms), checks that eventId only grows on its socket (order, no duplicate), and
// counts. A histogram rather than every sample: 1,000 clients at 100 webhooks/s are 100,000
// deliveries a second, and the report must stay small.
//
// stdout, one JSON object a line: {"ready": N} once every client is connected; {"received": n,
// "cpu": s} about every 250 ms while events arrive (deliveries so far, all clients; this
// process's CPU seconds); and last {"done": …} with the histograms, once every client has EXPECTED events or none came for
// IDLE_SECONDS. socket.io-client comes from tests/e2e/js (`npm ci --prefix tests/e2e/js`).
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';

const require = createRequire(new URL('../../tests/e2e/js/package.json', import.meta.url));
const { io } = require('socket.io-client');

const [url, token, nArg, expectedArg, idleArg] = process.argv.slice(2);
const n = Number(nArg);
const expected = Number(expectedArg);
const idleMs = Number(idleArg) * 1000;

const FINE = 10_000; // buckets of 10 µs: 0–100 ms
const COARSE = 120_000; // then buckets of 1 ms: up to 2 minutes
const phases = new Map(); // phase → {hist: Uint32Array, count, last (Unix s of the last receipt)}
const counts = new Array(n).fill(0);
let received = 0;
let disorder = 0; // an eventId not above the socket's previous one: out of order or a duplicate
let complete = 0;
let lastEventAt = performance.now();

const cpuSeconds = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
};
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

function bucket(us) {
  if (us < 0) return 0; // clocks of two processes: never below the send time by more than noise
  if (us < FINE * 10) return Math.floor(us / 10);
  return Math.min(FINE + COARSE - 1, FINE + Math.floor((us - FINE * 10) / 1000));
}

function record(k, lastId, data) {
  const now = performance.timeOrigin + performance.now(); // wall clock, ms, sub-ms precision
  const body = data && data.message && data.message.body;
  if (typeof body !== 'string' || !body.startsWith('fan ')) return lastId;
  const [, phase, , sent] = body.split(' ');
  let p = phases.get(phase);
  if (p === undefined) {
    p = { hist: new Uint32Array(FINE + COARSE), count: 0, last: 0 };
    phases.set(phase, p);
  }
  p.hist[bucket((now - Number(sent) * 1000) * 1000)] += 1;
  p.count += 1;
  p.last = now / 1000;
  if (!(data.eventId > lastId)) disorder += 1;
  received += 1;
  counts[k] += 1;
  lastEventAt = performance.now();
  if (counts[k] === expected) {
    complete += 1;
    if (complete === n) finish();
  }
  return data.eventId;
}

const sockets = [];

function connect(k) {
  return new Promise((resolve, reject) => {
    // forceNew: one websocket per client, as N separate CRMs would have (not one multiplexed).
    const socket = io(url + '/crm', {
      auth: { token },
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
    });
    let lastId = 0;
    socket.on('whatsapp:message', (data) => {
      lastId = record(k, lastId, data);
    });
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => reject(new Error(`client ${k}: ${err.message}`)));
  });
}

let finished = false;
function finish() {
  if (finished) return;
  finished = true;
  const out = {};
  for (const [phase, p] of phases) {
    const hist = {};
    p.hist.forEach((c, i) => {
      if (c) hist[i] = c;
    });
    out[phase] = { hist, count: p.count, last: p.last };
  }
  for (const s of sockets) s.disconnect();
  // Exit once the report is written: a pipe takes 64 KiB at once, the rest is written later.
  const report = JSON.stringify({ done: true, received, cpu: cpuSeconds(), counts, disorder, phases: out });
  process.stdout.write(report + '\n', () => process.exit(0));
}

// Connect in waves of 50: a thousand handshakes at once would measure the accept queue.
for (let k = 0; k < n; k += 50) {
  const wave = [];
  for (let j = k; j < Math.min(n, k + 50); j++) wave.push(connect(j));
  try {
    sockets.push(...(await Promise.all(wave)));
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
}
emit({ ready: n });
lastEventAt = performance.now();

let reported = -1;
setInterval(() => {
  if (received !== reported) {
    reported = received;
    emit({ received, cpu: cpuSeconds() });
  }
  if (performance.now() - lastEventAt > idleMs) finish();
}, 250);
