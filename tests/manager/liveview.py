"""A live view of the reference manager for integrators: a small web page on
127.0.0.1 listing connected agents and every move as a live progress bar
(phase, rate, ETA), fed by the agents' real move.progress frames, with a form
to send server.move_data and a cancel button. Standard library only: plain
HTTP, Server-Sent Events, and one static page (liveview.html). It works the
same over WebSocket (Manager) and NATS (NatsManager): both record what agents
send in the WebSocket frames' shape and send requests with manager.post().

    view = LiveView(manager, port=8080).start()   # after manager.start()
"""
import asyncio
import json
import os

from refmanager import read_http_head

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "liveview.html")


class LiveView:
    def __init__(self, manager, host="127.0.0.1", port=0):
        self.manager, self.host, self.port = manager, host, port
        self.clients = []  # asyncio queues, one per open event stream
        self.writers = []  # their connections, closed by stop()
        self.moves = {}  # moveId -> newest MoveState
        self.answers = {}  # moveId -> the answer to its server.move_data
        self.pending = {}  # reply subject -> moveId (or None until known)
        previous = manager.on_message

        def on_message(conn, msg):  # runs on the manager's loop thread
            if previous:
                previous(conn, msg)
            self._on_message(conn, msg)
        manager.on_message = on_message

    # --- state fed by the agents ---------------------------------------------
    def _agents(self):
        out = []
        for c in self.manager.connections:
            hello = next((m for _, m, _ in c.messages if m and m.get("subject") == "agent.hello"), None)
            d = hello["data"] if hello else {}
            out.append({"agentId": d.get("agentId", getattr(c, "agent_id", "?")), "version": d.get("version", "?"),
                        "connected": not c.closed})
        return out

    def _broadcast(self, event):
        text = json.dumps(event)
        for q in list(self.clients):
            q.put_nowait(text)

    def _on_message(self, conn, msg):
        if not msg:
            return
        subj, data = msg.get("subject"), msg.get("data") or {}
        if subj == "agent.hello":
            for st in data.get("moves", []):
                self.moves[st["moveId"]] = st
            self._broadcast({"type": "agents", "agents": self._agents()})
        elif subj == "move.progress":
            old = self.moves.get(data.get("moveId"))
            if not old or data.get("seq", 0) >= old.get("seq", 0):  # duplicates after a reconnect
                self.moves[data["moveId"]] = data
                self._broadcast({"type": "move", "move": data})
        elif subj in self.pending:
            self.answers[subj] = data
            self._broadcast({"type": "answer", "reply": subj, "answer": data})

    # --- HTTP ------------------------------------------------------------------
    async def _handle(self, reader, writer):
        request = await read_http_head(reader)
        if request is None:
            writer.close()
            return
        method, path, headers = request
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            length = -1
        body = await reader.readexactly(length) if 0 < length <= 65536 else b""
        try:
            if method == "GET" and path == "/":
                with open(PAGE, "rb") as f:
                    self._reply(writer, 200, "text/html; charset=utf-8", f.read())
            elif method == "GET" and path == "/events":
                await self._events(writer)
                return
            elif method == "POST" and path in ("/api/move", "/api/cancel"):
                req = json.loads(body or b"{}")
                if not self.manager.current:
                    self._reply(writer, 409, "application/json", b'{"error": "no agent connected"}')
                elif path == "/api/move":
                    data = {k: req[k] for k in ("serverName", "oldPath", "newPath", "moveId") if req.get(k)}
                    reply = self._request("server.move_data", data)
                    self._reply(writer, 200, "application/json", json.dumps({"reply": reply}).encode())
                else:
                    reply = self._request("server.move_cancel", {"moveId": req.get("moveId", "")})
                    self._reply(writer, 200, "application/json", json.dumps({"reply": reply}).encode())
            else:
                self._reply(writer, 404, "text/plain", b"not found")
        except (ValueError, KeyError) as e:
            self._reply(writer, 400, "text/plain", str(e).encode())
        await writer.drain()
        writer.close()

    def _request(self, subject, data):
        reply = self.manager.post(subject, data)
        self.pending[reply] = None
        return reply

    @staticmethod
    def _reply(writer, code, ctype, body):
        writer.write(("HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
                      "Connection: close\r\n\r\n" % (code, ctype, len(body))).encode() + body)

    async def _events(self, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\r\n")
        q = asyncio.Queue()
        self.clients.append(q)
        self.writers.append(writer)
        q.put_nowait(json.dumps({"type": "snapshot", "agents": self._agents(), "moves": list(self.moves.values()),
                                 "answers": self.answers}))
        try:
            while True:
                try:
                    text = await asyncio.wait_for(q.get(), 15)
                    writer.write(("data: %s\n\n" % text).encode())
                except asyncio.TimeoutError:
                    writer.write(b": keepalive\n\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.clients.remove(q)
            if writer in self.writers:
                self.writers.remove(writer)
            writer.close()

    def start(self):
        fut = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, self.host, self.port),
                                               self.manager.loop)
        server = fut.result(10)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        # Agents connecting later: tell the page.
        previous = self.manager._notify

        def notify():
            previous()
            n = len(self.manager.connections), sum(c.closed for c in self.manager.connections)
            if n != getattr(self, "_seen", None):
                self._seen = n
                self.manager.loop.call_soon_threadsafe(self._broadcast, {"type": "agents", "agents": self._agents()})
        self.manager._notify = notify
        return self

    def stop(self):
        """Ends the event streams (before the manager stops its loop)."""
        def _close():
            for w in list(self.writers):
                w.transport.abort()
            self._server.close()
        self.manager.loop.call_soon_threadsafe(_close)

    @property
    def url(self):
        return "http://%s:%d/" % (self.host, self.port)
