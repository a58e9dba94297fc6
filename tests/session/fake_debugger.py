"""A debugger that goes wrong on purpose, for the fault-matrix tests (faults.rs).

    fake_debugger.py listen PORT_FILE FAULT   # waits for debugpy (connect mode)
    fake_debugger.py connect PORT FAULT       # reaches debugpy (listen, direct modes)

FAULT is one of:
  drop-at-once       connect, then close without a byte
  drop-after-init    send `initialize`, then close
  drop-after-attach  send `initialize` and `attach`, then close
  drop-after-bp      ... and `setBreakpoints`, then close
  drop-mid-message   ... and half of a `configurationDone`, then close
  garbage            send bytes that are not DAP, then hold the connection open
  bad-body           send a well-framed message whose body is not JSON, then hold
  lowercase-header   send `initialize` under a `content-length` header (debugpy reads only
                     `Content-Length`), then hold
  silent             hold the connection open without sending anything
  silent-after-attach  send `initialize` and an `attach` without arguments, read until
                     debugpy refuses it (5 s at most), then hold the connection open
                     without a byte more (debugpy's adapter then has a client that
                     never finishes its setup)
  configure-and-watch  finish the setup (`initialize`, `attach`, `configurationDone`),
                     then read until the connection ends; print "ended eof" or "ended
                     reset" with the DAP events seen after the setup, then "refused
                     COMMAND: MESSAGE" for each request that was answered with a failure
  connect-flood      20 connections in a row, each closed 50 ms after it opened without
                     reading a byte (a port scanner, a client retrying in a loop)
  bad-body-flood     the same, each sending one well-framed message whose body is not
                     JSON before it closes
  vanish-and-return  finish the setup, then close without `disconnect` (a dropped
                     connection) and at once connect again and attach; print "returned
                     attached" or "returned refused: MESSAGE", then hold the connection

Holding faults stay until the peer closes or HOLD_LIMIT passes (bounded). In listen
mode the bound port is written to PORT_FILE once listening. Prints "fault done" when its
part is over so the test knows the fault happened.
"""

import json
import re
import socket
import sys
import time

HOLD_LIMIT = 60.0
CONNECT_LIMIT = 30.0


def request(seq, command, arguments):
    body = json.dumps(
        {"seq": seq, "type": "request", "command": command, "arguments": arguments}
    ).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


SETUP = [
    request(1, "initialize", {"adapterID": "fake", "clientID": "fake"}),
    request(2, "attach", {"name": "fake"}),
    request(
        3,
        "setBreakpoints",
        {"source": {"path": "/nowhere/step.py"}, "breakpoints": [{"line": 1}]},
    ),
]
SENT_BEFORE_DROP = {
    "drop-at-once": 0,
    "drop-after-init": 1,
    "drop-after-attach": 2,
    "drop-after-bp": 3,
    "drop-mid-message": 3,
}


def hold(conn):
    conn.settimeout(HOLD_LIMIT)
    deadline = time.monotonic() + HOLD_LIMIT
    try:
        while time.monotonic() < deadline:
            if not conn.recv(65536):
                return
    except OSError:
        return


def watch(conn):
    """Reads until the connection ends; says how it ended and which events came."""
    conn.sendall(SETUP[0] + SETUP[1] + request(3, "configurationDone", {}))
    print("fault done", flush=True)
    conn.settimeout(HOLD_LIMIT)
    seen = b""
    how = "timeout"
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                how = "eof"
                break
            seen += chunk
    except ConnectionResetError:
        how = "reset"
    except OSError as err:
        how = "error %s" % err
    events = re.findall(rb'"event":\s*"(\w+)"', seen)
    print(
        "ended %s events=%s" % (how, ",".join(e.decode() for e in events)), flush=True
    )
    for message in messages(seen):
        if message.get("type") == "response" and message.get("success") is False:
            print(
                "refused %s: %s" % (message.get("command"), message.get("message")),
                flush=True,
            )


