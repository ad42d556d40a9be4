// Interop check with Node `ws`: calls, a batch and a subscription.
// usage: node client.js WS_URL (a wss:// URL is verified against the CA PEM named by $WSRPC_CA)
const WebSocket = require('ws');

const options = { maxPayload: 1 << 24 };
if (process.env.WSRPC_CA) options.ca = require('fs').readFileSync(process.env.WSRPC_CA);
const ws = new WebSocket(process.argv[2], options);
const waiting = new Map();
const notes = [];
let onNote = null;

ws.on('message', (data) => {
  const msg = JSON.parse(data.toString());
  if (Array.isArray(msg)) return waiting.get('batch')(msg);
  if (msg.method === 'subscription') { notes.push(msg); if (onNote) onNote(); return; }
  const done = waiting.get(msg.id);
  if (done) done(msg);
});

const call = (method, params, id) => new Promise((resolve) => {
  waiting.set(id, resolve);
  ws.send(JSON.stringify({ jsonrpc: '2.0', method, params, id }));
});

function check(cond, what) {
  if (!cond) { console.error('node: FAILED ' + what); process.exit(1); }
}

ws.on('open', async () => {
  console.log('node: open');
  const r = await call('add', [2, 3], 1);
  check(r.result === 5 && r.id === 1, 'call ' + JSON.stringify(r));
  console.log('node: call ok');

  const batch = await new Promise((resolve) => {
    waiting.set('batch', resolve);
    ws.send(JSON.stringify([
      { jsonrpc: '2.0', method: 'add', params: [1, 1], id: 'a' },
      { jsonrpc: '2.0', method: 'add', params: [2, 2] },
      { jsonrpc: '2.0', method: 'nope', id: 'b' },
    ]));
  });
  const byId = Object.fromEntries(batch.map((x) => [x.id, x]));
  check(batch.length === 2 && byId.a.result === 2 && byId.b.error.code === -32601, 'batch ' + JSON.stringify(batch));
  console.log('node: batch ok');

  const sub = await call('subscribe', ['interop'], 2);
  const id = sub.result.subscription;
  await call('publish', ['interop', 3], 3);
  await new Promise((resolve) => { onNote = () => { if (notes.length >= 3) resolve(); }; onNote(); });
  const seqs = notes.map((n) => n.params.seq);
  check(notes.every((n) => n.params.subscription === id) && JSON.stringify(seqs) === '[1,2,3]', 'subscription ' + JSON.stringify(seqs));
  console.log('node: subscription ok');
  ws.close();
});
ws.on('error', (e) => { console.error('node: error ' + e); process.exit(1); });
ws.on('unexpected-response', (req, res) => { console.error('node: handshake answered ' + res.statusCode); process.exit(1); });
ws.on('close', (code, reason) => {
  if (notes.length < 3) { console.error('node: closed early ' + code + ' ' + reason); process.exit(1); }
  process.exit(0);
});
setTimeout(() => { console.error('node: timed out'); process.exit(1); }, 20000);
