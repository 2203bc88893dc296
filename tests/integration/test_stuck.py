"""Disks that fail or stop answering (faultfs, a FUSE filesystem that misbehaves
on demand): a stuck write never blocks the answer or the stop, errors name the
side that failed, and a hung mount never freezes the event loop."""
import json
import os
import shutil
import signal
import time

from faultfs import FaultFS
from harness import Agent, AgentTestCase, dense_tree, journal_record, make_tree, snapshot, wait_until


class FaultTestCase(AgentTestCase):
    def setUp(self):
        super().setUp()
        self.fuses = []
        close = self.scratch.close

        def close_all():
            for fs in self.fuses:
                fs.stop()
            close()
        self.scratch.close = close_all

    def tearDown(self):
        # Hung requests first: an agent thread waiting on one cannot exit.
        for fs in self.fuses:
            try:
                fs.clear()
            except (OSError, AssertionError):
                pass
        super().tearDown()

    def fuse(self, name):
        fs = FaultFS(os.path.join(self.scratch.base, name + "-backing"),
                     os.path.join(self.scratch.base, name))
        self.fuses.append(fs)
        return fs.start()

    def record(self, move_id):
        return journal_record(self.scratch.state, move_id)


class StuckDiskTest(FaultTestCase):
    """Item 5: a destination write that never returns."""

    def test_stuck_write_is_answered_on_time_and_rolled_back_later(self):
        fs = self.fuse("dst")
        self.start_agent(extra={"stall_timeout": "10s"}, roots=[self.scratch.a, fs.mountpoint])
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 32)
        before = snapshot(src)
        fs.hang("write", "mc/world.img")
        t0 = time.monotonic()
        reply = self.request_move("mc", src, os.path.join(fs.mountpoint, "mc"), "mv-stuck")
        wait_until(lambda: fs.hung() >= 1, 20, "the copy to hang")
        ans = self.manager.wait_answer(reply, 30)
        took = time.monotonic() - t0
        print("\nstuck write: answered after %.1f s (stall_timeout 10 s)" % took)
        self.assertEqual((ans["success"], ans["code"]), (False, "timeout"), ans)
        self.assertIn("no progress for 10 s", ans["error"])
        self.assertIn("does not answer", ans["error"])
        self.assertLess(took, 18)
        term = self.manager.frames("mv-stuck")[-1]
        self.assertEqual((term["phase"], term["code"]), ("error", "timeout"))
        status = self.manager.wait_answer(self.manager.request("server.move_status", {"moveId": "mv-stuck"}), 5)
        self.assertEqual([(m["phase"], m["code"]) for m in status["moves"]], [("error", "timeout")])
        self.assertTrue(self.record("mv-stuck").get("rollbackPending"), self.record("mv-stuck"))
        self.assertTrue(os.path.exists(os.path.join(fs.backing, "mc")), "the partial copy waits")
        # A new move onto the same paths is refused while the rollback waits.
        busy = self.manager.wait_answer(self.request_move("mc2", src, os.path.join(fs.mountpoint, "mc"),
                                                          "mv-again"), 15)
        self.assertFalse(busy["success"], busy)
        self.assertIn(busy["code"], ("busy", "destination_exists"), busy)

        fs.release()  # the disk answers again: the worker rolls back
        wait_until(lambda: not os.path.exists(os.path.join(fs.backing, "mc")), 30, "the rollback")
        wait_until(lambda: not self.record("mv-stuck").get("rollbackPending"), 10, "the record updated")
        self.assertIn("rollback", self.agent.log())
        self.assertEqual(snapshot(src), before)
        self.assertEqual(len(self.manager.answers(reply)), 1)
        self.assertEqual([f["phase"] for f in self.manager.frames("mv-stuck")].count("error"), 1)

    def test_sigterm_leaves_a_stuck_worker_and_the_next_start_rolls_back(self):
        fs = self.fuse("dst")
        conn = self.start_agent(roots=[self.scratch.a, fs.mountpoint])
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 32)
        before = snapshot(src)
        fs.hang("write", "mc/world.img")
        reply = self.request_move("mc", src, os.path.join(fs.mountpoint, "mc"), "mv-term")
        wait_until(lambda: fs.hung() >= 1, 20, "the copy to hang")
        t0 = time.monotonic()
        self.agent.proc.send_signal(signal.SIGTERM)
        ans = self.manager.wait_answer(reply, 30)
        self.assertEqual((ans["success"], ans["code"]), (False, "shutting_down"), ans)
        self.assertIn("does not answer", ans["error"])
        self.manager.wait_for(lambda: conn.closed, 30, "the going-away close")
        self.assertEqual(conn.close_code, 1001)
        wait_until(lambda: "hostagent stopped" in self.agent.log(), 30, "the agent to finish its stop")
        took = time.monotonic() - t0
        print("\nSIGTERM with a worker stuck in the kernel: stopped after %.1f s" % took)
        self.assertLess(took, 20)
        self.assertTrue(self.record("mv-term").get("rollbackPending"))
        # The process is reaped only once the kernel call returns (a second
        # SIGTERM would find the default action: no signal now).
        fs.release()
        rc = self.agent.proc.wait(20)
        self.agent.logf.close()
        self.assertEqual(rc, 0, self.agent.log()[-3000:])

        self.agent = Agent(self.manager, self.scratch, roots=[self.scratch.a, fs.mountpoint],
                           log_name="agent2.log")
        self.manager.wait_connection(2, 20)
        wait_until(lambda: not os.path.exists(os.path.join(fs.backing, "mc")), 30, "the rollback at start")
        wait_until(lambda: not self.record("mv-term").get("rollbackPending"), 10, "the record updated")
        self.assertEqual(snapshot(src), before)
        codes = {a["data"]["code"] for a in self.manager.answers(reply)}
        self.assertEqual(codes, {"shutting_down"}, "one move, one outcome")
        self.assertNotIn("interrupted", [f.get("code") for f in self.manager.frames("mv-term")])


