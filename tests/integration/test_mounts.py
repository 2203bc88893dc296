"""Mounts inside a move's trees and sources with coarse timestamps, against the
real agent: a bind mount inside the source (same filesystem, same st_dev) is
refused before anything is copied and never emptied; a rollback never
removes through a mount; a bind-mount alias of a running move's tree is
`busy`; a same-size rewrite during the copy on a filesystem with whole-second
timestamps is `source_changed`, not a torn copy answered success."""
import os
import shutil
import signal
import subprocess
import time

from harness import AgentTestCase, dense_tree, make_tree, snapshot, wait_until


class MountTestCase(AgentTestCase):
    def stopped(self):
        with open("/proc/%d/stat" % self.agent.proc.pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"

    def stop_inside(self, partial, size, timeout=30):
        """SIGSTOPs the agent while `partial` (a file of the copy) is
        part-written: lets it run in short steps until that file's copy is
        under way. The caller sends SIGCONT."""
        deadline = time.monotonic() + timeout
        pid = self.agent.proc.pid
        while time.monotonic() < deadline:
            os.kill(pid, signal.SIGSTOP)
            wait_until(self.stopped, 10, "agent stopped")
            done = os.path.getsize(partial) if os.path.exists(partial) else 0
            if 0 < done < size:
                return
            if done >= size:
                os.kill(pid, signal.SIGCONT)
                self.fail("the copy of %s ended before it could be stopped inside" % partial)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.001)
        self.fail("could not stop the agent inside the copy of %s" % partial)


class BindMountInSourceTest(MountTestCase):
    def setUp(self):
        super().setUp()
        # A shared plugins directory outside every root, on the same
        # filesystem as the source: a common hosting layout.
        self.shared = os.path.join(self.scratch.base, "shared-plugins")
        make_tree(self.shared, n_small=20)
        with open(os.path.join(self.shared, "license.dat"), "w") as f:
            f.write("a shared licence file\n")
        self.shared_before = snapshot(self.shared)

    def check_refused(self, src, dst, move_id, where):
        ans = self.move("mc", src, dst, move_id=move_id)
        self.assertEqual((ans["success"], ans["code"]), (False, "io_error"), ans)
        self.assertIn(os.path.join(src, where), ans["error"])
        self.assertIn("mount", ans["error"])
        phases = [f["phase"] for f in self.manager.frames(move_id)]
        self.assertNotIn("copying", phases, "refused only after copying began")
        self.assertEqual(phases[-1], "error")
        self.assertEqual(snapshot(self.shared), self.shared_before, "the bind-mounted tree was touched")
        self.assertFalse(os.path.lexists(dst), "the partial copy was left")

    def test_bind_mounted_directory_is_refused_before_copying(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=30)
        os.makedirs(os.path.join(src, "plugins", "shared"))
        self.scratch.mount("--bind", self.shared, at=os.path.join(src, "plugins", "shared"))
        self.assertEqual(os.stat(src).st_dev, os.stat(os.path.join(src, "plugins", "shared")).st_dev)
        before = snapshot(src)
        self.check_refused(src, os.path.join(self.scratch.b, "mc"), "mv-bind-dir", "plugins/shared")
        self.assertEqual(snapshot(src), before)

    def test_bind_mounted_file_is_refused_before_copying(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=30)
        target = os.path.join(src, "plugins", "license.dat")
        with open(target, "w") as f:
            f.write("placeholder\n")
        self.scratch.mount("--bind", os.path.join(self.shared, "license.dat"), at=target)
        before = snapshot(src)
        self.check_refused(src, os.path.join(self.scratch.b, "mc"), "mv-bind-file", "plugins/license.dat")
        self.assertEqual(snapshot(src), before)

    def test_rollback_never_removes_through_a_mount(self):
        # A bind mount that appears inside the partial copy while the move
        # runs (same filesystem as the copy): the rollback leaves it alone.
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        keep = make_tree(os.path.join(self.scratch.b, "keep"), n_small=20)
        keep_before = snapshot(keep)
        dst = os.path.join(self.scratch.b, "mc")
        reply = self.manager.request("server.move_data", {"serverName": "mc", "oldPath": src, "newPath": dst,
                                                          "moveId": "mv-rb"})
        self.stop_inside(os.path.join(dst, "world.img"), 200 << 20)
        try:
            os.mkdir(os.path.join(dst, "bound"))
            self.scratch.mount("--bind", keep, at=os.path.join(dst, "bound"))
            cancel = self.manager.request("server.move_cancel", {"moveId": "mv-rb"})
        finally:
            os.kill(self.agent.proc.pid, signal.SIGCONT)
        self.assertTrue(self.manager.wait_answer(cancel, 20)["success"])
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual(ans["code"], "cancelled", ans)
        self.assertEqual(snapshot(keep), keep_before, "the rollback removed files through a mount")
        self.assertEqual(sorted(os.listdir(dst)), ["bound"], "the rest of the copy should be gone")


