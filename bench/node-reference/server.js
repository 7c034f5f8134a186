'use strict';
// zaphub's inbound webhook path in plain Node, as a measuring stick for bench/webhooks.py.
// Not product code: see README.md for what it does and, above all, what it leaves out.
//
//   node server.js --port 3000 --db /tmp/ref.db --app-secret S --jwt-secret J
//   node server.js --port 3001 --floor          # a bare route: read the body, answer 200

const crypto = require('node:crypto');
const http = require('node:http');
const { parseArgs } = require('node:util');

const { values: opts } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '3000' },
    db: { type: 'string', default: 'reference.db' },
    'app-secret': { type: 'string', default: process.env.WHATSAPP_APP_SECRET || '' },
    'jwt-secret': { type: 'string', default: process.env.CRM_JWT_SECRET || '' },
    synchronous: { type: 'string', default: 'FULL' },
    floor: { type: 'boolean', default: false },
  },
});

const WEBHOOK = '/meta-whatsapp/webhook';
const MAX_BODY = 4 * 1024 * 1024; // zaphub's default webhook_max_bytes
const MAX_WEBHOOKS = 200; // per transaction, as zaphub's IngestBatcher

function answer(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function readBody(req, res, then) {
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      answer(res, 413, '{"error":{"code":"too_large"}}');
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    if (size <= MAX_BODY) then(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
  });
}

if (opts.floor) {
  // The floor: what Node's http module costs to read the same request and answer 200.
  http
    .createServer((req, res) => {
      if (req.method === 'POST') readBody(req, res, () => answer(res, 200, '{"received":1}'));
      else answer(res, 405, '');
    })
    .listen(Number(opts.port), opts.host);
  return;
}

if (!opts['app-secret'] || !opts['jwt-secret']) {
  console.error('--app-secret and --jwt-secret are required');
  process.exit(2);
}
const appSecret = Buffer.from(opts['app-secret']);
const jwtSecret = Buffer.from(opts['jwt-secret']);

// ---- storage: the tables of zaphub's webhook path, with zaphub's columns, keys and indexes ----

const Database = require('better-sqlite3');
const db = new Database(opts.db);
db.pragma('journal_mode = WAL');
db.pragma(`synchronous = ${opts.synchronous === 'NORMAL' ? 'NORMAL' : 'FULL'}`);
db.pragma('busy_timeout = 10000');
db.pragma('foreign_keys = ON');
db.exec(`
CREATE TABLE IF NOT EXISTS contacts (
  id INTEGER PRIMARY KEY, wa_id VARCHAR(64) NOT NULL UNIQUE, name VARCHAR(256),
  created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, search_name VARCHAR(256));
CREATE TABLE IF NOT EXISTS conversations (
  id INTEGER PRIMARY KEY, phone_number_id VARCHAR(64) NOT NULL,
  contact_id BIGINT NOT NULL REFERENCES contacts (id), created_at DATETIME NOT NULL,
  last_message_at DATETIME, last_inbound_at DATETIME, last_agent_at DATETIME, last_message_id BIGINT,
  mode VARCHAR(16) DEFAULT 'bot' NOT NULL, mode_changed_at DATETIME,
  UNIQUE (phone_number_id, contact_id));
CREATE INDEX IF NOT EXISTS ix_conversations_last_message_at_id ON conversations (last_message_at, id);
CREATE INDEX IF NOT EXISTS ix_conversations_mode_mode_changed_at ON conversations (mode, mode_changed_at);
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY, conversation_id BIGINT NOT NULL REFERENCES conversations (id),
  phone_number_id VARCHAR(64) NOT NULL, wamid VARCHAR(256), direction VARCHAR(16) NOT NULL,
  type VARCHAR(64) NOT NULL, body TEXT, status VARCHAR(32) NOT NULL,
  status_rank SMALLINT DEFAULT '0' NOT NULL, automated BOOLEAN DEFAULT 0 NOT NULL, source VARCHAR(64),
  delivered_at DATETIME, received_at DATETIME NOT NULL, media_id VARCHAR(256),
  media_mime_type VARCHAR(128), context_wamid VARCHAR(256), content JSON, raw JSON,
  error_code INTEGER, error_title TEXT, edited_at DATETIME, deleted_at DATETIME,
  UNIQUE (phone_number_id, wamid));
CREATE INDEX IF NOT EXISTS ix_messages_conversation_id_id ON messages (conversation_id, id);
CREATE TABLE IF NOT EXISTS event_log (
  id INTEGER PRIMARY KEY, type VARCHAR(64) NOT NULL, conversation_id BIGINT, message_id BIGINT,
  phone_number_id VARCHAR(64), data BLOB NOT NULL, created_at DATETIME NOT NULL);
CREATE INDEX IF NOT EXISTS ix_event_log_conversation_id_id ON event_log (conversation_id, id);
CREATE INDEX IF NOT EXISTS ix_event_log_message_id_id ON event_log (message_id, id);
CREATE TABLE IF NOT EXISTS event_sequence (id SMALLINT PRIMARY KEY, last_id BIGINT NOT NULL);
INSERT OR IGNORE INTO event_sequence (id, last_id) VALUES (1, 0);
`);