class BlameTest(FaultTestCase):
    """Item 8: the error names the side that failed."""

    def test_source_read_error_names_the_source(self):
        fs = self.fuse("src")
        src = dense_tree(os.path.join(fs.backing, "srv"), 8)
        fs.fail("read", "srv/world.img")
        self.start_agent(roots=[fs.mountpoint, self.scratch.b])
        old = os.path.join(fs.mountpoint, "srv")
        ans = self.move("srv", old, os.path.join(self.scratch.b, "srv"))
        self.assertEqual((ans["success"], ans["code"]), (False, "io_error"), ans)
        self.assertTrue(ans["error"].startswith("read %s/world.img: Input/output error" % old), ans)
        self.assertEqual(os.listdir(self.scratch.b), [])
        self.assertTrue(os.path.exists(os.path.join(src, "world.img")))

    def test_source_read_error_names_the_source_with_read_write_copy(self):
        fs = self.fuse("src")
        dense_tree(os.path.join(fs.backing, "srv"), 8)
        fs.fail("read", "srv/world.img")
        self.start_agent(extra={"verify": "checksum"}, roots=[fs.mountpoint, self.scratch.b])
        old = os.path.join(fs.mountpoint, "srv")
        ans = self.move("srv", old, os.path.join(self.scratch.b, "srv"))
        self.assertEqual((ans["success"], ans["code"]), (False, "io_error"), ans)
        self.assertTrue(ans["error"].startswith("read %s/world.img: Input/output error" % old), ans)

    def test_destination_write_error_names_the_destination(self):
        fs = self.fuse("dst")
        src = dense_tree(os.path.join(self.scratch.a, "srv"), 8)
        fs.fail("write", "srv/world.img")
        self.start_agent(roots=[self.scratch.a, fs.mountpoint])
        new = os.path.join(fs.mountpoint, "srv")
        ans = self.move("srv", src, new)
        self.assertEqual((ans["success"], ans["code"]), (False, "io_error"), ans)
        self.assertTrue(ans["error"].startswith("write %s/world.img: Input/output error" % new), ans)
        self.assertEqual(os.listdir(fs.backing), [])

    def test_destination_changed_during_verify_is_not_blamed_on_the_source(self):
        fs = self.fuse("dst")
        src = os.path.join(self.scratch.a, "mc")
        os.makedirs(src)
        for name in ("a.dat", "zz.dat"):
            with open(os.path.join(src, name), "wb") as f:
                f.write(os.urandom(4096))
        before = snapshot(src)
        self.start_agent(extra={"verify": "checksum"}, roots=[self.scratch.a, fs.mountpoint])
        fs.hang("open", "mc/a.dat")  # only the verify pass opens the copy's files
        reply = self.request_move("mc", src, os.path.join(fs.mountpoint, "mc"), "mv-tamper")
        wait_until(lambda: fs.hung() >= 1, 20, "the verify pass to reach a.dat")
        os.unlink(os.path.join(fs.backing, "mc", "zz.dat"))  # someone else removes a copied file
        fs.release()
        ans = self.manager.wait_answer(reply, 30)
        self.assertEqual((ans["success"], ans["code"]), (False, "io_error"), ans)
        self.assertIn("destination", ans["error"])
        self.assertIn("zz.dat", ans["error"])
        self.assertNotIn("stop the game server", ans["error"])
        self.assertEqual(snapshot(src), before)
        self.assertFalse(os.path.exists(os.path.join(fs.backing, "mc")))


