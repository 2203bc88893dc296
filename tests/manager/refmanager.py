#!/usr/bin/env python3
"""Reference manager for hostagent: a small, real WebSocket server (RFC 6455)
on 127.0.0.1 that accepts agents, sends them requests and records everything
they send. Standard library only. It is a test and demo tool, not part of the
daemon.

As a library (the integration tests):
    m = Manager(); m.start()
    conn = m.wait_connection()
    reply = m.request("server.move_data", {...})
    answer = m.wait_answer(reply)

As a program (the demo):
    refmanager.py --port 8765 --move SERVER OLD NEW
"""
import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import os
import struct
import sys
import threading
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


async def read_http_head(reader):
    """Reads an HTTP request line and headers: (method, path, {lowercased
    name: value}), or None when the client went away or sent too much."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path = (lines[0].split(" ") + ["", ""])[:2]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return method, path, headers


class Connection:
    """One agent connection: the upgrade request and everything received."""

    def __init__(self, manager, reader, writer, path, headers):
        self.manager = manager
        self.reader = reader
        self.writer = writer
        self.path = path
        self.headers = headers  # lower-case name -> value
        self.messages = []  # (monotonic time, parsed JSON or None, raw text)
        self.pings = []  # monotonic times of pings received
        self.close_code = None
        self.closed = False
        self.opened_at = time.monotonic()

    async def _send_frame(self, opcode, payload):
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        self.writer.write(head + payload)
        await self.writer.drain()

    async def _read_frame(self):
        b1, b2 = await self.reader.readexactly(2)
        fin, opcode = b1 & 0x80, b1 & 0x0F
        masked, n = b2 & 0x80, b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        mask = await self.reader.readexactly(4) if masked else b"\0\0\0\0"
        data = bytearray(await self.reader.readexactly(n))
        for i in range(n):
            data[i] ^= mask[i % 4]
        return bool(fin), opcode, bytes(data), bool(masked)

    async def run(self):
        parts, first_op = [], None
        try:
            while True:
                fin, op, data, masked = await self._read_frame()
                if not masked:
                    self.manager.errors.append("unmasked frame from client")
                if op == OP_PING:
                    self.pings.append(time.monotonic())
                    if self.manager.answer_pings:
                        await self._send_frame(OP_PONG, data)
                    continue
                if op == OP_PONG:
                    continue
                if op == OP_CLOSE:
                    self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                    try:
                        await self._send_frame(OP_CLOSE, data[:2])
                    except ConnectionError:
                        pass
                    break
                if op in (OP_TEXT, OP_BIN):
                    parts, first_op = [data], op
                elif op == OP_CONT:
                    parts.append(data)
                if fin:
                    raw = b"".join(parts)
                    if first_op == OP_TEXT:
                        self._record(raw.decode("utf-8", errors="replace"))
                    parts = []
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed = True
            self.writer.close()
            self.manager._notify()

    def _record(self, text):
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
            self.manager.errors.append("agent sent invalid JSON: %r" % text[:200])
        self.messages.append((time.monotonic(), msg, text))
        if self.manager.on_message:
            self.manager.on_message(self, msg)
        self.manager._notify()

    def send_text(self, text):
        """Sends one text frame (str or bytes) from any thread."""
        payload = text.encode() if isinstance(text, str) else text
        fut = asyncio.run_coroutine_threadsafe(self._send_frame(OP_TEXT, payload), self.manager.loop)
        fut.result(5)

    def pause_reading(self, paused=True):
        """Stops (or resumes) reading what the agent sends, as a stuck manager would."""
        t = self.writer.transport
        self.manager.loop.call_soon_threadsafe(t.pause_reading if paused else t.resume_reading)

    def send_binary(self, payload):
        fut = asyncio.run_coroutine_threadsafe(self._send_frame(OP_BIN, payload), self.manager.loop)
        fut.result(5)

    def drop(self):
        """Cuts the TCP connection without a close handshake."""
        def _cut():
            self.writer.transport.abort()
        self.manager.loop.call_soon_threadsafe(_cut)


class Manager:
    def __init__(self, host="127.0.0.1", port=0, answer_pings=True, on_message=None, ssl_context=None,
                 url_host=None):
        self.host, self.port = host, port
        self.ssl_context = ssl_context  # wss:// when set
        self.url_host = url_host or host  # the name the agent is given (TLS checks it)
        self.answer_pings = answer_pings
        self.on_message = on_message
        self.connections = []
        self.errors = []
        self.loop = None
        self._thread = None
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self.accept = True  # False: refuse upgrades with 503
        self.attempts = []  # monotonic time of every upgrade request, refused ones too

    # --- server ---------------------------------------------------------
    async def _handle(self, reader, writer):
        request = await read_http_head(reader)
        if request is None:
            writer.close()
            return
        method, path, headers = request
        key = headers.get("sec-websocket-key")
        self.attempts.append(time.monotonic())
        self._notify()
        if method != "GET" or not key or headers.get("upgrade", "").lower() != "websocket" or not self.accept:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
        await writer.drain()
        conn = Connection(self, reader, writer, path, headers)
        self.connections.append(conn)
        self._notify()
        await conn.run()

    def start(self):
        ready = threading.Event()

        def _run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, limit=1 << 24,
                                     ssl=self.ssl_context))
            self.port = server.sockets[0].getsockname()[1]
            self._server = server
            ready.set()
            self.loop.run_forever()
            server.close()
            self.loop.run_until_complete(server.wait_closed())
            self.loop.close()

        self._thread = threading.Thread(target=_run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self):
        if self.loop:
            for c in self.connections:
                if not c.closed:
                    self.loop.call_soon_threadsafe(c.writer.transport.abort)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    @property
    def url(self):
        return "%s://%s:%d/agent" % ("wss" if self.ssl_context else "ws", self.url_host, self.port)

    # --- waiting ----------------------------------------------------------
    def _notify(self):
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pred, timeout=30, what="condition"):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out waiting for " + what)
                self._cond.wait(min(left, 0.2))

    def wait_connection(self, n=1, timeout=30):
        """Waits for the n-th connection (1-based) and its hello."""
        self.wait_for(lambda: len(self.connections) >= n and self.connections[n - 1].messages,
                      timeout, "connection %d with hello" % n)
        return self.connections[n - 1]

    @property
    def current(self):
        return self.connections[-1] if self.connections else None

    def all_messages(self):
        return [m for c in self.connections for (_, m, _) in c.messages if m is not None]

    # --- requests ---------------------------------------------------------
    def request(self, subject, data=None, reply=True, conn=None):
        """Sends a request; returns the reply subject (or None)."""
        conn = conn or self.current
        msg = {"subject": subject}
        rsub = None
        if reply:
            rsub = "_INBOX.%d.%s" % (next(self._ids), os.urandom(3).hex())
            msg["reply"] = rsub
        if data is not None:
            msg["data"] = data
        conn.send_text(json.dumps(msg))
        return rsub

    def answers(self, reply):
        return [m for m in self.all_messages() if m.get("subject") == reply]

    def wait_answer(self, reply, timeout=60):
        return self.wait_for(lambda: (self.answers(reply) or [None])[0], timeout,
                             "answer to " + reply)["data"]

    def frames(self, move_id=None):
        return [m["data"] for m in self.all_messages()
                if m.get("subject") == "move.progress" and (move_id is None or m["data"].get("moveId") == move_id)]


def fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def main():
    ap = argparse.ArgumentParser(description="hostagent reference manager")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--move", nargs=3, metavar=("SERVER", "OLD", "NEW"),
                    help="after the agent's hello, send one server.move_data and exit on its answer")
    ap.add_argument("--print-frames", action="store_true", help="print every frame as JSON")
    ap.add_argument("--web-port", type=int, help="serve the live view on 127.0.0.1:PORT")
    ap.add_argument("--move-delay", type=float, default=0,
                    help="with --move: wait this many seconds after the agent connects")
    ap.add_argument("--hold", action="store_true",
                    help="with --move: keep serving after the answer until Ctrl-C")
    args = ap.parse_args()

    def show(conn, msg):
        if msg is None:
            return
        if args.print_frames:
            print(json.dumps(msg), flush=True)
            return
        subj, d = msg.get("subject"), msg.get("data", {})
        if subj == "agent.hello":
            print("agent connected: %s (version %s, pid %s)" % (d.get("agentId"), d.get("version"), d.get("pid")), flush=True)
        elif subj == "move.progress":
            eta = ("%ds" % d["etaSeconds"]) if "etaSeconds" in d else "?"
            print("move %-8s %-11s %6.2f%%  files %d/%d  %s/%s  %s/s  eta %s  %s" % (
                d["moveId"][:8], d["phase"], d["percent"], d["filesCopied"], d["filesTotal"],
                fmt_bytes(d["bytesCopied"]), fmt_bytes(d["bytesTotal"]), fmt_bytes(d["bytesPerSecond"]),
                eta, d.get("currentFile", "")), flush=True)
        elif subj == "heartbeat":
            pass
        else:
            print("%s: %s" % (subj, json.dumps(d)), flush=True)

    m = Manager(port=args.port, on_message=show).start()
    print("reference manager listening on %s" % m.url, flush=True)
    if args.web_port is not None:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from liveview import LiveView
        view = LiveView(m, port=args.web_port).start()
        print("live view: open %s in a browser" % view.url, flush=True)
    try:
        if args.move:
            m.wait_connection(timeout=3600)
            if args.move_delay:
                print("the agent is connected; the move starts in %g s" % args.move_delay, flush=True)
                time.sleep(args.move_delay)
            server, old, new = args.move
            reply = m.request("server.move_data", {"serverName": server, "oldPath": old, "newPath": new})
            ans = m.wait_answer(reply, timeout=24 * 3600)
            if args.hold:
                print("the move is done; the live view stays up until Ctrl-C", flush=True)
                while True:
                    time.sleep(3600)
            sys.exit(0 if ans.get("success") else 1)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        m.stop()


if __name__ == "__main__":
    main()