class BusyAliasTest(MountTestCase):
    def test_bind_mount_alias_of_a_running_move_is_busy(self):
        a, b = self.scratch.a, self.scratch.b
        self.start_agent()
        outer = os.path.join(a, "outer")
        big = dense_tree(os.path.join(outer, "big"), 200)
        os.mkdir(os.path.join(big, "sub"))
        other = make_tree(os.path.join(a, "other"), n_small=5)
        dst = os.path.join(b, "big")
        # Aliases: the source itself, a directory containing it, and (once the
        # move made it) its destination.
        for name, what in (("alias-big", big), ("alias-outer", outer)):
            os.mkdir(os.path.join(a, name))
            self.scratch.mount("--bind", what, at=os.path.join(a, name))
        first = self.manager.request("server.move_data", {"serverName": "big-1", "oldPath": big, "newPath": dst,
                                                          "moveId": "mv-long"})
        self.stop_inside(os.path.join(dst, "world.img"), 200 << 20)
        try:
            os.mkdir(os.path.join(b, "alias-dst"))
            self.scratch.mount("--bind", dst, at=os.path.join(b, "alias-dst"))
            cases = [
                # the running move's source, under another name
                {"serverName": "s1", "oldPath": os.path.join(a, "alias-big"), "newPath": os.path.join(b, "y1")},
                # inside it
                {"serverName": "s2", "oldPath": os.path.join(a, "alias-big", "sub"),
                 "newPath": os.path.join(b, "y2")},
                # containing it
                {"serverName": "s3", "oldPath": os.path.join(a, "alias-outer"), "newPath": os.path.join(b, "y3")},
                # a destination inside the running move's destination
                {"serverName": "s4", "oldPath": other, "newPath": os.path.join(b, "alias-dst", "x")},
            ]
            replies = [self.manager.request("server.move_data", d) for d in cases]
        finally:
            os.kill(self.agent.proc.pid, signal.SIGCONT)
        for reply, data in zip(replies, cases):
            ans = self.manager.wait_answer(reply, 20)
            self.assertEqual((ans["success"], ans.get("code")), (False, "busy"), (data, ans))
            self.assertIn("mv-long", ans["error"])
        # Unmount the destination alias before the move ends: its cleaning
        # and answer are the long move's own business.
        subprocess.run(["umount", os.path.join(b, "alias-dst")], check=True)
        self.scratch.extra_mounts.remove(os.path.join(b, "alias-dst"))
        ans = self.manager.wait_answer(first, 120)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(sorted(os.listdir(dst)), ["level.dat", "sub", "world.img"])
        for name in ("y1", "y2", "y3"):
            self.assertFalse(os.path.lexists(os.path.join(b, name)))


class CoarseTimestampsTest(MountTestCase):
    """The source on ext4 made with 128-byte inodes: whole-second timestamps."""

    size_mib = 160

    def setUp(self):
        super().setUp()
        img = os.path.join(self.scratch.base, "coarse.img")
        with open(img, "wb") as f:
            f.truncate(512 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-I", "128", img], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.coarse = os.path.join(self.scratch.a, "coarse")
        os.mkdir(self.coarse)
        self.scratch.mount("-o", "loop", img, at=self.coarse)

    def torn_copy_attempt(self, n):
        """One move whose big file is rewritten in place (same size, new
        content) while it is half copied, in the very second of its last
        change. Returns (answer, rewritten in the same second?)."""
        src = dense_tree(os.path.join(self.coarse, "mc%d" % n), self.size_mib)
        dst = os.path.join(self.scratch.b, "mc%d" % n)
        world = os.path.join(src, "world.img")
        # Start just after a second boundary, so that the last change before
        # the copy and the rewrite during it can share one second.
        time.sleep(1.02 - time.time() % 1)
        with open(world, "r+b") as f:
            f.write(b"\0")
        changed = os.stat(world).st_ctime_ns
        self.assertEqual(changed % 1_000_000_000, 0, "this filesystem should have whole-second timestamps")
        reply = self.manager.request("server.move_data", {"serverName": "mc%d" % n, "oldPath": src,
                                                          "newPath": dst, "moveId": "mv-torn%d" % n})
        self.stop_inside(os.path.join(dst, "world.img"), self.size_mib << 20)
        try:
            with open(world, "r+b") as f:  # the game server saves its world
                f.write(b"\x01" * (1 << 20))
            same_second = os.stat(world).st_ctime_ns == changed
        finally:
            os.kill(self.agent.proc.pid, signal.SIGCONT)
        return self.manager.wait_answer(reply, 120), same_second, src, dst

    def check_torn_copy_is_detected(self):
        self.start_agent(extra={"verify": self.verify})
        hits = 0
        for n in range(6):
            ans, same_second, src, dst = self.torn_copy_attempt(n)
            self.assertEqual((ans["success"], ans.get("code")), (False, "source_changed"), ans)
            self.assertIn("world.img", ans["error"])
            self.assertFalse(os.path.lexists(dst), "the partial copy was left")
            with open(os.path.join(src, "world.img"), "rb") as f:
                self.assertEqual(f.read(1 << 20), b"\x01" * (1 << 20), "the source lost the rewrite")
            self.assertEqual(os.path.getsize(os.path.join(src, "world.img")), self.size_mib << 20)
            shutil.rmtree(src)  # room for the next attempt
            hits += same_second
            if hits >= 2:
                break
        self.assertGreaterEqual(hits, 1, "the rewrite never landed in the second of the last change")

    verify = "metadata"

    def test_same_size_rewrite_is_source_changed(self):
        self.check_torn_copy_is_detected()


class CoarseTimestampsChecksumTest(CoarseTimestampsTest):
    verify = "checksum"


if __name__ == "__main__":
    import unittest
    unittest.main()
