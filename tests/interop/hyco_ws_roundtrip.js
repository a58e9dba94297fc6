// A hyco-ws listener and two hyco-ws senders exchange data through `amlx-agent relay serve`.
// Driven by tests/relay_server.rs; prints "OK ..." lines and exits 0, or "FAIL: ..." and 1.
//
// Environment: RELAY_BASE (ws://127.0.0.1:PORT), HC_PATH, RELAY_KEY_NAME, RELAY_KEY
// (the key travels in the environment, never in argv).
'use strict';

const WebSocket = require('hyco-ws');

const base = process.env.RELAY_BASE;
const path = process.env.HC_PATH;
const keyName = process.env.RELAY_KEY_NAME;
const key = process.env.RELAY_KEY;
if (!base || !path || !keyName || !key) {
  console.error('FAIL: set RELAY_BASE, HC_PATH, RELAY_KEY_NAME and RELAY_KEY');
  process.exit(2);
}

const TIMEOUT_MS = 30000;
const deadline = setTimeout(() => fail('timed out after ' + TIMEOUT_MS + ' ms'), TIMEOUT_MS);

function fail(msg) {
  console.error('FAIL: ' + msg);
  process.exit(1);
}

// The listener: hyco-ws signs its own token (audience http://host:port/path, no trailing
// slash) and sends it in the ServiceBusAuthorization header.
const listenUri = base + '/$hc/' + path + '?sb-hc-action=listen&sb-hc-id=hyco-listener';
const server = WebSocket.createRelayedServer(
  { server: listenUri, token: WebSocket.createRelayToken(listenUri, keyName, key) },
  (ws) => {
    ws.on('message', (data) => ws.send('echo:' + data));
    ws.on('error', (err) => console.error('rendezvous socket error: ' + err));
  });

let listening = false;
server.on('error', (err) => console.error('listener error: ' + (err && err.message || err)));
server.on('listening', () => {
  if (listening) return; // hyco-ws reconnects on its own; run the senders once
  listening = true;
  // Sender 1: token in the sb-hc-token query parameter (appendRelayToken).
  const queryUri = WebSocket.appendRelayToken(
    base + '/$hc/' + path + '?sb-hc-action=connect&sb-hc-id=hyco-sender-query', keyName, key);
  roundtrip('query-token', queryUri, null, () => {
    // Sender 2: token in the ServiceBusAuthorization header (relayedConnect's token argument).
    const headerUri = base + '/$hc/' + path + '?sb-hc-action=connect&sb-hc-id=hyco-sender-header';
    roundtrip('header-token', headerUri, WebSocket.createRelayToken(headerUri, keyName, key), () => {
      clearTimeout(deadline);
      server.close();
      process.exit(0);
    });
  });
});

function roundtrip(name, uri, token, next) {
  const text = 'hello from hyco-ws ' + name;
  const client = WebSocket.relayedConnect(uri, token, (ws) => ws.send(text));
  client.on('error', (err) => fail(name + ' sender: ' + (err && err.message || err)));
  client.on('message', (data) => {
    if (String(data) !== 'echo:' + text) {
      fail(name + ': unexpected reply ' + JSON.stringify(String(data)));
    }
    console.log('OK ' + name + ': ' + data);
    client.close();
    next();
  });
}
