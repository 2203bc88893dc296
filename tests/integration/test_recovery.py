"""Recovery after kill -9 deletes only what the move made, and only after
looking: an operator who acts while the agent is down (finishes the move by
hand, puts something at newPath, moves the copy back) never loses data; a
moveId starting with '.' is recovered like any other; one move never gets
two different outcomes, also when state_dir is full."""
import json
import os
import subprocess
import time

from harness import AgentTestCase, dense_tree, make_tree, many_files, snapshot

TERMINAL = ("complete", "error", "cancelled")


class RecoveryTest(AgentTestCase):
    def outcomes(self, move_id, reply):
        """Every terminal frame and every answer the manager got for the move."""
        frames = [(f["phase"], f.get("code")) for f in self.manager.frames(move_id) if f["phase"] in TERMINAL]
        answers = [(a["data"]["success"], a["data"].get("code")) for a in self.manager.answers(reply)]
        return frames, answers

    def assert_needs_attention(self, ans):
        self.assertEqual((ans["success"], ans["code"]), (False, "needs_attention"), ans)
        self.assertIn("touched nothing", ans["error"])
        log = self.agent.log()
        self.assertIn("does not match the journal", log)
        self.assertIn("old_state", log)
        self.assertIn("new_state", log)

    # --- item 2: look before removing --------------------------------------

    def test_copy_finished_by_hand_while_down_is_not_rolled_back(self):
        # Killed while copying; the operator removes the partial copy and
        # finishes the move by hand. The agent must not "roll back" newPath.
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        make_tree(os.path.join(src, "world"), n_small=20)
        dst = os.path.join(self.scratch.b, "mc")
        reply = self.request_move("mc", src, dst, "mv-byhand")
        self.wait_phase("mv-byhand", "copying")
        with self.paused_agent():
            self.kill_agent()
        before = snapshot(src)
        subprocess.run(["rm", "-rf", dst], check=True)
        subprocess.run(["mv", src, dst], check=True)
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 60)
        self.assert_needs_attention(ans)
        self.assertIn(dst, ans["error"])
        self.assertEqual(snapshot(dst), before, "the server moved by hand was touched")
        self.assertFalse(os.path.exists(src))
        self.assertEqual(self.outcomes("mv-byhand", reply), ([("error", "needs_attention")], [(False, "needs_attention")]))

    def test_queued_move_never_touches_what_appeared_at_newpath(self):
        self.start_agent(extra={"max_concurrent_moves": "1"})
        big = dense_tree(os.path.join(self.scratch.a, "big"), 200)
        r1 = self.request_move("big", big, os.path.join(self.scratch.b, "big"), "mv-first")
        self.wait_phase("mv-first", "copying")
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=10)
        dst = os.path.join(self.scratch.b, "mc")
        r2 = self.request_move("mc", src, dst, "mv-queued")
        self.wait_phase("mv-queued", "queued")
        with self.paused_agent():
            self.kill_agent()
        # While the agent is down, someone puts a tree at the queued move's newPath.
        theirs = make_tree(dst, n_small=5, seed=7)
        theirs_before = snapshot(theirs)
        src_before = snapshot(src)
        self.restart_agent(1)
        ans = self.manager.wait_answer(r2, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "interrupted"), ans)
        self.assertIn("checked at its restart", ans["error"])
        self.assertIn("left as it is", ans["error"])
        self.assertEqual(snapshot(dst), theirs_before, "the queued move touched newPath")
        self.assertEqual(snapshot(src), src_before)
        first = self.manager.wait_answer(r1, 60)
        self.assertEqual(first["code"], "interrupted", first)

    def test_cleaning_killed_and_copy_moved_back_keeps_the_copy(self):
        # Killed while cleaning; the operator removes what is left of the
        # source and moves the copy back. The agent must not delete it.
        src = many_files(os.path.join(self.scratch.a, "many"))
        # A half-removed source is reclaim = inline's (test_reclaim has the
        # deferred reclaim's crashes).
        self.start_agent(extra={"reclaim": "inline"})
        dst = os.path.join(self.scratch.b, "many")
        reply = self.request_move("many", src, dst, "mv-back")
        self.wait_phase("mv-back", "cleaning")
        with self.paused_agent():
            self.kill_agent()
        subprocess.run(["rm", "-rf", src], check=True)
        subprocess.run(["mv", dst, src], check=True)
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 60)
        self.assert_needs_attention(ans)
        self.assertEqual(sum(len(f) for _, _, f in os.walk(src)), 8000, "the copy moved back was deleted")
        self.assertFalse(os.path.exists(dst))
        self.assertEqual(self.outcomes("mv-back", reply), ([("error", "needs_attention")], [(False, "needs_attention")]))

    def test_cleaning_killed_into_a_filesystem_root_is_finished(self):
        # newPath was an empty directory but for its empty lost+found (a
        # fresh filesystem's root): the copy then has one more entry than
        # was copied, and that must not make the recovery doubt it.
        src = many_files(os.path.join(self.scratch.a, "many"))
        self.start_agent(extra={"reclaim": "inline"})
        dst = os.path.join(self.scratch.b, "root")
        os.makedirs(os.path.join(dst, "lost+found"))
        reply = self.request_move("many", src, dst, "mv-lf")
        self.wait_phase("mv-lf", "cleaning")
        with self.paused_agent():
            self.kill_agent()
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 60)
        self.assertTrue(ans["success"], ans)
        self.assertFalse(os.path.exists(src))
        self.assertEqual(sum(len(f) for _, _, f in os.walk(dst)), 8000)
        self.assertEqual(os.listdir(os.path.join(dst, "lost+found")), [])

    def test_cleaning_killed_and_copy_damaged_keeps_the_source(self):
        # Killed while cleaning; files of the copy are lost while the agent is
        # down. The rest of the source is then the only good data: kept.
        src = many_files(os.path.join(self.scratch.a, "many"))
        self.start_agent(extra={"reclaim": "inline"})
        dst = os.path.join(self.scratch.b, "many")
        reply = self.request_move("many", src, dst, "mv-damaged")
        self.wait_phase("mv-damaged", "cleaning")
        with self.paused_agent():
            self.kill_agent()
        left = sum(len(f) for _, _, f in os.walk(src))
        subprocess.run(["rm", "-rf", os.path.join(dst, "d7")], check=True)
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 60)
        self.assert_needs_attention(ans)
        self.assertIn("not whole", ans["error"])
        self.assertEqual(sum(len(f) for _, _, f in os.walk(src)), left, "the source was removed further")

    def test_rename_found_done_only_by_identity(self):
        # A rename journaled as not yet done; oldPath is gone and newPath is a
        # directory, but not the one recorded for oldPath (someone else's):
        # not a success, nothing touched.
        src = os.path.join(self.scratch.a, "mc")
        dst = os.path.join(self.scratch.a, "mc-new")
        make_tree(src, n_small=3)
        st = os.lstat(src)
        # Moved aside, not deleted: its inode number must not be reused by newPath.
        os.rename(src, os.path.join(self.scratch.a, "elsewhere"))
        theirs = make_tree(dst, n_small=4, seed=3)
        theirs_before = snapshot(theirs)
        moves = os.path.join(self.scratch.state, "moves")
        os.makedirs(moves, exist_ok=True)
        rec = {"version": 1, "moveId": "mv-ren", "serverName": "mc", "oldPath": src, "newPath": dst,
               "src": src, "dst": dst, "reply": "_INBOX.ren", "method": "rename", "verify": "metadata",
               "srcId": "%d:%d" % (st.st_dev, st.st_ino), "dstPreexisted": False, "madeParents": [],
               "startedAtMs": int(time.time() * 1000), "seq": 1, "phase": "calculating",
               "bytesTotal": 0, "bytesCopied": 0, "filesTotal": 0, "filesCopied": 0}
        with open(os.path.join(moves, "mv-ren.json"), "w") as f:
            json.dump(rec, f)
        self.start_agent()
        ans = self.manager.wait_answer("_INBOX.ren", 30)
        self.assert_needs_attention(ans)
        self.assertEqual(snapshot(dst), theirs_before)

    # --- issue 15: the root a recovered move works beneath ----------------------

    def test_root_no_longer_allowed_touches_nothing(self):
        # Killed while copying; restarted with newPath's root no longer in
        # allowed_roots. The partial copy lies outside what the agent may
        # touch now: it is left there (not removed beneath "/"), and the move
        # ends needs_attention, saying why.
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        before = snapshot(src, content=False)
        dst = os.path.join(self.scratch.b, "mc")
        reply = self.request_move("mc", src, dst, "mv-noroot")
        self.wait_phase("mv-noroot", "copying")
        with self.paused_agent():
            self.kill_agent()
        self.assertTrue(os.path.exists(dst), "expected a partial copy")
        partial = snapshot(dst, content=False)
        self.restart_agent(1, roots=[self.scratch.a])
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "needs_attention"), ans)
        self.assertIn("no longer beneath an allowed root", ans["error"])
        self.assertIn(dst, ans["error"])
        self.assertEqual(snapshot(dst, content=False), partial, "the partial copy was touched")
        self.assertEqual(snapshot(src, content=False), before)
        self.assertEqual(self.outcomes("mv-noroot", reply), ([("error", "needs_attention")], [(False, "needs_attention")]))

    # --- item 6: moveIds starting with '.' ------------------------------------

    def test_dot_move_id_killed_mid_copy_is_recovered(self):
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        before = snapshot(src, content=False)
        dst = os.path.join(self.scratch.b, "mc")
        reply = self.request_move("mc", src, dst, ".hidden")
        self.wait_phase(".hidden", "copying")
        with self.paused_agent():
            self.kill_agent()
        self.assertTrue(os.path.exists(os.path.join(self.scratch.state, "moves", ".hidden.json")))
        self.assertTrue(os.path.exists(dst), "expected a partial copy to clean up")
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual((ans["success"], ans["code"], ans["moveId"]), (False, "interrupted", ".hidden"), ans)
        self.assertFalse(os.path.exists(dst), "the partial copy stayed")
        self.assertEqual(snapshot(src, content=False), before)


