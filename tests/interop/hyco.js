// Drives Microsoft's hyco-ws (Azure/azure-relay-node) against our relay for the
// interop tests in tests/relay/interop.rs. Speaks azbridge's stream preamble on top.
//
//   node hyco.js send   BASE HC KEYNAME KEY PORTNAME NBYTES   -> prints "OK <sha256>"
//   node hyco.js listen BASE HC KEYNAME KEY                    -> prints "LISTENING", echoes
//
// BASE is ws://127.0.0.1:PORT or wss://127.0.0.1:PORT (trust via NODE_EXTRA_CA_CERTS).
// KEY is read from the environment variable HYCO_KEY when given as "-", so it never
// has to sit in argv.
'use strict';

const crypto = require('crypto');
const WebSocket = require('hyco-ws');

const [mode, base, hc, keyName, keyArg, portName, nbytes] = process.argv.slice(2);
const key = keyArg === '-' ? process.env.HYCO_KEY : keyArg;
const entityUri = `${base}/$hc/${hc}`;

function fail(message) {
  console.error(`hyco.js: ${message}`);
  process.exit(1);
}

if (mode === 'send') {
  // A whole-process bound, so a broken peer cannot hang the test.
  setTimeout(() => fail('timed out'), 60000).unref();
  // Token in the sb-hc-token query (the other way a relay must accept it).
  const token = WebSocket.createRelayToken(entityUri, keyName, key);
  const uri = `${entityUri}?sb-hc-action=connect&sb-hc-token=${encodeURIComponent(token)}` +
    `&sb-hc-id=${crypto.randomUUID()}`;
  const data = crypto.randomBytes(Number(nbytes));
  const name = Buffer.from(portName, 'utf8');
  const ws = WebSocket.relayedConnect(uri, null, () => {
    ws.send(Buffer.concat([Buffer.from([1, 0, 0, name.length]), name]), { binary: true });
  });
  let received = Buffer.alloc(0);
  let preambleDone = false;
  ws.on('message', (msg) => {
    received = Buffer.concat([received, Buffer.from(msg)]);
    if (!preambleDone && received.length >= 3) {
      if (received[0] !== 1 || received[1] !== 0 || received[2] !== 0) {
        fail(`preamble reply ${Array.from(received.subarray(0, 3))}`);
      }
      preambleDone = true;
      received = received.subarray(3);
      for (let off = 0; off < data.length; off += 65536) {
        ws.send(data.subarray(off, off + 65536), { binary: true });
      }
    }
    if (preambleDone && received.length >= data.length) {
      const want = crypto.createHash('sha256').update(data).digest('hex');
      const got = crypto.createHash('sha256').update(received).digest('hex');
      if (want !== got) fail(`echo differs: sent ${want}, got ${got}`);
      console.log(`OK ${got}`);
      ws.close();
      process.exit(0);
    }
  });
  ws.on('error', (e) => fail(`sender error: ${e.message || e}`));
  ws.on('close', (code) => { if (!preambleDone) fail(`closed before the preamble reply (${code})`); });
} else if (mode === 'listen') {
  const token = WebSocket.createRelayToken(entityUri, keyName, key);
  const server = WebSocket.createRelayedServer({
    server: `${entityUri}?sb-hc-action=listen&sb-hc-id=${crypto.randomUUID()}`,
    token: token,
  }, (ws) => {
    let head = Buffer.alloc(0);
    let open = false;
    ws.on('message', (msg) => {
      const chunk = Buffer.from(msg);
      if (open) {
        ws.send(chunk, { binary: true });
        return;
      }
      head = Buffer.concat([head, chunk]);
      if (head.length >= 4 && head.length >= 4 + head[3]) {
        if (head[0] !== 1 || head[1] !== 0 || head[2] !== 0) fail('bad preamble from sender');
        console.log(`PORTNAME ${head.subarray(4, 4 + head[3]).toString('utf8')}`);
        ws.send(Buffer.from([1, 0, 0]), { binary: true });
        open = true;
        const rest = head.subarray(4 + head[3]);
        if (rest.length) ws.send(rest, { binary: true });
      }
    });
    ws.on('error', (e) => console.error(`hyco.js: connection error: ${e.message || e}`));
  });
  server.on('listening', () => console.log('LISTENING'));
  server.on('error', (e) => console.error(`hyco.js: control channel error: ${e.message || e}`));
} else {
  fail(`unknown mode ${mode}`);
}
