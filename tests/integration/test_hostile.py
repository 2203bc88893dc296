"""A battery of malformed and hostile input on ONE connection: each case gets
its exact code (or is dropped unanswered), then the connection must be the
same one, the agent must still answer, and no file anywhere may have changed."""
import json
import os
import re
import time

from harness import SANITIZED, AgentTestCase, make_tree, snapshot, wait_until

LONG_SUBJECT = "s" * 300
DEEP = '{"a":' * 60 + "1" + "}" * 60


class HostileInputTest(AgentTestCase):
    def setUp(self):
        super().setUp()
        a, b = self.scratch.a, self.scratch.b
        self.src = make_tree(os.path.join(a, "mc"), n_small=10)
        os.makedirs(os.path.join(b, "full"))
        with open(os.path.join(b, "full", "x"), "w") as f:
            f.write("x")
        with open(os.path.join(a, "plainfile"), "w") as f:
            f.write("not a dir")
        self.outside = os.path.join(self.scratch.base, "outside")
        os.makedirs(os.path.join(self.outside, "victim", "data"))
        with open(os.path.join(self.outside, "victim", "data", "precious"), "w") as f:
            f.write("must survive")
        os.symlink(self.outside, os.path.join(a, "escape"))
        os.symlink(self.src, os.path.join(a, "link-to-mc"))
        # The same directory under a second name (a bind mount): equal by identity.
        os.makedirs(os.path.join(b, "alias"))
        self.scratch.mount("--bind", a, at=os.path.join(b, "alias"))
        self.start_agent(extra={"max_message_bytes": "64K"})

    def cases(self):
        a, b, src, out = self.scratch.a, self.scratch.b, self.src, self.outside

        def mv(old, new, **kw):
            d = {"serverName": "mc", "oldPath": old, "newPath": new}
            d.update(kw)
            return d
        md = "server.move_data"
        # (name, kind, payload, expected code or None for "dropped")
        return [
            ("not json", "raw", "this is not json", None),
            ("json array", "raw", "[1, 2, 3]", None),
            ("json string", "raw", '"server.move_data"', None),
            ("empty object", "raw", "{}", None),
            ("empty subject", "raw", '{"subject": ""}', None),
            ("subject not a string", "raw", '{"subject": 5, "reply": "r-subj-type"}', "invalid_request"),
            ("over-long subject", "raw", json.dumps({"subject": LONG_SUBJECT, "reply": "r-long"}),
             "invalid_request"),
            ("deep nesting", "raw", '{"subject": "x", "reply": "r-deep", "data": %s}' % DEEP, "invalid_request"),
            ("reply not a string", "raw", '{"subject": "server.move_data", "reply": 7}', None),
            ("invalid utf-8", "raw", b'{"subject": "server.move_data", "reply": "r-utf\xff"}', None),
            ("trailing garbage", "raw", '{"subject": "x", "reply": "r-trail"} {}', "invalid_request"),
            ("data not an object", "raw", '{"subject": "server.move_data", "reply": "r-data", "data": []}',
             "invalid_request"),
            ("oversized frame", "raw", json.dumps({"subject": md, "reply": "r-big", "data": {"pad": "x" * 70000}}),
             None),
            ("binary frame", "binary", b"\x00\x01binary", None),
            ("missing serverName", md, {"oldPath": src, "newPath": b + "/n"}, "invalid_request"),
            ("serverName a number", md, mv(src, b + "/n", serverName=12), "invalid_request"),
            ("serverName with a space", md, mv(src, b + "/n", serverName="mc 1"), "invalid_request"),
            ("serverName too long", md, mv(src, b + "/n", serverName="m" * 129), "invalid_request"),
            ("serverName with a slash", md, mv(src, b + "/n", serverName="../mc"), "invalid_request"),
            ("moveId bad characters", md, mv(src, b + "/n", moveId="mv/1"), "invalid_request"),
            ("moveId too long", md, mv(src, b + "/n", moveId="m" * 65), "invalid_request"),
            ("moveId not a string", md, mv(src, b + "/n", moveId=["x"]), "invalid_request"),
            ("oldPath missing", md, {"serverName": "mc", "newPath": b + "/n"}, "invalid_request"),
            ("oldPath a number", md, mv(3, b + "/n"), "invalid_request"),
            ("newPath null", md, mv(src, None), "invalid_request"),
            ("relative oldPath", md, mv("mc", b + "/n"), "path_not_allowed"),
            ("relative newPath", md, mv(src, "n"), "path_not_allowed"),
            ("dot-dot in oldPath", md, mv(a + "/x/../mc", b + "/n"), "path_not_allowed"),
            ("dot-dot escaping newPath", md, mv(src, b + "/../../etc/n"), "path_not_allowed"),
            ("dot component", md, mv(src, b + "/./n"), "path_not_allowed"),
            ("double slash", md, mv(a + "//mc", b + "/n"), "path_not_allowed"),
            ("NUL in oldPath", md, mv(src + "\u0000/x", b + "/n"), "path_not_allowed"),
            ("NUL in newPath", md, mv(src, b + "/n\u0000"), "path_not_allowed"),
            ("symlink escape in oldPath", md, mv(a + "/escape/victim", b + "/n"), "path_not_allowed"),
            ("symlink escape in newPath", md, mv(src, a + "/escape/victim/data"), "path_not_allowed"),
            ("oldPath outside the roots", md, mv(out + "/victim", b + "/n"), "path_not_allowed"),
            ("newPath outside the roots", md, mv(src, out + "/n"), "path_not_allowed"),
            ("oldPath is /", md, mv("/", b + "/n"), "path_not_allowed"),
            ("oldPath is a root", md, mv(a, b + "/n"), "path_not_allowed"),
            ("newPath is a root", md, mv(src, b), "path_not_allowed"),
            ("oldPath is a symlink", md, mv(a + "/link-to-mc", b + "/n"), "path_not_allowed"),
            ("path too long", md, mv(src, b + "/" + "/".join(["d" * 200] * 25)), "path_not_allowed"),
            ("component too long", md, mv(src, b + "/" + "x" * 256), "path_not_allowed"),
            ("equal paths", md, mv(src, src), "invalid_paths"),
            ("equal with a trailing slash", md, mv(src, src + "/"), "invalid_paths"),
            ("newPath inside oldPath", md, mv(src, src + "/world/n"), "invalid_paths"),
            ("oldPath inside newPath", md, mv(src + "/world", src), "invalid_paths"),
            ("oldPath inside a missing newPath", md, mv(src + "/world", src + "/world/x/y"), "invalid_paths"),
            ("same directory by identity", md, mv(src, b + "/alias/mc"), "invalid_paths"),
            ("missing source", md, mv(a + "/nothing-here", b + "/n"), "source_missing"),
            ("file as source", md, mv(a + "/plainfile", b + "/n"), "source_missing"),
            ("non-empty destination", md, mv(src, b + "/full"), "destination_exists"),
            ("file as destination", md, mv(src, b + "/full/x"), "destination_exists"),
            ("unknown subject", "server.format_disk", {"really": True}, "unknown_subject"),
            ("unknown subject without reply", "noreply:server.format_disk", {}, None),
            ("cancel of an unknown move", "server.move_cancel", {"moveId": "mv-none"}, "not_found"),
            ("cancel without fields", "server.move_cancel", {}, "invalid_request"),
            ("cancel with a bad field", "server.move_cancel", {"serverName": {"a": 1}}, "invalid_request"),
            ("status with a bad field", "server.move_status", {"moveId": "bad id"}, "invalid_request"),
        ]

    def test_battery(self):
        conn = self.manager.current
        everything = (snapshot(self.scratch.a), snapshot(self.scratch.b), snapshot(self.outside))
        cases = self.cases()
        self.assertGreaterEqual(len(cases), 40)
        expected = []
        for name, kind, payload, code in cases:
            if kind == "raw":
                conn.send_text(payload)
                reply = None
                if code:
                    reply = re.search(r'"reply": "([^"]+)"', payload).group(1)
            elif kind == "binary":
                conn.send_binary(payload)
                reply = None
            elif kind.startswith("noreply:"):
                self.manager.request(kind[len("noreply:"):], payload, reply=False)
                reply = None
            else:
                reply = self.manager.request(kind, payload)
            expected.append((name, reply, code))
        # A valid request after all of it is answered on the same connection.
        status = self.manager.request("server.move_status", {})
        st = self.manager.wait_answer(status, 20)
        self.assertEqual(st, {"success": True, "moves": [], "reclaimingBytes": 0, "reclaimingEntries": 0},
                         json.dumps(st)[:2000])
        for name, reply, code in expected:
            if code is None:
                continue
            ans = self.manager.wait_answer(reply, 10)
            self.assertEqual((ans.get("success"), ans.get("code")), (False, code), "%s: %s" % (name, ans))
            self.assertIsInstance(ans.get("error"), str, name)
            self.assertNotIn("moveId", ans, name)
        # Nothing else was answered: the dropped ones got no message at all.
        time.sleep(0.3)
        answers = [m for m in conn.messages if m[1] and m[1]["subject"] not in
                   ("agent.hello", "heartbeat", "move.progress")]
        self.assertEqual(len(answers), sum(1 for _, _, c in expected if c) + 1)
        self.assertEqual(self.manager.frames(), [], "no move was started")
        self.assertEqual(self.manager.connections, [conn], "the connection was never dropped")
        self.assertFalse(conn.closed)
        self.assertEqual((snapshot(self.scratch.a), snapshot(self.scratch.b), snapshot(self.outside)),
                         everything, "hostile input changed files")
        log = self.agent.log()
        self.assertIn("malformed frame dropped", log)
        self.assertIn("over max_message_bytes dropped", log)


