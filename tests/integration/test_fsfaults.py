"""Faults from inside the filesystem (issue 16, item 3), through crashfs
(tests/crash/crashfs.py): EIO reading a chosen file, ENOSPC after N bytes of
writes, EACCES on one directory, a read that hangs (stall_timeout), a syncfs
that fails with EIO. Each move ends with its code, the source as it was and
no partial copy; then the power goes (everything not durable is forgotten)
and that still holds: the rollback was made durable before the answer.
test_stuck.py covers the same errors' wording (faultfs); this file covers the
outcome on disk, before and after a power cut."""
import os
import sys

from harness import AgentTestCase, wait_until

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crash"))
from crashfs import CrashFS, build_shim, new_clock, shim_env  # noqa: E402
from trees import diff, make_world, snapshot  # noqa: E402


class FsFaultTest(AgentTestCase):
    agent_extra = {"stall_timeout": "10s"}

    def setUp(self):
        super().setUp()
        base = self.scratch.base
        self.clock = new_clock(os.path.join(base, "clock"))
        self.src_fs = CrashFS(os.path.join(base, "src-backing"), os.path.join(base, "src"), self.clock)
        self.dst_fs = CrashFS(os.path.join(base, "dst-backing"), os.path.join(base, "dst"), self.clock)
        close = self.scratch.close

        def close_all():
            for fs in (self.src_fs, self.dst_fs):
                fs.stop()
            close()
        self.scratch.close = close_all
        try:
            self.start_world()
        except BaseException:
            # tearDown does not run after a failed setUp: nothing may stay mounted.
            if self.agent is not None and self.agent.proc.poll() is None:
                self.agent.proc.kill()
                self.agent.proc.wait()
            self.manager.stop()
            self.scratch.close()
            raise

    def start_world(self):
        base = self.scratch.base
        self.src_fs.start()
        self.dst_fs.start()
        self.src = make_world(os.path.join(self.src_fs.mountpoint, "srv", "world"), seed=7)
        self.dst = os.path.join(self.dst_fs.mountpoint, "new", "world")
        self.before = snapshot(self.src)
        for fs in (self.src_fs, self.dst_fs):
            fs.command("sync")
        self.start_agent(env=shim_env(build_shim(base)), extra=self.agent_extra,
                         roots=[self.src_fs.mountpoint, self.dst_fs.mountpoint])

    def tearDown(self):
        for fs in (self.src_fs, self.dst_fs):
            try:
                fs.command("clear")
            except (OSError, AssertionError):
                pass
        super().tearDown()

    def assert_as_it_was(self, ans, code):
        self.assertFalse(ans["success"], ans)
        self.assertEqual(ans["code"], code, ans)
        self.assertIsNone(diff(self.before, snapshot(self.src)), "the source changed")
        self.assertFalse(os.path.lexists(self.dst), "a partial copy is left")
        self.assertFalse(os.path.lexists(os.path.dirname(self.dst)), "a parent made for it is left")

    def power_cut(self):
        """The agent stops, then the power goes: only what was durable stays."""
        self.assertEqual(self.agent.stop(), 0)
        for fs in (self.src_fs, self.dst_fs):
            fs.command("clear")
        self.src_fs.command("freeze")
        for fs in (self.src_fs, self.dst_fs):
            fs.command("restore")
        self.src_fs.command("thaw")

    def fails(self, code, contains=None):
        ans = self.move("world", self.src, self.dst, move_id="mv-fault", timeout=60)
        for fs in (self.src_fs, self.dst_fs):
            fs.command("clear")  # the disk is well again: the test's own reads work
        self.assert_as_it_was(ans, code)
        if contains:
            self.assertIn(contains, ans["error"])
        self.power_cut()
        self.assert_as_it_was(ans, code)
        return ans

    def test_eio_reading_a_file(self):
        self.src_fs.fail("read", "srv/world/region/r.3.mca", "EIO")
        self.fails("io_error", "read %s/region/r.3.mca" % self.src)

    def test_enospc_after_some_bytes(self):
        self.dst_fs.command("enospc 20000")
        self.fails("no_space")

    def test_eacces_on_one_directory(self):
        self.src_fs.fail("open", "srv/world/plugins/conf", "EACCES")
        self.fails("permission_denied", "plugins/conf")

    def test_syncfs_eio_means_the_copy_is_not_trusted(self):
        self.dst_fs.fail("syncfs", "*", "EIO")
        self.fails("io_error", "sync")

    def test_rename_into_a_parent_that_cannot_be_made_durable(self):
        # A rename (one filesystem) into a newPath whose parent the move
        # makes: that parent must be durable before the rename (issue 20).
        # Its parent's fsync fails: nothing is renamed, the parent made for
        # it goes, and a power cut changes nothing of that.
        self.dst = os.path.join(self.src_fs.mountpoint, "moved", "world")
        self.src_fs.fail("fsyncdir", "/", "EIO")  # the mount's root
        self.fails("io_error", "sync the new directory %s" % os.path.dirname(self.dst))

    def test_hanging_read_ends_with_timeout(self):
        self.src_fs.hang("read", "srv/world/region/r.2.mca")
        reply = self.manager.request("server.move_data", {"serverName": "world", "oldPath": self.src,
                                                          "newPath": self.dst, "moveId": "mv-hang"})
        ans = self.manager.wait_answer(reply, 40)
        self.assertEqual((ans["success"], ans["code"]), (False, "timeout"), ans)
        self.assertEqual(int(self.src_fs.command("hung")), 1)
        self.src_fs.command("release")  # the disk answers again: the rollback runs
        wait_until(lambda: not os.path.lexists(os.path.dirname(self.dst)), 30, "the partial copy removed")
        self.assert_as_it_was(ans, "timeout")
        self.power_cut()
        self.assert_as_it_was(ans, "timeout")


class FsyncFaultTest(FsFaultTest):
    """verify = checksum reads every file of the copy back after an fsync:
    an fsync that fails means the copy cannot be trusted, whatever a later
    read or fsync says (the kernel may have dropped the dirty pages)."""
    agent_extra = {"stall_timeout": "10s", "verify": "checksum"}

    def test_fsync_eio_fails_the_move(self):
        self.dst_fs.fail("fsync", "new/world/region/r.4.mca", "EIO")
        self.fails("io_error", "r.4.mca")

    # The inherited cases run again with checksum verification.