def messages(buf):
    """The whole DAP messages in `buf`, parsed."""
    while True:
        end = buf.find(b"\r\n\r\n")
        length = re.search(rb"Content-Length:\s*(\d+)", buf[:end]) if end >= 0 else None
        if not length or len(buf) < end + 4 + int(length.group(1)):
            return
        start = end + 4
        body, buf = buf[start : start + int(length.group(1))], buf[start + int(length.group(1)) :]
        try:
            yield json.loads(body)
        except ValueError:
            continue


def answer_to(conn, command, limit):
    """Reads until debugpy answers `command`; returns the response (None: it never came)."""
    conn.settimeout(limit)
    buf = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        end = buf.find(b"\r\n\r\n")
        length = re.search(rb"Content-Length:\s*(\d+)", buf[:end]) if end >= 0 else None
        if length and len(buf) >= end + 4 + int(length.group(1)):
            start = end + 4
            body, buf = buf[start : start + int(length.group(1))], buf[start + int(length.group(1)) :]
            message = json.loads(body)
            if message.get("type") == "response" and message.get("command") == command:
                return message
            continue
        try:
            chunk = conn.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return None


def vanish_and_return(conn, where):
    conn.sendall(SETUP[0] + SETUP[1] + request(3, "configurationDone", {}))
    if not answer_to(conn, "attach", HOLD_LIMIT):
        print("first session not attached", flush=True)
        return
    conn.close()
    again = socket.create_connection(("127.0.0.1", int(where)), timeout=5)
    again.sendall(SETUP[0] + SETUP[1] + request(3, "configurationDone", {}))
    answer = answer_to(again, "attach", HOLD_LIMIT)
    print("fault done", flush=True)
    if answer and answer.get("success"):
        print("returned attached", flush=True)
    else:
        print("returned refused: %s" % (answer or {}).get("message"), flush=True)
    hold(again)
    again.close()


def connect_flood(conn, where, send=b""):
    for _ in range(20):
        conn.sendall(send)
        time.sleep(0.05)
        conn.close()
        conn = socket.create_connection(("127.0.0.1", int(where)), timeout=5)
    conn.sendall(send)
    time.sleep(0.05)
    conn.close()
    print("fault done", flush=True)


def misbehave(conn, fault, where):
    if fault == "connect-flood":
        connect_flood(conn, where)
        return
    if fault == "bad-body-flood":
        connect_flood(conn, where, b"Content-Length: 5\r\n\r\n{{{{{")
        return
    if fault == "vanish-and-return":
        vanish_and_return(conn, where)
        return
    if fault == "configure-and-watch":
        watch(conn)
        conn.close()
        return
    if fault in SENT_BEFORE_DROP:
        for message in SETUP[: SENT_BEFORE_DROP[fault]]:
            conn.sendall(message)
        if fault == "drop-mid-message":
            whole = request(4, "configurationDone", {})
            conn.sendall(whole[: len(whole) // 2])
        # Let the bytes travel before the close overtakes them.
        time.sleep(0.3)
        print("fault done", flush=True)
        conn.close()
        return
    if fault == "garbage":
        conn.sendall(b"\x00\xffHELLO this is not DAP\r\n\r\n" * 4)
    if fault == "lowercase-header":
        conn.sendall(SETUP[0].replace(b"Content-Length", b"content-length"))
    if fault == "bad-body":
        conn.sendall(b"Content-Length: 5\r\n\r\n{{{{{")
    if fault == "silent-after-attach":
        # In one write, `attach` without arguments (debugpy's adapter fails it and is
        # left with a client that can neither configure nor be released over DAP); the
        # fault is played once the refusal came (within 5 s: in connect mode the debuggee
        # takes such an `attach` and answers nothing before `configurationDone`).
        conn.sendall(SETUP[0] + request(2, "attach", {}))
        answer_to(conn, "attach", 5.0)
    print("fault done", flush=True)
    hold(conn)
    conn.close()


def main():
    role, where, fault = sys.argv[1], sys.argv[2], sys.argv[3]
    if role == "listen":
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(HOLD_LIMIT)
        with open(where + ".tmp", "w") as out:
            out.write(str(server.getsockname()[1]))
        import os

        os.replace(where + ".tmp", where)
        conn, _ = server.accept()
    else:
        deadline = time.monotonic() + CONNECT_LIMIT
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", int(where)), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    misbehave(conn, fault, where)


if __name__ == "__main__":
    main()