class UnwritableJournalTest(AgentTestCase):
    def test_outcome_that_cannot_be_recorded_is_held_until_it_is(self):
        # The journal turns read-only (as a filesystem does after an error)
        # when a move is cancelled: its outcome is not sent until recorded.
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        dst = os.path.join(self.scratch.b, "mc")
        reply = self.request_move("mc", src, dst, "mv-held")
        self.wait_phase("mv-held", "copying")
        moves = os.path.join(self.scratch.state, "moves")
        self.scratch.mount("--bind", moves, at=moves)
        subprocess.run(["mount", "-o", "remount,bind,ro", moves], check=True)
        self.manager.request("server.move_cancel", {"moveId": "mv-held"})
        self.manager.wait_for(lambda: "move ended" in self.agent.log(), 60, "the move to end")
        time.sleep(1)
        self.assertEqual(self.manager.answers(reply), [], "an outcome that is not durable was sent")
        self.assertEqual([f for f in self.manager.frames("mv-held") if f["phase"] in TERMINAL], [])
        status = self.manager.wait_answer(self.manager.request("server.move_status", {"moveId": "mv-held"}), 10)
        self.assertEqual([(m["moveId"], m["phase"]) for m in status["moves"]], [("mv-held", "copying")])
        self.assertFalse(os.path.exists(dst), "the cancelled copy was rolled back meanwhile")
        subprocess.run(["umount", moves], check=True)
        self.scratch.extra_mounts.remove(moves)
        ans = self.manager.wait_answer(reply, 20)
        self.assertEqual((ans["success"], ans["code"]), (False, "cancelled"), ans)
        self.assertEqual([(f["phase"], f["code"]) for f in self.manager.frames("mv-held") if f["phase"] in TERMINAL],
                         [("cancelled", "cancelled")])
        # And a restart sends the same outcome again, never another one.
        self.assertEqual(self.agent.stop(), 0)
        self.restart_agent(1)
        time.sleep(2)
        self.assertEqual({(a["data"]["success"], a["data"]["code"]) for a in self.manager.answers(reply)},
                         {(False, "cancelled")})


