"""Cleaning removes only what was copied (issue 14, items 1 and 4): a source
changed after its copy, or an entry that cannot be removed, never costs data.
Before the first removal such a move fails with the source untouched and the
copy gone; once removal has begun, the move succeeds (the copy is verified and
durable: the server lives at newPath) with a `warning`, and oldPath keeps
everything not yet removed. Each test acts while the agent is stopped with
SIGSTOP the moment the frame of the wanted phase arrives at the manager."""
import os
import re
import signal
import subprocess
import threading

from harness import Agent, AgentTestCase, make_tree, many_files, snapshot, wait_until


class CleaningTest(AgentTestCase):
    def stop_agent_at(self, move_id, phase, min_phase_percent=0):
        """Arms a SIGSTOP of the agent, sent by the manager's thread as soon
        as a frame of move_id in phase (with at least min_phase_percent)
        arrives. Returns an event set once the agent is stopped."""
        stopped = threading.Event()
        pid = self.agent.proc.pid

        def on_message(conn, msg):
            if stopped.is_set() or not msg or msg.get("subject") != "move.progress":
                return
            d = msg.get("data", {})
            if d.get("moveId") == move_id and d.get("phase") == phase and \
                    d.get("phasePercent", 0) >= min_phase_percent:
                os.kill(pid, signal.SIGSTOP)
                stopped.set()
        self.manager.on_message = on_message
        return stopped

    def wait_stopped(self, event):
        self.assertTrue(event.wait(60), "the wanted frame never came")
        self.manager.on_message = None
        pid = self.agent.proc.pid
        def state():
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        wait_until(lambda: state() == "T", 10, "agent stopped")

    def resume(self):
        os.kill(self.agent.proc.pid, signal.SIGCONT)

    def big_tree(self, name, per_dir=5000):
        """8 directories of small files: verifying and cleaning take long
        enough to act inside them."""
        return many_files(os.path.join(self.scratch.a, name), dirs=8, per_dir=per_dir)

    def assert_failed_untouched(self, ans, code, src, before, dst, path_in_error):
        self.assertEqual((ans["success"], ans["code"]), (False, code), ans)
        self.assertIn(path_in_error, ans["error"])
        self.assertEqual(snapshot(src), before, "the source must be exactly as it was")
        self.assertFalse(os.path.lexists(dst), "the copy must be gone")
        term = self.manager.frames(ans["moveId"])[-1]
        self.assertEqual((term["phase"], term["code"]), ("error", code))

    # --- a source changed after its copy, before the first removal ------

    def test_file_appended_during_verifying_fails_with_the_source_intact(self):
        src = self.big_tree("mc-app")
        self.start_agent()
        dst = os.path.join(self.scratch.b, "mc-app")
        stopped = self.stop_agent_at("mv-app", "verifying", 20)
        reply = self.request_move("mc-app", src, dst, "mv-app")
        self.wait_stopped(stopped)
        # d1 was verified already (entries are verified in name order).
        self.assertEqual(self.manager.frames("mv-app")[-1]["phase"], "verifying")
        with open(os.path.join(src, "d1", "f100"), "ab") as f:
            f.write(b"x" * 500)
        before = snapshot(src)
        self.resume()
        ans = self.manager.wait_answer(reply, 120)
        self.assert_failed_untouched(ans, "source_changed", src, before, dst, src + "/d1/f100")
        self.assertEqual(os.path.getsize(os.path.join(src, "d1", "f100")), 500)

    def test_new_file_in_a_verified_directory_with_checksum_fails_with_the_source_intact(self):
        src = self.big_tree("mc-new")
        self.start_agent(extra={"verify": "checksum"})
        dst = os.path.join(self.scratch.b, "mc-new")
        stopped = self.stop_agent_at("mv-new", "verifying", 20)
        reply = self.request_move("mc-new", src, dst, "mv-new")
        self.wait_stopped(stopped)
        self.assertEqual(self.manager.frames("mv-new")[-1]["phase"], "verifying")
        with open(os.path.join(src, "d1", "new-world.dat"), "wb") as f:
            f.write(b"new data" * 100)
        before = snapshot(src)
        self.resume()
        ans = self.manager.wait_answer(reply, 120)
        self.assert_failed_untouched(ans, "source_changed", src, before, dst, src + "/d1/new-world.dat")

    # --- a source changed as cleaning starts ------------------------------

    def test_changes_as_cleaning_starts_are_kept_and_the_move_succeeds_with_a_warning(self):
        src = self.big_tree("mc-cl")
        original = snapshot(src)
        # Deleting during cleaning is reclaim = inline's (test_reclaim covers
        # the deferred reclaim's check after its rename).
        self.start_agent(extra={"reclaim": "inline"})
        dst = os.path.join(self.scratch.b, "mc-cl")
        stopped = self.stop_agent_at("mv-cl", "cleaning")
        reply = self.request_move("mc-cl", src, dst, "mv-cl")
        self.wait_stopped(stopped)
        # d6 and d7 are cleaned last: a 500-byte append and two new files.
        with open(os.path.join(src, "d6", "f100"), "ab") as f:
            f.write(b"y" * 500)
        for p in (os.path.join(src, "d7", "new-1.dat"), os.path.join(src, "zz-new.dat")):
            with open(p, "wb") as f:
                f.write(b"created while cleaning\n")
        self.resume()
        ans = self.manager.wait_answer(reply, 120)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(ans["warningCode"], "source_changed", ans)
        self.assertIn(src + "/d6/f100", ans["warning"])
        self.assertIn(dst, ans["warning"])
        # The copy is whole: the server lives at newPath.
        self.assertEqual(snapshot(dst), original)
        # Nothing changed after the copy was removed.
        with open(os.path.join(src, "d6", "f100"), "rb") as f:
            self.assertEqual(f.read(), b"y" * 500)
        for p in (os.path.join(src, "d7", "new-1.dat"), os.path.join(src, "zz-new.dat")):
            with open(p, "rb") as f:
                self.assertEqual(f.read(), b"created while cleaning\n")
        self.assertEqual(len(os.listdir(os.path.join(src, "d7"))), 5001, "d7 is kept whole")
        term = self.manager.frames("mv-cl")[-1]
        self.assertEqual(term["phase"], "complete")
        self.assertNotIn("code", term)
        self.assertEqual((term["warningCode"], term["warning"]), (ans["warningCode"], ans["warning"]))
        log = self.agent.log()
        self.assertIn(src + "/d6/f100", log)
        # The status lists it the same way.
        status = self.manager.wait_answer(self.manager.request("server.move_status", {"moveId": "mv-cl"}), 20)
        self.assertEqual(status["moves"][0]["warningCode"], "source_changed")

    # --- what cannot be removed is found before the copy ----------------

    def test_immutable_file_is_refused_before_anything_is_copied(self):
        src = make_tree(os.path.join(self.scratch.a, "mc-imm"), n_small=50)
        locked = os.path.join(src, "world", "level.dat")
        with open(locked, "wb") as f:
            f.write(b"the world\n")
        subprocess.run(["chattr", "+i", locked], check=True)
        try:
            before = snapshot(src)
            self.start_agent()
            dst = os.path.join(self.scratch.b, "mc-imm")
            ans = self.move("mc-imm", src, dst)
            self.assert_failed_untouched(ans, "permission_denied", src, before, dst, locked)
        finally:
            subprocess.run(["chattr", "-i", locked], check=True)
        self.assertIn("immutable", ans["error"])
        self.assertNotIn("copying", [f["phase"] for f in self.manager.frames(ans["moveId"])])

    def test_read_only_directory_as_unprivileged_agent_is_refused(self):
        for d in (self.scratch.a, self.scratch.b, self.scratch.state):
            os.chown(d, 65534, 65534)
        src = make_tree(os.path.join(self.scratch.a, "mc-ro"), n_small=50)
        subprocess.run(["chown", "-R", "nobody:nogroup", src], check=True)
        ro = os.path.join(src, "plugins")
        os.chmod(ro, 0o555)  # readable, so it copies; its entries cannot be removed
        before = snapshot(src)
        self.start_agent(user="nobody")
        dst = os.path.join(self.scratch.b, "mc-ro")
        ans = self.move("mc-ro", src, dst)
        self.assert_failed_untouched(ans, "permission_denied", src, before, dst, ro)
        self.assertNotIn("copying", [f["phase"] for f in self.manager.frames(ans["moveId"])])

    def test_foreign_file_in_a_sticky_directory_as_unprivileged_agent_is_refused(self):
        for d in (self.scratch.a, self.scratch.b, self.scratch.state):
            os.chown(d, 65534, 65534)
        src = make_tree(os.path.join(self.scratch.a, "mc-st"), n_small=20)
        subprocess.run(["chown", "-R", "nobody:nogroup", src], check=True)
        shared = os.path.join(src, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o1777)  # root's, like /tmp: nobody may remove only its own files
        theirs = os.path.join(shared, "root-owned.txt")
        with open(theirs, "w") as f:
            f.write("root's\n")
        before = snapshot(src)
        self.start_agent(user="nobody")
        dst = os.path.join(self.scratch.b, "mc-st")
        ans = self.move("mc-st", src, dst)
        self.assert_failed_untouched(ans, "permission_denied", src, before, dst, theirs)

    def test_unremovable_source_found_after_the_copy_is_refused_before_the_first_removal(self):
        # The parent of oldPath turns immutable after the move was accepted
        # (while it copies: a stop at a verifying frame could land after the
        # check, progress frames being throttled): oldPath could be emptied
        # but never removed. Found by the check before cleaning.
        parent = os.path.join(self.scratch.a, "games")
        os.mkdir(parent)
        src = many_files(os.path.join(parent, "mc-par"), dirs=8, per_dir=5000)
        self.start_agent()
        dst = os.path.join(self.scratch.b, "mc-par")
        stopped = self.stop_agent_at("mv-par", "copying")
        reply = self.request_move("mc-par", src, dst, "mv-par")
        self.wait_stopped(stopped)
        subprocess.run(["chattr", "+i", parent], check=True)
        try:
            before = snapshot(src)
            self.resume()
            ans = self.manager.wait_answer(reply, 120)
            self.assert_failed_untouched(ans, "permission_denied", src, before, dst, parent)
        finally:
            subprocess.run(["chattr", "-i", parent], check=True)

    # --- a removal that fails once cleaning has begun ---------------------

    def test_removal_failing_during_cleaning_answers_success_with_the_copy_whole(self):
        fs = os.path.join(self.scratch.a, "fs")
        os.mkdir(fs)
        self.scratch.mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", at=fs)
        src = self.big_tree("fs/mc-rofs", per_dir=3000)
        original = snapshot(src)
        self.start_agent(extra={"reclaim": "inline"})
        dst = os.path.join(self.scratch.b, "mc-rofs")
        stopped = self.stop_agent_at("mv-ro", "cleaning")
        reply = self.request_move("mc-rofs", src, dst, "mv-ro")
        self.wait_stopped(stopped)
        subprocess.run(["mount", "-o", "remount,ro", fs], check=True)  # nothing changes, removal fails
        self.resume()
        ans = self.manager.wait_answer(reply, 120)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(ans["newPath"], dst)
        self.assertEqual(ans["warningCode"], "io_error", ans)
        self.assertIn("Read-only file system", ans["warning"])
        # The full path of the entry that could not be removed, directory included.
        self.assertRegex(ans["warning"], re.escape(src) + r"/d\d/f\d+\b")
        self.assertEqual(snapshot(dst), original, "the copy is whole")
        left = snapshot(src)
        self.assertGreater(len(left), 1)
        for rel, rec in left.items():  # what is left is what was copied
            if rel != "." and rec[0] == "f":
                self.assertEqual(rec, original[rel], rel)
        self.assertEqual(self.manager.frames("mv-ro")[-1]["phase"], "complete")
        self.assertIn("kept", self.agent.log())
        # After a restart the ended move still carries its warning (from the journal).
        self.assertEqual(self.agent.stop(), 0)
        self.agent = Agent(self.manager, self.scratch, log_name="agent-2.log")
        conn = self.manager.wait_for(lambda: len(self.manager.connections) > 1 and
                                     self.manager.connections[1].messages and self.manager.connections[1],
                                     20, "the agent again")
        hello = conn.messages[0][1]
        self.assertEqual(hello["subject"], "agent.hello")
        ended = [m for m in hello["data"]["moves"] if m["moveId"] == "mv-ro"]
        self.assertEqual([(m["phase"], m["warningCode"], m["warning"]) for m in ended],
                         [("complete", "io_error", ans["warning"])])


if __name__ == "__main__":
    import unittest
    unittest.main()
