"""A SQLite database written while a prepared move is committed (issue 20,
item 11): a commit that meets a running writer either answers
`source_changed` (and a later commit, the writer stopped, brings every row)
or succeeds, and then every row whose COMMIT had returned before the commit
request was sent is in newPath's database. Rows committed after the final
pass began may be missing (the server must be stopped before a commit: that
is the manager's mistake); none committed before the request may be.

The writer is a separate process committing one row per transaction, each
with its id and monotonic time, and logging when each COMMIT returned (same
CLOCK_MONOTONIC as the manager's receive times of the answer and frames), so
every row missing at newPath is placed on one time line with the commit's
request, its `syncing`/`cleaning` frames and its answer. Journal modes WAL
and DELETE (rollback journal); sources on ext4 with nanosecond timestamps and
on ext4 with 128-byte inodes (whole-second timestamps); destinations tmpfs
and xfs. SameSecondTest makes the row the rule is about deterministic: one
committed after the preparing copy read the database, in the same second,
leaving sizes and times as they were. sqlite_soak.py repeats the running
writer's case many times (the investigation of the issue's observation)."""
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

from harness import AgentTestCase, wait_until

DB_REL = os.path.join("plugins", "ledger", "ledger.db")

# The game server's database: one row per transaction, the id, the time the
# transaction began, and a pad (a row of a few hundred bytes to a few KiB, so
# WAL checkpoints and WAL restarts happen during a run). After each COMMIT
# has returned, a line "id begin_ns done_ns" (CLOCK_MONOTONIC) goes to the
# log; an error ends the writer with a line "error id t message" (a DELETE
# mode writer cannot create its journal once oldPath was renamed away).
# SIGTERM ends it after the current transaction; it then closes the database
# as a server that stops does (WAL: a checkpoint).
WRITER = r"""
import os, signal, sqlite3, sys, time
db, mode, sync, gap, pad, log_path = sys.argv[1:7]
gap, pad = float(gap), int(pad)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
con = sqlite3.connect(db, isolation_level=None, timeout=30)
got = con.execute("PRAGMA journal_mode=" + mode).fetchone()[0]
if got.lower() != mode.lower():
    sys.exit("journal_mode %s, not %s" % (got, mode))
con.execute("PRAGMA synchronous=" + sync)
con.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, begin_ns INTEGER, "
            "wall_ns INTEGER, pad BLOB)")
log = open(log_path, "w", buffering=1)
i = 0
try:
    while not stop:
        i += 1
        begin = time.monotonic_ns()
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO ledger VALUES (?, ?, ?, ?)", (i, begin, time.time_ns(), os.urandom(pad)))
        con.execute("COMMIT")
        log.write("%d %d %d\n" % (i, begin, time.monotonic_ns()))
        if gap:
            time.sleep(gap)
except sqlite3.Error as exc:
    log.write("error %d %d %s\n" % (i, time.monotonic_ns(), str(exc).replace("\n", " ")))
try:
    con.close()
except sqlite3.Error:
    pass
"""


class Writer:
    """The writer process (see WRITER) on `db`, logging to `log_path`."""

    def __init__(self, db, mode, sync, gap, pad, log_path):
        self.log_path = log_path
        open(log_path, "w").close()
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, db, mode, sync, str(gap), str(pad), log_path],
                                     stderr=subprocess.PIPE, text=True)

    def read(self):
        """([(id, begin_ns, done_ns)], error line or None) so far."""
        rows, err = [], None
        with open(self.log_path) as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # being written
                if line.startswith("error"):
                    err = line.strip()
                else:
                    i, b, d = line.split()
                    rows.append((int(i), int(b), int(d)))
        return rows, err

    def committed(self):
        rows, err = self.read()
        if err is not None or self.proc.poll() is not None:
            return None  # it ended
        return len(rows)

    def wait_rows(self, n, timeout=60):
        """Waits until n rows are committed, or the writer ended."""
        wait_until(lambda: self.proc.poll() is not None or (self.committed() or 0) >= n, timeout,
                   "%d rows committed by the writer" % n)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the SQLite writer did not stop")
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        if self.proc.returncode != 0:
            raise AssertionError("the SQLite writer failed (%s): %s" % (self.proc.returncode, err))
        return self.read()


