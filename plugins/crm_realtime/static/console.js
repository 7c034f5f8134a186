/*
 * zaphub agent console: vanilla JavaScript, no build step.
 *
 * It speaks only zaphub's public contract: REST under api/ and Socket.IO on the configured
 * namespace, with the token the agent pasted (kept in this tab's sessionStorage).
 *
 * Safety: every piece of customer or server data reaches the page through textContent or an
 * attribute set with setAttribute/dataset; innerHTML is never used. Links in messages become <a>
 * elements only for http(s) URLs.
 *
 * Consistency: the state is a store of conversations and messages keyed by id. Every event and
 * every REST answer is merged into it idempotently (statuses only move forward, a deletion is
 * final, an older edit never overwrites a newer one), so an event that arrives twice, or both
 * live and through a resync, shows once. After a reconnection the client resumes with
 * lastEventId (servers that replay events) and, in every case, catches up over REST
 * (after_id cursors), which also answers resync_required.
 */
(() => {
  'use strict';

  const CONFIG = JSON.parse(document.getElementById('zaphub-config').textContent || '{}');
  const NAMESPACE = CONFIG.namespace || '/crm';
  const TEMPLATES = Array.isArray(CONFIG.templates) ? CONFIG.templates : [];
  // The console lives at <prefix>/console; the API and Socket.IO at <prefix>/api, <prefix>/socket.io.
  const BASE = new URL('.', location.href);
  const TOKEN_KEY = 'zaphub.console.token';
  const STATUS_RANK = { queued: 0, accepted: 1, sent: 2, delivered: 3, read: 4, failed: 5, received: 0 };
  const PAGE = 50;
  const DAY = 86400e3;

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------------------------------
  // DOM helpers (text only)
  // ---------------------------------------------------------------------------------------

  /** An element with a class, attributes and children (strings become text nodes). */
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === 'class') node.className = value;
        else if (key === 'text') node.textContent = value;
        else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
        else node.setAttribute(key, value === true ? '' : String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const ICONS = {
    send: 'M3.4 20.4 21 12 3.4 3.6l-.01 6.53L15 12 3.39 13.87z',
    plus: 'M12 5v14M5 12h14',
    chat: 'M4 4h16v12H7l-3 3z M8 9h8 M8 12h5',
    user: 'M12 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8zm-7 8a7 7 0 0 1 14 0',
    back: 'M15 18l-6-6 6-6',
    reply: 'M10 9V5l-7 7 7 7v-4.1c5 0 8.5 1.6 11 5.1-1-5-4-10-11-11z',
    clock: 'M12 7v5l3 2 M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z',
    tick: 'M5 12.5l4 4L19 7',
    ticks: 'M2 12.5l4 4L16 7 M10.5 15l1.5 1.5L22 7',
    fail: 'M12 8v5 M12 16.5v.5 M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z',
    doc: 'M6 3h8l4 4v14H6z M14 3v4h4',
    bot: 'M12 3v3 M5 8h14v11H5z M9 13h.01 M15 13h.01 M9 17h6',
  };

  function icon(name, { fill = false } = {}) {
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    const path = document.createElementNS(ns, 'path');
    path.setAttribute('d', ICONS[name]);
    if (fill) {
      path.setAttribute('fill', 'currentColor');
    } else {
      path.setAttribute('fill', 'none');
      path.setAttribute('stroke', 'currentColor');
      path.setAttribute('stroke-width', '2');
      path.setAttribute('stroke-linecap', 'round');
      path.setAttribute('stroke-linejoin', 'round');
    }
    svg.append(path);
    return svg;
  }

  /** Message text with http(s) links as <a> elements; everything else stays text. */
  function richText(text) {
    const frag = document.createDocumentFragment();
    const re = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/gi;
    let last = 0;
    for (const match of text.matchAll(re)) {
      frag.append(text.slice(last, match.index));
      frag.append(h('a', { href: match[0], target: '_blank', rel: 'noopener noreferrer nofollow', text: match[0] }));
      last = match.index + match[0].length;
    }
    frag.append(text.slice(last));
    return frag;
  }

  function toast(text, ms = 3500) {
    const el = $('toast');
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, ms);
  }

  // ---------------------------------------------------------------------------------------
  // Formatting
  // ---------------------------------------------------------------------------------------

  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long' });
  const dateFmt = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', year: 'numeric' });
  const shortDateFmt = new Intl.DateTimeFormat(undefined, { day: '2-digit', month: '2-digit', year: '2-digit' });

  const parseTime = (iso) => (iso ? Date.parse(iso) : NaN);
  const startOfDay = (t) => { const d = new Date(t); d.setHours(0, 0, 0, 0); return d.getTime(); };

  function listTime(t) {
    if (!Number.isFinite(t)) return '';
    const today = startOfDay(Date.now());
    if (t >= today) return timeFmt.format(t);
    if (t >= today - DAY) return 'Yesterday';
    if (t >= today - 6 * DAY) return dayFmt.format(t);
    return shortDateFmt.format(t);
  }

  function dayLabel(t) {
    const today = startOfDay(Date.now());
    if (t >= today) return 'Today';
    if (t >= today - DAY) return 'Yesterday';
    if (t >= today - 6 * DAY) return dayFmt.format(t);
    return dateFmt.format(t);
  }

  function phoneLabel(phone) {
    if (!phone) return '';
    const digits = String(phone).replace(/\D/g, '');
    const m = /^55(\d{2})(\d{4,5})(\d{4})$/.exec(digits);
    if (m) return `+55 ${m[1]} ${m[2]}-${m[3]}`;
    return `+${digits}`;
  }

  const contactName = (conv) => (conv.contact && conv.contact.name) || phoneLabel(conv.contact && conv.contact.phone_number) || `Conversation ${conv.id}`;

  function initials(conv) {
    const name = conv.contact && conv.contact.name;
    if (name) {
      const parts = name.trim().split(/\s+/u).filter(Boolean);
      const letters = parts.length > 1 ? [parts[0], parts[parts.length - 1]] : parts;
      return letters.map((p) => Array.from(p)[0]).join('').toUpperCase() || '?';
    }
    const digits = String((conv.contact && conv.contact.phone_number) || '').replace(/\D/g, '');
    return digits.slice(-2) || '#';
  }

  function avatar(conv, el) {
    const node = el || h('span');
    const seed = (conv.contact && conv.contact.id) || conv.id || 0;
    node.className = `avatar h${seed % 8}`;
    node.textContent = initials(conv);
    node.setAttribute('aria-hidden', 'true');
    return node;
  }

  const TYPE_LABEL = {
    image: '📷 Photo', video: '🎥 Video', audio: '🎤 Audio', document: '📄 Document', sticker: '💟 Sticker',
    location: '📍 Location', contacts: '👤 Contact', template: '📋 Template', interactive: '🔘 Reply',
    button: '🔘 Button', reaction: 'Reaction', order: '🛒 Order', unsupported: 'Unsupported message',
    system: 'System message', edit: '✎ Edited a message', revoke: '🚫 Deleted a message',
  };

  function previewText(msg) {
    if (!msg) return '';
    if (msg.deleted_at) return '🚫 This message was deleted';
    if (msg.type === 'text') return msg.body || '';
    const label = TYPE_LABEL[msg.type] || msg.type;
    if (msg.type === 'template') return msg.body || `📋 ${msg.content_name || 'Template'}`;
    return msg.body ? `${label.split(' ')[0]} ${msg.body}` : label;
  }

  // ---------------------------------------------------------------------------------------
  // Token
  // ---------------------------------------------------------------------------------------

  /** Move #token=… from the address bar into sessionStorage, before anything else runs. */
  function takeTokenFromHash() {
    const hash = location.hash.replace(/^#/, '');
    if (!hash) return;
    const params = new URLSearchParams(hash);
    const token = params.get('token');
    if (token === null) return;
    params.delete('token');
    const rest = params.toString();
    // replaceState: the token never becomes a history entry, and the fragment is never sent.
    history.replaceState(history.state, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
    if (token.trim()) sessionStorage.setItem(TOKEN_KEY, token.trim());
  }

  function decodeToken(token) {
    try {
      const part = token.split('.')[1];
      const json = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
      const claims = JSON.parse(decodeURIComponent(Array.from(json, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join('')));
      return claims && typeof claims === 'object' ? claims : null;
    } catch {
      return null;
    }
  }

  // ---------------------------------------------------------------------------------------
  // REST
  // ---------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, { method = 'GET', body, headers = {}, raw = false } = {}) {
    const init = { method, headers: { Authorization: `Bearer ${S.token}`, ...headers }, cache: 'no-store' };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
    let response;
    try {
      response = await fetch(new URL(`api/${path}`, BASE), init);
    } catch (err) {
      throw new ApiError(0, 'network', 'The server cannot be reached; check your connection.');
    }
    if (raw && response.ok) return response;
    let data = null;
    const text = await response.text();
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!response.ok) {
      const err = (data && data.error) || {};
      const message = err.message || (data && data.detail) || `${response.status} ${response.statusText}`;
      if (response.status === 401 && S.token) {
        signOut(`The server refused your token: ${message}`);
      }
      throw new ApiError(response.status, err.code || String(response.status), message);
    }
    return data;
  }

  const missing = (err) => err instanceof ApiError && (err.status === 404 || err.status === 405);

  /** Which optional endpoints this server has: read from its OpenAPI schema, refined by 404/405s. */
  async function detectFeatures() {
    const f = { start: true, mode: true, read: true, typing: true, retry: true, search: true };
    try {
      const response = await fetch(new URL('schema/openapi.json', BASE), { cache: 'no-store' });
      if (!response.ok) return f;
      const paths = (await response.json()).paths || {};
      const has = (path, method) => Boolean(paths[path] && paths[path][method]);
      const list = paths['/api/conversations'] && paths['/api/conversations'].get;
      f.start = has('/api/messages', 'post');
      f.mode = has('/api/conversations/{conversation_id}', 'patch');
      f.read = has('/api/conversations/{conversation_id}/read', 'post');
      f.typing = has('/api/conversations/{conversation_id}/typing', 'post');
      f.retry = has('/api/messages/{message_id}/retry', 'post');
      f.search = Boolean(list && (list.parameters || []).some((p) => p.name === 'q'));
    } catch {
      // No schema: assume everything and hide what answers 404/405.
    }
    return f;
  }

  // ---------------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------------

  const S = {
    token: null,
    claims: null,
    features: {},
    convs: new Map(), // id → conversation
    threads: new Map(), // conversation id → {messages: Map(id → message), loaded, loading}
    msgConv: new Map(), // message id → conversation id
    openId: null,
    lastEventId: null,
    nextBefore: undefined,
    socket: null,
    connectedOnce: false,
    filter: 'all',
    query: '',
    searchResults: null, // ids from the server's ?q=, or null
    seen: {}, // conversation id → last message id the agent has seen (localStorage, per agent)
    replyTo: null,
    pendingRender: false,
    typingAt: 0,
  };

  const seenKey = () => `zaphub.console.seen.${(S.claims && S.claims.sub) || 'anonymous'}`;

  function loadSeen() {
    try { S.seen = JSON.parse(localStorage.getItem(seenKey()) || '{}') || {}; } catch { S.seen = {}; }
  }

  function markSeen(conv) {
    const thread = S.threads.get(conv.id);
    let top = conv.last_message ? conv.last_message.id : 0;
    if (thread) for (const id of thread.messages.keys()) top = Math.max(top, id);
    if ((S.seen[conv.id] || 0) >= top && !conv.unreadIds.size) return;
    S.seen[conv.id] = Math.max(S.seen[conv.id] || 0, top);
    conv.unreadIds.clear();
    if (conv.serverUnread) conv.unread = 0;
    try {
      // Other tabs of this agent hear it through the storage event.
      const stored = JSON.parse(localStorage.getItem(seenKey()) || '{}') || {};
      stored[conv.id] = Math.max(stored[conv.id] || 0, S.seen[conv.id]);
      localStorage.setItem(seenKey(), JSON.stringify(stored));
    } catch { /* private mode: unread counts stay per tab */ }
  }

  /** A message from REST or an event, in one shape. */
  function normalize(m, conversationId) {
    const inbound = m.direction ? m.direction === 'inbound' : m.sender_type === 'contact';
    const reactions = new Map();
    for (const r of m.reactions || []) if (r && r.emoji) reactions.set(r.from || '', r);
    return {
      id: m.id,
      conversation_id: m.conversation_id || conversationId,
      direction: inbound ? 'inbound' : 'outbound',
      type: m.type || 'text',
      body: m.body ?? null,
      status: m.status || (inbound ? 'received' : 'accepted'),
      at: parseTime(m.delivered_at) || parseTime(m.received_at) || Date.now(),
      automated: Boolean(m.automated),
      wamid: m.wamid || null,
      context_wamid: m.context_wamid || null,
      media: m.media || null,
      error: m.error || null,
      edited_at: m.edited_at || m.editedAt || null,
      deleted_at: m.deleted_at || m.deletedAt || null,
      reactions,
      content_name: m.content && m.content.name,
      reactionsAuthoritative: Array.isArray(m.reactions),
      pending: false,
    };
  }

  /** Merge what we learnt about a message; true when something visible changed. */
  function mergeMessage(old, next) {
    let changed = false;
    const set = (key, value) => { if (old[key] !== value) { old[key] = value; changed = true; } };
    if ((STATUS_RANK[next.status] ?? -1) > (STATUS_RANK[old.status] ?? -1)) set('status', next.status);
    if (next.error && old.status === 'failed') set('error', next.error);
    if (!old.deleted_at && next.deleted_at) set('deleted_at', next.deleted_at);
    const newer = !old.edited_at || (next.edited_at && Date.parse(next.edited_at) >= Date.parse(old.edited_at));
    if (next.edited_at && newer) set('edited_at', next.edited_at);
    if (newer && next.body !== null && next.body !== undefined) set('body', next.body);
    for (const key of ['wamid', 'context_wamid', 'media', 'content_name']) if (next[key] && !old[key]) set(key, next[key]);
    if (next.automated && !old.automated) set('automated', true);
    if (old.pending && next.pending === false) {
      // The server's copy replaces the optimistic one (its time is Graph's acceptance).
      old.pending = false;
      if (Number.isFinite(next.at)) old.at = next.at;
      changed = true;
    }
    if (next.reactionsAuthoritative) {
      const key = (m) => JSON.stringify([...m.values()].map((r) => [r.from, r.emoji]).sort());
      if (key(old.reactions) !== key(next.reactions)) set('reactions', next.reactions);
    }
    return changed;
  }

  function thread(convId) {
    let t = S.threads.get(convId);
    if (!t) {
      t = { messages: new Map(), loaded: false, loading: null, lastId: 0 };
      S.threads.set(convId, t);
    }
    return t;
  }

  /** Put a message into its conversation's thread; returns 'new', 'changed' or null. */
  function upsertMessage(convId, msg) {
    const t = thread(convId);
    S.msgConv.set(msg.id, convId);
    const old = t.messages.get(msg.id);
    if (old) return mergeMessage(old, msg) ? 'changed' : null;
    t.messages.set(msg.id, msg);
    t.lastId = Math.max(t.lastId, msg.id);
    return 'new';
  }

  function convFrom(c) {
    return {
      id: c.id,
      phone_number_id: c.phone_number_id,
      contact: c.contact || { id: 0, name: null, phone_number: '' },
      last_message: c.last_message ? normalize(c.last_message, c.id) : null,
      last_at: parseTime(c.last_message_at) || (c.last_message ? parseTime(c.last_message.delivered_at) : NaN) || parseTime(c.created_at) || 0,
      last_inbound_at: parseTime(c.last_inbound_at),
      window_open: c.window_open,
      mode: c.mode,
      unread: Number.isInteger(c.unread_count) ? c.unread_count : undefined,
      serverUnread: Number.isInteger(c.unread_count),
      // Ids of inbound messages this agent has not seen: a set, so a message counted by a REST
      // recount and again by a live or replayed event counts once.
      unreadIds: new Set(),
    };
  }

  function upsertConv(raw) {
    const next = convFrom(raw);
    const old = S.convs.get(next.id);
    if (!old) {
      S.convs.set(next.id, next);
      return next;
    }
    old.contact = next.contact.phone_number ? next.contact : old.contact;
    old.phone_number_id = next.phone_number_id || old.phone_number_id;
    if (next.last_message && (!old.last_message || next.last_message.id >= old.last_message.id)) {
      if (old.last_message && old.last_message.id === next.last_message.id) mergeMessage(old.last_message, next.last_message);
      else old.last_message = next.last_message;
    }
    old.last_at = Math.max(old.last_at || 0, next.last_at || 0);
    if (Number.isFinite(next.last_inbound_at)) old.last_inbound_at = Math.max(old.last_inbound_at || 0, next.last_inbound_at);
    if (next.window_open !== undefined) old.window_open = next.window_open;
    if (next.mode !== undefined) old.mode = next.mode;
    if (next.serverUnread) { old.unread = next.unread; old.serverUnread = true; }
    return old;
  }

  /** WhatsApp's 24-hour window, from the customer's last message (else the server's answer). */
  function windowOpen(conv) {
    if (Number.isFinite(conv.last_inbound_at) && conv.last_inbound_at > 0) return Date.now() - conv.last_inbound_at < DAY;
    return conv.window_open === true;
  }

  /** A message arrived in a conversation: it may be the latest, and moves the conversation up. */
  function touchConv(conv, msg) {
    if (!conv.last_message || msg.id >= conv.last_message.id) conv.last_message = msg;
    conv.last_at = Math.max(conv.last_at || 0, msg.at || Date.now());
    if (msg.direction === 'inbound') {
      conv.last_inbound_at = Math.max(conv.last_inbound_at || 0, msg.at || Date.now());
      conv.window_open = true;
    }
  }

  function countUnread(conv) {
    return conv.serverUnread ? conv.unread || 0 : conv.unreadIds.size;
  }

  // ---------------------------------------------------------------------------------------
  // Loading and resync over REST
  // ---------------------------------------------------------------------------------------

  async function loadConversations({ reset = false } = {}) {
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (!reset && S.nextBefore) params.set('before', S.nextBefore);
    const page = await api(`conversations?${params}`);
    for (const c of page.conversations) upsertConv(c);
    S.nextBefore = page.next_before;
    scheduleRender();
    countUnseen(page.conversations.map((c) => c.id));
    return page;
  }

  /** Unread counts for conversations whose latest message is newer than what this agent saw. */
  async function countUnseen(ids) {
    const todo = ids
      .map((id) => S.convs.get(id))
      .filter((c) => c && !c.serverUnread && c.id !== S.openId && c.last_message && c.last_message.direction === 'inbound' && c.last_message.id > (S.seen[c.id] || 0));
    const worker = async () => {
      for (let conv = todo.shift(); conv; conv = todo.shift()) {
        try {
          const page = await api(`conversations/${conv.id}/messages?after_id=${S.seen[conv.id] || 0}&limit=100`);
          const seen = S.seen[conv.id] || 0;
          if (conv.id !== S.openId) {
            for (const m of page.messages) if (m.sender_type === 'contact' && m.id > seen) conv.unreadIds.add(m.id);
          }
          scheduleRender();
        } catch { /* counts are a convenience */ }
      }
    };
    await Promise.all([worker(), worker(), worker()]);
  }

  /**
   * Fetch a thread: everything on first open, then what came after its last known id; `full`
   * (after a reconnection) fetches it all again, because statuses, edits and reactions of
   * messages we already had may have changed while we were away.
   */
  async function loadThread(convId, { full = false } = {}) {
    const t = thread(convId);
    if (t.loading) {
      if (!full) return t.loading;
      await t.loading.catch(() => {});
    }
    t.loading = (async () => {
      const everything = full || t.stale;
      t.stale = false;
      let after = t.loaded && !everything ? t.lastId : 0;
      for (;;) {
        const page = await api(`conversations/${convId}/messages?after_id=${after}&limit=200`);
        let changed = false;
        for (const m of page.messages) {
          const msg = normalize(m, convId);
          if (upsertMessage(convId, msg)) changed = true;
          const conv = S.convs.get(convId);
          if (conv) touchConv(conv, t.messages.get(msg.id));
        }
        if (changed) scheduleRender();
        if (!page.next_after_id) break;
        after = page.next_after_id;
      }
      t.loaded = true;
    })().finally(() => { t.loading = null; });
    return t.loading;
  }

  /** After a reconnection or resync_required: catch up on everything over REST. */
  async function resync() {
    try {
      // Page 1 again; unread counts of conversations that moved are recounted from what this
      // agent saw (countUnseen); a thread loaded earlier catches up (after its last id) when opened.
      // Threads cached from earlier visits may have missed changes: fetched again when reopened.
      for (const t of S.threads.values()) t.stale = true;
      await loadConversations({ reset: true });
      if (S.openId !== null) {
        await refreshConversation(S.openId);
        await loadThread(S.openId, { full: true });
        const conv = S.convs.get(S.openId);
        if (conv && isViewing(conv.id)) { markSeen(conv); markRead(conv); }
      }
      scheduleRender();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) toast(`Could not refresh: ${err.message}`);
    }
  }

  async function refreshConversation(convId) {
    try {
      const c = await api(`conversations/${convId}`);
      upsertConv(c);
      scheduleRender();
      return S.convs.get(convId);
    } catch (err) {
      return null;
    }
  }

  async function ensureConversation(convId, fallback) {
    if (S.convs.has(convId)) return S.convs.get(convId);
    if (fallback) upsertConv(fallback);
    const conv = await refreshConversation(convId);
    return conv || S.convs.get(convId);
  }

  // ---------------------------------------------------------------------------------------
  // Socket.IO
  // ---------------------------------------------------------------------------------------

  function setConnection(state, label) {
    const el = $('conn');
    el.dataset.state = state;
    el.title = label;
    $('conn-label').textContent = label;
    const banner = $('banner');
    if (state === 'online') {
      if (banner.dataset.kind === 'conn') banner.hidden = true;
    } else if (S.connectedOnce) {
      banner.dataset.kind = 'conn';
      banner.textContent = `${label} Messages that arrive meanwhile will appear when the connection is back.`;
      banner.hidden = false;
    }
  }

  function noteEvent(data) {
    if (data && Number.isInteger(data.eventId) && (S.lastEventId === null || data.eventId > S.lastEventId)) {
      S.lastEventId = data.eventId;
    }
  }

  function connect() {
    if (typeof window.io !== 'function') {
      setConnection('offline', 'Socket.IO client failed to load.');
      return;
    }
    const socket = window.io(NAMESPACE, {
      path: `${BASE.pathname}socket.io`,
      // A function: every (re)connection sends the current token and the resume point.
      auth: (cb) => cb(S.lastEventId === null ? { token: S.token } : { token: S.token, lastEventId: S.lastEventId }),
      reconnectionDelayMax: 5000,
      // Websocket first: a host run with `zaphub run --workers N` serves websockets only (its
      // workers share the port without affinity). Long-polling stays the fallback for networks
      // that block websockets, on a single-process host.
      transports: ['websocket', 'polling'],
      tryAllTransports: true,
    });
    S.socket = socket;

    socket.on('connect', async () => {
      setConnection('online', 'Connected');
      S.connectedOnce = true;
      // In the room first, then REST: whatever happened before this connection (while it was
      // down, or before the first page load was answered) comes from REST, everything after
      // it live. Both are merged by id, so an overlap shows once.
      await joinOpen();
      await S.initialLoad;
      resync();
    });
    socket.on('disconnect', (reason) => {
      setConnection('offline', 'Offline, reconnecting…');
      if (reason === 'io server disconnect') {
        // The server closed it (token expired, most often): it will not reconnect by itself.
        const exp = S.claims && S.claims.exp;
        if (exp && exp * 1000 <= Date.now()) signOut('Your token has expired. Paste a new one.');
        else setTimeout(() => socket.connect(), 1000);
      }
    });
    socket.on('connect_error', (err) => {
      if (err && err.message === 'unauthorized') {
        const reason = err.data && err.data.reason ? ` (${err.data.reason})` : '';
        signOut(`The server refused your token${reason}.`);
        return;
      }
      setConnection('offline', 'Offline, reconnecting…');
    });

    socket.on('whatsapp:message', async (e) => {
      noteEvent(e);
      const convId = e.conversationId;
      const conv = await ensureConversation(convId, {
        id: convId, phone_number_id: e.phoneNumberId, contact: e.contact, last_message: null,
        last_message_at: e.message && e.message.delivered_at, last_inbound_at: e.message && e.message.delivered_at,
        window_open: true,
      });
      if (!conv) return;
      if (e.contact && e.contact.name && conv.contact && conv.contact.id === e.contact.id) conv.contact = { ...conv.contact, ...e.contact };
      const msg = normalize({ ...e.message, direction: 'inbound', status: 'received' }, convId);
      const result = upsertMessage(convId, msg);
      const stored = thread(convId).messages.get(msg.id);
      touchConv(conv, stored);
      if (result === 'new' && msg.id > (S.seen[convId] || 0)) {
        if (isViewing(convId)) {
          markSeen(conv);
          markRead(conv);
        } else if (!conv.serverUnread) {
          conv.unreadIds.add(msg.id);
        }
      }
      scheduleRender();
    });

    socket.on('whatsapp:message_sent', async (e) => {
      noteEvent(e);
      const convId = e.conversationId;
      const conv = await ensureConversation(convId);
      const msg = normalize({ ...e.message, direction: 'outbound', status: 'accepted', automated: e.automated || (e.message && e.message.automated) }, convId);
      upsertMessage(convId, msg);
      if (conv) touchConv(conv, thread(convId).messages.get(msg.id));
      scheduleRender();
    });

    socket.on('whatsapp:message_status', (e) => {
      noteEvent(e);
      withMessage(e.messageId, e.conversationId, (msg) => mergeMessage(msg, { ...emptyPatch(), status: e.status, error: e.error || null }));
    });

    socket.on('whatsapp:message_updated', (e) => {
      noteEvent(e);
      withMessage(e.messageId, e.conversationId, (msg) => mergeMessage(msg, { ...emptyPatch(), body: e.body ?? null, edited_at: e.editedAt || new Date().toISOString() }));
    });

    socket.on('whatsapp:message_deleted', (e) => {
      noteEvent(e);
      withMessage(e.messageId, e.conversationId, (msg) => mergeMessage(msg, { ...emptyPatch(), deleted_at: e.deletedAt || new Date().toISOString() }));
    });

    socket.on('whatsapp:message_reaction', (e) => {
      noteEvent(e);
      withMessage(e.messageId, e.conversationId, (msg) => {
        const key = e.from || '';
        const had = msg.reactions.get(key);
        if (e.emoji) msg.reactions.set(key, { emoji: e.emoji, from: e.from, at: e.at });
        else msg.reactions.delete(key);
        return (had && had.emoji) !== (e.emoji || undefined);
      });
    });

    socket.on('whatsapp:conversation_updated', async (e) => {
      noteEvent(e);
      const conv = await ensureConversation(e.conversationId);
      if (conv && e.mode !== undefined) conv.mode = e.mode;
      scheduleRender();
    });

    socket.on('resync_required', () => {
      // The server could not replay everything we missed: start from REST, then follow live events.
      S.lastEventId = null;
      resync();
    });
  }

  const emptyPatch = () => ({ status: null, body: null, edited_at: null, deleted_at: null, reactions: new Map(), error: null, pending: undefined });

  /** Apply a change to a known message (else, for the open conversation, fetch what is missing). */
  function withMessage(messageId, convIdHint, apply) {
    const convId = S.msgConv.get(messageId) ?? convIdHint;
    const msg = convId !== undefined && S.threads.get(convId) ? S.threads.get(convId).messages.get(messageId) : undefined;
    if (msg) {
      if (apply(msg)) scheduleRender();
      return;
    }
    if (convId !== undefined && convId === S.openId) loadThread(convId).then(() => {
      const again = S.threads.get(convId).messages.get(messageId);
      if (again && apply(again)) scheduleRender();
    }).catch(() => {});
  }

  /** Join the open conversation's room; resolves once the server answered (or gave up). */
  function joinOpen() {
    const convId = S.openId;
    if (!S.socket || !S.socket.connected || convId === null) return Promise.resolve();
    const payload = S.lastEventId === null ? { conversationId: convId } : { conversationId: convId, lastEventId: S.lastEventId };
    return new Promise((resolve) => {
      S.socket.timeout(10000).emit('join_conversation', payload, (err, ack) => {
        if (!err && ack && !ack.ok && ack.error && S.openId === convId) {
          toast(`Live updates for this conversation are off: ${ack.error}`);
        }
        resolve();
      });
    });
  }

  function leave(convId) {
    if (S.socket && S.socket.connected && convId !== null) S.socket.emit('leave_conversation', { conversationId: convId });
  }

  // ---------------------------------------------------------------------------------------
  // Agent actions
  // ---------------------------------------------------------------------------------------

  const isViewing = (convId) => S.openId === convId && document.visibilityState === 'visible';

  function markRead(conv) {
    if (!S.features.read || !conv.last_message || conv.last_message.direction !== 'inbound') return;
    if (conv.readUpTo && conv.readUpTo >= conv.last_message.id) return;
    conv.readUpTo = conv.last_message.id;
    api(`conversations/${conv.id}/read`, { method: 'POST', body: {} }).catch((err) => {
      if (missing(err)) S.features.read = false;
    });
  }

  function sendTyping() {
    const conv = S.convs.get(S.openId);
    if (!conv || !S.features.typing || !windowOpen(conv)) return;
    const now = Date.now();
    if (now - S.typingAt < 20000) return;
    S.typingAt = now;
    api(`conversations/${conv.id}/typing`, { method: 'POST', body: {} }).catch((err) => {
      if (missing(err)) S.features.typing = false;
    });
  }

  function newKey() {
    if (crypto.randomUUID) return crypto.randomUUID();
    return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  /** POST a send; retried with the same Idempotency-Key when the network fails. */
  async function postSend(path, body) {
    const key = newKey();
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await api(path, { method: 'POST', body, headers: { 'Idempotency-Key': key } });
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 0 || attempt >= 3) throw err;
        await new Promise((r) => setTimeout(r, 800 * attempt));
      }
    }
  }

  function showSendError(text) {
    const el = $('send-error');
    el.textContent = text;
    el.hidden = !text;
  }

  async function sendToOpen(body, label) {
    const conv = S.convs.get(S.openId);
    if (!conv) return false;
    showSendError('');
    try {
      const answer = await postSend(`conversations/${conv.id}/messages`, body);
      const msg = normalize({ id: answer.messageId, direction: 'outbound', type: body.type, body: label, status: 'queued' }, conv.id);
      msg.pending = true;
      msg.context_wamid = body.reply_to ? (thread(conv.id).messages.get(body.reply_to) || {}).wamid || null : null;
      if (upsertMessage(conv.id, msg) === 'new') touchConv(conv, msg);
      markSeen(conv);
      stickToBottom = true;
      scheduleRender();
      return true;
    } catch (err) {
      if (err.code === 'window_closed') {
        conv.window_open = false;
        conv.last_inbound_at = NaN;
        scheduleRender();
      }
      showSendError(`Not sent: ${err.message}`);
      return false;
    }
  }

  async function retrySend(msg) {
    try {
      await api(`messages/${msg.id}/retry`, { method: 'POST', body: {} });
      msg.status = 'queued';
      msg.error = null;
      scheduleRender();
    } catch (err) {
      if (missing(err)) {
        S.features.retry = false;
        scheduleRender();
        toast('This server cannot retry failed messages.');
      } else {
        toast(`Retry failed: ${err.message}`);
      }
    }
  }

  async function toggleMode() {
    const conv = S.convs.get(S.openId);
    if (!conv || conv.mode === undefined) return;
    const next = conv.mode === 'human' ? 'bot' : 'human';
    const button = $('mode-toggle');
    button.disabled = true;
    try {
      const answer = await api(`conversations/${conv.id}`, { method: 'PATCH', body: { mode: next } });
      conv.mode = (answer && answer.mode) || next;
      toast(next === 'human' ? 'You took over: the bot stays silent in this conversation.' : 'Handed back to the bot.');
    } catch (err) {
      if (missing(err)) {
        S.features.mode = false;
        toast('This server does not support handoff.');
      } else {
        toast(`Could not change the mode: ${err.message}`);
      }
    } finally {
      button.disabled = false;
      scheduleRender();
    }
  }

  // ---------------------------------------------------------------------------------------
  // Template picker (composer outside the window, and "new conversation")
  // ---------------------------------------------------------------------------------------

  const placeholders = (body) => [...new Set(Array.from(String(body || '').matchAll(/\{\{\s*(\d+)\s*\}\}/g), (m) => Number(m[1])))].sort((a, b) => a - b);

  /** Build a template picker inside `root`; returns {value(), reset()}. */
  function templatePicker(root, idPrefix) {
    root.replaceChildren();
    const select = h('select', { id: `${idPrefix}-template`, 'data-testid': 'template-select' });
    TEMPLATES.forEach((t, i) => select.append(h('option', { value: String(i), text: t.label || `${t.name} (${t.language || 'en_US'})` })));
    select.append(h('option', { value: 'other', text: TEMPLATES.length ? 'Another template…' : 'Template by name…' }));
    const name = h('input', { id: `${idPrefix}-tpl-name`, 'data-testid': 'template-name', placeholder: 'hello_world', autocomplete: 'off', spellcheck: 'false' });
    const lang = h('input', { id: `${idPrefix}-tpl-lang`, 'data-testid': 'template-language', placeholder: 'en_US', autocomplete: 'off', spellcheck: 'false' });
    name.value = 'hello_world';
    lang.value = 'en_US';
    const custom = h('div', { class: 'tpl-row' },
      h('label', { class: 'field' }, 'Template name', name),
      h('label', { class: 'field' }, 'Language', lang));
    const params = h('div', { class: 'tpl-row' });
    const preview = h('div', { class: 'tpl-preview', 'data-testid': 'template-preview' });
    root.append(h('label', { class: 'field' }, 'Template', select), custom, params, preview);
    let inputs = [];

    function chosen() {
      return select.value === 'other' ? null : TEMPLATES[Number(select.value)];
    }
    function refresh() {
      const t = chosen();
      custom.hidden = Boolean(t);
      params.replaceChildren();
      inputs = [];
      if (t) {
        for (const n of placeholders(t.body)) {
          const input = h('input', { 'data-param': String(n), placeholder: `{{${n}}}`, autocomplete: 'off' });
          input.addEventListener('input', updatePreview);
          inputs.push(input);
          params.append(h('label', { class: 'field' }, `Value ${n}`, input));
        }
      }
      updatePreview();
    }
    function updatePreview() {
      const t = chosen();
      if (!t || !t.body) { preview.textContent = ''; return; }
      const values = Object.fromEntries(inputs.map((i) => [i.dataset.param, i.value]));
      preview.textContent = t.body.replace(/\{\{\s*(\d+)\s*\}\}/g, (m, n) => values[n] || m);
    }
    select.addEventListener('change', refresh);
    refresh();
    return {
      value() {
        const t = chosen();
        if (!t) {
          const n = name.value.trim();
          if (!n) throw new Error('Type the template name (as approved at Meta).');
          return { type: 'template', name: n, language: lang.value.trim() || 'en_US' };
        }
        const body = { type: 'template', name: t.name, language: t.language || 'en_US' };
        if (inputs.length) {
          const empty = inputs.find((i) => !i.value.trim());
          if (empty) throw new Error(`Fill in value ${empty.dataset.param} of the template.`);
          body.components = [{ type: 'body', parameters: inputs.map((i) => ({ type: 'text', text: i.value.trim() })) }];
        }
        return body;
      },
      label() {
        const t = chosen();
        return t ? (preview.textContent || t.label || t.name) : name.value.trim();
      },
      reset() { inputs.forEach((i) => { i.value = ''; }); updatePreview(); },
    };
  }

  // ---------------------------------------------------------------------------------------
  // Rendering
  // ---------------------------------------------------------------------------------------

  let stickToBottom = true;
  const listItems = new Map(); // conversation id → <li>
  const messageNodes = new Map(); // message id → {node, sig}

  function scheduleRender() {
    if (S.pendingRender) return;
    S.pendingRender = true;
    requestAnimationFrame(() => {
      S.pendingRender = false;
      renderList();
      renderThread();
      renderTitle();
    });
  }

  function visibleConversations() {
    const q = S.query.trim().toLowerCase().normalize('NFD').replace(/\p{M}/gu, '');
    const qDigits = q.replace(/\D/g, '');
    return [...S.convs.values()]
      .filter((c) => {
        if (S.filter === 'unread' && !(countUnread(c) > 0) && c.id !== S.openId) return false;
        if (S.filter === 'human' && c.mode !== 'human') return false;
        if (S.filter === 'bot' && c.mode !== 'bot') return false;
        if (!q) return true;
        if (S.searchResults && S.searchResults.has(c.id)) return true;
        const name = ((c.contact && c.contact.name) || '').toLowerCase().normalize('NFD').replace(/\p{M}/gu, '');
        const phone = String((c.contact && c.contact.phone_number) || '');
        return name.includes(q) || (qDigits.length > 0 && phone.includes(qDigits));
      })
      .sort((a, b) => (b.last_at || 0) - (a.last_at || 0) || b.id - a.id);
  }

  function renderList() {
    const ul = $('conversations');
    const items = visibleConversations();
    const wanted = new Set(items.map((c) => c.id));
    for (const [id, li] of listItems) if (!wanted.has(id)) { li.remove(); listItems.delete(id); }
    let prev = null;
    for (const conv of items) {
      let li = listItems.get(conv.id);
      if (!li) {
        li = h('li', { class: 'conv', 'data-testid': 'conversation', 'data-conversation-id': conv.id, tabindex: '0', role: 'button' });
        li.append(h('span', { class: 'avatar' }), h('span', { class: 'conv-name' }), h('span', { class: 'conv-time' }),
          h('span', { class: 'conv-preview' }), h('span', { class: 'conv-meta' }));
        li.addEventListener('click', () => openConversation(conv.id, { push: true }));
        li.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); openConversation(conv.id, { push: true }); } });
        listItems.set(conv.id, li);
      }
      fillListItem(li, conv);
      const expected = prev ? prev.nextSibling : ul.firstChild;
      if (expected !== li) ul.insertBefore(li, expected);
      prev = li;
    }
    const empty = $('list-empty');
    if (items.length) {
      empty.hidden = true;
    } else {
      empty.replaceChildren();
      if (S.query) empty.append(`No conversation matches “${S.query}”.`);
      else if (S.filter !== 'all') empty.append('Nothing here right now.');
      else empty.append('No conversations yet. When a customer writes, the conversation appears here. Trying it locally? Run ',
        h('code', { text: 'zaphub simulate message --text "Olá!"' }), '.');
      empty.hidden = !S.loaded;
    }
    $('load-more').hidden = !S.nextBefore || Boolean(S.query);
  }

  function fillListItem(li, conv) {
    const unread = countUnread(conv);
    const [av, name, time, preview, meta] = li.children;
    avatar(conv, av);
    name.textContent = contactName(conv);
    time.textContent = listTime(conv.last_at);
    li.classList.toggle('unread', unread > 0);
    li.setAttribute('aria-current', conv.id === S.openId ? 'true' : 'false');
    li.dataset.unread = String(unread);
    // The thread's copy of the last message is the one events keep current.
    const last = (conv.last_message && S.threads.get(conv.id)?.messages.get(conv.last_message.id)) || conv.last_message;
    preview.replaceChildren();
    if (last && last.direction === 'outbound') {
      if (last.automated) preview.append(h('span', { class: 'tag', title: 'Sent by the bot' }, '🤖'));
      else preview.append(tick(last.status));
    }
    preview.append(h('span', { class: 'text', text: previewText(last) }));
    meta.replaceChildren();
    if (conv.mode === 'human') meta.append(h('span', { class: 'mode-pill human', text: 'Agent' }));
    if (unread > 0) meta.append(h('span', { class: 'unread-badge', 'data-testid': 'unread', text: unread > 99 ? '99+' : String(unread) }));
  }

  function tick(status) {
    const wrap = h('span', { class: 'tick', title: status });
    const kind = { queued: 'clock', accepted: 'clock', sent: 'tick', delivered: 'ticks', read: 'ticks', failed: 'fail' }[status] || 'clock';
    wrap.append(icon(kind));
    return wrap;
  }

  function renderTitle() {
    const total = [...S.convs.values()].reduce((n, c) => n + (countUnread(c) > 0 ? 1 : 0), 0);
    document.title = total ? `(${total}) zaphub console` : 'zaphub console';
  }

  function renderThread() {
    const conv = S.convs.get(S.openId);
    $('thread-empty').hidden = Boolean(conv);
    $('thread-view').hidden = !conv;
    $('app').classList.toggle('show-thread', Boolean(conv));
    if (!conv) return;

    avatar(conv, $('thread-avatar'));
    $('thread-name').textContent = contactName(conv);
    const open = windowOpen(conv);
    const sub = [];
    if (conv.contact && conv.contact.name) sub.push(phoneLabel(conv.contact.phone_number));
    if (open && Number.isFinite(conv.last_inbound_at)) {
      const left = Math.max(0, conv.last_inbound_at + DAY - Date.now());
      const hours = Math.floor(left / 3600e3);
      sub.push(hours >= 1 ? `${hours} h left to reply` : `${Math.max(1, Math.round(left / 60e3))} min left to reply`);
    } else if (!open) {
      sub.push('window closed: templates only');
    }
    $('thread-sub').textContent = sub.join(' · ');
    $('thread-sub').title = open
      ? "WhatsApp's 24-hour window: free-form replies are allowed until it closes"
      : 'The customer has not written for 24 hours: only approved templates can be sent';

    const modeBadge = $('thread-mode');
    const toggle = $('mode-toggle');
    const hasMode = conv.mode === 'bot' || conv.mode === 'human';
    modeBadge.hidden = !hasMode;
    toggle.hidden = !hasMode || !S.features.mode;
    if (hasMode) {
      // Words, not emoji: a machine without an emoji font (a kiosk, Debian's bare Chromium) drew a box.
      modeBadge.textContent = conv.mode === 'human' ? 'Agent' : 'Bot';
      modeBadge.className = `badge ${conv.mode}`;
      toggle.dataset.mode = conv.mode;
      toggle.textContent = conv.mode === 'human' ? 'Hand back to bot' : 'Take over';
      toggle.classList.toggle('human', conv.mode === 'human');
      toggle.title = conv.mode === 'human'
        ? 'You own this conversation: no auto-replies. Hand it back to let the bot answer.'
        : 'The bot may answer. Take over to keep it silent while you reply.';
    }

    $('text-form').hidden = !open;
    $('window-closed').hidden = open;
    $('reply-preview').hidden = !open || !S.replyTo;

    renderMessages(conv);
  }

  function renderMessages(conv) {
    const box = $('messages');
    const inner = $('messages-inner');
    const t = thread(conv.id);
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const msgs = [...t.messages.values()].sort((a, b) => a.id - b.id);
    const byWamid = new Map(msgs.filter((m) => m.wamid).map((m) => [m.wamid, m]));
    const children = [];
    let lastDay = null;
    let prev = null;
    for (const msg of msgs) {
      const day = startOfDay(msg.at);
      if (day !== lastDay) {
        children.push(h('div', { class: 'day', text: dayLabel(msg.at) }));
        lastDay = day;
        prev = null;
      }
      const cont = Boolean(prev && prev.direction === msg.direction && Boolean(prev.automated) === Boolean(msg.automated) && msg.at - prev.at < 5 * 60e3);
      children.push(messageNode(msg, cont, byWamid));
      prev = msg;
    }
    if (!t.loaded && !msgs.length) children.push(h('p', { class: 'empty', text: 'Loading…' }));
    else if (!msgs.length) children.push(h('p', { class: 'empty', text: 'No messages yet.' }));
    inner.replaceChildren(...children);
    const grew = msgs.length && (renderMessages.lastConv !== conv.id || renderMessages.lastTop !== msgs[msgs.length - 1].id);
    if (renderMessages.lastConv !== conv.id || stickToBottom || (atBottom && grew)) {
      box.scrollTop = box.scrollHeight;
      stickToBottom = false;
      $('jump').hidden = true;
    } else if (grew && !atBottom) {
      $('jump').hidden = false;
    }
    renderMessages.lastConv = conv.id;
    renderMessages.lastTop = msgs.length ? msgs[msgs.length - 1].id : 0;
  }

  /** A message's element, rebuilt only when something it shows changed. */
  function messageNode(msg, cont, byWamid) {
    const quoted = msg.context_wamid ? byWamid.get(msg.context_wamid) : null;
    const sig = JSON.stringify([msg.status, msg.body, msg.edited_at, msg.deleted_at, [...msg.reactions.values()].map((r) => r.emoji), cont,
      msg.error, quoted && quoted.id, quoted && quoted.body, S.features.retry, msg.pending, msg.automated]);
    const cached = messageNodes.get(msg.id);
    if (cached && cached.sig === sig) return cached.node;
    const node = buildMessage(msg, cont, quoted);
    messageNodes.set(msg.id, { node, sig });
    return node;
  }

  function buildMessage(msg, cont, quoted) {
    const out = msg.direction === 'outbound';
    const classes = ['msg', out ? 'out' : 'in'];
    if (cont) classes.push('cont');
    if (msg.automated) classes.push('auto');
    if (msg.deleted_at) classes.push('deleted');
    const node = h('div', {
      class: classes.join(' '), 'data-testid': 'message', 'data-message-id': msg.id, 'data-status': msg.status,
      'data-direction': msg.direction, 'data-type': msg.type, 'data-deleted': msg.deleted_at ? 'true' : null, 'data-edited': msg.edited_at ? 'true' : null,
    });
    const bubble = h('div', { class: 'bubble' });
    if (msg.automated) bubble.append(h('div', { class: 'tag' }, icon('bot'), 'Automatic reply'));
    if (quoted) bubble.append(h('div', { class: 'quote', text: previewText(quoted) || '…' }));
    else if (msg.context_wamid) bubble.append(h('div', { class: 'quote', text: 'Reply to an earlier message' }));

    if (msg.deleted_at) {
      bubble.append(h('div', { class: 'body', 'data-testid': 'message-body', text: '🚫 This message was deleted' }));
    } else {
      if (msg.media && msg.direction === 'inbound') bubble.append(mediaNode(msg));
      else if (msg.type !== 'text' && TYPE_LABEL[msg.type] && !(msg.type === 'template' && msg.body)) bubble.append(h('div', { class: 'tag', text: msg.type === 'template' && msg.content_name ? `📋 ${msg.content_name}` : TYPE_LABEL[msg.type] }));
      const body = h('div', { class: 'body', 'data-testid': 'message-body' });
      if (msg.body) body.append(richText(msg.body));
      bubble.append(body);
    }
    const meta = h('span', { class: 'meta' });
    if (msg.edited_at && !msg.deleted_at) meta.append(h('span', { class: 'edited', 'data-testid': 'edited', text: 'edited' }));
    meta.append(h('time', { datetime: new Date(msg.at).toISOString(), title: new Date(msg.at).toLocaleString(), text: timeFmt.format(msg.at) }));
    if (out) meta.append(tick(msg.status));
    bubble.querySelector('.body')?.append(meta);
    node.append(bubble);

    if (!out && msg.error && (msg.error.title || msg.error.code)) {
      // Content the customer sent that WhatsApp could not deliver to us (e.g. 131051, unsupported).
      const why = [msg.error.title, msg.error.code ? `(${msg.error.code})` : ''].filter(Boolean).join(' ');
      node.append(h('div', { class: 'fail', 'data-testid': 'failure' }, `WhatsApp could not deliver this message: ${why}`));
    }
    if (msg.status === 'failed') {
      const why = msg.error ? [msg.error.title, msg.error.code ? `(${msg.error.code})` : ''].filter(Boolean).join(' ') : 'WhatsApp could not deliver it';
      const fail = h('div', { class: 'fail', 'data-testid': 'failure' }, `Not delivered: ${why}`);
      if (S.features.retry && out) fail.append(h('button', { type: 'button', text: 'Retry', onclick: () => retrySend(msg) }));
      node.append(fail);
    }
    if (msg.reactions.size) {
      const counts = new Map();
      for (const r of msg.reactions.values()) counts.set(r.emoji, (counts.get(r.emoji) || 0) + 1);
      const box = h('div', { class: 'reactions', 'data-testid': 'reactions', title: [...msg.reactions.values()].map((r) => `${r.emoji} ${r.from || ''}`).join('\n') });
      for (const [emoji, count] of counts) {
        box.append(h('span', { text: emoji }));
        if (count > 1) box.append(h('span', { class: 'count', text: String(count) }));
      }
      node.append(box);
    }
    if (!msg.deleted_at && msg.wamid) {
      node.append(h('div', { class: 'actions' },
        h('button', { type: 'button', title: 'Reply', 'aria-label': 'Reply', onclick: () => setReplyTo(msg) }, icon('reply', { fill: true }))));
    }
    return node;
  }

  const mediaCache = new Map(); // message id → Promise<object URL>

  function mediaURL(msg) {
    if (!mediaCache.has(msg.id)) {
      mediaCache.set(msg.id, api(`messages/${msg.id}/media`, { raw: true })
        .then((r) => r.blob())
        .then((blob) => URL.createObjectURL(blob))
        .catch((err) => { mediaCache.delete(msg.id); throw err; }));
    }
    return mediaCache.get(msg.id);
  }

  function mediaNode(msg) {
    const kind = msg.type;
    const box = h('div', { class: `media ${kind === 'document' ? 'doc' : ''}` });
    const fail = (err) => box.replaceChildren(h('span', { class: 'muted', text: `Media unavailable (${err.message})` }));
    if (kind === 'image' || kind === 'sticker') {
      const img = h('img', { alt: msg.body || TYPE_LABEL[kind], 'data-testid': 'media-image' });
      mediaURL(msg).then((url) => {
        img.src = url;
        img.addEventListener('click', () => {
          const lb = h('div', { class: 'lightbox', role: 'dialog', 'aria-label': 'Image' }, h('img', { src: url, alt: '' }));
          lb.addEventListener('click', () => lb.remove());
          document.body.append(lb);
        });
        box.append(img);
      }).catch(fail);
      return box;
    }
    if (kind === 'audio' || kind === 'video') {
      const load = h('button', { type: 'button', class: 'btn btn-ghost', text: kind === 'audio' ? '▶ Play audio' : '▶ Load video' });
      load.addEventListener('click', () => {
        load.disabled = true;
        mediaURL(msg).then((url) => {
          const player = h(kind, { controls: true, src: url, preload: 'metadata' });
          box.replaceChildren(player);
          player.play().catch(() => {});
        }).catch(fail);
      });
      box.append(load);
      return box;
    }
    const name = (msg.media && msg.media.filename) || msg.body || 'document';
    const link = h('button', { type: 'button', class: 'btn btn-ghost', text: 'Download' });
    link.addEventListener('click', () => {
      mediaURL(msg).then((url) => {
        const a = h('a', { href: url, download: name });
        document.body.append(a);
        a.click();
        a.remove();
      }).catch(fail);
    });
    box.append(icon('doc'), h('span', { text: (msg.media && msg.media.mime_type) || 'file' }), link);
    return box;
  }

  function setReplyTo(msg) {
    S.replyTo = msg.id;
    $('reply-text').textContent = previewText(msg);
    $('reply-preview').hidden = false;
    $('composer').focus();
  }

  // ---------------------------------------------------------------------------------------
  // Navigation
  // ---------------------------------------------------------------------------------------

  async function openConversation(convId, { push = false } = {}) {
    const switching = S.openId !== convId;
    if (switching) {
      leave(S.openId);
      S.openId = convId;
      S.replyTo = null;
      showSendError('');
      stickToBottom = true;
      if (push) history.pushState({ conversation: convId }, '', `#conversation=${convId}`);
      else history.replaceState({ conversation: convId }, '', `#conversation=${convId}`);
      composerPicker = templatePicker($('template-form'), 'composer');
      $('template-form').append(h('div', { class: 'tpl-actions' }, h('button', { class: 'btn btn-primary', type: 'submit', 'data-testid': 'send-template', text: 'Send template' })));
    }
    const conv = S.convs.get(convId);
    // Opening a conversation shows it up to its latest message: that much is seen at once,
    // even if the agent moves on before the thread has loaded.
    if (conv && isViewing(convId)) markSeen(conv);
    scheduleRender();
    try {
      if (switching) await joinOpen(); // statuses from here on come live; the past from REST
      if (S.openId !== convId) return;
      if (!conv) await ensureConversation(convId);
      await loadThread(convId);
      const loaded = S.convs.get(convId);
      if (loaded && S.openId === convId) {
        markSeen(loaded);
        if (isViewing(convId)) markRead(loaded);
      }
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 403)) {
        toast(err.message);
        closeConversation();
      }
    }
    scheduleRender();
    if (window.matchMedia('(min-width: 761px)').matches) $('composer').focus({ preventScroll: true });
  }

  function closeConversation() {
    leave(S.openId);
    S.openId = null;
    history.replaceState(null, '', location.pathname + location.search);
    scheduleRender();
  }

  let composerPicker = null;

  // ---------------------------------------------------------------------------------------
  // Start / sign in / sign out
  // ---------------------------------------------------------------------------------------

  function showLogin(message) {
    $('app').hidden = true;
    $('login').hidden = false;
    const err = $('login-error');
    err.textContent = message || '';
    err.hidden = !message;
    $('token-input').value = '';
    $('token-input').focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    S.token = null;
    if (S.socket) {
      S.socket.removeAllListeners();
      S.socket.disconnect();
      S.socket = null;
    }
    for (const url of mediaCache.values()) url.then((u) => URL.revokeObjectURL(u)).catch(() => {});
    mediaCache.clear();
    S.convs.clear();
    S.threads.clear();
    S.msgConv.clear();
    listItems.forEach((li) => li.remove());
    listItems.clear();
    messageNodes.clear();
    S.openId = null;
    S.connectedOnce = false;
    S.lastEventId = null;
    S.loaded = false;
    S.nextBefore = undefined;
    history.replaceState(null, '', location.pathname + location.search);
    showLogin(message);
  }

  async function signIn(token) {
    const claims = decodeToken(token);
    if (!claims) return 'That is not a token: paste the whole JWT (three parts separated by dots).';
    if (claims.exp && claims.exp * 1000 <= Date.now()) return 'This token has expired: ask for a new one (zaphub token --sub you).';
    S.token = token;
    S.claims = claims;
    try {
      await api('conversations?limit=1');
    } catch (err) {
      S.token = null;
      return err.status === 401 ? `The server refused this token: ${err.message}` : `Cannot reach zaphub: ${err.message}`;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
    return null;
  }

  async function start() {
    loadSeen();
    $('login').hidden = true;
    $('app').hidden = false;
    $('agent-name').textContent = S.claims.sub || 'agent';
    $('agent-expiry').textContent = S.claims.exp ? `Token valid until ${new Date(S.claims.exp * 1000).toLocaleString()}` : '';
    setConnection('connecting', 'Connecting…');
    S.features = await detectFeatures();
    $('new-conversation').hidden = !S.features.start;
    S.initialLoad = loadConversations({ reset: true }).catch((err) => {
      if (!(err instanceof ApiError && err.status === 401)) toast(`Could not load conversations: ${err.message}`);
    });
    connect();
    await S.initialLoad;
    S.loaded = true;
    const modes = [...S.convs.values()].some((c) => c.mode !== undefined) || S.features.mode;
    document.querySelectorAll('.chip[data-filter="human"], .chip[data-filter="bot"]').forEach((c) => { c.hidden = !modes; });
    const m = /conversation=(\d+)/.exec(location.hash);
    if (m) openConversation(Number(m[1]));
    scheduleRender();
  }

  // ---------------------------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------------------------

  function wire() {
    $('new-conversation').append(icon('plus'));
    $('menu-button').append(icon('user'));
    $('back').append(icon('back'));
    $('send').append(icon('send', { fill: true }));

    $('login-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const token = $('token-input').value.trim();
      if (!token) return;
      const button = $('login-button');
      button.disabled = true;
      const problem = await signIn(token);
      button.disabled = false;
      if (problem) showLogin(problem);
    });

    $('menu-button').addEventListener('click', (ev) => { ev.stopPropagation(); $('menu').hidden = !$('menu').hidden; });
    document.addEventListener('click', (ev) => { if (!$('menu').contains(ev.target)) $('menu').hidden = true; });
    $('logout').addEventListener('click', () => signOut(''));

    $('back').addEventListener('click', () => {
      if (history.state && history.state.conversation) history.back();
      else closeConversation();
    });
    window.addEventListener('popstate', (ev) => {
      const id = ev.state && ev.state.conversation;
      if (id) openConversation(id);
      else if (S.openId !== null) { leave(S.openId); S.openId = null; scheduleRender(); }
    });

    const composer = $('composer');
    const resize = () => {
      composer.style.height = 'auto';
      composer.style.height = `${Math.min(composer.scrollHeight, 160)}px`;
      $('send').disabled = !composer.value.trim();
    };
    composer.addEventListener('input', () => { resize(); if (composer.value.trim()) sendTyping(); });
    composer.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        $('text-form').requestSubmit();
      }
    });
    $('text-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const text = composer.value.trim();
      if (!text) return;
      const body = { type: 'text', body: text };
      if (S.replyTo) body.reply_to = S.replyTo;
      $('send').disabled = true;
      const ok = await sendToOpen(body, text);
      if (ok) {
        composer.value = '';
        S.replyTo = null;
        $('reply-preview').hidden = true;
      }
      resize();
    });
    $('reply-cancel').addEventListener('click', () => { S.replyTo = null; $('reply-preview').hidden = true; });

    $('template-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!composerPicker) return;
      let body;
      try { body = composerPicker.value(); } catch (err) { showSendError(err.message); return; }
      if (await sendToOpen(body, composerPicker.label())) composerPicker.reset();
    });

    $('mode-toggle').addEventListener('click', toggleMode);

    $('messages').addEventListener('scroll', () => {
      const box = $('messages');
      if (box.scrollHeight - box.scrollTop - box.clientHeight < 40) $('jump').hidden = true;
    });
    $('jump').addEventListener('click', () => { const box = $('messages'); box.scrollTop = box.scrollHeight; $('jump').hidden = true; });

    $('load-more').addEventListener('click', () => loadConversations().catch((err) => toast(err.message)));

    let searchTimer = null;
    $('search').addEventListener('input', () => {
      S.query = $('search').value;
      S.searchResults = null;
      scheduleRender();
      clearTimeout(searchTimer);
      if (!S.query.trim() || !S.features.search) return;
      searchTimer = setTimeout(async () => {
        const q = S.query.trim();
        try {
          const page = await api(`conversations?${new URLSearchParams({ q, limit: '50' })}`);
          if (S.query.trim() !== q) return;
          for (const c of page.conversations) upsertConv(c);
          S.searchResults = new Set(page.conversations.map((c) => c.id));
          scheduleRender();
        } catch (err) {
          if (err instanceof ApiError && err.status === 400) S.features.search = false;
        }
      }, 250);
    });

    document.querySelectorAll('#filters .chip').forEach((chip) => chip.addEventListener('click', () => {
      S.filter = chip.dataset.filter;
      document.querySelectorAll('#filters .chip').forEach((c) => {
        c.classList.toggle('active', c === chip);
        c.setAttribute('aria-selected', c === chip ? 'true' : 'false');
      });
      scheduleRender();
    }));

    // New conversation.
    const dialog = $('new-dialog');
    let newPicker = null;
    $('new-conversation').addEventListener('click', () => {
      newPicker = templatePicker($('new-template'), 'new');
      // Several business numbers (from the token's scope and the conversations seen): pick one.
      const scope = S.claims && S.claims.phone_number_ids;
      const numbers = new Set(Array.isArray(scope) ? scope.map(String) : typeof scope === 'string' ? scope.split(',').map((n) => n.trim()) : []);
      for (const c of S.convs.values()) if (c.phone_number_id) numbers.add(c.phone_number_id);
      numbers.delete('');
      const from = $('new-from');
      from.replaceChildren(...[...numbers].sort().map((n) => h('option', { value: n, text: n })));
      $('new-from-label').hidden = numbers.size < 2;
      $('new-error').hidden = true;
      $('new-to').value = '';
      dialog.showModal();
      $('new-to').focus();
    });
    $('new-cancel').addEventListener('click', () => dialog.close());
    $('new-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const err = $('new-error');
      const digits = $('new-to').value.replace(/[\s().-]/g, '');
      if (!/^\+?\d{8,15}$/.test(digits)) {
        err.textContent = 'Type the number in international format, with country code: +55 11 99999-9999.';
        err.hidden = false;
        return;
      }
      let body;
      try { body = newPicker.value(); } catch (e) { err.textContent = e.message; err.hidden = false; return; }
      const sendButton = $('new-send');
      sendButton.disabled = true;
      try {
        const to = digits.startsWith('+') ? digits : `+${digits}`;
        const start = { to, ...body };
        if (!$('new-from-label').hidden && $('new-from').value) start.phoneNumberId = $('new-from').value;
        const answer = await postSend('messages', start);
        dialog.close();
        const conv = await ensureConversation(answer.conversationId);
        if (conv) {
          const msg = normalize({ id: answer.messageId, direction: 'outbound', type: 'template', body: newPicker.label(), status: 'queued' }, conv.id);
          msg.pending = true;
          if (upsertMessage(conv.id, msg) === 'new') touchConv(conv, msg);
        }
        openConversation(answer.conversationId, { push: true });
      } catch (e) {
        if (missing(e)) {
          S.features.start = false;
          $('new-conversation').hidden = true;
          err.textContent = 'This server cannot start conversations yet.';
        } else {
          err.textContent = e.message;
        }
        err.hidden = false;
      } finally {
        sendButton.disabled = false;
      }
    });

    document.addEventListener('visibilitychange', () => {
      const conv = S.convs.get(S.openId);
      if (conv && document.visibilityState === 'visible') {
        markSeen(conv);
        markRead(conv);
        scheduleRender();
      }
    });
    // Another tab of this agent saw a conversation: its unread count goes too.
    window.addEventListener('storage', (ev) => {
      if (ev.key !== seenKey() || !ev.newValue) return;
      try {
        const seen = JSON.parse(ev.newValue) || {};
        for (const [id, top] of Object.entries(seen)) {
          const conv = S.convs.get(Number(id));
          if (!conv || conv.serverUnread) continue;
          if (top > (S.seen[id] || 0)) {
            S.seen[id] = top;
            for (const id of conv.unreadIds) if (id <= top) conv.unreadIds.delete(id);
          }
        }
        scheduleRender();
      } catch { /* ignore a malformed value */ }
    });
    // Relative times and the 24-hour window move on their own.
    setInterval(scheduleRender, 60e3);
  }

  function main() {
    takeTokenFromHash();
    wire();
    // A #token=… link opened in a tab that already shows the console changes only the fragment.
    window.addEventListener('hashchange', () => {
      if (!/(^#|&)token=/.test(location.hash)) return;
      takeTokenFromHash();
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token && token !== S.token) {
        if (S.token) signOut('');
        signIn(token).then((problem) => { if (problem) showLogin(problem); });
      }
    });
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      showLogin('');
      return;
    }
    signIn(token).then((problem) => { if (problem) { sessionStorage.removeItem(TOKEN_KEY); showLogin(problem); } });
  }

  // Expose nothing globally except a read-only probe for tests and debugging.
  Object.defineProperty(window, 'zaphubConsole', {
    value: Object.freeze({ state: () => ({ connected: Boolean(S.socket && S.socket.connected), lastEventId: S.lastEventId, openId: S.openId }) }),
  });

  main();
})();