class ChangedUnderTheWalkTest(FaultTestCase):
    """A directory removed while the agent lists it (its listing then reads
    ENOENT) is a change of the source, not an I/O error: source_changed,
    nothing copied is left, the source as it now is."""

    def test_directory_removed_while_it_is_listed_is_source_changed(self):
        fs = self.fuse("src")
        self.start_agent(roots=[fs.mountpoint, self.scratch.b])
        src = make_tree(os.path.join(fs.mountpoint, "mc"), n_small=10)
        os.makedirs(os.path.join(src, "gone"))
        for i in range(3):
            with open(os.path.join(src, "gone", "f%d" % i), "w") as f:
                f.write("x" * 100)
        dst = os.path.join(self.scratch.b, "mc")
        fs.hang("readdir", "mc/gone")
        reply = self.request_move("mc", src, dst, "mv-gone")
        wait_until(lambda: fs.hung() >= 1, 20, "the listing to hang")
        shutil.rmtree(os.path.join(fs.backing, "mc", "gone"))
        before = snapshot(os.path.join(fs.backing, "mc"))
        fs.release()
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "source_changed"), ans)
        self.assertIn("mc/gone", ans["error"])
        self.assertFalse(os.path.exists(dst), "no partial copy")
        self.assertEqual(snapshot(os.path.join(fs.backing, "mc")), before)


class HungMountTest(FaultTestCase):
    """Item 10: validation on a hung mount never freezes the loop."""

    def test_request_on_a_hung_mount_is_answered_on_time(self):
        fs = self.fuse("src")
        make_tree(os.path.join(fs.backing, "srv"), n_small=5)
        ok = make_tree(os.path.join(self.scratch.a, "ok"), n_small=5)
        conn = self.start_agent(extra={"heartbeat_interval": "1s"},
                                roots=[fs.mountpoint, self.scratch.a, self.scratch.b])
        fs.hang("lookup", "srv")
        t0 = time.monotonic()
        hung = self.request_move("srv", os.path.join(fs.mountpoint, "srv"),
                                 os.path.join(self.scratch.b, "srv"), "mv-hung")
        wait_until(lambda: fs.hung() >= 1, 10, "the validation to hang")
        status = self.manager.request("server.move_status", {})
        self.assertTrue(self.manager.wait_answer(status, 2)["success"])
        nobody = self.manager.request("server.move_cancel", {"serverName": "nobody"})
        self.assertEqual(self.manager.wait_answer(nobody, 2)["code"], "not_found")
        # A cancel of the server being checked waits for that request's answer.
        cancel = self.manager.request("server.move_cancel", {"serverName": "srv"})
        # Another server's move does not wait for the hung one.
        other = self.request_move("ok", ok, os.path.join(self.scratch.b, "ok"), "mv-ok")
        self.assertTrue(self.manager.wait_answer(other, 8)["success"])
        self.assertEqual(self.manager.answers(hung), [], "answered before the limit")
        ans = self.manager.wait_answer(hung, 15)
        took = time.monotonic() - t0
        print("\nrequest on a hung mount: answered after %.1f s" % took)
        self.assertGreater(took, 9)
        self.assertLess(took, 13)
        self.assertEqual((ans["success"], ans["code"]), (False, "io_error"), ans)
        self.assertIn("did not answer within 10 s", ans["error"])
        self.assertNotIn("moveId", ans)
        self.assertEqual(self.manager.wait_answer(cancel, 2)["code"], "not_found")
        subjects = [m["subject"] for m in self.manager.all_messages()]
        self.assertLess(subjects.index(hung), subjects.index(cancel))
        beats = [t for (t, m, _) in conn.messages if m and m.get("subject") == "heartbeat" and t0 < t < t0 + 9]
        self.assertGreaterEqual(len(beats), 6, "heartbeats kept coming")
        self.assertEqual(self.manager.frames("mv-hung"), [])
        self.assertFalse(os.path.exists(os.path.join(self.scratch.b, "srv")))
        fs.release()
        again = self.move("srv", os.path.join(fs.mountpoint, "srv"), os.path.join(self.scratch.b, "srv"))
        self.assertTrue(again["success"], again)

    def test_queued_move_recheck_on_a_hung_mount(self):
        fs = self.fuse("src")
        dense_tree(os.path.join(fs.backing, "a"), 32)
        make_tree(os.path.join(fs.backing, "srv"), n_small=5)
        conn = self.start_agent(extra={"heartbeat_interval": "1s", "max_concurrent_moves": "1"},
                                roots=[fs.mountpoint, self.scratch.b])
        fs.hang("read", "a/world.img")
        first = self.request_move("a", os.path.join(fs.mountpoint, "a"), os.path.join(self.scratch.b, "a"),
                                  "mv-first")
        wait_until(lambda: fs.hung() >= 1, 20, "the first move to hang")
        second = self.request_move("srv", os.path.join(fs.mountpoint, "srv"),
                                   os.path.join(self.scratch.b, "srv"), "mv-second")
        self.manager.wait_for(lambda: self.manager.frames("mv-second"), 10, "the second move queued")
        self.assertEqual(self.manager.frames("mv-second")[0]["phase"], "queued")
        # Its paths hang now; the first move is cancelled and does not come back.
        fs.hang("lookup", "srv")
        cancel = self.manager.request("server.move_cancel", {"moveId": "mv-first"})
        self.assertTrue(self.manager.wait_answer(cancel, 5)["success"])
        t0 = time.monotonic()
        ans = self.manager.wait_answer(first, 10)
        self.assertEqual((ans["success"], ans["code"]), (False, "cancelled"), ans)
        self.assertIn("does not answer", ans["error"])
        # The second leaves the queue; its check hangs off the loop.
        ans2 = self.manager.wait_answer(second, 20)
        took = time.monotonic() - t0
        self.assertEqual((ans2["success"], ans2["code"]), (False, "io_error"), ans2)
        self.assertIn("did not answer within 10 s", ans2["error"])
        self.assertEqual([f["phase"] for f in self.manager.frames("mv-second")], ["queued", "error"])
        beats = [t for (t, m, _) in conn.messages if m and m.get("subject") == "heartbeat" and t0 < t < t0 + took]
        self.assertGreaterEqual(len(beats), int(took) - 2, "heartbeats kept coming")
        fs.release()
        wait_until(lambda: not os.path.exists(os.path.join(self.scratch.b, "a")), 30, "the late rollback")
        self.assertFalse(os.path.exists(os.path.join(self.scratch.b, "srv")))


