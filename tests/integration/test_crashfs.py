"""The forgetful test filesystem itself (tests/crash/crashfs.py): a power cut
keeps exactly what its rules say is durable, so the crash test's "held" means
something. Each case writes through the mount, cuts the power, and looks."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

from harness import require_root

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crash"))
from crashfs import CrashFS, build_shim, new_clock  # noqa: E402


class CrashFSTest(unittest.TestCase):
    def setUp(self):
        require_root()
        self.base = tempfile.mkdtemp(prefix="hostagent-crashfs-", dir="/var/tmp")
        self.clock = new_clock(os.path.join(self.base, "clock"))
        self.fs = CrashFS(os.path.join(self.base, "backing"), os.path.join(self.base, "m"), self.clock)
        try:
            self.fs.start()
            self.m = self.fs.mountpoint
            os.mkdir(os.path.join(self.m, "d"))
            with open(os.path.join(self.m, "d", "old"), "wb") as f:
                f.write(b"old content")
            self.fs.command("sync")
        except BaseException:
            self.tearDown()  # not run after a failed setUp
            raise

    def tearDown(self):
        self.fs.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", self.base], check=False)

    def p(self, *names):
        return os.path.join(self.m, *names)

    def cut(self):
        self.fs.command("freeze")
        self.fs.command("restore")
        self.fs.command("thaw")

    def fsync_dir(self, path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def test_unsynced_create_and_write_are_forgotten(self):
        with open(self.p("d", "new"), "wb") as f:
            f.write(b"x" * 100)
        with open(self.p("d", "old"), "ab") as f:
            f.write(b" more")
        self.cut()
        self.assertEqual(os.listdir(self.p("d")), ["old"])
        with open(self.p("d", "old"), "rb") as f:
            self.assertEqual(f.read(), b"old content")

    def test_fsync_keeps_data_and_its_own_entry(self):
        with open(self.p("d", "new"), "wb") as f:
            f.write(b"kept")
            f.flush()
            os.fsync(f.fileno())
            f.write(b" lost")
        self.cut()
        with open(self.p("d", "new"), "rb") as f:
            self.assertEqual(f.read(), b"kept")

    def test_directory_fsync_keeps_entries_not_data(self):
        with open(self.p("d", "new"), "wb") as f:
            f.write(b"unsynced data")
        os.unlink(self.p("d", "old"))
        self.fsync_dir(self.p("d"))
        self.cut()
        self.assertEqual(os.listdir(self.p("d")), ["new"])
        self.assertEqual(os.path.getsize(self.p("d", "new")), 0)

    def test_rename_needs_a_directory_fsync(self):
        os.mkdir(self.p("e"))
        self.fsync_dir(self.m)
        os.rename(self.p("d", "old"), self.p("e", "moved"))
        self.cut()
        self.assertEqual((os.listdir(self.p("d")), os.listdir(self.p("e"))), (["old"], []))
        os.rename(self.p("d", "old"), self.p("e", "moved"))
        self.fsync_dir(self.p("e"))  # one side's fsync: the whole rename
        self.cut()
        self.assertEqual((os.listdir(self.p("d")), os.listdir(self.p("e"))), ([], ["moved"]))

    def test_rename_into_a_directory_not_yet_durable_loses_both_names(self):
        # The rule the agent orders its renames by (docs/design.md, "Power
        # cuts"): a directory made and renamed into before it is durable.
        os.mkdir(self.p("e"))
        os.rename(self.p("d", "old"), self.p("e", "moved"))
        self.fsync_dir(self.p("d"))  # the rename: the old name's removal is durable
        self.fsync_dir(self.p("e"))  # e's entries, not e's own entry in the root
        self.cut()
        self.assertEqual((os.listdir(self.p("d")), os.path.exists(self.p("e"))), ([], False))

    def test_oplog_lists_the_mutating_operations(self):
        self.fs.command("thaw")  # the log starts at the thaw
        os.mkdir(self.p("e"))
        os.rename(self.p("d", "old"), self.p("e", "moved"))
        os.stat(self.p("e", "moved"))  # not mutating: not logged
        log = json.loads(self.fs.command("oplog"))
        self.assertEqual(log, [[1, "mkdir", "e"], [2, "rename", "d/old"]])

    def test_syncfs_through_the_shim_keeps_everything(self):
        os.makedirs(self.p("a", "b"))
        with open(self.p("a", "b", "f"), "wb") as f:
            f.write(b"synced by syncfs")
        os.setxattr(self.p("a", "b", "f"), "user.k", b"v")
        os.utime(self.p("a"), ns=(5, 1600000000_000000007))
        shim = build_shim(self.base)
        subprocess.run(["/usr/bin/python3", "-c", "import ctypes, os; fd = os.open(%r, os.O_RDONLY); "
                        "assert ctypes.CDLL(None).syncfs(fd) == 0" % self.m],
                       env=dict(os.environ, LD_PRELOAD=shim), check=True)
        self.cut()
        with open(self.p("a", "b", "f"), "rb") as f:
            self.assertEqual(f.read(), b"synced by syncfs")
        self.assertEqual(os.getxattr(self.p("a", "b", "f"), "user.k"), b"v")
        self.assertEqual(os.stat(self.p("a")).st_mtime_ns, 1600000000_000000007)

    def test_inode_numbers_survive_the_cut(self):
        before = os.stat(self.p("d")).st_ino, os.stat(self.p("d", "old")).st_ino
        self.cut()
        self.assertEqual((os.stat(self.p("d")).st_ino, os.stat(self.p("d", "old")).st_ino), before)
