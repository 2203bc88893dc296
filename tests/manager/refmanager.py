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

Over NATS (`--nats URL`, class NatsManager) the same manager drives agents
with `transport = nats`: requests go to `<prefix>.<agentId>.server.<request>`
with a reply inbox of its own, and it listens to `<prefix>.*.agent.hello`,
`.heartbeat` and `.move.progress`. Every agent seen is one "connection" whose
messages have the WebSocket frames' shape ({"subject": "move.progress",
"data": ...}; answers {"subject": reply, "data": ...}), so the tests, the
demo and the live view read them the same way. The NATS client is the
official nats.js (tests/nats/bridge.mjs, run with node), not one of ours.
"""
import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import os
import struct
import subprocess
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


class BaseManager:
    """What both managers share: waiting on, and reading, what agents sent.
    Subclasses keep `connections` (each with `messages`, `closed`) and call
    self._notify() whenever something arrived."""

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
        return [m for c in self.connections for (_, m, _) in list(c.messages) if m is not None]

    def answers(self, reply):
        return [m for m in self.all_messages() if m.get("subject") == reply]

    def wait_answer(self, reply, timeout=60):
        return self.wait_for(lambda: (self.answers(reply) or [None])[0], timeout,
                             "answer to " + reply)["data"]

    def frames(self, move_id=None):
        return [m["data"] for m in self.all_messages()
                if m.get("subject") == "move.progress" and (move_id is None or m["data"].get("moveId") == move_id)]


class Manager(BaseManager):
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

    def post(self, subject, data):
        """A request to the newest agent from the manager's own loop (the live
        view): does not wait; returns the reply subject."""
        reply = "_INBOX.web.%s" % os.urandom(4).hex()
        msg = json.dumps({"subject": subject, "reply": reply, "data": data})
        self.loop.create_task(self.current._send_frame(OP_TEXT, msg.encode()))
        return reply


NATS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nats")
AGENT_EVENTS = ("agent.hello", "heartbeat", "move.progress")
TERMINAL_PHASES = ("complete", "error", "cancelled")


class NatsAgentView:
    """One agent as the NATS manager sees it: its id and everything it
    published or answered, in the WebSocket frames' shape. There is no
    connection to lose on NATS: `closed` means nothing was heard from the
    agent for `stale` seconds (three default heartbeats)."""

    def __init__(self, manager, agent_id):
        self.manager = manager
        self.agent_id = agent_id
        self.messages = []  # (monotonic time, {"subject", "data"}, raw payload)
        self.last_seen = time.monotonic()
        self.opened_at = self.last_seen

    @property
    def closed(self):
        return time.monotonic() - self.last_seen > self.manager.stale


class NatsManager(BaseManager):
    """The reference manager on NATS. nats.js runs in a node process
    (tests/nats/bridge.mjs) that this class drives with one JSON line per
    command on its stdin and reads messages from its stdout; its recorded
    messages live on an asyncio loop thread as with Manager, so the live view
    serves from the same loop."""

    def __init__(self, url, prefix="hostagent", agent_id=None, on_message=None, stale=45.0, auth=()):
        self.nats_url, self.prefix, self.agent_id = url, prefix, agent_id
        self.on_message = on_message
        self.stale = stale
        self.auth = list(auth)  # bridge.mjs options: --user U --pass P | --token T
        self.connections = []  # NatsAgentView, in the order they were first heard
        self.by_id = {}
        self.errors = []
        self.loop = None
        self.proc = None
        self._thread = None
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._cmd_ids = itertools.count(1)
        self._acks = {}  # bridge command id -> its answer
        self._forget = set()  # ids of commands whose answer nobody waits for
        self._write_lock = threading.Lock()
        self.inbox = "_INBOX.refmanager-%s" % os.urandom(6).hex()
        self._sent_to = {}  # reply subject -> NatsAgentView the request went to
        self._ready = None

    @property
    def url(self):
        return self.nats_url

    # --- the nats.js bridge ------------------------------------------------
    def _send(self, op, forget=False, **kw):
        """Sends one bridge command from any thread; returns its id (forget:
        nobody waits for its answer)."""
        i = next(self._cmd_ids)
        line = json.dumps(dict(kw, id=i, op=op)) + "\n"
        with self._write_lock:
            if forget:
                self._forget.add(i)
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        return i

    def _call(self, op, timeout=15, **kw):
        i = self._send(op, **kw)
        ans = self.wait_for(lambda: self._acks.pop(i, None), timeout, "nats.js: " + op)
        if not ans.get("ok"):
            raise RuntimeError("nats.js %s failed: %s" % (op, ans.get("error")))
        return ans

    def _read(self):
        for line in self.proc.stdout:
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if o.get("event") == "msg":
                self.loop.call_soon_threadsafe(self._on_msg, o)
                continue
            with self._cond:
                if o.get("event") in ("ready", "error"):
                    self._ready = o
                elif o.get("id") in self._forget:
                    self._forget.discard(o["id"])
                    if not o.get("ok"):
                        self.errors.append("nats.js: %s" % o.get("error"))
                elif "id" in o:
                    self._acks[o["id"]] = o
                self._cond.notify_all()
        with self._cond:
            if self._ready is None:
                self._ready = {"error": "the nats.js bridge exited"}
            self._cond.notify_all()

    def _view(self, agent_id):
        c = self.by_id.get(agent_id)
        if c is None:
            c = self.by_id[agent_id] = NatsAgentView(self, agent_id)
            self.connections.append(c)
        return c

    def _on_msg(self, o):  # on the loop thread
        subject, raw = o["subject"], o["data"]
        if subject.startswith(self.inbox + "."):
            conn = self._sent_to.pop(subject, None)
            name = subject
        else:
            rest = subject[len(self.prefix) + 1:] if subject.startswith(self.prefix + ".") else ""
            agent_id, _, name = rest.partition(".")
            if name not in AGENT_EVENTS:
                return
            conn = self._view(agent_id)
        if conn is None:
            return
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
            self.errors.append("agent sent invalid JSON on %s: %r" % (subject, raw[:200]))
        msg = {"subject": name, "data": data} if data is not None else None
        conn.last_seen = time.monotonic()
        conn.messages.append((conn.last_seen, msg, raw))
        if self.on_message and msg:
            self.on_message(conn, msg)
        self._notify()

    async def _watch_stale(self):
        # Agents falling silent (or heard again) change `closed`: tell waiters
        # (the live view lists them) once a second.
        seen = None
        while True:
            await asyncio.sleep(1)
            now = tuple(c.closed for c in self.connections)
            if now != seen:
                seen = now
                self._notify()

    def start(self):
        bridge = os.path.join(NATS_DIR, "bridge.mjs")
        if not os.path.isdir(os.path.join(NATS_DIR, "node_modules", "nats")):
            raise RuntimeError("nats.js is not installed: run `npm ci` in %s (scripts/deps.sh does)"
                               % os.path.normpath(NATS_DIR))
        self.proc = subprocess.Popen(["node", bridge, self.nats_url, *self.auth], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        ready = threading.Event()

        def _run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.create_task(self._watch_stale())
            self.loop.run_forever()
            # Ours and the live view's tasks (event streams) end here.
            tasks = asyncio.all_tasks(self.loop)
            for t in tasks:
                t.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

        self._thread = threading.Thread(target=_run, daemon=True)
        self._thread.start()
        ready.wait(10)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(lambda: self._ready, 20, "nats.js to connect to " + self.nats_url)
        if "error" in self._ready:
            self.stop()
            raise RuntimeError("nats.js could not connect to %s: %s" % (self.nats_url, self._ready["error"]))
        for ev in AGENT_EVENTS:
            self._call("sub", subject="%s.*.%s" % (self.prefix, ev))
        self._call("sub", subject=self.inbox + ".>")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.loop:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    # --- agents and requests -------------------------------------------------
    def wait_connection(self, n=1, timeout=30):
        """With an agent id: waits for that agent; otherwise for the n-th agent heard."""
        if self.agent_id:
            return self.wait_for(lambda: self.by_id.get(self.agent_id), timeout,
                                 "agent %s on NATS" % self.agent_id)
        return super().wait_connection(n, timeout)

    @property
    def current(self):
        """The agent requests go to: the one named, else the newest heard."""
        if self.agent_id:
            return self.by_id.get(self.agent_id)
        return super().current

    def _publish(self, subject, data, conn, forget=False):
        conn = conn or self.current
        if conn is None:
            raise RuntimeError("no agent heard on NATS yet")
        reply = "%s.%d" % (self.inbox, next(self._ids))
        self._sent_to[reply] = conn
        payload = "" if data is None else json.dumps(data)
        return conn, reply, self._send("publish", subject="%s.%s.%s" % (self.prefix, conn.agent_id, subject),
                                       data=payload, reply=reply, forget=forget)

    def request(self, subject, data=None, reply=True, conn=None):
        """Publishes a request to `<prefix>.<agent>.<subject>` (the payload is
        the data object); returns the reply subject (or None)."""
        conn = conn or self.current
        if not reply:
            self._call("publish", subject="%s.%s.%s" % (self.prefix, conn.agent_id, subject),
                       data="" if data is None else json.dumps(data))
            return None
        _, rsub, i = self._publish(subject, data, conn)
        self.wait_for(lambda: self._acks.pop(i, None), 15, "nats.js: publish")
        return rsub

    def post(self, subject, data):
        """A request from the loop thread (the live view): does not wait."""
        return self._publish(subject, data, None, forget=True)[1]


def fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def main():
    ap = argparse.ArgumentParser(description="hostagent reference manager")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--move", nargs=3, metavar=("SERVER", "OLD", "NEW"),
                    help="after the agent's hello, send one server.move_data and exit on its answer "
                    "(and, for a move, once its terminal frame is in too)")
    ap.add_argument("--print-frames", action="store_true", help="print every frame as JSON")
    ap.add_argument("--web-port", type=int, help="serve the live view on 127.0.0.1:PORT")
    ap.add_argument("--move-delay", type=float, default=0,
                    help="with --move: wait this many seconds after the agent connects")
    ap.add_argument("--hold", action="store_true",
                    help="with --move: keep serving after the answer until Ctrl-C")
    nats = ap.add_argument_group("NATS (agents with transport = nats; --port is then not used)")
    nats.add_argument("--nats", metavar="URL", help="drive the agents through this NATS server "
                      "(nats://host:port, comma-separated for several) instead of listening for WebSocket")
    nats.add_argument("--nats-prefix", default="hostagent", help="the agents' nats_subject_prefix")
    nats.add_argument("--nats-agent", metavar="ID", help="the agent_id requests go to (default: the newest heard)")
    nats.add_argument("--nats-user")
    nats.add_argument("--nats-password-file", metavar="FILE")
    nats.add_argument("--nats-token-file", metavar="FILE")
    nats.add_argument("--nats-stale", type=float, default=45.0, metavar="SECONDS",
                      help="an agent silent this long shows as disconnected (default 45: three heartbeats)")
    args = ap.parse_args()
    if not args.nats and (args.nats_agent or args.nats_user or args.nats_password_file or args.nats_token_file):
        ap.error("the --nats-* options need --nats URL")
    if bool(args.nats_user) != bool(args.nats_password_file):
        ap.error("--nats-user and --nats-password-file go together")

    def show(conn, msg):
        if msg is None:
            return
        if args.print_frames:
            print(json.dumps(msg), flush=True)
            return
        subj, d = msg.get("subject"), msg.get("data", {})
        if subj == "agent.hello":
            print("agent %s: %s (version %s, pid %s)" % ("heard" if args.nats else "connected", d.get("agentId"), d.get("version"), d.get("pid")), flush=True)
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

    if args.nats:
        def secret(path):
            with open(path) as f:
                return f.read().strip()
        auth = []
        if args.nats_user:
            auth = ["--user", args.nats_user, "--pass", secret(args.nats_password_file)]
        elif args.nats_token_file:
            auth = ["--token", secret(args.nats_token_file)]
        try:
            m = NatsManager(args.nats, prefix=args.nats_prefix, agent_id=args.nats_agent, on_message=show,
                            stale=args.nats_stale, auth=auth).start()
        except RuntimeError as e:
            print("refmanager: %s" % e, file=sys.stderr)
            sys.exit(2)
        print("reference manager on NATS %s: listening to %s.*.{%s}" % (m.url, m.prefix, ",".join(AGENT_EVENTS)),
              flush=True)
    else:
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
            if ans.get("moveId"):
                # A move's terminal frame goes out before its answer. On one
                # WebSocket it arrives first; over NATS frames and answers
                # travel on different subjects and may arrive in either
                # order: wait for it, so that what was printed is the whole
                # move either way.
                try:
                    m.wait_for(lambda: any(f.get("phase") in TERMINAL_PHASES for f in m.frames(ans["moveId"])),
                               60, "the terminal frame of move %s" % ans["moveId"])
                except TimeoutError as e:
                    print("refmanager: %s" % e, file=sys.stderr, flush=True)
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
