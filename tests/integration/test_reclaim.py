"""Reclaim after the answer (issue 12, item 1): once the copy is verified and
durable, the source is renamed into `.hostagent-reclaim-<moveId>` (beside
oldPath, or inside it when it is a mount point), checked against what was
copied, the move is answered, and the directory is deleted in the
background: journaled in state_dir/reclaim, resumed after a restart,
confined to its directory, counted in heartbeat, status and metrics.
`reclaim = inline` keeps deleting before the answer."""
import json
import os
import re
import signal
import subprocess
import threading
import time

from harness import BIN, AgentTestCase, journal_record, make_tree, many_files, snapshot, wait_until

PREFIX = ".hostagent-reclaim-"


def reclaim_dir(src, move_id, in_mount=False):
    return os.path.join(src if in_mount else os.path.dirname(src), PREFIX + move_id)


def record_name(move_id, rdir):
    """The reclaim record's file in state_dir/reclaim: the moveId and the
    reclaim directory's device and inode (two moves with one moveId never
    share one)."""
    st = os.stat(rdir)
    return "%s@%d-%d.json" % (move_id, st.st_dev, st.st_ino)


class ReclaimTest(AgentTestCase):
    def status(self, **sel):
        return self.manager.wait_answer(self.manager.request("server.move_status", sel), 20)

    def heartbeats(self):
        return [m["data"] for c in self.manager.connections for (_, m, _) in c.messages
                if m is not None and m.get("subject") == "heartbeat"]

    def records(self):
        d = os.path.join(self.scratch.state, "reclaim")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def stop_agent_after_rename(self, move_id, rdir):
        """SIGSTOP of the agent, sent by the manager's thread once move_id is
        in phase cleaning and its reclaim directory exists: the rename is
        done and the check walk over a big tree is under way."""
        stopped = threading.Event()
        pid = self.agent.proc.pid

        def on_message(conn, msg):
            if stopped.is_set() or not msg or msg.get("subject") != "move.progress":
                return
            d = msg.get("data", {})
            if d.get("moveId") == move_id and d.get("phase") == "cleaning":
                deadline = time.monotonic() + 10
                while not os.path.lexists(rdir) and time.monotonic() < deadline:
                    pass
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

    # --- the answer comes before the deletion ------------------------------

    def test_answered_before_the_deletion_then_the_space_comes_back(self):
        src = many_files(os.path.join(self.scratch.a, "mc"), dirs=4, per_dir=500)
        make_tree(os.path.join(src, "world"), n_small=20)
        before = snapshot(src)
        entries = sum(len(d) + len(f) for _, d, f in os.walk(src))
        self.start_agent(extra={"heartbeat_interval": "1s", "metrics_file":
                                os.path.join(self.scratch.base, "m.prom")})
        dst = os.path.join(self.scratch.b, "mc")
        rdir = reclaim_dir(src, "mv-rc")
        with self.frozen_workers("ha-reclaim"):
            ans = self.move("mc", src, dst, "mv-rc")
            self.assertTrue(ans["success"], ans)
            # Answered: the source is gone from oldPath, the copy is whole,
            # and the old files wait, untouched, in the reclaim directory.
            self.assertFalse(os.path.lexists(src))
            self.assertEqual(snapshot(dst), before)
            self.assertEqual(snapshot(rdir), before)
            self.assertEqual(self.records(), [record_name("mv-rc", rdir)])
            st = self.status()
            self.assertEqual(st["reclaimingEntries"], entries, st)
            self.assertEqual(st["reclaimingBytes"], ans["bytesCopied"], st)
            self.manager.wait_for(lambda: any(h.get("reclaimingEntries") == entries
                                              for h in self.heartbeats()), 10, "a heartbeat with the count")
            prom = os.path.join(self.scratch.base, "m.prom")
            def gauge():
                with open(prom) as f:
                    return "hostagent_reclaiming_entries %d\n" % entries in f.read()
            wait_until(gauge, 10, "the metrics gauge")
            r = subprocess.run([BIN, "status", "--config", self.agent.cfg_path], capture_output=True, text=True)
            self.assertIn("reclaiming: %d entries" % entries, r.stdout)
            term = self.manager.frames("mv-rc")[-1]
            self.assertEqual(term["phase"], "complete")
            self.assertIn("cleaning", [f["phase"] for f in self.manager.frames("mv-rc")])
            rec = journal_record(self.scratch.state, "mv-rc")
            self.assertEqual(rec["reclaim"]["dir"], rdir)
        # Thawed: the deletion runs, then nothing is left to reclaim.
        wait_until(lambda: not os.path.lexists(rdir) and self.records() == [], 60,
                   "the reclaim directory deleted")
        self.assertEqual(snapshot(dst), before)
        wait_until(lambda: self.status()["reclaimingEntries"] == 0, 10, "reclaimingEntries back to 0")
        self.assertEqual(self.status()["reclaimingBytes"], 0)
        self.manager.wait_for(lambda: self.heartbeats()[-1].get("reclaimingEntries") == 0, 10,
                              "a heartbeat with nothing left")
        log = self.agent.log()
        self.assertLess(log.index("move ended"), log.index("reclaim done"))

    def test_inline_deletes_before_the_answer_as_before(self):
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=200)
        before = snapshot(src)
        self.start_agent(extra={"reclaim": "inline"})
        dst = os.path.join(self.scratch.b, "mc")
        with self.frozen_workers("ha-reclaim"):
            ans = self.move("mc", src, dst, "mv-inl")
            self.assertTrue(ans["success"], ans)
            self.assertFalse(os.path.lexists(src))
            self.assertFalse(os.path.lexists(reclaim_dir(src, "mv-inl")))
            self.assertEqual(snapshot(dst), before)
            self.assertEqual(self.status()["reclaimingEntries"], 0)
            self.assertEqual(self.records(), [])
            self.assertNotIn("reclaim", journal_record(self.scratch.state, "mv-inl"))
        self.assertNotIn("reclaim directory", self.agent.log())

    def test_mount_point_source_keeps_the_empty_mount_point(self):
        src = os.path.join(self.scratch.a, "mp")
        os.mkdir(src)
        self.scratch.mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", at=src)
        make_tree(os.path.join(src, "world"), n_small=50)
        with open(os.path.join(src, "server.properties"), "w") as f:
            f.write("motd=hi\n")
        before = snapshot(src)
        self.start_agent()
        dst = os.path.join(self.scratch.b, "mp")
        rdir = reclaim_dir(src, "mv-mp", in_mount=True)
        with self.frozen_workers("ha-reclaim"):
            ans = self.move("mp", src, dst, "mv-mp")
            self.assertTrue(ans["success"], ans)
            self.assertEqual(os.listdir(src), [PREFIX + "mv-mp"])
            inside = {k: v for k, v in snapshot(rdir).items() if k != "."}
            self.assertEqual(inside, {k: v for k, v in before.items() if k != "."})
            self.assertEqual(snapshot(dst), before)
            # A later move into that mount point sees it not empty.
            other = make_tree(os.path.join(self.scratch.b, "other"), n_small=3)
            self.assert_refused({"serverName": "other", "oldPath": other, "newPath": src},
                                "destination_exists")
        wait_until(lambda: os.listdir(src) == [], 60, "the reclaim directory deleted")
        self.assertTrue(os.path.ismount(src), "the mount point stays")

    # --- a source changed after the verification ---------------------------

    def test_source_changed_during_the_reclaim_check_is_put_back(self):
        src = many_files(os.path.join(self.scratch.a, "mc"), dirs=8, per_dir=5000)
        self.start_agent()
        dst = os.path.join(self.scratch.b, "mc")
        rdir = reclaim_dir(src, "mv-chg")
        stopped = self.stop_agent_after_rename("mv-chg", rdir)
        reply = self.request_move("mc", src, dst, "mv-chg")
        self.wait_stopped(stopped)
        # Renamed, and the check walk visits d7 last: change a file there.
        self.assertTrue(os.path.lexists(rdir))
        self.assertEqual([a for a in self.manager.answers(reply)], [], "the check walk ended already")
        with open(os.path.join(rdir, "d7", "f100"), "ab") as f:
            f.write(b"z" * 300)
        before = snapshot(rdir)
        os.kill(self.agent.proc.pid, signal.SIGCONT)
        ans = self.manager.wait_answer(reply, 120)
        self.assertEqual((ans["success"], ans["code"]), (False, "source_changed"), ans)
        self.assertIn("d7/f100", ans["error"])
        self.assertIn("put back", ans["error"])
        self.assertEqual(snapshot(src), before, "the source is back, byte for byte")
        self.assertFalse(os.path.lexists(rdir))
        self.assertFalse(os.path.lexists(dst), "the copy is removed")
        self.assertEqual(self.records(), [])
        self.assertTrue(journal_record(self.scratch.state, "mv-chg")["reclaim"]["undone"])

    # --- crashes ----------------------------------------------------------

    def test_killed_between_the_rename_and_the_answer_answers_success(self):
        src = many_files(os.path.join(self.scratch.a, "mc"), dirs=8, per_dir=5000)
        before = snapshot(src)
        self.start_agent()
        dst = os.path.join(self.scratch.b, "mc")
        rdir = reclaim_dir(src, "mv-kill")
        stopped = self.stop_agent_after_rename("mv-kill", rdir)
        reply = self.request_move("mc", src, dst, "mv-kill")
        self.wait_stopped(stopped)
        self.assertTrue(os.path.lexists(rdir), "stopped before the rename: this test needs it after")
        self.assertFalse(os.path.lexists(src))
        self.assertEqual(self.manager.answers(reply), [], "answered already: stopped too late")
        self.kill_agent()
        self.assertEqual(journal_record(self.scratch.state, "mv-kill")["phase"], "cleaning")
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 120)
        self.assertTrue(ans["success"], ans)
        frames = [f for f in self.manager.frames("mv-kill") if f["phase"] in ("complete", "error")]
        self.assertEqual([f["phase"] for f in frames], ["complete"])
        self.assertEqual(snapshot(dst), before)
        self.assertFalse(os.path.lexists(src))
        wait_until(lambda: not os.path.lexists(rdir) and self.records() == [], 120,
                   "the reclaim directory deleted")

    def test_killed_after_the_rename_with_the_copy_damaged_keeps_the_reclaim_directory(self):
        src = many_files(os.path.join(self.scratch.a, "mc"), dirs=8, per_dir=5000)
        before = snapshot(src)
        self.start_agent()
        dst = os.path.join(self.scratch.b, "mc")
        rdir = reclaim_dir(src, "mv-dmg")
        stopped = self.stop_agent_after_rename("mv-dmg", rdir)
        reply = self.request_move("mc", src, dst, "mv-dmg")
        self.wait_stopped(stopped)
        self.assertEqual(self.manager.answers(reply), [], "answered already: stopped too late")
        self.kill_agent()
        subprocess.run(["rm", "-rf", os.path.join(dst, "d7")], check=True)
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 120)
        self.assertEqual((ans["success"], ans["code"]), (False, "needs_attention"), ans)
        self.assertIn("not whole", ans["error"])
        # The reclaim directory holds the only whole data: never deleted.
        time.sleep(1)
        self.assertEqual(snapshot(rdir), before)
        self.assertEqual(self.records(), [])

    def test_killed_during_the_reclaim_finishes_it_after_the_restart(self):
        src = many_files(os.path.join(self.scratch.a, "mc"), dirs=4, per_dir=1000)
        before = snapshot(src)
        self.start_agent()
        dst = os.path.join(self.scratch.b, "mc")
        rdir = reclaim_dir(src, "mv-kr")
        with self.frozen_workers("ha-reclaim"):
            ans = self.move("mc", src, dst, "mv-kr")
            self.assertTrue(ans["success"], ans)
            self.assertEqual(self.records(), [record_name("mv-kr", rdir)])
            self.kill_agent()
        self.assertTrue(os.path.isdir(rdir))
        # With no daemon, `hostagent status` names the reclaim left to do
        # from state_dir, and changes nothing there.
        recs = os.path.join(self.scratch.state, "reclaim")
        mtimes = {n: os.stat(os.path.join(recs, n)).st_mtime_ns for n in os.listdir(recs)}
        r = subprocess.run([BIN, "status", "--config", self.agent.cfg_path], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("reclaim of move mv-kr: %s (4004 entries, " % rdir, r.stdout)
        self.assertIn("is left to delete; the daemon's next start deletes it", r.stdout)
        self.assertEqual({n: os.stat(os.path.join(recs, n)).st_mtime_ns for n in os.listdir(recs)}, mtimes)
        self.restart_agent(1)
        wait_until(lambda: not os.path.lexists(rdir) and self.records() == [], 120,
                   "the reclaim resumed and finished")
        self.assertEqual(snapshot(dst), before, "exactly one copy, whole")
        self.assertFalse(os.path.lexists(src))
        self.assertIn("resuming a reclaim", self.agent.log())

    def test_sigterm_stops_the_reclaim_and_the_next_start_resumes_it(self):
        src = many_files(os.path.join(self.scratch.a, "mc"), dirs=8, per_dir=2000)
        self.start_agent()
        dst = os.path.join(self.scratch.b, "mc")
        rdir = reclaim_dir(src, "mv-term")
        with self.frozen_workers("ha-reclaim"):
            ans = self.move("mc", src, dst, "mv-term")
            self.assertTrue(ans["success"], ans)
        # Thawed: the deletion (16,000 entries, one at a time) has just begun.
        self.agent.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        self.assertEqual(self.agent.stop(timeout=20), 0)
        self.assertLess(time.monotonic() - t0, 10, "the reclaim held up the stop")
        if os.path.lexists(rdir):
            self.assertEqual(self.records(), [record_name("mv-term", rdir)])
        self.restart_agent(1)
        wait_until(lambda: not os.path.lexists(rdir) and self.records() == [], 120,
                   "the reclaim resumed and finished")

    def test_concurrent_reclaims_are_counted_and_all_finish(self):
        self.start_agent(extra={"max_concurrent_moves": "3"})
        srcs = [many_files(os.path.join(self.scratch.a, "s%d" % i), dirs=2, per_dir=300 + i) for i in range(3)]
        with self.frozen_workers("ha-reclaim"):
            replies = [self.request_move("s%d" % i, s, os.path.join(self.scratch.b, "s%d" % i), "mv-c%d" % i)
                       for i, s in enumerate(srcs)]
            for r in replies:
                self.assertTrue(self.manager.wait_answer(r, 120)["success"])
            self.assertEqual(self.status()["reclaimingEntries"], sum(2 + 2 * (300 + i) for i in range(3)))
            self.assertEqual(self.records(), sorted(record_name("mv-c%d" % i, reclaim_dir(s, "mv-c%d" % i))
                                                    for i, s in enumerate(srcs)))
        for i, s in enumerate(srcs):
            wait_until(lambda: not os.path.lexists(reclaim_dir(s, "mv-c%d" % i)), 120, "reclaim %d" % i)
        wait_until(lambda: self.status()["reclaimingEntries"] == 0, 10, "nothing left")

    # --- confinement --------------------------------------------------------

    def test_a_reclaim_never_leaves_its_directory(self):
        # A record as a crashed agent would have left it, for a directory
        # holding a symlink to the outside, a symlink to a directory, and a
        # mount: the symlinks go (themselves), what they point to and the
        # mount's contents stay.
        outside = make_tree(os.path.join(self.scratch.a, "outside"), n_small=10)
        outside_before = snapshot(outside)
        rdir = os.path.join(self.scratch.a, PREFIX + "mv-conf")
        os.makedirs(os.path.join(rdir, "sub", "mnt"))
        with open(os.path.join(rdir, "sub", "old.dat"), "wb") as f:
            f.write(b"old" * 1000)
        os.symlink(os.path.join(outside, "world"), os.path.join(rdir, "sub", "to-dir"))
        os.symlink(os.path.join(outside, "server.properties"), os.path.join(rdir, "to-file"))
        self.scratch.mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", at=os.path.join(rdir, "sub", "mnt"))
        with open(os.path.join(rdir, "sub", "mnt", "theirs.dat"), "w") as f:
            f.write("not ours\n")
        # And one whose identity does not match the record: not touched.
        wrong = os.path.join(self.scratch.a, PREFIX + "mv-wrong")
        os.mkdir(wrong)
        open(os.path.join(wrong, "keep.dat"), "w").close()
        os.makedirs(os.path.join(self.scratch.state, "reclaim"))
        for mid, path, st in (("mv-conf", rdir, os.stat(rdir)), ("mv-wrong", wrong, os.stat(outside))):
            with open(os.path.join(self.scratch.state, "reclaim", mid + ".json"), "w") as f:
                json.dump({"version": 1, "moveId": mid, "dir": path, "id": "%d:%d" % (st.st_dev, st.st_ino),
                           "entries": 6, "bytes": 3000}, f)
        self.start_agent()
        wait_until(lambda: self.records() == [], 30, "both reclaims ended")
        self.assertEqual(snapshot(outside), outside_before, "something outside was touched")
        with open(os.path.join(rdir, "sub", "mnt", "theirs.dat")) as f:
            self.assertEqual(f.read(), "not ours\n")
        self.assertEqual(sorted(os.listdir(rdir)), ["sub"])
        self.assertEqual(sorted(os.listdir(os.path.join(rdir, "sub"))), ["mnt"])
        self.assertTrue(os.path.exists(os.path.join(wrong, "keep.dat")))
        log = self.agent.log()
        self.assertIn("not the directory recorded", log)
        self.assertIn("could not delete everything", log)


class ReusedMoveIdTest(AgentTestCase):
    """Issue 20, item 3: a manager may use a moveId again once the agent has
    forgotten it (its history keeps the last 100 ended moves). A reclaim of
    the earlier move still running is not overwritten: each reclaim has its
    own record (moveId, device and inode of its directory) and its own
    directory (a second one beside the same oldPath's parent takes the next
    name), both are counted, and a restart resumes both."""

    status = ReclaimTest.status
    records = ReclaimTest.records

    def forget_move_ids(self, tag, n=100):
        """n quick moves (renames on one filesystem) push every earlier move
        out of the agent's history."""
        base = os.path.join(self.scratch.a, "fill-" + tag)
        for first in range(0, n, 20):  # within the agent's queue
            replies = []
            for i in range(first, min(n, first + 20)):
                os.makedirs(os.path.join(base, "s%d" % i))
                open(os.path.join(base, "s%d" % i, "f"), "w").close()
                replies.append(self.request_move("fill-%s-%d" % (tag, i), os.path.join(base, "s%d" % i),
                                                 os.path.join(base, "t%d" % i), "mv-fill-%s-%d" % (tag, i)))
            for r in replies:
                ans = self.manager.wait_answer(r, 120)
                self.assertTrue(ans["success"], ans)

    def test_a_moveid_used_again_keeps_every_reclaim_and_a_restart_resumes_them_all(self):
        self.start_agent(extra={"max_concurrent_moves": "8"})
        p1, p2 = os.path.join(self.scratch.a, "p1"), os.path.join(self.scratch.a, "p2")
        # A and C side by side (one parent), B elsewhere; one moveId for all three.
        srcs = [many_files(os.path.join(p1, "mcA"), dirs=2, per_dir=100),
                many_files(os.path.join(p2, "mcB"), dirs=2, per_dir=150),
                many_files(os.path.join(p1, "mcC"), dirs=2, per_dir=200)]
        for k, src in enumerate(srcs):
            with open(os.path.join(src, "world.dat"), "wb") as f:
                f.write(os.urandom(10000 * (k + 1)))
        rdirs = [reclaim_dir(srcs[0], "mv-same"), reclaim_dir(srcs[1], "mv-same"),
                 reclaim_dir(srcs[2], "mv-same") + "~2"]
        entries = bytes_ = 0
        with self.frozen_workers("ha-reclaim"):
            for k, src in enumerate(srcs):
                if k:
                    self.forget_move_ids(str(k))
                before = snapshot(src)
                name = "srv%d" % k
                ans = self.move(name, src, os.path.join(self.scratch.b, name), "mv-same")
                self.assertTrue(ans["success"], ans)
                self.assertEqual(ans["oldPath"], src, "answered from the history: not a new move")
                self.assertFalse(os.path.lexists(src))
                # Its old files wait in a reclaim directory of its own.
                self.assertEqual(snapshot(rdirs[k]), before)
                self.assertEqual(journal_record(self.scratch.state, "mv-same")["reclaim"]["dir"], rdirs[k])
                entries += sum(len(d) + len(f) for _, d, f in os.walk(rdirs[k]))
                bytes_ += ans["bytesCopied"]
                st = self.status()
                self.assertEqual((st["reclaimingEntries"], st["reclaimingBytes"]), (entries, bytes_), st)
                self.assertEqual(self.records(), sorted(record_name("mv-same", r) for r in rdirs[:k + 1]))
            self.kill_agent()  # nothing deleted yet: every reclaim is left to the next start
        for d in rdirs:
            self.assertTrue(os.path.isdir(d), d)
        # With no daemon, `hostagent status` lists every one of them.
        out = subprocess.run([BIN, "status", "--config", self.agent.cfg_path], capture_output=True, text=True,
                             timeout=30).stdout
        for d in rdirs:
            self.assertIn("reclaim of move mv-same: %s (" % d, out)
        self.restart_agent(1)
        wait_until(lambda: not any(os.path.lexists(d) for d in rdirs) and self.records() == [], 120,
                   "every reclaim resumed and finished")
        resumed = [line for line in self.agent.log().splitlines() if "resuming a reclaim" in line]
        for d in rdirs:
            self.assertEqual(len([line for line in resumed if line.endswith("path=" + d)]), 1, (d, resumed))
        # Each started with the counts it was recorded with: together, what
        # the first run counted.
        started = [re.search(r" entries=(\d+) bytes=(\d+)", line).groups()
                   for line in self.agent.log().splitlines() if "reclaim started" in line]
        self.assertEqual(len(started), 3, started)
        self.assertEqual((sum(int(e) for e, _ in started), sum(int(b) for _, b in started)), (entries, bytes_))
        self.assertEqual(sorted(os.listdir(p1)), [])
        self.assertEqual(sorted(os.listdir(p2)), [])
        wait_until(lambda: self.status()["reclaimingEntries"] == 0, 10, "nothing left")
