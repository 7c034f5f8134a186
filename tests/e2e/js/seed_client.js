// The seed's example client (docs/events.md, "Example client") run against a real zaphub.
// Usage: node seed_client.js URL TOKEN
//
// Between the two "seed" markers the code is the seed's, unmodified but for its URL and token;
// around it, each event is printed as one JSON line ({"event": ..., "data": ...}) for the test
// to read, and acks of the joins are printed too. ZAPHUB_JOIN=0 skips the joins (a client that
// is in no room); ZAPHUB_TRANSPORTS=websocket (or polling) pins the transport.
import io from 'socket.io-client';

const [url, token] = process.argv.slice(2);
const print = (event, data) => console.log(JSON.stringify({ event, data }));
const options = {};
if (process.env.ZAPHUB_TRANSPORTS) {
  options.transports = process.env.ZAPHUB_TRANSPORTS.split(',');
}
const join = process.env.ZAPHUB_JOIN !== '0';

// --- seed (console.log kept, output as JSON lines below) ---
const socket = io(url + '/crm', {
  ...options,
  auth: {
    token: token
  }
});

// Escutar mensagens recebidas
socket.on('whatsapp:message', (data) => {
  print('whatsapp:message', data);
});

// Escutar mensagens enviadas
socket.on('whatsapp:message_sent', (data) => {
  print('whatsapp:message_sent', data);
});

// Escutar status de mensagem
socket.on('whatsapp:message_status', (data) => {
  print('whatsapp:message_status', data);
});
// --- end of seed ---

socket.io.on('open', () => {
  print('open', { transport: socket.io.engine.transport.name });
  socket.io.engine.on('upgrade', (transport) => print('upgrade', { transport: transport.name }));
});
socket.on('connect', () => print('connect', { transport: socket.io.engine.transport.name }));
socket.on('connect_error', (err) => {
  print('connect_error', { message: err.message, data: err.data ?? null });
  process.exit(0);
});
socket.on('disconnect', (reason) => print('disconnect', { reason }));

// Entrar em room específico de conversa: the seed's emit, with an ack to print.
socket.on('whatsapp:message', (data) => {
  if (!join) return;
  socket.emit('join_conversation', { conversationId: data.conversationId }, (ack) => {
    print('join_conversation', { conversationId: data.conversationId, ack });
  });
});

// The test sends JSON commands on stdin: {"emit": name, "data": {...}} answers with the ack.
let buffered = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buffered += chunk;
  let newline;
  while ((newline = buffered.indexOf('\n')) >= 0) {
    const line = buffered.slice(0, newline);
    buffered = buffered.slice(newline + 1);
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    socket.emit(command.emit, command.data, (ack) => print(command.emit, { ack }));
  }
});
process.stdin.on('end', () => {
  // No process.exit(): Node exits by itself once the close packet is out. A long-polling client
  // that just vanished would hold the server's shutdown until its heartbeat times out.
  socket.close();
});
