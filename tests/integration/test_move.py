"""server.move_data end to end: the real agent, a real manager, real files."""
import json
import os
import stat
import subprocess
import unittest

from harness import AgentTestCase, dense_tree, make_tree, snapshot, tree_totals

PHASE_ORDER = ["queued", "calculating", "copying", "verifying", "cleaning", "complete", "error", "cancelled"]


class FrameChecks:
    def check_frames(self, frames, move_id, final_phase, first_phase="calculating"):
        """first_phase: "calculating" for a move that started at once (a free
        slot), "queued" only for one that had to wait."""
        self.assertTrue(frames, "no move.progress frames")
        for f in frames:
            self.assertEqual(f["moveId"], move_id)
            for key in ("serverName", "oldPath", "newPath", "phase", "method", "bytesTotal", "bytesCopied",
                        "filesTotal", "filesCopied", "percent", "phasePercent", "bytesPerSecond",
                        "elapsedMs", "seq", "startedAt"):
                self.assertIn(key, f)
            self.assertTrue(0 <= f["percent"] <= 100 and 0 <= f["phasePercent"] <= 100, f)
        phases = [f["phase"] for f in frames]
        self.assertEqual(phases[0], first_phase, "a move that can start at once never says queued")
        self.assertEqual(phases[-1], final_phase)
        self.assertEqual([p for p in phases if p in ("complete", "error", "cancelled")], [final_phase],
                         "exactly one terminal frame, and last")
        idx = [PHASE_ORDER.index(p) for p in phases]
        self.assertEqual(idx, sorted(idx), "phases out of order: %s" % phases)
        for a, b in zip(frames, frames[1:]):
            self.assertGreater(b["seq"], a["seq"])
            self.assertGreaterEqual(b["bytesCopied"], a["bytesCopied"])
            self.assertGreaterEqual(b["filesCopied"], a["filesCopied"])
            self.assertGreaterEqual(b["elapsedMs"], a["elapsedMs"])
            if a["phase"] == b["phase"]:
                # In-phase frames: at most 20 a second (sender-side clock).
                self.assertGreaterEqual(b["elapsedMs"] - a["elapsedMs"], 50, (a, b))
        term = frames[-1]
        self.assertIn("endedAt", term)
        if final_phase in ("error", "cancelled"):
            self.assertIn("code", term)
            self.assertIn("error", term)
        else:
            self.assertNotIn("code", term)


