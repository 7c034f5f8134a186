// Fan-out load clients for bench/fanout.py: N CRM clients in one Node process.
//
// Usage: node bench/js/fanout-clients.mjs URL TOKEN N EXPECTED IDLE_SECONDS [FULL]
//
// FULL of the N clients (default: all) are socket.io-client 4 clients; the others are light
// clients that speak Engine.IO 4 / Socket.IO 5 themselves over a bare websocket (the `ws` package,
// which socket.io-client itself uses in Node). Both kinds connect to URL + '/crm' over their own
// websocket and authenticate with auth {token}, as a CRM does (the light one sends the same
// `40/crm,{"token":…}` CONNECT packet and waits for the server's CONNECT answer, and answers the
// server's pings). Why light clients: a socket.io-client spends about 10 µs of CPU per event
// (string decode, JSON.parse, two emitters), so 1,000 of them at 100 webhooks/s need a whole
// core, more than the server they measure. A light client checks that the frame is a
// `42/crm,["whatsapp:message",…]` event and reads only what it records (the body's send time and
// the `eventId` zaphub writes as the payload's last key) with Buffer.indexOf, no JSON.parse.
//
// Each client takes every 'whatsapp:message' whose text is "fan PHASE SEQ SENT" (SENT: the
// webhook's send time, Unix seconds): it records now − SENT in a histogram per phase (10 µs
// buckets up to 100 ms, then 1 ms), checks that eventId only grows on its socket (order, no
// duplicate), and counts. A histogram rather than every sample: 1,000 clients at 100 webhooks/s
// are 100,000 deliveries a second, and the report must stay small.
//
// stdout, one JSON object a line: {"ready": N} once every client is connected; {"received": n,
// "cpu": s} about every 250 ms while events arrive (deliveries so far, all clients; this
// process's CPU seconds); and last {"done": …} with the histograms (all clients, and the full
// clients' alone in "full"), once every client has EXPECTED events or none came for
// IDLE_SECONDS. The packages come from tests/e2e/js (`npm ci --prefix tests/e2e/js`).
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';

const require = createRequire(new URL('../../tests/e2e/js/package.json', import.meta.url));
const { io } = require('socket.io-client');
const WebSocket = require('ws');

const [url, token, nArg, expectedArg, idleArg, fullArg] = process.argv.slice(2);
const n = Number(nArg);
const expected = Number(expectedArg);
const idleMs = Number(idleArg) * 1000;
const full = fullArg === undefined ? n : Math.min(n, Number(fullArg));

const FINE = 10_000; // buckets of 10 µs: 0–100 ms
const COARSE = 120_000; // then buckets of 1 ms: up to 2 minutes
const phases = new Map(); // phase → {hist: Uint32Array, count, last (Unix s of the last receipt)}
const fullPhases = new Map(); // the same, socket.io-client clients only
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

function phaseOf(map, phase) {
  let p = map.get(phase);
  if (p === undefined) {
    p = { hist: new Uint32Array(FINE + COARSE), count: 0, last: 0 };
    map.set(phase, p);
  }
  return p;
}

// One delivery to client k: `body` is the message text, `eventId` the event's id (both as sent).
function record(k, lastId, body, eventId) {
  const now = performance.timeOrigin + performance.now(); // wall clock, ms, sub-ms precision
  if (typeof body !== 'string' || !body.startsWith('fan ')) return lastId;
  const [, phase, , sent] = body.split(' ');
  const b = bucket((now - Number(sent) * 1000) * 1000);
  const p = phaseOf(phases, phase);
  p.hist[b] += 1;
  p.count += 1;
  p.last = now / 1000;
  if (k < full) {
    const f = phaseOf(fullPhases, phase);
    f.hist[b] += 1;
    f.count += 1;
    f.last = now / 1000;
  }
  if (!(eventId > lastId)) disorder += 1;
  received += 1;
  counts[k] += 1;
  lastEventAt = performance.now();
  if (counts[k] === expected) {
    complete += 1;
    if (complete === n) finish();
  }
  return eventId;
}

const closers = [];

function connectFull(k) {
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
      lastId = record(k, lastId, data && data.message && data.message.body, data && data.eventId);
    });
    socket.once('connect', () => resolve(() => socket.disconnect()));
    socket.once('connect_error', (err) => reject(new Error(`client ${k}: ${err.message}`)));
  });
}

