"""server.move_cancel and server.move_status against the real agent."""
import contextlib
import os
import signal
import time

from harness import AgentTestCase, dense_tree, make_tree, many_files, snapshot


class ControlTest(AgentTestCase):
    def index_of(self, reply):
        return [m["subject"] for m in self.manager.all_messages()].index(reply)

    def test_cancel_a_running_move_rolls_it_back(self):
        conn = self.start_agent()
        hello = conn.messages[0][1]["data"]
        self.assertEqual(sorted(hello["capabilities"]),
                         ["server.move_cancel", "server.move_commit", "server.move_data", "server.move_prepare",
                          "server.move_status"])
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        make_tree(os.path.join(src, "world"), n_small=30)
        before = snapshot(src, content=False)
        dst = os.path.join(self.scratch.b, "new", "mc")
        move = self.request_move("mc", src, dst, "mv-c1")
        self.wait_phase("mv-c1", "copying")
        with self.paused_agent():  # cancel while it is early in the copy
            cancel = self.manager.request("server.move_cancel", {"moveId": "mv-c1"})
        t0 = time.monotonic()
        self.assertEqual(self.manager.wait_answer(cancel, 20), {"success": True, "moveId": "mv-c1"})
        t_answer = time.monotonic() - t0
        ans = self.manager.wait_answer(move, 60)
        print("\ncancel inside a 200 MiB file: answered in %.0f ms, rolled back and ended in %.0f ms"
              % (t_answer * 1000, (time.monotonic() - t0) * 1000))
        self.assertEqual((ans["success"], ans["code"], ans["moveId"]), (False, "cancelled", "mv-c1"))
        term = self.manager.frames("mv-c1")[-1]
        self.assertEqual((term["phase"], term["code"]), ("cancelled", "cancelled"))
        self.assertLess(self.index_of(cancel), self.index_of(move), "the cancel is answered at once")
        self.assertEqual(snapshot(src, content=False), before)
        self.assertEqual(os.listdir(self.scratch.b), [], "the copy and its created parents are gone")

    def test_cancel_many_small_files_is_prompt(self):
        self.start_agent()
        src = os.path.join(self.scratch.a, "many")
        for d in range(10):
            os.makedirs(os.path.join(src, "d%d" % d))
            for i in range(1500):
                with open(os.path.join(src, "d%d" % d, "f%d" % i), "wb") as f:
                    f.write(b"x" * 100)
        before = snapshot(src, content=False)
        move = self.request_move("many", src, os.path.join(self.scratch.b, "many"), "mv-many")
        self.manager.wait_for(lambda: any(f["phase"] == "copying" and f["filesCopied"] >= 2000
                                          for f in self.manager.frames("mv-many")), 60, "mid-copy")
        t0 = time.monotonic()
        cancel = self.manager.request("server.move_cancel", {"moveId": "mv-many"})
        self.assertTrue(self.manager.wait_answer(cancel, 20)["success"])
        t_answer = time.monotonic() - t0
        ans = self.manager.wait_answer(move, 60)
        t_end = time.monotonic() - t0
        print("\ncancel of 15,000 small files: answered in %.0f ms, rolled back and ended in %.0f ms"
              % (t_answer * 1000, t_end * 1000))
        self.assertEqual(ans["code"], "cancelled", ans)
        self.assertEqual(snapshot(src, content=False), before)
        self.assertEqual(os.listdir(self.scratch.b), [])

    def test_queue_runs_in_order_with_one_slot(self):
        self.start_agent(extra={"max_concurrent_moves": "1"})
        srcs = [make_tree(os.path.join(self.scratch.a, "s%d" % i), n_small=20) for i in range(4)]
        with self.paused_agent():  # all four arrive together
            replies = [self.request_move("s%d" % i, s, os.path.join(self.scratch.b, "s%d" % i), "mv-q%d" % i)
                       for i, s in enumerate(srcs)]
        for r in replies:
            self.assertTrue(self.manager.wait_answer(r, 60)["success"])
        first_copy = {}
        ended = {}
        for i, m in enumerate(self.manager.all_messages()):
            if m["subject"] == "move.progress":
                d = m["data"]
                if d["phase"] == "calculating":
                    first_copy.setdefault(d["moveId"], i)
                if d["phase"] == "complete":
                    ended[d["moveId"]] = i
        order = sorted(first_copy, key=first_copy.get)
        self.assertEqual(order, ["mv-q0", "mv-q1", "mv-q2", "mv-q3"])
        # The first found the slot free and began with "calculating"; the
        # others waited, so theirs begin with "queued".
        firsts = {i: [f["phase"] for f in self.manager.frames("mv-q%d" % i)][:2] for i in range(4)}
        self.assertEqual(firsts[0], ["calculating", "copying"])
        for i in (1, 2, 3):
            self.assertEqual(firsts[i], ["queued", "calculating"], i)
        for a, b in zip(order, order[1:]):
            self.assertLess(ended[a], first_copy[b], "one at a time: %s must end before %s starts" % (a, b))
        self.assertEqual(sorted(os.listdir(self.scratch.b)), ["s0", "s1", "s2", "s3"])

    def test_cancel_a_queued_move_removes_it(self):
        self.start_agent(extra={"max_concurrent_moves": "1"})
        a = dense_tree(os.path.join(self.scratch.a, "a"), 200)
        b = make_tree(os.path.join(self.scratch.a, "b"), n_small=10)
        before_b = snapshot(b)
        first = self.request_move("a", a, os.path.join(self.scratch.b, "a"), "mv-a")
        self.wait_phase("mv-a", "copying")
        with self.paused_agent():
            second = self.request_move("b", b, os.path.join(self.scratch.b, "b"), "mv-b")
            cancel = self.manager.request("server.move_cancel", {"serverName": "b"})
        self.assertEqual(self.manager.wait_answer(cancel, 20), {"success": True, "moveId": "mv-b"})
        ans = self.manager.wait_answer(second, 20)
        self.assertEqual((ans["success"], ans["code"]), (False, "cancelled"))
        self.assertEqual([f["phase"] for f in self.manager.frames("mv-b")], ["queued", "cancelled"])
        self.assertEqual(snapshot(b), before_b)
        self.assertTrue(self.manager.wait_answer(first, 60)["success"])
        self.assertEqual(os.listdir(self.scratch.b), ["a"])

    def test_cancel_while_cleaning_is_refused_and_the_move_completes(self):
        self.tmpfs_size = "256m"
        src = os.path.join(self.scratch.a, "many")
        many_files(src)
        self.start_agent()
        dst = os.path.join(self.scratch.b, "many")
        move = self.request_move("many", src, dst, "mv-clean")
        self.wait_phase("mv-clean", "cleaning")
        with self.paused_agent():
            cancel = self.manager.request("server.move_cancel", {"serverName": "many"})
        ans = self.manager.wait_answer(cancel, 20)
        self.assertEqual((ans["success"], ans["code"]), (False, "busy"), ans)
        self.assertIn("cannot be cancelled", ans["error"])
        self.assertTrue(self.manager.wait_answer(move, 60)["success"])
        self.assertEqual(self.manager.frames("mv-clean")[-1]["phase"], "complete")
        self.assertFalse(os.path.exists(src))
        self.assertEqual(sum(len(f) for _, _, f in os.walk(dst)), 8000)

    def run_into_timeout(self, extra, words):
        self.start_agent(extra=extra)
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        before = snapshot(src, content=False)
        dst = os.path.join(self.scratch.b, "mc")
        move = self.request_move("mc", src, dst, "mv-slow")
        self.wait_phase("mv-slow", "copying")
        with contextlib.ExitStack() as frozen:
            # Stop the whole agent at once (the copy cannot run on while the
            # freezer is set up), freeze its move thread, then let the loop
            # run again: the copy stalls, the loop keeps time.
            with self.paused_agent():
                frozen.enter_context(self.frozen_workers())
            self.manager.wait_for(lambda: "move timed out" in self.agent.log(), 30, "the timeout")
        ans = self.manager.wait_answer(move, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "timeout"), ans)
        self.assertIn(words, ans["error"])
        term = self.manager.frames("mv-slow")[-1]
        self.assertEqual((term["phase"], term["code"]), ("error", "timeout"))
        self.assertEqual(snapshot(src, content=False), before)
        self.assertEqual(os.listdir(self.scratch.b), [])

    def test_stall_timeout(self):
        self.run_into_timeout({"stall_timeout": "10s"}, "no progress for 10 s")

    def test_move_timeout(self):
        self.run_into_timeout({"move_timeout": "2s"}, "ran past move_timeout (2 s)")

    def test_cancel_refusals(self):
        self.start_agent()
        for data, code in [({"moveId": "nope"}, "not_found"), ({"serverName": "nobody-here"}, "not_found"),
                           ({}, "invalid_request"), ({"serverName": 5}, "invalid_request"),
                           ({"moveId": "bad id"}, "invalid_request")]:
            reply = self.manager.request("server.move_cancel", data)
            ans = self.manager.wait_answer(reply, 20)
            self.assertEqual((ans["success"], ans["code"]), (False, code), (data, ans))
            self.assertIsInstance(ans["error"], str)

    def test_status_lists_running_and_ended_moves(self):
        self.start_agent()
        big = dense_tree(os.path.join(self.scratch.a, "big"), 200)
        small = make_tree(os.path.join(self.scratch.a, "small"), n_small=5)
        done = self.request_move("small", small, os.path.join(self.scratch.b, "small"), "mv-small")
        self.assertTrue(self.manager.wait_answer(done, 30)["success"])
        running = self.request_move("big", big, os.path.join(self.scratch.b, "big"), "mv-big")
        self.wait_phase("mv-big", "copying")
        with self.paused_agent():
            every = self.manager.request("server.move_status", {})
            by_server = self.manager.request("server.move_status", {"serverName": "big"})
            by_id = self.manager.request("server.move_status", {"moveId": "mv-small"})
            none = self.manager.request("server.move_status", {"serverName": "other"})
            bad = self.manager.request("server.move_status", {"moveId": 7})
        ans = self.manager.wait_answer(every, 20)
        self.assertTrue(ans["success"])
        self.assertEqual(sorted(m["moveId"] for m in ans["moves"]), ["mv-big", "mv-small"])
        phases = {m["moveId"]: m["phase"] for m in ans["moves"]}
        self.assertEqual(phases["mv-small"], "complete")
        self.assertIn(phases["mv-big"], ("copying", "verifying", "cleaning"))
        big_state = self.manager.wait_answer(by_server, 20)["moves"]
        self.assertEqual([m["moveId"] for m in big_state], ["mv-big"])
        for key in ("bytesTotal", "bytesCopied", "filesTotal", "seq", "startedAt", "method"):
            self.assertIn(key, big_state[0])
        small_state = self.manager.wait_answer(by_id, 20)["moves"]
        self.assertEqual([(m["moveId"], m["phase"]) for m in small_state], [("mv-small", "complete")])
        self.assertIn("endedAt", small_state[0])
        nothing = self.manager.wait_answer(none, 20)
        self.assertEqual((nothing["success"], nothing["moves"]), (True, []))
        self.assertEqual(sorted(nothing), ["moves", "reclaimingBytes", "reclaimingEntries", "success"])
        self.assertEqual(self.manager.wait_answer(bad, 20)["code"], "invalid_request")
        ans_running = self.manager.wait_answer(running, 60)
        self.assertTrue(ans_running["success"], ans_running)