class MoveTest(AgentTestCase, FrameChecks):
    def test_cross_filesystem_move_is_exact(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc-1"), n_small=300, big_mib=40)
        before = snapshot(src)
        entries, size = tree_totals(before)
        dst = os.path.join(self.scratch.b, "servers", "mc-1")  # parent is missing: created
        ans = self.move("mc-1", src, dst, move_id="mv-cross-1")
        self.assertEqual(ans, {
            "success": True, "moveId": "mv-cross-1", "serverName": "mc-1", "oldPath": src,
            "newPath": dst, "method": "copy", "bytesCopied": size, "filesCopied": entries,
            "durationMs": ans["durationMs"]})
        self.assertIsInstance(ans["durationMs"], int)
        self.assertFalse(os.path.exists(src), "source still there")
        self.assertEqual(snapshot(dst), before, "destination differs from the source")

        frames = self.manager.frames("mv-cross-1")
        self.check_frames(frames, "mv-cross-1", "complete")
        self.assertEqual([p for p in ["calculating", "copying", "verifying", "cleaning", "complete"]],
                         sorted(set(f["phase"] for f in frames), key=PHASE_ORDER.index))
        last = frames[-1]
        self.assertEqual((last["filesTotal"], last["filesCopied"]), (entries, entries))
        self.assertEqual((last["bytesTotal"], last["bytesCopied"]), (size, size))
        self.assertEqual(last["percent"], 100)
        self.assertEqual(last["method"], "copy")
        # The terminal frame comes before the answer on the wire.
        msgs = [m["subject"] for m in self.manager.all_messages()]
        term_at = max(i for i, m in enumerate(self.manager.all_messages())
                      if m["subject"] == "move.progress" and m["data"]["phase"] == "complete")
        self.assertLess(term_at, max(i for i, s in enumerate(msgs) if s.startswith("_INBOX")))
        log = self.agent.log()
        self.assertIn("move started", log)
        self.assertIn("move ended", log)
        self.assertNotIn("it-token-0123456789", log)

    def test_big_file_streams_progress(self):
        self.tmpfs_size = "1g"
        self.scratch.close()
        from harness import Scratch
        self.scratch = Scratch("1g")
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "big"), 512)
        dst = os.path.join(self.scratch.b, "big")
        ans = self.move("big", src, dst, move_id="mv-big")
        self.assertTrue(ans["success"], ans)
        frames = self.manager.frames("mv-big")
        self.check_frames(frames, "mv-big", "complete")
        copying = [f for f in frames if f["phase"] == "copying"]
        self.assertGreaterEqual(len(copying), 3, "expected live frames while copying")
        mid = [f for f in copying if 0 < f["bytesCopied"] < f["bytesTotal"]]
        self.assertTrue(mid, "no frame inside the big file")
        self.assertTrue(any(f["bytesPerSecond"] > 0 for f in copying), "no copy rate reported")
        self.assertTrue(any("etaSeconds" in f for f in copying), "no ETA reported")
        self.assertTrue(all(abs(f["percent"] - 100.0 * f["bytesCopied"] / f["bytesTotal"]) < 0.01 for f in copying))
        self.assertTrue(any(f.get("currentFile") == "world.img" for f in copying))
        self.assertEqual(os.path.getsize(os.path.join(dst, "world.img")), 512 << 20)

    def test_same_filesystem_is_a_rename(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc-2"), n_small=50)
        before = snapshot(src)
        dst = os.path.join(self.scratch.a, "moved", "deeper", "mc-2")
        ans = self.move("mc-2", src, dst, move_id="mv-rename")
        self.assertTrue(ans["success"], ans)
        self.assertEqual((ans["method"], ans["bytesCopied"], ans["filesCopied"]), ("rename", 0, 0))
        self.assertEqual(snapshot(dst), before)
        self.assertFalse(os.path.exists(src))
        frames = self.manager.frames("mv-rename")
        self.check_frames(frames, "mv-rename", "complete")
        self.assertEqual([f["phase"] for f in frames], ["calculating", "complete"])
        self.assertTrue(all(f["method"] == "rename" for f in frames))
        self.assertEqual(frames[-1]["percent"], 100)

    def test_bind_mount_of_same_filesystem_falls_back_to_copy(self):
        # Same st_dev, different mounts: rename(2) says EXDEV and the move copies.
        shadow = os.path.join(self.scratch.base, "shadow")
        bound = os.path.join(self.scratch.a, "bound")
        os.mkdir(shadow)
        os.mkdir(bound)
        self.scratch.mount("--bind", shadow, at=bound)
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc-b"), n_small=40, big_mib=2)
        before = snapshot(src)
        entries, size = tree_totals(before)
        dst = os.path.join(bound, "new", "mc-b")
        ans = self.move("mc-b", src, dst, move_id="mv-bind")
        self.assertTrue(ans["success"], ans)
        # The method was announced before the rename was tried, and never changes.
        self.assertEqual((ans["method"], ans["bytesCopied"], ans["filesCopied"]), ("rename", size, entries))
        self.assertFalse(os.path.exists(src))
        self.assertEqual(snapshot(dst), before)
        self.assertEqual(snapshot(os.path.join(shadow, "new", "mc-b")), before)
        frames = self.manager.frames("mv-bind")
        self.check_frames(frames, "mv-bind", "complete")
        self.assertIn("copying", [f["phase"] for f in frames])
        self.assertIn("copying instead", self.agent.log())

    def test_into_existing_empty_directory(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc-3"), n_small=20)
        before = snapshot(src)
        dst = os.path.join(self.scratch.b, "target")
        os.makedirs(os.path.join(dst, "lost+found"))  # an empty lost+found counts as empty
        ans = self.move("mc-3", src, dst)
        self.assertTrue(ans["success"], ans)
        self.assertTrue(ans["moveId"])  # generated
        after = snapshot(dst)
        self.assertEqual(after.pop("lost+found")[0], "d")
        self.assertEqual(after, before)

    def test_idempotent_retry(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc-4"), n_small=5)
        dst = os.path.join(self.scratch.b, "mc-4")
        first = self.move("mc-4", src, dst, move_id="mv-retry")
        n_frames = len(self.manager.frames())
        again = self.move("mc-4", src, dst, move_id="mv-retry")
        self.assertEqual(again, first)
        self.assertEqual(len(self.manager.frames()), n_frames, "a retry must not run the move again")


class FailingMoveTest(AgentTestCase, FrameChecks):
    tmpfs_size = "8m"

    def assert_untouched(self, src, before, dst):
        self.assertEqual(snapshot(src), before, "source changed by a failed move")
        self.assertFalse(os.path.lexists(dst), "partial destination left behind")

    def test_full_disk_rolls_back(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc-full"), n_small=100, big_mib=20)
        before = snapshot(src)
        dst = os.path.join(self.scratch.b, "nested", "mc-full")
        ans = self.move("mc-full", src, dst, move_id="mv-full")
        self.assertFalse(ans["success"])
        self.assertEqual(ans["code"], "no_space", ans)
        self.assertEqual(ans["moveId"], "mv-full")
        self.assertIn(self.scratch.b, ans["error"])
        self.assert_untouched(src, before, dst)
        self.assertEqual(os.listdir(self.scratch.b), [], "created parents left behind")
        frames = self.manager.frames("mv-full")
        self.check_frames(frames, "mv-full", "error")
        self.assertEqual(frames[-1]["code"], "no_space")

    def test_fifo_is_recreated_not_read(self):
        # Opening a fifo for reading would hang the copy: it is made anew.
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc-fifo"), n_small=10)
        os.mkfifo(os.path.join(src, "plugins", "console.pipe"), 0o620)
        before = snapshot(src)
        dst = os.path.join(self.scratch.b, "mc-fifo")
        ans = self.move("mc-fifo", src, dst, timeout=30)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(snapshot(dst), before)
        self.assertTrue(stat.S_ISFIFO(os.lstat(os.path.join(dst, "plugins", "console.pipe")).st_mode))

    def test_unreadable_file_as_unprivileged_agent(self):
        # The agent runs as nobody; one file in the tree is root's and private.
        for d in (self.scratch.a, self.scratch.b, self.scratch.state):
            os.chown(d, 65534, 65534)
        src = make_tree(os.path.join(self.scratch.a, "mc-perm"), n_small=30)
        subprocess.run(["chown", "-R", "nobody:nogroup", src], check=True)
        secret = os.path.join(src, "world", "secret.dat")
        with open(secret, "w") as f:
            f.write("root only\n")
        os.chmod(secret, 0o600)
        before = snapshot(src)
        self.start_agent(user="nobody")
        dst = os.path.join(self.scratch.b, "mc-perm")
        ans = self.move("mc-perm", src, dst)
        self.assertEqual(ans["code"], "permission_denied", ans)
        self.assertIn("world/secret.dat", ans["error"])
        self.assert_untouched(src, before, dst)

    def test_unwritable_destination_as_unprivileged_agent(self):
        for d in (self.scratch.a, self.scratch.state):
            os.chown(d, 65534, 65534)
        src = make_tree(os.path.join(self.scratch.a, "mc-ro"), n_small=10)
        subprocess.run(["chown", "-R", "nobody:nogroup", src], check=True)
        before = snapshot(src)
        locked = os.path.join(self.scratch.b, "locked")
        os.mkdir(locked, 0o755)  # root's: nobody cannot create inside
        self.start_agent(user="nobody")
        dst = os.path.join(locked, "mc-ro")
        ans = self.move("mc-ro", src, dst)
        self.assertEqual(ans["code"], "permission_denied", ans)
        self.assert_untouched(src, before, dst)
        self.assertEqual(os.listdir(locked), [])


if __name__ == "__main__":
    unittest.main()


class SharedDiskTest(AgentTestCase, FrameChecks):
    tmpfs_size = "160m"

    def test_space_promised_to_a_running_move_is_not_counted_twice(self):
        # Each tree fits on the disk alone, not both: the second move must fail
        # early with no_space although the first has written little so far.
        self.start_agent()
        a = dense_tree(os.path.join(self.scratch.a, "a"), 100)
        b = dense_tree(os.path.join(self.scratch.a, "b"), 100)
        before_b = snapshot(b, content=False)
        # The first is held to 25 MiB/s (4 s) so that it is still copying
        # when the second asks, however fast the machine.
        first = self.manager.request("server.move_data", {"serverName": "a", "oldPath": a,
                                                          "newPath": os.path.join(self.scratch.b, "a"),
                                                          "moveId": "mv-a", "maxRate": 25 << 20})
        self.manager.wait_for(lambda: any(f["phase"] == "copying" for f in self.manager.frames("mv-a")),
                              20, "the first move copying")
        with self.paused_agent():
            second = self.manager.request("server.move_data", {"serverName": "b", "oldPath": b,
                                                               "newPath": os.path.join(self.scratch.b, "b"),
                                                               "moveId": "mv-b"})
        ans = self.manager.wait_answer(second, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "no_space"), ans)
        self.assertIn("other moves", ans["error"])
        self.check_frames(self.manager.frames("mv-b"), "mv-b", "error")
        self.assertNotIn("copying", [f["phase"] for f in self.manager.frames("mv-b")])
        self.assertEqual(snapshot(b, content=False), before_b)
        self.assertTrue(self.manager.wait_answer(first, 60)["success"])
        self.assertEqual(os.listdir(self.scratch.b), ["a"])