class FullStateDirTest(AgentTestCase):
    """state_dir on a tiny tmpfs that the test fills."""

    def setUp(self):
        super().setUp()
        self.scratch.mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", at=self.scratch.state)

    def fill_state_dir(self):
        fd = os.open(os.path.join(self.scratch.state, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\xff" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        with self.assertRaises(OSError):
            fd = os.open(os.path.join(self.scratch.state, "probe"), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)
                os.unlink(os.path.join(self.scratch.state, "probe"))

    def test_cancel_with_state_dir_full_has_one_outcome(self):
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        dst = os.path.join(self.scratch.b, "mc")
        reply = self.request_move("mc", src, dst, "mv-full")
        self.wait_phase("mv-full", "copying")
        self.fill_state_dir()
        self.manager.request("server.move_cancel", {"moveId": "mv-full"})
        self.manager.wait_for(lambda: "move ended" in self.agent.log(), 60, "the move to end")
        time.sleep(1)  # anything more the agent would send now
        with self.paused_agent():
            self.kill_agent()
        os.unlink(os.path.join(self.scratch.state, "filler"))  # the operator makes room
        self.restart_agent(1)
        time.sleep(3)  # a recovered move would be settled and answered by now
        frames = [(f["phase"], f.get("code")) for f in self.manager.frames("mv-full") if f["phase"] in TERMINAL]
        answers = [(a["data"]["success"], a["data"].get("code")) for a in self.manager.answers(reply)]
        self.assertTrue(answers, "the move was never answered")
        self.assertEqual(len(set(frames)), 1, "two different outcomes in the frames: %s" % frames)
        self.assertEqual(len(set(answers)), 1, "two different answers: %s" % answers)
        self.assertEqual(frames[0][1], answers[0][1])
        self.assertEqual(answers[0], (False, "cancelled"), "the outcome was recorded in its reserved slot")
        self.assertTrue(os.path.isdir(src))
        self.assertFalse(os.path.exists(dst))