class ReloadTest(AgentTestCase):
    def test_sighup_reloads_without_dropping_the_connection_or_moves(self):
        conn = self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "big"), 200)
        other = make_tree(os.path.join(self.scratch.a, "other"), n_small=3)
        move = self.manager.request("server.move_data", {"serverName": "big", "oldPath": src,
                                                         "newPath": os.path.join(self.scratch.b, "big"),
                                                         "moveId": "mv-hup"})
        self.manager.wait_for(lambda: any(f["phase"] == "copying" for f in self.manager.frames("mv-hup")),
                              20, "copying")
        with open(self.agent.cfg_path) as f:
            text = f.read()
        # Only the disk root stays allowed: new requests to the tmpfs are refused.
        lines = [ln for ln in text.splitlines() if not ln.startswith("allowed_roots")]
        with self.paused_agent():
            with open(self.agent.cfg_path, "w") as f:
                f.write("\n".join(lines + ["allowed_roots = " + self.scratch.a]) + "\n")
            os.kill(self.agent.proc.pid, signal.SIGHUP)
        self.manager.wait_for(lambda: "config reloaded" in self.agent.log(), 10, "reload")
        self.assert_refused({"serverName": "other", "oldPath": other,
                             "newPath": os.path.join(self.scratch.b, "other")}, "path_not_allowed")
        self.assertTrue(self.manager.wait_answer(move, 60)["success"])
        # A broken file is reported and the settings stay.
        with open(self.agent.cfg_path, "a") as f:
            f.write("no_such_key = 1\n")
        os.kill(self.agent.proc.pid, signal.SIGHUP)
        self.manager.wait_for(lambda: "config reload failed" in self.agent.log(), 10, "failed reload")
        self.assertIn("no_such_key", self.agent.log())
        self.assertFalse(conn.closed, "the connection survived both reloads")
        self.assertEqual(len(self.manager.connections), 1)