class FloodTest(AgentTestCase):
    def test_a_manager_that_does_not_read_is_pushed_back(self):
        # The manager floods requests and stops reading the answers: the agent
        # must stop reading requests (TCP pushes back) instead of queueing
        # answers without bound, then answer everything once it reads again.
        conn = self.start_agent()
        conn.pause_reading(True)
        pad = "p" * 240
        sent = 0
        while sent < 60000 and "the manager is not reading" not in self.agent.log():
            for _ in range(1000):
                conn.send_text(json.dumps({"subject": "x.unknown." + pad, "reply": "r%d.%s" % (sent, pad)}))
                sent += 1
        self.assertIn("the manager is not reading", self.agent.log())
        with open("/proc/%d/status" % self.agent.proc.pid) as f:
            rss_kib = int([ln for ln in f if ln.startswith("VmRSS")][0].split()[1])
        if not SANITIZED:  # ASan's shadow memory would dwarf the bound
            self.assertLess(rss_kib, 64 * 1024, "queued answers must stay bounded")
        conn.pause_reading(False)
        last = "r%d.%s" % (sent - 1, pad)
        self.manager.wait_for(lambda: self.manager.answers(last), 60, "the last answer")
        answered = sum(1 for _, m, _ in conn.messages if m and m["subject"].startswith("r"))
        self.assertEqual(answered, sent)
        self.assertEqual(self.manager.connections, [conn])
        self.assertFalse(conn.closed)


