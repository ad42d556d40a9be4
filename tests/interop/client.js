// Interop check with Node `ws`: calls, a batch and a subscription.
// usage: node client.js WS_URL [compressed]
// With `compressed`, offers permessage-deflate (ws's `perMessageDeflate`), checks it was
// negotiated, and makes a large call and a subscription with large notifications. A wss:// URL
// is verified against the CA PEM named by $WSRPC_CA.
const WebSocket = require('ws');

const compressed = process.argv[3] === 'compressed';
const options = { maxPayload: 1 << 24, perMessageDeflate: compressed };
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

  if (compressed) {
    check(ws.extensions.startsWith('permessage-deflate'), 'extensions ' + ws.extensions);
    const big = { rows: Array.from({ length: 200 }, (_, i) => ({ price: 40000 + i, qty: 1.5, side: 'buy' })) };
    const r2 = await call('echo', big, 10);
    check(JSON.stringify(r2.result) === JSON.stringify(big), 'echo');
    console.log('node: compressed call ok');
    const sub2 = await call('subscribe', ['interop-big'], 11);
    const before = notes.length;
    await call('publish', ['interop-big', 2, 100], 12);
    await new Promise((resolve) => { onNote = () => { if (notes.length >= before + 2) resolve(); }; onNote(); });
    const big2 = notes.slice(before);
    check(big2.every((n) => n.params.subscription === sub2.result.subscription && n.params.result.rows.length === 100), 'big notifications');
    console.log('node: compressed subscription ok');
  }
  ws.close();
});
ws.on('error', (e) => { console.error('node: error ' + e); process.exit(1); });
ws.on('unexpected-response', (req, res) => { console.error('node: handshake answered ' + res.statusCode); process.exit(1); });
ws.on('close', (code, reason) => {
  if (notes.length < 3) { console.error('node: closed early ' + code + ' ' + reason); process.exit(1); }
  process.exit(0);
});
setTimeout(() => { console.error('node: timed out'); process.exit(1); }, 20000);