class StuckStateAndReclaimTest(FaultTestCase):
    """Issue 20, item 10: a worker writes its journal record with no lock the
    loop takes (a state_dir whose fsync hangs never freezes the loop, not even
    on the stuck-worker path of a stopped move), and the reclaim thread is
    waited for by a stop like a worker, then left behind when its disk does
    not answer (the next start resumes the reclaim)."""

    def heartbeats(self):
        return [m for c in self.manager.connections for (_, m, _) in c.messages
                if m is not None and m.get("subject") == "heartbeat"]

    def worker_stuck_in_its_journal_write(self, extra=None):
        """A move whose worker hangs in the fsync of its journal record (the
        verifying phase's) on a FUSE state_dir."""
        state = self.fuse("state")
        src_fs = self.fuse("src")
        dense_tree(os.path.join(src_fs.backing, "mc"), 32)
        src = os.path.join(src_fs.mountpoint, "mc")
        dst = os.path.join(self.scratch.b, "mc")
        before = snapshot(src)
        self.roots = [src_fs.mountpoint, self.scratch.b]
        self.start_agent(extra=dict({"state_dir": state.mountpoint, "heartbeat_interval": "1s"}, **(extra or {})),
                         roots=self.roots)
        src_fs.hang("read", "mc/world.img")
        reply = self.request_move("mc", src, dst, "mv-slow")
        wait_until(lambda: src_fs.hung() >= 1, 20, "the copy to hang")
        state.hang("fsync", "moves/.mv-slow.tmp")
        src_fs.release()
        wait_until(lambda: state.hung() >= 1, 30, "the worker's journal write to hang")
        return state, src, dst, before, reply

    def test_a_worker_stuck_in_its_journal_fsync_never_freezes_the_loop(self):
        state, src, dst, before, reply = self.worker_stuck_in_its_journal_write()
        cancel = self.manager.request("server.move_cancel", {"moveId": "mv-slow"})
        self.assertTrue(self.manager.wait_answer(cancel, 5)["success"])
        # Stopped and silent: 2 s on, the loop's stuck-worker path finds it in
        # its journal write, and goes on without waiting for it: heartbeats
        # (one a second) keep coming well past that, status is answered.
        n = len(self.heartbeats())
        self.manager.wait_for(lambda: len(self.heartbeats()) >= n + 5, 30,
                              "heartbeats while the worker is stuck in its journal write")
        wait_until(lambda: "stuck writing its journal record" in self.agent.log(), 20,
                   "the loop to find the worker stuck in its journal write")
        n = len(self.heartbeats())
        self.manager.wait_for(lambda: len(self.heartbeats()) >= n + 2, 10, "heartbeats after that")
        st = self.manager.wait_answer(self.manager.request("server.move_status", {"moveId": "mv-slow"}), 5)
        self.assertEqual(len(st["moves"]), 1, st)
        self.assertNotIn(st["moves"][0]["phase"], ("cancelled", "error", "complete"),
                         "ended before its outcome could be recorded")
        self.assertEqual(self.manager.answers(reply), [])
        self.assertGreaterEqual(state.hung(), 1, "the journal write was still hung")
        state.release()
        ans = self.manager.wait_answer(reply, 30)
        self.assertEqual((ans["success"], ans["code"]), (False, "cancelled"), ans)
        wait_until(lambda: not os.path.exists(dst), 30, "the rollback")
        wait_until(lambda: not journal_record(state.mountpoint, "mv-slow").get("rollbackPending"), 10,
                   "the record settled")
        self.assertEqual(journal_record(state.mountpoint, "mv-slow")["phase"], "cancelled")
        self.assertEqual(snapshot(src), before)
        self.assertEqual(len(self.manager.answers(reply)), 1)

    def test_sigterm_with_a_worker_stuck_in_its_journal_write_stops_and_the_next_start_settles_it(self):
        state, src, dst, before, reply = self.worker_stuck_in_its_journal_write()
        self.agent.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "hostagent stopped" in self.agent.log(), 60,
                   "the stop to finish with the journal write hung")
        self.assertGreaterEqual(state.hung(), 1, "the journal write was still hung")
        self.assertIn("stuck writing its journal record", self.agent.log())
        self.assertEqual(self.manager.answers(reply), [], "an outcome it could not record")
        state.release()
        rc = self.agent.proc.wait(20)
        self.agent.logf.close()
        self.assertEqual(rc, 0, self.agent.log()[-3000:])

        self.agent = Agent(self.manager, self.scratch, roots=self.roots, log_name="agent2.log",
                           extra={"state_dir": state.mountpoint})
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "interrupted"), ans)
        wait_until(lambda: not os.path.exists(dst), 30, "the rollback at start")
        self.assertEqual(snapshot(src), before)
        self.assertEqual(len(self.manager.answers(reply)), 1, "one move, one outcome")

    def test_sigterm_leaves_a_hung_reclaim_behind_and_the_next_start_resumes_it(self):
        fs = self.fuse("src")
        for d in range(2):
            os.makedirs(os.path.join(fs.backing, "mc", "d%d" % d))
            for i in range(50):
                open(os.path.join(fs.backing, "mc", "d%d" % d, "f%d" % i), "w").close()
        rname = ".hostagent-reclaim-mv-rh"
        rdir = os.path.join(fs.backing, rname)
        records = os.path.join(self.scratch.state, "reclaim")
        fs.hang("unlink", rname)  # only the reclaim's deletion unlinks there
        self.start_agent(roots=[fs.mountpoint, self.scratch.b])
        ans = self.move("mc", os.path.join(fs.mountpoint, "mc"), os.path.join(self.scratch.b, "mc"), "mv-rh")
        self.assertTrue(ans["success"], ans)
        wait_until(lambda: fs.hung() >= 1, 20, "the reclaim to hang")
        self.assertTrue(os.path.isdir(rdir))
        self.agent.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "hostagent stopped" in self.agent.log(), 60,
                   "the stop to finish with the reclaim hung")
        self.assertGreaterEqual(fs.hung(), 1, "the reclaim was still hung")
        self.assertIn("left the reclaim thread behind", self.agent.log())
        self.assertEqual(len(os.listdir(records)), 1, "its record stays")
        # The process is reaped once the kernel call returns.
        fs.release()
        rc = self.agent.proc.wait(20)
        self.agent.logf.close()
        self.assertEqual(rc, 0, self.agent.log()[-3000:])

        self.agent = Agent(self.manager, self.scratch, roots=[fs.mountpoint, self.scratch.b],
                           log_name="agent2.log")
        self.manager.wait_connection(2, 20)
        wait_until(lambda: not os.path.lexists(rdir) and os.listdir(records) == [], 60,
                   "the reclaim resumed and finished")
        self.assertIn("resuming a reclaim", self.agent.log())
        self.assertEqual(os.listdir(fs.backing), [])