// The light client's protocol, as bytes (Engine.IO packet type, then Socket.IO's).
const WS_URL = url.replace(/^http/, 'ws') + '/socket.io/?EIO=4&transport=websocket';
const EVENT_PREFIX = Buffer.from('42/crm,["whatsapp:message",');
const BODY_KEY = Buffer.from('"body":"');
const EVENT_ID_KEY = Buffer.from('"eventId":');
const PING = 0x32; // Engine.IO ping ("2"), answered with a pong ("3")
const QUOTE = 0x22;

// The text of the first "body" key (the message's: zaphub's payload has no earlier one), as
// written by the server (JSON escapes are left as they are: the bench's bodies have none).
function bodyOf(buf) {
  const at = buf.indexOf(BODY_KEY, EVENT_PREFIX.length);
  if (at < 0) return undefined;
  const start = at + BODY_KEY.length;
  const end = buf.indexOf(QUOTE, start);
  return end < 0 ? undefined : buf.latin1Slice(start, end);
}

// zaphub splices "eventId" into the stored JSON as the payload's last key (wire.with_event_id):
// the number just before the closing "}]". Anywhere else it is searched for.
function eventIdOf(buf) {
  let i = buf.length - 3; // the last digit, before '}' and ']'
  let value = 0;
  let scale = 1;
  while (i >= 0 && buf[i] >= 0x30 && buf[i] <= 0x39) {
    value += (buf[i] - 0x30) * scale;
    scale *= 10;
    i -= 1;
  }
  const key = i + 1 - EVENT_ID_KEY.length;
  if (scale > 1 && key >= 0 && buf.compare(EVENT_ID_KEY, 0, EVENT_ID_KEY.length, key, i + 1) === 0) return value;
  const at = buf.lastIndexOf(EVENT_ID_KEY);
  return at < 0 ? undefined : Number.parseInt(buf.latin1Slice(at + EVENT_ID_KEY.length, at + 40), 10);
}

function connectLight(k) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(WS_URL, { perMessageDeflate: false, skipUTF8Validation: true });
    let state = 'open'; // waiting for Engine.IO OPEN, then for the namespace's CONNECT, then live
    let lastId = 0;
    const fail = (why) => {
      if (state !== 'live') reject(new Error(`client ${k}: ${why}`));
      ws.terminate();
    };
    ws.on('message', (buf) => {
      if (state === 'live') {
        const isEvent =
          buf.length > EVENT_PREFIX.length &&
          buf.compare(EVENT_PREFIX, 0, EVENT_PREFIX.length, 0, EVENT_PREFIX.length) === 0;
        if (isEvent) {
          lastId = record(k, lastId, bodyOf(buf), eventIdOf(buf));
        } else if (buf.length === 1 && buf[0] === PING) {
          ws.send('3');
        }
        return;
      }
      const text = buf.toString();
      if (state === 'open') {
        if (!text.startsWith('0{')) return fail(`expected the Engine.IO OPEN packet, got ${text.slice(0, 80)}`);
        state = 'connect';
        ws.send('40/crm,' + JSON.stringify({ token }));
      } else if (text.startsWith('40/crm,')) {
        state = 'live';
        resolve(() => ws.close());
      } else if (text.startsWith('44/crm,')) {
        fail(JSON.parse(text.slice(7)).message); // connect_error: "unauthorized"
      } else if (text === '2') {
        ws.send('3');
      }
    });
    ws.once('error', (err) => fail(err.message));
    ws.once('close', () => fail('closed'));
  });
}

let finished = false;
function finish() {
  if (finished) return;
  finished = true;
  const report = (map) => {
    const out = {};
    for (const [phase, p] of map) {
      const hist = {};
      p.hist.forEach((c, i) => {
        if (c) hist[i] = c;
      });
      out[phase] = { hist, count: p.count, last: p.last };
    }
    return out;
  };
  for (const close of closers) close();
  // Exit once the report is written: a pipe takes 64 KiB at once, the rest is written later.
  const line = JSON.stringify({
    done: true,
    received,
    cpu: cpuSeconds(),
    counts,
    disorder,
    phases: report(phases),
    full: { clients: full, phases: report(fullPhases) },
  });
  process.stdout.write(line + '\n', () => process.exit(0));
}

// Connect in waves of 50: a thousand handshakes at once would measure the accept queue.
for (let k = 0; k < n; k += 50) {
  const wave = [];
  for (let j = k; j < Math.min(n, k + 50); j++) wave.push(j < full ? connectFull(j) : connectLight(j));
  try {
    closers.push(...(await Promise.all(wave)));
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