const sql = {
  upsertContact: db.prepare(`INSERT INTO contacts (wa_id, name, search_name, created_at, updated_at)
    VALUES (?, ?, ?, ?, ?) ON CONFLICT (wa_id) DO UPDATE SET name = excluded.name,
    search_name = excluded.search_name, updated_at = excluded.updated_at
    WHERE excluded.name IS NOT NULL AND excluded.name IS NOT contacts.name`),
  contactByWaId: db.prepare('SELECT id, name FROM contacts WHERE wa_id = ?'),
  insertConversation: db.prepare(`INSERT INTO conversations (phone_number_id, contact_id, created_at)
    VALUES (?, ?, ?) ON CONFLICT (phone_number_id, contact_id) DO NOTHING`),
  conversation: db.prepare('SELECT id FROM conversations WHERE phone_number_id = ? AND contact_id = ?'),
  insertMessage: db.prepare(`INSERT INTO messages (conversation_id, phone_number_id, wamid, direction,
    type, body, status, status_rank, automated, delivered_at, received_at, media_id, context_wamid,
    content, raw) VALUES (?, ?, ?, 'inbound', ?, ?, 'received', 0, 0, ?, ?, ?, ?, 'null', ?)
    ON CONFLICT (phone_number_id, wamid) DO NOTHING RETURNING id`),
  // zaphub's rule: a conversation's timestamps never move backwards, whatever the commit order.
  advanceConversation: db.prepare(`UPDATE conversations SET
    last_inbound_at = CASE WHEN last_inbound_at IS NULL OR last_inbound_at < :ts THEN :ts ELSE last_inbound_at END,
    last_message_id = CASE WHEN last_message_at IS NULL OR last_message_at <= :ts THEN :mid ELSE last_message_id END,
    last_message_at = CASE WHEN last_message_at IS NULL OR last_message_at <= :ts THEN :ts ELSE last_message_at END
    WHERE id = :cid`),
  advanceSequence: db.prepare('UPDATE event_sequence SET last_id = last_id + ? WHERE id = 1 RETURNING last_id'),
  insertEvent: db.prepare(`INSERT INTO event_log (id, type, conversation_id, message_id, phone_number_id,
    data, created_at) VALUES (?, 'whatsapp:message', ?, ?, ?, ?, ?)`),
};

// Committed rows only (filled after the commit), as zaphub's caches: skip the upserts when warm.
const knownContacts = new Map(); // wa_id -> {id, name}
const knownConversations = new Map(); // `${phone_number_id}|${contact_id}` -> id
const KNOWN_MAX = 100000;

function searchKey(name) {
  return name ? name.normalize('NFKD').replace(/\p{M}/gu, '').toLowerCase() : '';
}

function isoSeconds(ts) {
  return new Date(Number(ts) * 1000).toISOString().replace('.000Z', 'Z');
}

// Meta's envelope -> the inbound messages in it (statuses and other fields are not handled here).
function inboundMessages(webhook) {
  const out = [];
  for (const entry of webhook.entry || []) {
    for (const change of entry.changes || []) {
      const value = change.value || {};
      if (change.field !== 'messages' || !value.messages) continue;
      const pnid = value.metadata.phone_number_id;
      const names = new Map((value.contacts || []).map((c) => [c.wa_id, c.profile && c.profile.name]));
      for (const m of value.messages) {
        const media = m[m.type] && typeof m[m.type] === 'object' ? m[m.type] : {};
        out.push({
          pnid,
          waId: m.from,
          name: names.get(m.from) || null,
          wamid: m.id,
          type: m.type,
          body: m.type === 'text' ? m.text.body : media.caption || null,
          deliveredAt: isoSeconds(m.timestamp),
          mediaId: media.id || null,
          contextWamid: m.context ? m.context.id : null,
          raw: m,
        });
      }
    }
  }
  return out;
}

// One transaction for a batch of webhooks; returns the events (payloads with eventId) to emit.
const storeBatch = db.transaction((messages, now) => {
  const learned = { contacts: [], conversations: [] };
  const stored = [];
  for (const m of messages) {
    let contact = knownContacts.get(m.waId);
    if (!contact || (m.name && m.name !== contact.name)) {
      sql.upsertContact.run(m.waId, m.name, searchKey(m.name), now, now);
      contact = sql.contactByWaId.get(m.waId);
      learned.contacts.push([m.waId, contact]);
    }
    const key = `${m.pnid}|${contact.id}`;
    let conversationId = knownConversations.get(key);
    if (conversationId === undefined) {
      sql.insertConversation.run(m.pnid, contact.id, now);
      conversationId = sql.conversation.get(m.pnid, contact.id).id;
      learned.conversations.push([key, conversationId]);
    }
    const row = sql.insertMessage.get(conversationId, m.pnid, m.wamid, m.type, m.body, m.deliveredAt, now,
      m.mediaId, m.contextWamid, JSON.stringify(m.raw));
    if (row === undefined) continue; // a repeated wamid: stored before, no new event
    sql.advanceConversation.run({ ts: m.deliveredAt, mid: row.id, cid: conversationId });
    stored.push({
      conversationId,
      message: { id: row.id, body: m.body, sender_type: 'contact', delivered_at: m.deliveredAt, type: m.type,
        wamid: m.wamid },
      contact: { id: contact.id, name: contact.name, phone_number: m.waId },
      phoneNumberId: m.pnid,
    });
  }
  if (stored.length) {
    // Ids handed out last in the transaction, so they increase in commit order (zaphub's event_sequence).
    const last = sql.advanceSequence.get(stored.length).last_id;
    stored.forEach((payload, i) => {
      payload.eventId = last - stored.length + 1 + i;
      const { eventId, ...data } = payload;
      sql.insertEvent.run(eventId, payload.conversationId, payload.message.id, payload.phoneNumberId,
        Buffer.from(JSON.stringify(data)), now);
    });
  }
  return { stored, learned };
});

