"""The systemd notification protocol, spoken to a socket of the test's own:
READY, STATUS, WATCHDOG, and on a stop with a move to roll back, STOPPING and
EXTEND_TIMEOUT_USEC so that systemd does not kill the rollback half-way."""
import os
import signal
import socket
import threading
import time

from harness import AgentTestCase, dense_tree, snapshot


class NotifyTest(AgentTestCase):
    def listen(self):
        path = os.path.join(self.scratch.base, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.2)
        got, done = [], threading.Event()

        def run():
            while not done.is_set():
                try:
                    got.append((time.monotonic(), sock.recv(4096).decode()))
                except socket.timeout:
                    pass
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.addCleanup(lambda: (done.set(), t.join(), sock.close()))
        return path, got

    def test_ready_status_watchdog_and_stop_extension(self):
        path, got = self.listen()
        self.start_agent(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        msgs = lambda: [m for _, m in got]  # noqa: E731
        self.manager.wait_for(lambda: "READY=1" in msgs(), 10, "READY=1")
        self.manager.wait_for(lambda: any(m.startswith("STATUS=connected to the manager") for m in msgs()),
                              10, "STATUS connected")
        self.manager.wait_for(lambda: msgs().count("WATCHDOG=1") >= 2, 10, "two watchdog pings")
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        before = snapshot(src, content=False)
        reply = self.manager.request("server.move_data", {"serverName": "mc", "oldPath": src,
                                                          "newPath": os.path.join(self.scratch.b, "mc")})
        self.manager.wait_for(lambda: any(f["phase"] == "copying" for f in self.manager.frames()), 20, "copying")
        with self.paused_agent():
            os.kill(self.agent.proc.pid, signal.SIGTERM)
        self.assertEqual(self.agent.proc.wait(30), 0)
        self.assertEqual(self.manager.wait_answer(reply, 10)["code"], "shutting_down")
        m = msgs()
        self.assertIn("STOPPING=1", m)
        self.assertIn("EXTEND_TIMEOUT_USEC=20000000", m)
        self.assertLess(m.index("STOPPING=1"), m.index("EXTEND_TIMEOUT_USEC=20000000"))
        self.assertTrue(any(s.startswith("STATUS=stopping") for s in m), m)
        self.assertEqual(snapshot(src, content=False), before)
