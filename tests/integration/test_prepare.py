"""server.move_prepare and server.move_commit end to end: a copy made while a
writer keeps changing the source, the ready state, commits (one that meets a
still-changing source goes back to ready), cancel and prepare_ttl in ready,
kills of the agent in each new phase, and `hostagent move --live`."""
import json
import multiprocessing
import os
import random
import shutil
import signal
import stat
import subprocess
import time

from harness import BIN, AgentTestCase, dense_tree, journal_record, make_tree, snapshot, wait_until
from test_stuck import FaultTestCase

BIG = "world/region.mca"
BIG_SIZE = 8 << 20  # > 4 MiB: changed in the middle, only its changed blocks go again


def full_snapshot(root):
    """snapshot() plus what it leaves out: xattrs, and which names share an inode."""
    snap = snapshot(root)
    extra, inodes = {}, {}
    for rel in snap:
        p = os.path.join(root, rel)
        st = os.lstat(p)
        if not stat.S_ISLNK(st.st_mode):
            extra[rel] = sorted((k, os.getxattr(p, k)) for k in os.listxattr(p))
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            inodes.setdefault(st.st_ino, []).append(rel)
    groups = sorted(sorted(g) for g in inodes.values())
    return snap, extra, groups


def game_tree(root):
    make_tree(root, n_small=150)
    with open(os.path.join(root, BIG), "wb") as f:
        f.write(os.urandom(BIG_SIZE))
    with open(os.path.join(root, "logs", "latest.log"), "w") as f:
        f.write("start\n")
    with open(os.path.join(root, "world", "level.dat"), "wb") as f:
        f.write(os.urandom(4096))
    os.utime(os.path.join(root, "world", "level.dat"), ns=(1600000000_000000000, 1600000000_000000000))
    os.makedirs(os.path.join(root, "swap", "was-dir"))
    with open(os.path.join(root, "swap", "was-file"), "w") as f:
        f.write("a file, later a directory\n")
    with open(os.path.join(root, "plugins", "replaced.jar"), "w") as f:
        f.write("v1\n")
    os.setxattr(os.path.join(root, "plugins", "replaced.jar"), "user.origin", b"v1")
    # Past the clock's granule of the files just written: otherwise the last
    # of them, examined within it, are marked suspect and copied again at the
    # commit (seen under load: 4 synced where the tests expect 1 to 3).
    time.sleep(0.05)
    return root