class QueueRecheckTest(AgentTestCase):
    def test_queued_move_paths_are_checked_again_when_it_starts(self):
        self.start_agent(extra={"max_concurrent_moves": "1"})
        a = dense_tree(os.path.join(self.scratch.a, "a"), 100)
        b = make_tree(os.path.join(self.scratch.a, "b"), n_small=5)
        outside = os.path.join(self.scratch.base, "outside")
        make_tree(outside, n_small=5)
        before_outside = snapshot(outside)
        first = self.manager.request("server.move_data", {"serverName": "a", "oldPath": a,
                                                          "newPath": os.path.join(self.scratch.b, "a")})
        self.manager.wait_for(lambda: any(f["phase"] == "copying" for f in self.manager.frames()), 20, "copying")
        with contextlib.ExitStack() as frozen:  # the first move holds the only slot
            with self.paused_agent():  # so that it cannot finish meanwhile
                frozen.enter_context(self.frozen_workers())
            second = self.manager.request("server.move_data", {"serverName": "b", "oldPath": b,
                                                               "newPath": os.path.join(self.scratch.b, "b"),
                                                               "moveId": "mv-swapped"})
            self.manager.wait_for(lambda: self.manager.frames("mv-swapped"), 20, "queued")
            # While it waits, its source is swapped for a symlink to outside the roots.
            os.rename(b, b + ".moved-away")
            os.symlink(outside, b)
        self.assertTrue(self.manager.wait_answer(first, 60)["success"])
        ans = self.manager.wait_answer(second, 20)
        self.assertEqual((ans["success"], ans["code"]), (False, "path_not_allowed"), ans)
        self.assertEqual([f["phase"] for f in self.manager.frames("mv-swapped")], ["queued", "error"])
        self.assertEqual(snapshot(outside), before_outside)
        self.assertFalse(os.path.exists(os.path.join(self.scratch.b, "b")))
