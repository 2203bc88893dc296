"""The manager connection: upgrade headers, hello, heartbeats, pings, dead
links, reconnect with backoff, and malformed input that never closes it."""
import json
import os
import re
import subprocess
import sys
import time
import unittest

from harness import AgentTestCase, Agent, private_hosts
from refmanager import Manager


class ConnectionTest(AgentTestCase):
    def test_a_name_with_a_dead_first_address_connects_through_the_next(self):
        # Like localhost on Debian (::1 first, then 127.0.0.1) with a manager
        # that listens on one of them: the name resolves to 127.0.0.1 (where
        # nothing listens) first, then 127.0.0.3 (the manager).
        self.manager.stop()
        self.manager = Manager(host="127.0.0.3", url_host="manager.test").start()
        hosts = "127.0.0.1 manager.test\n127.0.0.3 manager.test\n"
        order = subprocess.run([sys.executable, "-c", "import socket; print(' '.join(a[4][0] for a in "
                                "socket.getaddrinfo('manager.test', 1, type=socket.SOCK_STREAM)))"],
                               env=dict(os.environ, **private_hosts(self.scratch, hosts, agent=False)),
                               capture_output=True, text=True, check=True).stdout.split()
        self.assertEqual(order, ["127.0.0.1", "127.0.0.3"], "the test needs the dead address first")
        self.agent = Agent(self.manager, self.scratch, hosts=hosts)
        conn = self.manager.wait_connection(timeout=20)
        self.assertEqual(conn.messages[0][1]["subject"], "agent.hello")
        log = self.agent.log()
        self.assertLess(log.index("address=127.0.0.1"), log.index("address=127.0.0.3"), log)
        self.assertIn("connected url=ws://manager.test:%d/agent address=127.0.0.3" % self.manager.port, log)

    def test_upgrade_headers_and_hello(self):
        self.manager_url_suffix = None
        conn = self.start_agent(extra={"manager_url": self.manager.url + "/v1?cluster=eu&x=1"})
        self.assertEqual(conn.path, "/agent/v1?cluster=eu&x=1")
        self.assertEqual(conn.headers.get("authorization"), "Bearer it-token-0123456789")
        self.assertEqual(conn.headers.get("x-agent-id"), "it-agent")
        self.assertNotIn("sec-websocket-protocol", conn.headers)
        first = conn.messages[0][1]
        self.assertEqual(first["subject"], "agent.hello")
        d = first["data"]
        self.assertEqual(d["agentId"], "it-agent")
        self.assertEqual(d["protocol"], 1)
        self.assertEqual(d["pid"], self.agent.proc.pid)
        self.assertEqual(d["hostname"], os.uname().nodename)
        self.assertRegex(d["version"], r"^\d+\.\d+\.\d+$")
        self.assertRegex(d["startedAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertIn("server.move_data", d["capabilities"])
        self.assertEqual(d["moves"], [])
        self.assertNotIn("it-token-0123456789", self.agent.log())

    def test_token_from_environment_overrides(self):
        conn = self.start_agent(env={"HOSTAGENT_TOKEN": "env-secret-42"})
        self.assertEqual(conn.headers.get("authorization"), "Bearer env-secret-42")
        self.assertNotIn("env-secret-42", self.agent.log())

    def test_heartbeats_and_pings(self):
        conn = self.start_agent(extra={"heartbeat_interval": "1s", "ping_interval": "1s"})
        self.manager.wait_for(lambda: len([m for _, m, _ in conn.messages if m["subject"] == "heartbeat"]) >= 3,
                              10, "three heartbeats")
        beats = [(t, m["data"]) for t, m, _ in conn.messages if m["subject"] == "heartbeat"]
        for _, d in beats:
            self.assertEqual(d["agentId"], "it-agent")
            self.assertEqual(d["activeMoves"], 0)
        self.assertLess(beats[0][1]["uptimeMs"], beats[1][1]["uptimeMs"])
        gaps = [b[0] - a[0] for a, b in zip(beats, beats[1:])]
        self.assertTrue(all(0.7 < g < 1.6 for g in gaps), gaps)
        self.manager.wait_for(lambda: len(conn.pings) >= 2, 10, "two pings")
        self.assertEqual(len(self.manager.connections), 1)

    def test_dead_connection_is_dropped_and_redialled(self):
        self.manager.answer_pings = False
        conn = self.start_agent(extra={"ping_interval": "1s"})
        t0 = time.monotonic()
        self.manager.wait_for(lambda: conn.closed, 15, "agent to drop a link without pongs")
        elapsed = time.monotonic() - t0
        self.assertGreater(elapsed, 2.0)   # not before 3 ping intervals
        self.assertLess(elapsed, 8.0)
        self.manager.answer_pings = True
        second = self.manager.wait_connection(2, timeout=15)
        self.assertEqual(second.messages[0][1]["subject"], "agent.hello")

    def test_reconnect_sends_hello_first(self):
        conn = self.start_agent()
        conn.drop()
        second = self.manager.wait_connection(2, timeout=15)
        self.assertEqual(second.messages[0][1]["subject"], "agent.hello")
        self.assertIn("connection lost", self.agent.log())

    def test_backoff_grows_and_is_capped(self):
        self.manager.accept = False
        self.agent = None
        from harness import Agent
        self.agent = Agent(self.manager, self.scratch, extra={"reconnect_min": "200ms", "reconnect_max": "1s"})
        self.manager.wait_for(lambda: len(self.manager.attempts) >= 7, 30, "seven attempts")
        t = self.manager.attempts[:7]
        gaps = [b - a for a, b in zip(t, t[1:])]
        # 200, 400, 800 ms, then capped at 1 s; jitter takes off at most a quarter.
        expected = [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
        for g, e in zip(gaps, expected):
            self.assertGreaterEqual(g, 0.75 * e - 0.05, gaps)
            self.assertLessEqual(g, e + 0.35, gaps)
        self.manager.accept = True
        conn = self.manager.wait_connection(1, timeout=10)
        self.assertEqual(conn.messages[0][1]["subject"], "agent.hello")
        log = self.agent.log()
        # Failures are not logged at warning level once per attempt.
        self.assertLessEqual(log.count("warn connection failed"), 2, log)


class MalformedInputTest(AgentTestCase):
    def answer_of(self, raw, reply, timeout=10):
        self.manager.current.send_text(raw)
        return self.manager.wait_answer(reply, timeout)

    def test_malformed_frames_never_close_the_connection(self):
        conn = self.start_agent(extra={"max_message_bytes": "4K"})
        send = conn.send_text
        send("this is not json")
        send("[1,2,3]")
        send('{"subject": 42}')
        send('{"data": {}}')
        send(b'{"subject":"\xff\xfe"}')
        send('{"subject":"x"' + "[" * 100)
        conn.send_binary(b"\x00\x01binary")
        # Readable reply: answered with invalid_request.
        a = self.answer_of('{"reply":"_INBOX.m1","data":{}}', "_INBOX.m1")
        self.assertEqual((a["success"], a["code"]), (False, "invalid_request"))
        a = self.answer_of('{"subject":"server.move_data","reply":"_INBOX.m2","data":[1]}', "_INBOX.m2")
        self.assertEqual(a["code"], "invalid_request")
        # Unknown subject: answered when there is a reply, else dropped.
        a = self.answer_of('{"subject":"server.explode","reply":"_INBOX.m3"}', "_INBOX.m3")
        self.assertEqual(a["code"], "unknown_subject")
        self.assertIn("server.explode", a["error"])
        send('{"subject":"server.explode"}')
        # Over max_message_bytes: dropped, never answered, link kept.
        big = json.dumps({"subject": "server.move_data", "reply": "_INBOX.big", "data": {"pad": "x" * 8000}})
        send(big)
        a = self.answer_of('{"subject":"nope","reply":"_INBOX.after"}', "_INBOX.after")
        self.assertEqual(a["code"], "unknown_subject")
        self.assertEqual(self.manager.answers("_INBOX.big"), [])
        self.assertEqual(len(self.manager.connections), 1)
        self.assertFalse(conn.closed)
        answers = [m for m in self.manager.all_messages() if m["subject"].startswith("_INBOX")]
        self.assertEqual(len(answers), 4, answers)  # exactly one answer per request with a reply
        log = self.agent.log()
        self.assertIn("malformed frame dropped", log)
        self.assertIn("over max_message_bytes", log)


if __name__ == "__main__":
    unittest.main()