function remember({ contacts, conversations }) {
  for (const [waId, contact] of contacts) knownContacts.set(waId, contact);
  for (const [key, id] of conversations) knownConversations.set(key, id);
  for (const map of [knownContacts, knownConversations]) {
    while (map.size > KNOWN_MAX) map.delete(map.keys().next().value);
  }
}

// ---- group commit: webhooks parsed in one turn of the event loop share one transaction ----

let pending = [];
let flushScheduled = false;

function submit(messages, res) {
  pending.push({ messages, res });
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flush); // after the poll phase: every request read in this turn joins the batch
  }
}

function commit(batch) {
  const result = storeBatch(batch.flatMap((s) => s.messages), new Date().toISOString());
  remember(result.learned);
  return result.stored;
}

function flush() {
  flushScheduled = false;
  while (pending.length) {
    const batch = pending.slice(0, MAX_WEBHOOKS);
    pending = pending.slice(MAX_WEBHOOKS);
    let events = [];
    try {
      events = commit(batch);
      for (const s of batch) answer(s.res, 200, `{"received":${s.messages.length}}`);
    } catch (err) {
      // One bad webhook must not fail its neighbours: store them one by one.
      console.error('batch failed, storing one by one:', err.message);
      for (const s of batch) {
        try {
          events.push(...commit([s]));
          answer(s.res, 200, `{"received":${s.messages.length}}`);
        } catch (e) {
          answer(s.res, 503, '{"error":{"code":"storage_unavailable"}}');
        }
      }
    }
    // Only after the commit (and the 200s): every authenticated socket of /crm gets every message.
    for (const payload of events) crm.emit('whatsapp:message', payload);
  }
}

// ---- HTTP ----

function signatureOk(body, header) {
  if (typeof header !== 'string' || !header.startsWith('sha256=')) return false;
  const given = Buffer.from(header.slice(7), 'hex');
  const expected = crypto.createHmac('sha256', appSecret).update(body).digest();
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

function receiveWebhook(req, res) {
  readBody(req, res, (body) => {
    if (!signatureOk(body, req.headers['x-hub-signature-256'])) {
      answer(res, 401, '{"error":{"code":"bad_signature"}}');
      return;
    }
    let messages;
    try {
      messages = inboundMessages(JSON.parse(body));
    } catch (err) {
      answer(res, 400, '{"error":{"code":"bad_json"}}');
      return;
    }
    if (messages.length === 0) answer(res, 200, '{"received":0}');
    else submit(messages, res);
  });
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?', 1)[0];
  if (path === WEBHOOK && req.method === 'POST') receiveWebhook(req, res);
  else if (path === '/ready' && req.method === 'GET') {
    db.prepare('SELECT 1').get();
    answer(res, 200, '{"status":"ready"}');
  } else answer(res, 404, '{"error":{"code":"not_found"}}');
});

// ---- Socket.IO: namespace /crm, HS256 JWT in auth.token (sub and exp required, as zaphub) ----

function base64url(buf) {
  return buf.toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

function tokenOk(token) {
  if (typeof token !== 'string') return false;
  const parts = token.split('.');
  if (parts.length !== 3) return false;
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    if (header.alg !== 'HS256') return false;
    const mac = base64url(crypto.createHmac('sha256', jwtSecret).update(`${parts[0]}.${parts[1]}`).digest());
    if (mac.length !== parts[2].length || !crypto.timingSafeEqual(Buffer.from(mac), Buffer.from(parts[2]))) {
      return false;
    }
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
    const now = Date.now() / 1000;
    return Boolean(claims.sub) && typeof claims.exp === 'number' && claims.exp > now &&
      (claims.nbf === undefined || claims.nbf <= now);
  } catch (err) {
    return false;
  }
}

const { Server } = require('socket.io');
const io = new Server(server, { perMessageDeflate: false, serveClient: false });
const crm = io.of('/crm');
crm.use((socket, next) => (tokenOk(socket.handshake.auth && socket.handshake.auth.token)
  ? next() : next(new Error('unauthorized'))));

server.keepAliveTimeout = 5000; // uvicorn's timeout_keep_alive
server.listen(Number(opts.port), opts.host);

process.on('SIGTERM', () => {
  io.close();
  server.close();
  db.close();
  process.exit(0);
});