class StatusFloodTest(AgentTestCase):
    def test_big_status_answers_are_bounded_in_bytes(self):
        # A hundred ended moves with long paths make each status answer large;
        # a manager that asks for status without reading must be pushed back
        # by bytes (not after 2,048 answers of ~1 MB), each answer is capped,
        # and the memory comes back once it reads again.
        conn = self.start_agent()
        deep = self.scratch.a
        for i in range(16):  # ~3.3 KB of path below the root
            deep = os.path.join(deep, ("d%02d" % i) + "x" * 200)
        os.makedirs(deep)
        for i in range(100):
            os.mkdir(os.path.join(deep, "s%03d" % i))
            ans = self.move("s%03d" % i, os.path.join(deep, "s%03d" % i), os.path.join(deep, "t%03d" % i))
            self.assertTrue(ans["success"], ans)
        one = self.manager.wait_answer(self.manager.request("server.move_status", {}), 20)
        body = len(json.dumps(one, separators=(",", ":")))
        self.assertLessEqual(body, 256 * 1024 + 4096, "a status answer is capped")
        self.assertTrue(one.get("truncated"), "100 long states do not fit: the answer says it is cut")
        self.assertEqual(len(one["moves"]) + one["omitted"], 100)
        self.assertEqual(one["moves"][0]["serverName"], "s099", "newest first")

        def rss_kib():
            with open("/proc/%d/status" % self.agent.proc.pid) as f:
                return int([ln for ln in f if ln.startswith("VmRSS")][0].split()[1])
        conn.pause_reading(True)
        # 200 answers of ~256 KiB are 50 MB: far past the 8 MiB mark and the
        # socket buffers, and still quick to write out afterwards (also under
        # ASan, where each answer takes longer to build).
        sent = 0
        while sent < 200:
            conn.send_text(json.dumps({"subject": "server.move_status", "reply": "st%d" % sent, "data": {}}))
            sent += 1
        wait_until(lambda: "the manager is not reading" in self.agent.log(), 60, "the agent to stop reading")
        pause = re.search(r"the manager is not reading.* queued=(\d+) queued_bytes=(\d+)", self.agent.log())
        self.assertIsNotNone(pause, "the agent never stopped reading")
        queued, queued_bytes = int(pause.group(1)), int(pause.group(2))
        self.assertLess(queued, 100, "pushed back by bytes, long before 2,048 answers")
        self.assertGreaterEqual(queued_bytes, 8 << 20)
        time.sleep(1)
        peak = rss_kib()
        if not SANITIZED:  # ASan's shadow memory would dwarf the bound
            self.assertLess(peak, 64 * 1024, "queued answers must stay bounded in bytes")
        conn.pause_reading(False)
        self.manager.wait_for(lambda: self.manager.answers("st%d" % (sent - 1)), 120, "the last answer")
        answered = sum(1 for _, m, _ in conn.messages if m and m["subject"].startswith("st"))
        self.assertEqual(answered, sent)
        time.sleep(0.5)
        if not SANITIZED:
            self.assertLess(rss_kib(), 32 * 1024, "memory is given back once the backlog is written")
        self.assertFalse(conn.closed)
