// A developer's VS Code, reduced to what the end-to-end tests need: for each session it
// starts the real debugpy adapter (as VS Code's Python debugger does) for a "listen"
// config, or connects to the debugpy adapter on the node for a "connect" config;
// attaches, sets one breakpoint, waits for `stopped` on that line, reads one local
// variable, continues, and waits for the debuggee to finish.
//
// Usage: node dap_client.js '<json>' where json is
//   {"python": "python3", "adapter": "/path/to/debugpy/adapter",
//    "timeoutMs": 60000,
//    "sessions": [{"attach": {"listen": {"host": "127.0.0.1", "port": 5678}},
//                  "program": "/abs/step.py", "line": 12, "variable": "loss",
//                  "holdUntilFile": "/tmp/x/release"}]}
// "postMortem": true (optional) sets no breakpoint: the debuggee is a crashed process
// that stops by itself at the frame that raised; the session reads the exception's
// message ("exception" in its result) and detaches with `disconnect` instead of continuing.
// "terminate": true (optional) ends the session at the breakpoint as VS Code's Stop does on a
// session it may end: `disconnect` with `terminateDebuggee: true` ("end": "terminated").
// "holdUntilFile" (optional) keeps the debuggee stopped at the breakpoint until that file
// exists (bounded by timeoutMs), so a test can observe other processes meanwhile.
// Prints {"index", "event": "stopped", "line"} when a session stops at the breakpoint, and
// one JSON line per finished session: {"index", "ok", "line", "value", "error", "end"}.
'use strict';

const fs = require('fs');
const { DebugClient } = require('@vscode/debugadapter-testsupport');

// Pause between two checks for a hold file.
const HOLD_POLL_MS = 20;

async function holdUntil(file, timeout) {
  const deadline = Date.now() + timeout;
  while (!fs.existsSync(file)) {
    if (Date.now() >= deadline) throw new Error(`held at the breakpoint: ${file} did not appear within ${timeout} ms`);
    await new Promise((resolve) => setTimeout(resolve, HOLD_POLL_MS));
  }
}

// Sessions not reported yet. A debuggee that dies after `continue` (a worker that
// exits abruptly) can take the adapter's connection with it before any `terminated`
// event: then nothing keeps Node's event loop alive, and 'beforeExit' reports them.
const unfinished = new Map();

process.on('beforeExit', () => {
  for (const result of unfinished.values()) {
    if (result.continued) {
      result.ok = true;
      result.end = 'connection closed after continue';
    } else {
      result.error = 'the debug adapter closed the connection';
    }
    console.log(JSON.stringify(result));
  }
  const failed = [...unfinished.values()].some((r) => !r.ok);
  unfinished.clear();
  process.exit(failed ? 1 : 0);
});

async function runSession(spec, session, index) {
  const timeout = spec.timeoutMs || 60000;
  const dc = new DebugClient(spec.python, spec.adapter, 'debugpy', { stdio: 'pipe' }, false);
  dc.defaultTimeout = timeout;
  const result = { index, ok: false };
  unfinished.set(index, result);
  try {
    // A "connect" config reaches debugpy's own adapter on the node (debugpy --listen
    // runs one), as VS Code does with a debug adapter server: no local adapter.
    const connect = session.attach.connect;
    if (connect) {
      if (connect.host !== '127.0.0.1') throw new Error(`connect host must be 127.0.0.1, not ${connect.host}`);
      await dc.start(connect.port);
    } else {
      await dc.start();
    }
    await dc.initializeRequest({
      adapterID: 'debugpy', clientID: 'amlx-e2e', linesStartAt1: true, columnsStartAt1: true, pathFormat: 'path',
    });
    const initialized = dc.waitForEvent('initialized', timeout);
    const attached = dc.attachRequest({ justMyCode: false, ...session.attach });
    console.log(JSON.stringify({ index, event: 'attach-sent' }));
    await initialized;
    if (session.postMortem) {
      // What VS Code sends by default: stop on uncaught exceptions.
      await dc.setExceptionBreakpointsRequest({ filters: ['uncaught'] });
    } else {
      await dc.setBreakpointsRequest({ source: { path: session.program }, breakpoints: [{ line: session.line }] });
    }
    // Listen for `stopped` before configurationDone: a breakpoint on the step's first
    // lines is hit as soon as debugpy lets the step go, and an event that arrives before
    // anyone listens is lost (the test then waited out its whole timeout).
    const stoppedEvent = dc.waitForEvent('stopped', timeout);
    stoppedEvent.catch(() => { /* awaited below; this only marks it handled */ });
    await dc.configurationDoneRequest();
    await attached;
    const stopped = await stoppedEvent;
    const threadId = stopped.body.threadId;
    const stack = await dc.stackTraceRequest({ threadId });
    const frame = stack.body.stackFrames[0];
    result.line = frame.line;
    const scopes = await dc.scopesRequest({ frameId: frame.id });
    const locals = scopes.body.scopes[0];
    const vars = await dc.variablesRequest({ variablesReference: locals.variablesReference });
    const found = vars.body.variables.find((v) => v.name === session.variable);
    result.value = found ? found.value : null;
    console.log(JSON.stringify({ index, event: 'stopped', line: frame.line }));
    if (session.holdUntilFile) await holdUntil(session.holdUntilFile, timeout);
    if (session.terminate) {
      await dc.disconnectRequest({ terminateDebuggee: true });
      result.ok = true;
      result.end = 'terminated';
      unfinished.delete(index);
      console.log(JSON.stringify(result));
      try { await dc.stop(); } catch (_) { /* the adapter may be gone with the debuggee */ }
      return result;
    }
    if (session.postMortem) {
      const info = await dc.exceptionInfoRequest({ threadId });
      result.exception = info.body.description;
      result.reason = stopped.body.reason;
      result.continued = true;
      await dc.disconnectRequest({});
      result.ok = true;
      // Reported before stopping the adapter, which may be gone with the debuggee (a
      // stop that never settles leaves an empty event loop, and Node exits).
      unfinished.delete(index);
      console.log(JSON.stringify(result));
      try { await dc.stop(); } catch (_) { /* the adapter may be gone already */ }
      return result;
    }
    const terminated = dc.waitForEvent('terminated', timeout);
    await dc.setBreakpointsRequest({ source: { path: session.program }, breakpoints: [] });
    result.continued = true;
    await dc.continueRequest({ threadId });
    await terminated;
    result.ok = true;
  } catch (err) {
    result.error = String(err && err.message ? err.message : err);
  } finally {
    try { await dc.stop(); } catch (_) { /* the adapter may be gone already */ }
  }
  unfinished.delete(index);
  console.log(JSON.stringify(result));
  return result;
}

async function main() {
  const spec = JSON.parse(process.argv[2]);
  const results = await Promise.all(spec.sessions.map((s, i) => runSession(spec, s, i)));
  process.exit(results.every((r) => r.ok) ? 0 : 1);
}

main().catch((err) => { console.error(err); process.exit(2); });