def change_everything(root, i, rnd):
    """One round of every kind of change the final pass must catch."""
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    # Content rewritten in place, same size, the old mtime put back (only ctime tells).
    victim = j("world", "level.dat")
    st = os.stat(victim)
    with open(victim, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(bytes((b + 1 + i) & 0xFF for b in data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    # An appended log.
    with open(j("logs", "latest.log"), "a") as f:
        f.write("tick %d\n" % i)
    # A file replaced by rename.
    with open(j("plugins", ".replaced.tmp"), "w") as f:
        f.write("v%d\n" % (i + 2))
    os.rename(j("plugins", ".replaced.tmp"), j("plugins", "replaced.jar"))
    # Deleted and new files and directories.
    os.makedirs(j("new", "d%d" % i), exist_ok=True)
    with open(j("new", "d%d" % i, "f"), "w") as f:
        f.write("new %d\n" % i)
    if i >= 2 and os.path.isdir(j("new", "d%d" % (i - 2))):
        shutil.rmtree(j("new", "d%d" % (i - 2)))
    for d in ("world", "world/region", "world/data", "plugins", "logs"):
        p = j(d, "file-%04d.dat" % (i % 150))
        if os.path.isfile(p):
            os.unlink(p)
            break
    # Mode, owner and xattr changes.
    conf = j("plugins", "conf")
    os.chmod(conf, 0o700 if i % 2 else 0o755)
    target = j("name with spaces & \"quotes\".txt")
    os.chown(target, 1000 + i % 7, 1000 + i % 5)
    os.setxattr(target, "user.round", b"%d" % i)
    # New hard links and symlinks.
    src_link = j("logs", "latest.log")
    if not os.path.exists(j("logs", "hard-%d" % i)):
        os.link(src_link, j("logs", "hard-%d" % i))
    os.symlink("../logs/latest.log", j("new", "d%d" % i, "sym"))
    # A file replaced by a directory, and the reverse.
    if os.path.isdir(j("swap", "was-file")):
        os.rmdir(j("swap", "was-file"))
        with open(j("swap", "was-file"), "w") as f:
            f.write("a file again %d\n" % i)
    else:
        os.unlink(j("swap", "was-file"))
        os.mkdir(j("swap", "was-file"))
    if os.path.isdir(j("swap", "was-dir")):
        os.rmdir(j("swap", "was-dir"))
        with open(j("swap", "was-dir"), "w") as f:
            f.write("a directory, now a file %d\n" % i)
    else:
        os.unlink(j("swap", "was-dir"))
        os.mkdir(j("swap", "was-dir"))
    # The large region file changed in the middle.
    with open(j(BIG), "r+b") as f:
        f.seek(BIG_SIZE // 2 + rnd.randrange(0, 1 << 20))
        f.write(os.urandom(4096))


def writer(root, stop, rounds):
    rnd = random.Random(7)
    i = 0
    while not stop.is_set():
        change_everything(root, i, rnd)
        i += 1
        rounds.value = i
        time.sleep(0.005)


class Writer:
    """A process that keeps changing the source until stopped."""

    def __init__(self, root):
        self.stop_ev = multiprocessing.Event()
        self.rounds = multiprocessing.Value("i", 0)
        self.proc = multiprocessing.Process(target=writer, args=(root, self.stop_ev, self.rounds))
        self.proc.start()
        wait_until(lambda: self.rounds.value >= 1, 10, "the writer's first round")

    def stop(self):
        self.stop_ev.set()
        self.proc.join(20)
        assert self.proc.exitcode == 0, "the writer failed (exit %s)" % self.proc.exitcode


class PrepareTest(AgentTestCase):
    tmpfs_size = "512m"

    def prepare(self, server, src, dst, move_id, **extra):
        data = {"serverName": server, "oldPath": src, "newPath": dst, "moveId": move_id}
        data.update(extra)
        return self.manager.request("server.move_prepare", data)

    def commit(self, move_id=None, server=None):
        data = {"moveId": move_id} if move_id else {"serverName": server}
        return self.manager.request("server.move_commit", data)

    def phases(self, move_id):
        return [f["phase"] for f in self.manager.frames(move_id)]

    def assert_ready_answer(self, ans, move_id, server, src, dst, method):
        self.assertEqual(set(ans), {"success", "moveId", "serverName", "oldPath", "newPath", "method",
                                    "bytesCopied", "filesCopied", "durationMs"}, ans)
        self.assertEqual((ans["success"], ans["moveId"], ans["serverName"], ans["oldPath"], ans["newPath"],
                          ans["method"]), (True, move_id, server, src, dst, method))
        self.assertIsInstance(ans["durationMs"], int)

    def assert_seq_grows(self, move_id):
        seqs = [f["seq"] for f in self.manager.frames(move_id)]
        self.assertEqual(seqs, sorted(set(seqs)), "seq must grow with every frame: %s" % seqs)

    # --- the happy paths ----------------------------------------------------
    def test_capabilities_list_prepare_and_commit(self):
        conn = self.start_agent()
        hello = [m for _, m, _ in conn.messages if m and m["subject"] == "agent.hello"][0]
        for subject in ("server.move_prepare", "server.move_commit"):
            self.assertIn(subject, hello["data"]["capabilities"])

    def test_prepare_ready_commit_across_filesystems_with_a_writer(self):
        """The writer changes every kind of thing while the copy is made and
        between ready and commit; after it stops, the commit makes the copy
        equal to the source, byte for byte and in metadata."""
        self.start_agent()
        src = game_tree(os.path.join(self.scratch.a, "mc-1"))
        dst = os.path.join(self.scratch.b, "servers", "mc-1")
        w = Writer(src)
        try:
            reply = self.prepare("mc-1", src, dst, "pr-1")
            ready = self.manager.wait_answer(reply, 120)
            self.assert_ready_answer(ready, "pr-1", "mc-1", src, dst, "copy")
            self.assertGreater(ready["filesCopied"], 150)
            self.assertEqual(self.phases("pr-1")[-1], "ready")
            time.sleep(0.5)  # more changes after ready
        finally:
            w.stop()
        self.assertGreater(w.rounds.value, 3, "the writer made too few rounds to test anything")
        self.assertEqual(journal_record(self.scratch.state, "pr-1")["phase"], "ready")
        self.assertTrue(os.path.exists(os.path.join(self.scratch.state, "pr-1.ident")))
        before = full_snapshot(src)
        reply = self.commit("pr-1")
        ans = self.manager.wait_answer(reply, 120)
        self.assertTrue(ans["success"], ans)
        entries = len(before[0]) - 1
        self.assertEqual((ans["moveId"], ans["method"], ans["filesCopied"]), ("pr-1", "copy", entries))
        for k in ("downtimeMs", "bytesSynced", "filesSynced", "durationMs"):
            self.assertIsInstance(ans[k], int, k)
        self.assertGreater(ans["filesSynced"], 0, "the writer's changes went in the final pass")
        self.assertLess(ans["bytesSynced"], BIG_SIZE, "the large file was not copied whole again")
        self.assertFalse(os.path.exists(src))
        self.assertEqual(full_snapshot(dst), before, "the copy differs from the source")
        phases = self.phases("pr-1")
        self.assertEqual(phases[0], "calculating")
        order = ["calculating", "copying", "ready", "syncing", "verifying", "cleaning", "complete"]
        self.assertEqual(sorted(set(phases), key=order.index), order)
        self.assertEqual(phases.count("complete"), 1)
        self.assert_seq_grows("pr-1")
        self.assertFalse(os.path.exists(os.path.join(self.scratch.state, "pr-1.ident")),
                         "the identity record goes with the move")
        rec = journal_record(self.scratch.state, "pr-1")
        self.assertEqual(rec["phase"], "complete")
        wait_until(lambda: journal_record(self.scratch.state, "pr-1")["readyDelivered"], 10,
                   "the ready answer acknowledged")

    def test_large_file_changed_in_the_middle_costs_its_changed_blocks(self):
        self.start_agent()
        src = game_tree(os.path.join(self.scratch.a, "mc"))
        dst = os.path.join(self.scratch.b, "mc")
        self.manager.wait_answer(self.prepare("mc", src, dst, "pr-big"), 60)
        with open(os.path.join(src, BIG), "r+b") as f:
            f.seek(BIG_SIZE // 2)
            f.write(os.urandom(1000))
        before = full_snapshot(src)
        ans = self.manager.wait_answer(self.commit("pr-big"), 60)
        self.assertTrue(ans["success"], ans)
        # The region file, and perhaps a file written just before the
        # preparation (changed within the clock's granule, so copied again).
        self.assertIn(ans["filesSynced"], (1, 2, 3), ans)
        self.assertLessEqual(ans["bytesSynced"], 512 << 10, "far less than the 8 MiB file: %s" % ans)
        self.assertGreater(ans["bytesSynced"], 0)
        self.assertEqual(full_snapshot(dst), before)

    def test_same_filesystem_is_ready_at_once_and_commits_by_rename(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=40)
        dst = os.path.join(self.scratch.a, "moved", "mc")
        before = snapshot(src)
        ready = self.manager.wait_answer(self.prepare("mc", src, dst, "pr-ren"), 30)
        self.assert_ready_answer(ready, "pr-ren", "mc", src, dst, "rename")
        self.assertEqual(self.phases("pr-ren"), ["calculating", "ready"])
        self.assertFalse(os.path.exists(dst), "nothing is made before the commit")
        ans = self.manager.wait_answer(self.commit(server="mc"), 30)
        self.assertTrue(ans["success"], ans)
        self.assertEqual((ans["method"], ans["bytesSynced"], ans["filesSynced"]), ("rename", 0, 0))
        self.assertIsInstance(ans["downtimeMs"], int)
        self.assertEqual(snapshot(dst), before)
        self.assertFalse(os.path.exists(src))
        self.assertEqual(self.phases("pr-ren")[-1], "complete")
        self.assert_seq_grows("pr-ren")

    # --- busy, not_found, malformed ------------------------------------------
    def test_commit_while_preparing_is_busy_and_a_second_commit_too(self):
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        dst = os.path.join(self.scratch.b, "mc")
        # Sent right behind the prepare (requests are taken in order; a commit
        # waits for the prepare it names to be accepted): the copy is under
        # way, whatever the machine's load, with no freezing to race.
        reply = self.prepare("mc", src, dst, "pr-busy")
        early = self.commit("pr-busy")
        again_reply = self.prepare("mc", src, dst + "2", "pr-busy2")
        ans = self.manager.wait_answer(early, 10)
        self.assertEqual((ans["success"], ans["code"]), (False, "busy"), ans)
        self.assertIn("preparing", ans["error"])
        # The same server or id again: busy as for server.move_data.
        self.assertEqual(self.manager.wait_answer(again_reply, 10)["code"], "busy")
        self.manager.wait_answer(reply, 60)
        self.assertEqual(self.phases("pr-busy")[-1], "ready")
        # A retried prepare of a ready move gets its ready answer again.
        retry = self.manager.wait_answer(self.prepare("mc", src, dst, "pr-busy"), 10)
        self.assertEqual(retry, self.manager.answers(reply)[0]["data"])
        with open(os.path.join(src, "world.img"), "r+b") as f:
            f.write(b"x" * (64 << 20))  # a large change: the commit's final pass takes a while
        first = self.commit("pr-busy")
        second = self.manager.wait_answer(self.commit("pr-busy"), 10)
        self.assertEqual((second["success"], second["code"]), (False, "busy"), second)
        self.assertTrue(self.manager.wait_answer(first, 60)["success"])

    def test_commit_of_unknown_or_plain_move_is_not_found(self):
        self.start_agent()
        ans = self.manager.wait_answer(self.commit("no-such-move"), 10)
        self.assertEqual((ans["success"], ans["code"]), (False, "not_found"))
        ans = self.manager.wait_answer(self.commit(server="nobody"), 10)
        self.assertEqual(ans["code"], "not_found")
        src = dense_tree(os.path.join(self.scratch.a, "plain"), 150)
        # Held to 50 MiB/s (3 s): still copying when its workers are frozen.
        reply = self.manager.request("server.move_data", {
            "serverName": "plain", "oldPath": src, "newPath": os.path.join(self.scratch.b, "plain"),
            "moveId": "mv-plain", "maxRate": 50 << 20})
        self.wait_phase("mv-plain", "copying")
        with self.frozen_workers():
            ans = self.manager.wait_answer(self.commit("mv-plain"), 10)
            self.assertEqual(ans["code"], "not_found", ans)
            self.assertIn("not a prepared move", ans["error"])
        self.assertTrue(self.manager.wait_answer(reply, 60)["success"])
        # An ended prepared move: nothing left to commit.
        s2 = make_tree(os.path.join(self.scratch.a, "s2"), n_small=5)
        self.manager.wait_answer(self.prepare("s2", s2, os.path.join(self.scratch.b, "s2"), "pr-end"), 30)
        self.assertTrue(self.manager.wait_answer(self.commit("pr-end"), 30)["success"])
        self.assertEqual(self.manager.wait_answer(self.commit("pr-end"), 10)["code"], "not_found")

    def test_malformed_commit_requests(self):
        self.start_agent()
        cases = [
            {},
            {"moveId": 5},
            {"moveId": ""},
            {"moveId": "x" * 65},
            {"moveId": "bad/id"},
            {"serverName": None},
            {"serverName": "white space"},
            {"serverName": "s" * 129},
            {"serverName": ["mc"]},
            {"moveId": "ok", "serverName": 1},
        ]
        for data in cases:
            ans = self.manager.wait_answer(self.manager.request("server.move_commit", data), 10)
            self.assertEqual((ans["success"], ans["code"]), (False, "invalid_request"), (data, ans))
            self.assertIsInstance(ans["error"], str)
        # data that is not an object, and no data at all
        conn = self.manager.current
        conn.send_text('{"subject": "server.move_commit", "reply": "_INBOX.bad1", "data": [1]}')
        self.assertEqual(self.manager.wait_answer("_INBOX.bad1", 10)["code"], "invalid_request")
        ans = self.manager.wait_answer(self.manager.request("server.move_commit"), 10)
        self.assertEqual(ans["code"], "invalid_request")
        # unknown fields are ignored: a well-formed commit of nothing is not_found
        ans = self.manager.wait_answer(self.manager.request("server.move_commit",
                                                            {"moveId": "nope", "extra": {"x": 1}}), 10)
        self.assertEqual(ans["code"], "not_found")
        self.assertEqual(self.manager.frames(), [])

    def test_prepare_validation_is_move_datas(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=5)
        known = set()

        def refused(data, code):
            ans = self.manager.wait_answer(self.manager.request("server.move_prepare", data), 20)
            self.assertEqual((ans["success"], ans["code"]), (False, code), (data, ans))
            self.assertNotIn("moveId", ans)
            self.assertEqual({f["moveId"] for f in self.manager.frames()}, known)
        refused({"oldPath": src, "newPath": os.path.join(self.scratch.b, "x")}, "invalid_request")
        refused({"serverName": "mc", "oldPath": src}, "invalid_request")
        refused({"serverName": "mc", "oldPath": src, "newPath": "/etc/x"}, "path_not_allowed")
        refused({"serverName": "mc", "oldPath": src, "newPath": os.path.join(src, "in")}, "invalid_paths")
        refused({"serverName": "mc", "oldPath": os.path.join(self.scratch.a, "none"),
                 "newPath": os.path.join(self.scratch.b, "x")}, "source_missing")
        os.makedirs(os.path.join(self.scratch.b, "full", "x"))
        refused({"serverName": "mc", "oldPath": src, "newPath": os.path.join(self.scratch.b, "full")},
                "destination_exists")

    # --- cancel, prepare_ttl ---------------------------------------------------
    def test_cancel_in_ready_removes_the_copy(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=60)
        before = snapshot(src)
        dst = os.path.join(self.scratch.b, "deep", "mc")
        self.manager.wait_answer(self.prepare("mc", src, dst, "pr-cancel"), 30)
        self.assertTrue(os.path.isdir(dst))
        ans = self.manager.wait_answer(self.manager.request("server.move_cancel", {"moveId": "pr-cancel"}), 10)
        self.assertEqual(ans, {"success": True, "moveId": "pr-cancel"})
        self.manager.wait_for(lambda: self.phases("pr-cancel")[-1] == "cancelled", 30, "cancelled")
        term = self.manager.frames("pr-cancel")[-1]
        self.assertEqual(term["code"], "cancelled")
        self.assertEqual(snapshot(src), before, "the source is untouched")
        self.assertEqual(os.listdir(self.scratch.b), [], "the copy and the parents made for it are gone")
        self.assertFalse(os.path.exists(os.path.join(self.scratch.state, "pr-cancel.ident")))
        self.assert_seq_grows("pr-cancel")
        # The prepare request had its answer at ready; nothing more goes there.
        self.assertEqual(len([m for m in self.manager.all_messages()
                              if m["subject"].startswith("_INBOX") and m["data"].get("moveId") == "pr-cancel"
                              and "phase" not in m["data"]]), 2, "the ready answer and the cancel's")
        self.assertEqual(self.manager.wait_answer(self.commit("pr-cancel"), 10)["code"], "not_found")

    def test_a_copy_changed_by_someone_else_in_ready_fails_the_commit(self):
        """The commit verifies the entries it leaves alone too (on its helper
        thread): a file of the copy changed while the move rested in ready is
        found, the copy removed, the source kept."""
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=80)
        before = snapshot(src)
        dst = os.path.join(self.scratch.b, "mc")
        self.manager.wait_answer(self.prepare("mc", src, dst, "pr-dstchg"), 30)
        victim = sorted(n for n in os.listdir(os.path.join(dst, "plugins")) if n.endswith(".dat"))[0]
        path = os.path.join(dst, "plugins", victim)
        os.chmod(path, 0o600 if os.stat(path).st_mode & 0o777 != 0o600 else 0o644)
        ans = self.manager.wait_answer(self.commit("pr-dstchg"), 60)
        self.assertFalse(ans["success"], ans)
        self.assertEqual(ans["code"], "io_error", ans)
        self.assertIn("plugins/" + victim, ans["error"])
        self.assertIn("by something else", ans["error"])
        self.assertFalse(os.path.exists(dst), "the copy was removed")
        self.assertEqual(snapshot(src), before, "the source is untouched")

    def rewrite_copy_in_place(self, dst):
        """Another program rewrites a file of the copy: same size, its old
        mtime put back (only its ctime tells). Returns its relative path."""
        rel = os.path.join("plugins", sorted(n for n in os.listdir(os.path.join(dst, "plugins"))
                                             if n.endswith(".dat"))[0])
        path = os.path.join(dst, rel)
        st = os.stat(path)
        with open(path, "r+b") as f:
            data = f.read()
            f.seek(0)
            f.write(bytes((b ^ 0x5A) for b in data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        after = os.stat(path)
        self.assertEqual((after.st_size, after.st_mtime_ns), (st.st_size, st.st_mtime_ns))
        return rel

    def check_rewritten_copy_fails_the_commit(self, move_id):
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=80)
        before = full_snapshot(src)
        dst = os.path.join(self.scratch.b, "mc")
        self.manager.wait_answer(self.prepare("mc", src, dst, move_id), 30)
        rel = self.rewrite_copy_in_place(dst)
        ans = self.manager.wait_answer(self.commit(move_id), 60)
        self.assertFalse(ans["success"], ans)
        self.assertEqual(ans["code"], "io_error", ans)
        self.assertIn(rel, ans["error"])
        self.assertIn("by something else", ans["error"])
        self.assertEqual(self.phases(move_id)[-1], "error")
        self.assertFalse(os.path.exists(dst), "the copy was removed")
        self.assertEqual(full_snapshot(src), before, "the source is untouched")

    def test_a_copy_rewritten_in_place_in_ready_fails_the_commit(self):
        """Issue 20, item 1: size and mtime as recorded, content not: the
        copy's recorded identity (inode, ctime) is what tells."""
        self.start_agent()
        self.check_rewritten_copy_fails_the_commit("pr-inplace")

    def test_a_copy_rewritten_in_place_fails_the_commit_with_verify_checksum(self):
        self.start_agent(extra={"verify": "checksum"})
        self.check_rewritten_copy_fails_the_commit("pr-inplace-ck")

    def test_entries_made_only_in_the_copy_are_removed_by_the_commit(self):
        """Issue 20, item 1: a name someone made in the copy while the move
        rested in ready (a lock file of a server started there by mistake, a
        directory) is not the source's: the commit removes it."""
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=40)
        dst = os.path.join(self.scratch.b, "mc")
        self.manager.wait_answer(self.prepare("mc", src, dst, "pr-stray"), 30)
        with open(os.path.join(dst, "world", "session.lock"), "w") as f:
            f.write("lock")
        os.makedirs(os.path.join(dst, "world", "region", "new", "deeper"))
        with open(os.path.join(dst, "world", "region", "new", "deeper", "r.9.9.mca"), "w") as f:
            f.write("stray")
        os.symlink("/etc", os.path.join(dst, "plugins", "stray-link"))
        before = full_snapshot(src)
        ans = self.manager.wait_answer(self.commit("pr-stray"), 60)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(full_snapshot(dst), before, "the copy holds exactly the source")
        self.assertFalse(os.path.exists(src))

    def test_a_source_gone_or_replaced_in_ready_removes_the_copy(self):
        """Issue 20, item 7: oldPath deleted, or replaced by another
        directory, while the move rested in ready: the prepared copy is of
        nothing that is there any more. The commit answers source_missing and
        removes the copy (all or nothing), also when the agent restarted in
        between; a replacing directory is not touched."""
        self.start_agent()
        cases = {"pr-gone": "gone", "pr-replaced": "replaced", "pr-gone-restart": "gone"}
        paths = {}
        for i, (move_id, how) in enumerate(sorted(cases.items())):
            src = make_tree(os.path.join(self.scratch.a, "mc%d" % i), n_small=20)
            dst = os.path.join(self.scratch.b, "deep%d" % i, "mc")
            self.manager.wait_answer(self.prepare("mc%d" % i, src, dst, move_id), 30)
            self.assertTrue(os.path.isdir(dst))
            paths[move_id] = (src, dst)
        for move_id, how in cases.items():
            src, _ = paths[move_id]
            if how == "replaced":
                # Renamed aside, so its inode is not reused by the new one (a
                # directory made again on the same inode is the same one to
                # the agent, and the commit then makes the copy equal it).
                os.rename(src, src + ".was")
                make_tree(src, n_small=3)
            else:
                shutil.rmtree(src)
        replaced = snapshot(paths["pr-replaced"][0])
        aside = snapshot(paths["pr-replaced"][0] + ".was")
        for move_id in ("pr-gone", "pr-replaced"):
            ans = self.manager.wait_answer(self.commit(move_id), 60)
            self.assertEqual((ans["success"], ans.get("code")), (False, "source_missing"), (move_id, ans))
            self.assertIn(paths[move_id][0], ans["error"])
            self.assertIn("was removed", ans["error"])
            self.assertEqual(self.phases(move_id)[-1], "error")
            self.assertFalse(os.path.exists(os.path.dirname(paths[move_id][1])),
                             "the copy and the parent made for it are gone")
        self.assertEqual(snapshot(paths["pr-replaced"][0]), replaced, "the new directory is untouched")
        self.assertEqual(snapshot(paths["pr-replaced"][0] + ".was"), aside, "the old one too")
        self.kill_agent()
        self.restart_agent(1)
        ans = self.manager.wait_answer(self.commit("pr-gone-restart"), 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "source_missing"), ans)
        self.assertFalse(os.path.exists(os.path.dirname(paths["pr-gone-restart"][1])))
        self.assertEqual([f for _, _, files in os.walk(self.scratch.state) for f in files
                          if f.startswith("pr-gone-restart.ident")], [], "its identity record is gone")
        again = self.manager.wait_answer(self.commit("pr-gone-restart"), 10)
        self.assertEqual(again["code"], "not_found", again)

    def test_prepare_ttl_discards_a_ready_move(self):
        self.start_agent(extra={"prepare_ttl": "1s"})
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=30)
        before = snapshot(src)
        dst = os.path.join(self.scratch.b, "mc")
        self.manager.wait_answer(self.prepare("mc", src, dst, "pr-ttl"), 30)
        self.manager.wait_for(lambda: self.phases("pr-ttl")[-1] == "error", 15, "the ttl")
        term = self.manager.frames("pr-ttl")[-1]
        self.assertEqual(term["code"], "timeout")
        self.assertIn("prepare_ttl", term["error"])
        self.assertFalse(os.path.exists(dst))
        self.assertEqual(snapshot(src), before)
        self.assertEqual(journal_record(self.scratch.state, "pr-ttl")["code"], "timeout")

    # --- a source that still changes --------------------------------------------
    def test_commit_while_the_writer_writes_goes_back_to_ready(self):
        self.start_agent()
        src = game_tree(os.path.join(self.scratch.a, "mc"))
        for d in range(4):  # enough entries that the final pass takes a while
            os.makedirs(os.path.join(src, "chunks", str(d)))
            for k in range(500):
                with open(os.path.join(src, "chunks", str(d), "c%d" % k), "w") as f:
                    f.write("c")
        dst = os.path.join(self.scratch.b, "mc")
        self.manager.wait_answer(self.prepare("mc", src, dst, "pr-live"), 60)
        w = Writer(src)
        try:
            ans = self.manager.wait_answer(self.commit("pr-live"), 60)
            self.assertEqual((ans["success"], ans["code"], ans["moveId"]), (False, "source_changed", "pr-live"),
                             ans)
            self.manager.wait_for(lambda: self.phases("pr-live")[-1] == "ready", 10, "ready again")
            self.assertTrue(os.path.isdir(src))
            self.assertTrue(os.path.isdir(dst), "the copy is kept")
        finally:
            w.stop()
        self.assertEqual(journal_record(self.scratch.state, "pr-live")["phase"], "ready")
        before = full_snapshot(src)
        ans = self.manager.wait_answer(self.commit("pr-live"), 60)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(full_snapshot(dst), before)
        phases = self.phases("pr-live")
        self.assertEqual(phases.count("ready"), 2)
        self.assertEqual(phases[-1], "complete")
        self.assert_seq_grows("pr-live")

    # --- kills and restarts -----------------------------------------------------
    def test_killed_in_ready_stays_ready_and_commits(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=80)
        dst = os.path.join(self.scratch.b, "mc")
        reply = self.prepare("mc", src, dst, "pr-kill")
        self.manager.wait_answer(reply, 30)
        wait_until(lambda: journal_record(self.scratch.state, "pr-kill").get("readyDelivered"), 10,
                   "the ready answer acknowledged")
        last_seq = self.manager.frames("pr-kill")[-1]["seq"]
        self.kill_agent()
        self.restart_agent(1)
        conn = self.manager.wait_connection(len(self.manager.connections), 20)
        hello = [m for _, m, _ in conn.messages if m and m["subject"] == "agent.hello"][0]
        self.assertEqual([(m["moveId"], m["phase"]) for m in hello["data"]["moves"]], [("pr-kill", "ready")])
        self.manager.wait_for(lambda: self.manager.frames("pr-kill")[-1]["seq"] > last_seq, 10, "a ready frame")
        self.assertEqual(self.manager.frames("pr-kill")[-1]["phase"], "ready")
        self.assertEqual(len(self.manager.answers(reply)), 1, "an acknowledged ready answer is not sent again")
        status = self.manager.wait_answer(self.manager.request("server.move_status", {"moveId": "pr-kill"}), 10)
        self.assertEqual([m["phase"] for m in status["moves"]], ["ready"])
        with open(os.path.join(src, "after-restart.txt"), "w") as f:
            f.write("new\n")
        before = snapshot(src)
        ans = self.manager.wait_answer(self.commit("pr-kill"), 60)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(snapshot(dst), before)
        self.assertGreaterEqual(ans["filesSynced"], 1, ans)
        self.assert_seq_grows("pr-kill")

    def test_sigterm_leaves_a_ready_move_ready(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=30)
        dst = os.path.join(self.scratch.b, "mc")
        self.manager.wait_answer(self.prepare("mc", src, dst, "pr-term"), 30)
        self.assertEqual(self.agent.stop(), 0)
        self.assertEqual(journal_record(self.scratch.state, "pr-term")["phase"], "ready")
        self.assertTrue(os.path.isdir(dst))
        self.restart_agent(1)
        self.manager.wait_for(lambda: self.phases("pr-term").count("ready") >= 2, 10, "ready again")
        before = snapshot(src)
        self.assertTrue(self.manager.wait_answer(self.commit("pr-term"), 60)["success"])
        self.assertEqual(snapshot(dst), before)

    def test_unacknowledged_ready_answer_is_sent_again_after_a_restart(self):
        self.manager.answer_pings = False
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=10)
        reply = self.prepare("mc", src, os.path.join(self.scratch.b, "mc"), "pr-ack")
        first = self.manager.wait_answer(reply, 30)
        self.assertFalse(journal_record(self.scratch.state, "pr-ack")["readyDelivered"])
        self.kill_agent()
        self.manager.answer_pings = True
        self.restart_agent(1)
        self.manager.wait_for(lambda: len(self.manager.answers(reply)) >= 2, 20, "the ready answer again")
        self.assertEqual(self.manager.answers(reply)[-1]["data"], first)
        wait_until(lambda: journal_record(self.scratch.state, "pr-ack")["readyDelivered"], 10, "delivered")

    def test_killed_while_preparing_is_rolled_back_interrupted(self):
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        before = snapshot(src, content=False)
        dst = os.path.join(self.scratch.b, "new", "mc")
        reply = self.prepare("mc", src, dst, "pr-kc")
        self.wait_phase("pr-kc", "copying")
        with self.paused_agent():
            self.kill_agent()
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "interrupted"), ans)
        self.assertEqual(snapshot(src, content=False), before)
        self.assertEqual(os.listdir(self.scratch.b), [], "nothing at newPath")
        self.assertFalse(os.path.exists(os.path.join(self.scratch.state, "pr-kc.ident")))

    def test_killed_while_syncing_is_rolled_back_and_the_commit_answered(self):
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        dst = os.path.join(self.scratch.b, "mc")
        prep = self.prepare("mc", src, dst, "pr-ks")
        self.manager.wait_answer(prep, 60)
        with open(os.path.join(src, "world.img"), "r+b") as f:
            f.write(os.urandom(1 << 20) * 150)  # most blocks change: a long final pass
        before = snapshot(src, content=False)
        reply = self.commit("pr-ks")
        self.wait_phase("pr-ks", "syncing")
        with self.paused_agent():
            self.kill_agent()
        self.assertIn(journal_record(self.scratch.state, "pr-ks")["phase"], ("syncing", "verifying"))
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "interrupted"), ans)
        self.assertEqual(len(self.manager.answers(prep)), 1, "the prepare had its answer already")
        self.assertEqual(snapshot(src, content=False), before, "one complete source")
        self.assertFalse(os.path.exists(dst), "nothing at newPath")
        self.assertEqual(self.manager.frames("pr-ks")[-1]["code"], "interrupted")
        self.assertFalse(os.path.exists(os.path.join(self.scratch.state, "pr-ks.ident")))


