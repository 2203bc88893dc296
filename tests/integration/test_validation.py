"""Requests that must be refused at once, with the right code, touching nothing."""
import os
import unittest

from harness import AgentTestCase, dense_tree, make_tree, snapshot


class ValidationTest(AgentTestCase):
    def setUp(self):
        super().setUp()
        a, b = self.scratch.a, self.scratch.b
        self.src = make_tree(os.path.join(a, "mc-1"), n_small=10)
        os.makedirs(os.path.join(b, "full"))
        with open(os.path.join(b, "full", "x"), "w") as f:
            f.write("x")
        with open(os.path.join(a, "plainfile"), "w") as f:
            f.write("not a dir")
        self.outside = os.path.join(self.scratch.base, "outside")
        os.makedirs(os.path.join(self.outside, "victim"))
        os.symlink(self.outside, os.path.join(a, "escape"))          # inside a root, points out
        os.symlink(self.src, os.path.join(a, "link-to-mc-1"))         # oldPath as a symlink
        self.start_agent()
        self.before = (snapshot(self.scratch.a), snapshot(self.scratch.b), snapshot(self.outside))

    check_untouched = True

    def tearDown(self):
        try:
            if self.check_untouched:
                self.assertEqual((snapshot(self.scratch.a), snapshot(self.scratch.b), snapshot(self.outside)),
                                 self.before, "a refused request changed files")
        finally:
            super().tearDown()

    def req(self, old, new, server="mc-1", **extra):
        d = {"serverName": server, "oldPath": old, "newPath": new}
        d.update(extra)
        return d

    def test_invalid_request(self):
        b = os.path.join(self.scratch.b, "new")
        self.assert_refused({"oldPath": self.src, "newPath": b}, "invalid_request", "serverName")
        self.assert_refused(self.req(self.src, b, server="bad name"), "invalid_request", "serverName")
        self.assert_refused(self.req(self.src, b, server="x" * 129), "invalid_request", "serverName")
        self.assert_refused(self.req(self.src, b, moveId="bad/id"), "invalid_request", "moveId")
        self.assert_refused(self.req(self.src, b, moveId="y" * 65), "invalid_request", "moveId")
        self.assert_refused({"serverName": "s", "oldPath": 5, "newPath": b}, "invalid_request", "oldPath")
        self.assert_refused({"serverName": "s", "oldPath": self.src}, "invalid_request", "newPath")

    def test_path_not_allowed(self):
        a, b = self.scratch.a, self.scratch.b
        new = os.path.join(b, "new")
        cases = [
            (self.req("relative/mc-1", new), "oldPath must be an absolute path"),
            (self.req(self.src, "relative"), "newPath must be an absolute path"),
            (self.req(a + "/../a/mc-1", new), ".."),
            (self.req(a + "/./mc-1", new), "."),
            (self.req(a + "//mc-1", new), "//"),
            (self.req(self.src, b + "/x/" + "n" * 300), "longer than 255"),
            (self.req(self.src, b + ("/" + "d" * 200) * 25), "too long"),
            (self.req(os.path.join(self.outside, "victim"), new), "outside the allowed roots"),
            (self.req(os.path.join(self.outside, "nothing-here"), new), "outside the allowed roots"),
            (self.req(self.src, os.path.join(self.outside, "new")), "outside the allowed roots"),
            (self.req(os.path.join(a, "escape", "victim"), new), "outside the allowed roots"),
            (self.req(self.src, os.path.join(a, "escape", "new")), "outside the allowed roots"),
            (self.req(a, new), "allowed root itself"),
            (self.req(os.path.join(a, "link-to-mc-1"), new), "symlink"),
            (self.req("/", new), "/"),
            # A reclaim directory (issue 12): neither read, nor written, nor
            # passed through, existing or not.
            (self.req(os.path.join(a, ".hostagent-reclaim-mv-1"), new), "reclaim directory"),
            (self.req(os.path.join(a, ".hostagent-reclaim-mv-1", "mc-1"), new), "reclaim directory"),
            (self.req(self.src, os.path.join(b, ".hostagent-reclaim-x", "new")), "reclaim directory"),
        ]
        for data, words in cases:
            with self.subTest(data=data):
                self.assert_refused(data, "path_not_allowed", words)
        # Outside, existing or not: the same words, so nothing is revealed.
        e1 = self.assert_refused(self.req(os.path.join(self.outside, "victim"), new), "path_not_allowed")
        e2 = self.assert_refused(self.req(os.path.join(self.outside, "nope"), new), "path_not_allowed")
        self.assertEqual(e1["error"], e2["error"])

    def test_nul_in_path(self):
        # Raw JSON: "\u0000" must not be cut away silently by the parser.
        raw = ('{"subject":"server.move_data","reply":"_INBOX.nul","data":{"serverName":"mc-1",'
               '"oldPath":"%s\\u0000/../../etc","newPath":"%s/new"}}' % (self.src, self.scratch.b))
        self.manager.current.send_text(raw)
        ans = self.manager.wait_answer("_INBOX.nul", 20)
        self.assertEqual(ans["code"], "path_not_allowed", ans)
        self.assertIn("NUL", ans["error"])

    def test_invalid_paths(self):
        self.assert_refused(self.req(self.src, self.src), "invalid_paths")
        self.assert_refused(self.req(self.src, self.src + "/"), "invalid_paths")
        self.assert_refused(self.req(self.src, os.path.join(self.src, "inner")), "invalid_paths")
        # Same directory reached through a symlink: compared after resolution.
        self.assert_refused(self.req(self.src, os.path.join(self.scratch.a, "link-to-mc-1", "sub")),
                            "invalid_paths")

    def test_source_missing_and_destination_exists(self):
        a, b = self.scratch.a, self.scratch.b
        self.assert_refused(self.req(os.path.join(a, "nope"), os.path.join(b, "n")), "source_missing")
        self.assert_refused(self.req(os.path.join(a, "plainfile"), os.path.join(b, "n")), "source_missing")
        self.assert_refused(self.req(self.src, os.path.join(b, "full")), "destination_exists")
        self.assert_refused(self.req(self.src, os.path.join(b, "full", "x")), "destination_exists")
        self.assert_refused(self.req(self.src, os.path.join(b, "full", "x", "under-a-file")), "destination_exists")

    def test_precedence(self):
        a, b = self.scratch.a, self.scratch.b
        # invalid_request beats path_not_allowed
        self.assert_refused(self.req("relative", "relative", server="bad name"), "invalid_request")
        # path_not_allowed beats invalid_paths
        self.assert_refused(self.req(os.path.join(self.outside, "victim"), os.path.join(self.outside, "victim")),
                            "path_not_allowed")
        # invalid_paths beats source_missing
        self.assert_refused(self.req(os.path.join(a, "nope"), os.path.join(a, "nope", "x")), "invalid_paths")
        # source_missing beats destination_exists
        self.assert_refused(self.req(os.path.join(a, "nope"), os.path.join(b, "full")), "source_missing")

    def test_busy(self):
        src_before = snapshot(self.src)
        big = dense_tree(os.path.join(self.scratch.a, "big"), 200)
        os.mkdir(os.path.join(big, "sub"))
        dst = os.path.join(self.scratch.b, "big")
        first = self.manager.request("server.move_data",
                                     {"serverName": "big-1", "oldPath": big, "newPath": dst, "moveId": "mv-long"})
        self.check_untouched = False  # the long move changes the roots on purpose
        self.manager.wait_for(lambda: any(f["phase"] == "copying" for f in self.manager.frames("mv-long")),
                              20, "the long move copying")
        b = self.scratch.b
        cases = [(self.req(self.src, os.path.join(b, "x"), server="big-1"), "big-1"),
                 (self.req(self.src, os.path.join(b, "x"), moveId="mv-long"), "mv-long"),
                 (self.req(self.src, os.path.join(dst, "inside")), "overlap"),
                 (self.req(os.path.join(big, "sub"), os.path.join(b, "y")), "overlap")]
        # Frozen early in the copy: the requests are answered long before it ends.
        with self.paused_agent():
            replies = [self.manager.request("server.move_data", data) for data, _ in cases]
        for reply, (_, word) in zip(replies, cases):
            ans = self.manager.wait_answer(reply, 20)
            self.assertEqual((ans["success"], ans["code"]), (False, "busy"), ans)
            self.assertIn(word, ans["error"])
        self.assertTrue(self.manager.frames("mv-long")[-1]["phase"] not in ("complete", "error"))
        ans = self.manager.wait_answer(first, 120)
        self.assertTrue(ans["success"], ans)
        # Everything but the long move's own paths is as it was.
        self.assertEqual(snapshot(self.src), src_before)
        self.assertFalse(os.path.exists(os.path.join(b, "x")))
        self.assertFalse(os.path.exists(os.path.join(b, "y")))
        self.assertEqual(sorted(os.listdir(dst)), ["level.dat", "sub", "world.img"])
        self.assertEqual(snapshot(self.outside), self.before[2])


class NoRootsTest(AgentTestCase):
    def test_no_allowed_roots_refuses_everything(self):
        self.start_agent(extra={"allowed_roots": None})
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=3)
        self.assert_refused({"serverName": "mc", "oldPath": src, "newPath": self.scratch.b + "/mc"},
                            "path_not_allowed", "no allowed_roots")
        self.assertIn("no allowed_roots configured", self.agent.log())


if __name__ == "__main__":
    unittest.main()