def db_ids(root):
    """The ids in the database of the tree at root, read from a private copy
    of its files (the database file and its WAL; the WAL index is rebuilt
    from the WAL, as a server that starts there does), and the integrity
    check's verdict."""
    tmp = tempfile.mkdtemp(prefix="hostagent-sqlite-")
    try:
        for suffix in ("", "-wal", "-journal"):
            p = os.path.join(root, DB_REL) + suffix
            if os.path.exists(p):
                shutil.copyfile(p, os.path.join(tmp, "ledger.db" + suffix))
        con = sqlite3.connect(os.path.join(tmp, "ledger.db"))
        try:
            check = con.execute("PRAGMA integrity_check").fetchone()[0]
            ids = {r[0] for r in con.execute("SELECT id FROM ledger")}
        finally:
            con.close()
        return ids, check
    finally:
        shutil.rmtree(tmp)


def filler(root, n, seed):
    """n small files of a game server's world beside the database, so the
    final pass takes a while."""
    rnd = random.Random(seed)
    for i in range(n):
        d = os.path.join(root, "world", "region-%d" % (i % 8))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "r.%d.mca" % i), "wb") as f:
            f.write(rnd.randbytes(rnd.randrange(64, 8192)))


class SqliteCommitCase(AgentTestCase):
    """Helpers: one commit that meets a running SQLite writer, and the
    verdict on its rows."""

    tmpfs_size = "512m"

    def mount_image(self, fs, at, size_mib=512):
        """A loop filesystem at `at` (made): 'ext4-1s' (128-byte inodes:
        whole-second timestamps) or 'xfs'."""
        img = os.path.join(self.scratch.base, os.path.basename(at) + ".img")
        with open(img, "wb") as f:
            f.truncate(size_mib << 20)
        mkfs = {"ext4-1s": ["mkfs.ext4", "-q", "-F", "-I", "128"], "xfs": ["mkfs.xfs", "-q", "-f"]}[fs]
        if not shutil.which(mkfs[0]):
            self.fail("%s is needed (Debian: %s)" % (mkfs[0], "e2fsprogs" if fs != "xfs" else "xfsprogs"))
        subprocess.run(mkfs + [img], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.mkdir(at)
        self.scratch.mount("-o", "loop", img, at=at)
        return at

    def received(self, pred):
        """Monotonic ns at which the manager received the first message that
        satisfies pred, or None."""
        for c in self.manager.connections:
            for t, m, _ in list(c.messages):
                if m is not None and pred(m):
                    return int(t * 1e9)
        return None

    def frame_times(self, move_id, since_ns):
        out = []
        for c in self.manager.connections:
            for t, m, _ in list(c.messages):
                if m and m.get("subject") == "move.progress" and m["data"].get("moveId") == move_id \
                        and int(t * 1e9) >= since_ns:
                    out.append((m["data"]["phase"], int(t * 1e9)))
        return out

    def run_commit(self, src_root, dst_root, name, mode="WAL", sync="NORMAL", gap=0.0, pad=1500,
                   n_filler=300, rows_in_ready=30, seed=0):
        """One run: the writer starts, the move is prepared while it writes,
        rests in ready while it writes rows_in_ready more rows, and is
        committed while it still writes. Returns a dict of what was seen
        (times in ms from the commit request; the keys starting with "_"
        are for assert_rule)."""
        src = os.path.join(src_root, name)
        dst = os.path.join(dst_root, name)
        move_id = "sq-" + name
        filler(src, n_filler, seed)
        os.makedirs(os.path.dirname(os.path.join(src, DB_REL)))
        log_path = os.path.join(self.scratch.base, name + ".writer.log")
        w = Writer(os.path.join(src, DB_REL), mode, sync, gap, pad, log_path)
        ok = False
        try:
            w.wait_rows(20)
            self.assertIsNone(w.read()[1], "the writer failed before the move")
            ready = self.manager.wait_answer(self.manager.request(
                "server.move_prepare", {"serverName": name, "oldPath": src, "newPath": dst, "moveId": move_id}),
                120)
            self.assertTrue(ready["success"], ready)
            w.wait_rows((w.committed() or 0) + rows_in_ready)
            t_send = time.monotonic_ns()
            reply = self.manager.request("server.move_commit", {"moveId": move_id})
            ans = self.manager.wait_answer(reply, 120)
            t_answer = self.received(lambda m: m.get("subject") == reply)
            # The writer goes on a little after the answer (as a server not
            # stopped would) so rows after it are on the time line too.
            at_answer = w.committed()
            if at_answer is not None:
                w.wait_rows(at_answer + 5, 30)
            ok = True
        finally:
            if not ok:  # the failure in flight is the one to see
                w.proc.kill()
                w.proc.wait()
                w.proc.stderr.close()
        rows, err = w.stop()
        if not ans["success"]:  # back in ready, or ended: its frame may come after the answer
            self.manager.wait_for(lambda: (self.frame_times(move_id, t_send) or [("", 0)])[-1][0]
                                  in ("ready", "error"), 30, "the commit's last frame")
        frames = self.frame_times(move_id, t_send)
        first = {}
        for phase, t in frames:
            first.setdefault(phase, t)
        ms = lambda t: None if t is None else round((t - t_send) / 1e6, 3)  # noqa: E731
        res = {"name": name, "mode": mode, "sync": sync, "gap": gap, "pad": pad, "filler": n_filler,
               "success": ans["success"], "code": ans.get("code"), "error": ans.get("error"),
               "warning": ans.get("warningCode"), "rows": len(rows), "writer_error": err,
               "rows_before_request": sum(1 for r in rows if r[2] < t_send),
               "answer_ms": ms(t_answer), "phases_ms": {p: ms(t) for p, t in first.items()},
               "filesSynced": ans.get("filesSynced"), "downtimeMs": ans.get("downtimeMs")}
        if ans["success"]:
            ids, check = db_ids(dst)
            res.update(self.classify(rows, ids, t_send, first, t_answer, ms))
            res["integrity"] = check
        else:
            res["phase_after"] = frames[-1][0] if frames else None
        res["_rows"], res["_t_send"], res["_dst"], res["_move_id"] = rows, t_send, dst, move_id
        return res

    @staticmethod
    def classify(rows, ids, t_send, first, t_answer, ms):
        """Every logged row missing at newPath, placed on the time line:
        before the request, before the `syncing` frame came (the pass began
        in between), during the pass, in `cleaning`, after the answer."""
        edges = [("before_request", t_send), ("before_syncing_frame", first.get("syncing")),
                 ("before_cleaning_frame", first.get("cleaning")), ("before_answer", t_answer)]
        missing = {}
        for i, _, done in rows:
            if i in ids:
                continue
            where = "after_answer"
            for label, edge in edges:
                if edge is not None and done < edge:
                    where = label
                    break
            missing.setdefault(where, []).append((i, ms(done)))
        logged = {r[0] for r in rows}
        return {"missing": missing, "n_missing": sum(len(v) for v in missing.values()),
                "unlogged_present": sorted(ids - logged)}

    def assert_rule(self, res):
        """The rule of item 11 on one run's result; a commit answered
        source_changed is committed again with the writer stopped and must
        then bring every row."""
        if res["success"]:
            self.assertEqual(res["integrity"], "ok", res)
            self.assertNotIn("before_request", res["missing"],
                             "rows committed before the commit request are missing at newPath: %s" % res)
            return
        self.assertEqual(res["code"], "source_changed", res)
        if res["phase_after"] != "ready":
            return  # ended: item 6 (one meaning of source_changed) is another item's business
        ans = self.manager.wait_answer(self.manager.request("server.move_commit", {"moveId": res["_move_id"]}),
                                       120)
        self.assertTrue(ans["success"], ans)
        ids, check = db_ids(res["_dst"])
        self.assertEqual(check, "ok")
        self.assertEqual({r[0] for r in res["_rows"]} - ids, set(),
                         "the writer was stopped: every row it committed must be at newPath")


class SqliteCommitTest(SqliteCommitCase):
    """A few runs of each kind, bounded (the issue's one observation in 37
    runs: see the module's docstring for what a commit that meets a
    running server promises)."""

    def check_runs(self, src_root, dst_root, tag, runs):
        for k, (mode, sync, gap) in enumerate(runs):
            with self.subTest(run=k, mode=mode, sync=sync, gap=gap):
                res = self.run_commit(src_root, dst_root, "%s%d" % (tag, k), mode=mode, sync=sync, gap=gap,
                                      seed=k)
                self.assert_rule(res)

    def test_running_writer_ext4_to_tmpfs(self):
        self.start_agent()
        self.check_runs(self.scratch.a, self.scratch.b, "t",
                        [("WAL", "NORMAL", 0.0), ("WAL", "FULL", 0.1), ("DELETE", "FULL", 0.1)])

    def test_running_writer_whole_second_ext4_to_xfs(self):
        src_root = self.mount_image("ext4-1s", os.path.join(self.scratch.a, "coarse"))
        dst_root = self.mount_image("xfs", os.path.join(self.scratch.b, "xfs"))
        self.start_agent()
        self.check_runs(src_root, dst_root, "x", [("WAL", "NORMAL", 0.002), ("DELETE", "FULL", 0.05)])


class SameSecondTest(SqliteCommitCase):
    """The row the rule is about, made deterministic on a source with
    whole-second timestamps: committed after the preparing copy read the
    database, in the same second and without changing a file's size (a WAL
    restarted after a checkpoint is overwritten in place; a rollback-journal
    database reuses its free pages), so neither sizes nor times show the
    change; then the writer is idle and the commit succeeds. That row must be
    at newPath: the preparing copy's record of a file read in the second of
    its last change is suspect (IDENT_SUSPECT) and the commit copies it
    again."""

    def attempt(self, src_root, dst_root, mode, n):
        """One attempt; whether the last row's change was invisible in the
        sizes and times of the database's files (the case that matters)."""
        name = "s%s%d" % (mode.lower(), n)
        src, dst = os.path.join(src_root, name), os.path.join(dst_root, name)
        db = os.path.join(src, DB_REL)
        written = db + "-wal" if mode == "WAL" else db
        os.makedirs(os.path.dirname(db))
        con = sqlite3.connect(db, isolation_level=None)
        try:
            self.assertEqual(con.execute("PRAGMA journal_mode=" + mode).fetchone()[0], mode.lower())
            con.execute("PRAGMA wal_autocheckpoint=0")
            con.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, pad BLOB)")
            for i in range(1, 41):
                con.execute("INSERT INTO ledger VALUES (?, ?)", (i, os.urandom(1500)))
            if mode == "WAL":
                # Everything into the database file; the next commit starts
                # the WAL again from its beginning, within its present size.
                con.execute("PRAGMA wal_checkpoint(RESTART)")
            else:
                # Free pages for the next rows: the file keeps its size.
                con.execute("DELETE FROM ledger WHERE id > 20")
            size = os.stat(written).st_size
            # Just after a second boundary, so that the row before the
            # preparing copy and the one after it can share one second.
            time.sleep(1.02 - time.time() % 1)
            con.execute("INSERT INTO ledger VALUES (41, ?)", (os.urandom(1500),))
            stamp = os.stat(written).st_mtime_ns
            self.assertEqual(stamp % 1_000_000_000, 0, "this filesystem should have whole-second timestamps")
            ready = self.manager.wait_answer(self.manager.request(
                "server.move_prepare", {"serverName": name, "oldPath": src, "newPath": dst, "moveId": name}), 60)
            self.assertTrue(ready["success"], ready)
            con.execute("INSERT INTO ledger VALUES (42, ?)", (os.urandom(1500),))
            st = os.stat(written)
            unseen = st.st_mtime_ns == stamp and st.st_size == size
            ans = self.manager.wait_answer(self.manager.request("server.move_commit", {"moveId": name}), 60)
        finally:
            con.close()
        self.assertTrue(ans["success"], ans)
        ids, check = db_ids(dst)
        self.assertEqual(check, "ok")
        want = set(range(1, 43 if mode == "WAL" else 21)) | {41, 42}
        self.assertEqual(want - ids, set(), "rows committed before the commit request are missing at newPath "
                         "(the last change %s in the sizes and times)" % ("invisible" if unseen else "visible"))
        self.assertEqual(ids, want)
        return unseen

    def check_mode(self, mode):
        src_root = self.mount_image("ext4-1s", os.path.join(self.scratch.a, "coarse"))
        dst_root = self.mount_image("xfs", os.path.join(self.scratch.b, "xfs"))
        self.start_agent()
        hits = 0
        for n in range(5):
            hits += self.attempt(src_root, dst_root, mode, n)
            if hits >= 2:
                break
        self.assertGreaterEqual(hits, 1, "the row after the preparing copy never landed unseen in its second")

    def test_wal_row_committed_in_the_second_of_the_preparing_copy(self):
        self.check_mode("WAL")

    def test_rollback_journal_row_committed_in_the_second_of_the_preparing_copy(self):
        self.check_mode("DELETE")


if __name__ == "__main__":
    unittest.main()