class LiveCliTest(AgentTestCase):
    """hostagent move --live: no daemon, no manager."""

    def live(self, *args, stdin=None):
        return subprocess.run([BIN, "move", "--live", *args], input=stdin, capture_output=True, text=True,
                              timeout=120)

    def test_commit_after_zero(self):
        src = game_tree(os.path.join(self.scratch.a, "mc"))
        before = full_snapshot(src)
        dst = os.path.join(self.scratch.b, "mc")
        r = self.live("--commit-after=0", src, dst, stdin="")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ready: copied", r.stdout)
        self.assertIn("downtime", r.stdout)
        self.assertIn("final pass synced 0 entries", r.stdout)
        self.assertEqual(full_snapshot(dst), before)
        self.assertFalse(os.path.exists(src))

    def test_enter_commits_and_json_prints_the_answers(self):
        src = game_tree(os.path.join(self.scratch.a, "mc"))
        dst = os.path.join(self.scratch.b, "mc")
        proc = subprocess.Popen([BIN, "move", "--live", "--json", src, dst], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        while True:
            line = proc.stdout.readline()
            if not line:
                self.fail("ended before ready: " + proc.stderr.read())
            lines.append(json.loads(line))
            if lines[-1].get("success"):
                break
        ready = lines[-1]
        self.assertEqual((ready["method"], ready["newPath"]), ("copy", dst))
        self.assertEqual(lines[-2]["phase"], "ready")
        with open(os.path.join(src, "logs", "latest.log"), "a") as f:
            f.write("written after ready\n")
        before = full_snapshot(src)
        out, err = proc.communicate("\n", timeout=60)
        self.assertEqual(proc.returncode, 0, err)
        objs = [json.loads(x) for x in out.splitlines()]
        self.assertEqual(objs[-2]["phase"], "complete")
        self.assertTrue(objs[-1]["success"], objs[-1])
        self.assertIn(objs[-1]["filesSynced"], (1, 2, 3), "the appended log (and perhaps a file written "
                      "just before the preparation, within the clock's granule)")
        self.assertIn("downtimeMs", objs[-1])
        self.assertIn("press Enter", err)
        self.assertEqual(full_snapshot(dst), before)

    def test_interrupt_in_ready_discards_the_copy(self):
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=30)
        before = snapshot(src)
        dst = os.path.join(self.scratch.b, "deep", "mc")
        earlier = set(os.listdir("/tmp"))
        proc = subprocess.Popen([BIN, "move", "--live", src, dst], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        while line and not line.startswith("ready:"):
            line = proc.stdout.readline()
        self.assertIn("press Enter", line)
        self.assertTrue(os.path.isdir(dst))
        tmpdirs = [d for d in os.listdir("/tmp") if d.startswith("hostagent-live-") and d not in earlier]
        self.assertEqual(len(tmpdirs), 1, "its private directory")
        self.assertEqual(os.stat(os.path.join("/tmp", tmpdirs[0])).st_mode & 0o777, 0o700)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 1, err)
        self.assertIn("cancelled", err)
        self.assertEqual(os.listdir(self.scratch.b), [])
        self.assertEqual(snapshot(src), before)
        self.assertEqual([d for d in os.listdir("/tmp") if d in tmpdirs], [], "the identity record is gone")

    def test_usage(self):
        for bad in (["--commit-after=x"], ["--commit-after=-1"]):
            r = self.live(*bad, "/a", "/b")
            self.assertEqual(r.returncode, 2, r)
        r = subprocess.run([BIN, "move", "--commit-after=1", "/a", "/b"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--live", r.stderr)


class PreparedFaultTest(FaultTestCase):
    """Prepared moves on a source that faultfs holds still at one step."""

    prepare = PrepareTest.prepare
    commit = PrepareTest.commit
    phases = PrepareTest.phases

    def test_a_change_seen_after_the_rename_goes_back_to_ready(self):
        """Issue 20, item 6: source_changed has one meaning. The commit's
        final pass found nothing, then a file changed before the source was
        renamed into its reclaim directory: the reclaim's check finds it,
        puts the source back whole, and the move is ready again with its
        copy (it used to end, its pre-copy discarded, and the manager's
        documented retry got not_found)."""
        fs = self.fuse("src")
        self.start_agent(roots=[fs.mountpoint, self.scratch.b])
        src = make_tree(os.path.join(fs.mountpoint, "mc"), n_small=30)
        dst = os.path.join(self.scratch.b, "mc")
        self.manager.wait_answer(self.prepare("mc", src, dst, "pr-late"), 60)
        fs.hang("rename", "mc")
        reply = self.commit("pr-late")
        wait_until(lambda: fs.hung() >= 1, 30, "the reclaim's rename of the source")
        with open(os.path.join(fs.backing, "mc", "name with spaces & \"quotes\".txt"), "a") as f:
            f.write("changed while the commit renamed\n")
        fs.release()
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "source_changed"), ans)
        self.manager.wait_for(lambda: self.phases("pr-late")[-1] == "ready", 10, "ready again")
        self.assertTrue(os.path.isdir(dst), "the copy is kept")
        self.assertEqual(journal_record(self.scratch.state, "pr-late")["phase"], "ready")
        self.assertNotIn("reclaim", journal_record(self.scratch.state, "pr-late"))
        self.assertEqual([n for n in os.listdir(fs.backing) if n.startswith(".hostagent-reclaim-")], [])
        before = snapshot(src)
        ans = self.manager.wait_answer(self.commit("pr-late"), 60)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(snapshot(dst), before)
        self.assertGreaterEqual(ans["filesSynced"], 1, "the changed file")

    def test_a_slow_copy_does_not_pile_up_open_directories(self):
        """Issue 20, item 10: the commit hands the entries it leaves alone to
        a helper thread one directory at a time, each batch with a
        descriptor of the copy's directory. With the helper held on a slow
        copy, the walk waits for room instead of queueing a descriptor per
        directory of a wide tree (EMFILE on cold disks); released, the
        commit completes."""
        fs = self.fuse("dst")
        self.start_agent(roots=[self.scratch.a, fs.mountpoint])
        src = os.path.join(self.scratch.a, "mc")
        for d in range(1500):
            os.makedirs(os.path.join(src, "d%04d" % d))
            with open(os.path.join(src, "d%04d" % d, "f"), "w") as f:
                f.write("x")
        dst = os.path.join(fs.mountpoint, "mc")
        self.manager.wait_answer(self.prepare("mc", src, dst, "pr-wide"), 120)
        time.sleep(0.05)  # past the granule of the tree's last files: none is copied again
        fs.hang("any", "mc/d0000/f")
        reply = self.commit("pr-wide")
        wait_until(lambda: fs.hung() >= 1, 30, "the helper held on the first directory's file")
        fd_dir = "/proc/%d/fd" % self.agent.proc.pid
        most = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # the walk goes on as far as it may
            most = max(most, len(os.listdir(fd_dir)))
            time.sleep(0.05)
        self.assertLess(most, 120, "descriptors held while the helper waits")
        self.assertEqual(self.manager.answers(reply), [], "the commit waits for its helper")
        fs.release()
        ans = self.manager.wait_answer(reply, 120)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(ans["filesSynced"], 0, ans)
        self.assertEqual(len(os.listdir(dst)), 1500)
