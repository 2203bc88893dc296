"""A prepared move's commit and sparse files (issue 20, item 8): the final
pass brings a large file up to date block by block without reading the
source's holes (SEEK_DATA/SEEK_HOLE; a hole hashes as zeros), punches a hole
in the copy where the source's data became one, keeps the copy sparse, and
the progress frames never show more bytes copied than the tree holds (the
pass's bytes are work, not more tree), while stall_timeout still sees a long
pass make progress.

The source lives on the disk's filesystem (ext4 under /var/tmp), the copy on
a tmpfs: a 16 GiB file with a few MiB of data costs neither space nor time
to make. What the commit read is taken from the agent's /proc/<pid>/io
(rchar: every byte its threads got from read/pread), not from a clock."""
import errno
import hashlib
import os
import stat
import subprocess

from harness import AgentTestCase, snapshot
from test_stuck import FaultTestCase

HUGE = 16 << 30  # apparent size of the sparse file
MIB = 1 << 20
PAGE = 4096


def sparse_file(path, size, regions):
    """A file of `size` bytes whose only data are `regions`: (offset, bytes)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in regions:
            os.pwrite(f.fileno(), data, off)


def punch(path, off, length):
    subprocess.run(["fallocate", "--punch-hole", "--offset", str(off), "--length", str(length), path],
                   check=True)


def content_digest(path):
    """A digest of a file's content that reads only its data regions: each
    page that is not all zeros goes in with its offset, so two files with the
    same bytes digest the same whatever their holes (a 16 GiB sparse file is
    digested in milliseconds)."""
    h = hashlib.sha256()
    size = os.stat(path).st_size
    h.update(b"%d;" % size)
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while off < size:
            try:
                data = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break  # a hole to the end
                raise
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            pos = data - data % PAGE
            while pos < hole:
                chunk = os.pread(fd, min(4 * MIB, hole - pos), pos)
                if not chunk:
                    break
                for i in range(0, len(chunk), PAGE):
                    page = chunk[i:i + PAGE]
                    if page.count(0) != len(page):
                        h.update(b"%d:" % (pos + i))
                        h.update(page)
                pos += len(chunk)
            off = hole
    finally:
        os.close(fd)
    return h.hexdigest()


def tree_state(root):
    """snapshot() without its content hashes, plus content_digest of every file."""
    snap = snapshot(root, content=False)
    digests = {}
    for rel, v in snap.items():
        if v[0] == "f":
            digests[rel] = content_digest(os.path.join(root, rel))
    return snap, digests


def rchar(pid):
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/%d/io" % pid)


def is_hole(path, off, length):
    """Whether [off, off + length) of the file holds no data (a hole)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            return os.lseek(fd, off, os.SEEK_DATA) >= off + length
        except OSError as e:
            if e.errno == errno.ENXIO:
                return True
            raise
    finally:
        os.close(fd)


class SparseCommitTest(AgentTestCase):
    tmpfs_size = "512m"

    def prepare(self, server, src, dst, move_id):
        return self.manager.request("server.move_prepare", {"serverName": server, "oldPath": src,
                                                             "newPath": dst, "moveId": move_id})

    def commit_reading(self, move_id):
        """Commits; returns the answer and the bytes the agent read meanwhile."""
        pid = self.agent.proc.pid
        before = rchar(pid)
        ans = self.manager.wait_answer(self.manager.request("server.move_commit", {"moveId": move_id}), 300)
        return ans, rchar(pid) - before

    def assert_counts_honest(self, move_id, tree_bytes):
        """Every frame: bytesCopied <= bytesTotal; at the end both are the tree's size."""
        frames = self.manager.frames(move_id)
        self.assertIn("syncing", [f["phase"] for f in frames])
        for f in frames:
            self.assertLessEqual(f["bytesCopied"], f["bytesTotal"],
                                 "a %s frame shows more bytes copied than the tree holds: %s" % (f["phase"], f))
        last = frames[-1]
        self.assertEqual(last["phase"], "complete", last)
        self.assertEqual((last["bytesCopied"], last["bytesTotal"]), (tree_bytes, tree_bytes), last)

    def test_a_small_change_in_a_huge_sparse_file_reads_only_its_data(self):
        self.start_agent()
        src = os.path.join(self.scratch.a, "mc")
        dst = os.path.join(self.scratch.b, "mc")
        os.makedirs(os.path.join(src, "world"))
        with open(os.path.join(src, "level.dat"), "wb") as f:
            f.write(os.urandom(5000))
        big = os.path.join(src, "world", "huge.img")
        sparse_file(big, HUGE, [(0, os.urandom(MIB)), (5 << 30, os.urandom(MIB)),
                                (HUGE - MIB, os.urandom(MIB))])
        self.assertLess(os.stat(big).st_blocks * 512, 16 * MIB, "the test file must be sparse")
        ready = self.manager.wait_answer(self.prepare("mc", src, dst, "sp-1"), 300)
        self.assertTrue(ready["success"], ready)
        # 4 KiB rewritten in place, inside the data in the middle.
        fd = os.open(big, os.O_WRONLY)
        os.pwrite(fd, os.urandom(4096), (5 << 30) + 8192)
        os.close(fd)
        before = tree_state(src)
        ans, read = self.commit_reading("sp-1")
        self.assertTrue(ans["success"], ans)
        # The data of the file is 3 MiB (and the record of its block hashes
        # 1 MiB): a commit that reads its holes reads 16 GiB.
        self.assertLess(read, 64 * MIB, "the commit read %d bytes of a file with 3 MiB of data" % read)
        # (level.dat too when it was written in the clock granule the
        # preparation read it in: then it is copied again.)
        self.assertIn(ans["filesSynced"], (1, 2), ans)
        self.assertLessEqual(ans["bytesSynced"], (128 << 10) + 5000, "one block of the file was written: %s" % ans)
        self.assertEqual(tree_state(dst), before, "the copy differs from the source")
        copy = os.path.join(dst, "world", "huge.img")
        self.assertLess(os.stat(copy).st_blocks * 512, 16 * MIB, "the copy's holes are holes")
        self.assertTrue(is_hole(copy, MIB, (5 << 30) - MIB))
        self.assert_counts_honest("sp-1", HUGE + 5000)

    def test_a_hole_that_became_data_and_data_that_became_a_hole(self):
        """Between ready and the commit: a data region of the source is
        punched out, data is written into a hole, and the file grows by a
        hole. The copy ends byte-identical, with a hole where the source now
        has one (punched, not zeros written), and the commit reads only data."""
        self.start_agent()
        src = os.path.join(self.scratch.a, "mc")
        dst = os.path.join(self.scratch.b, "mc")
        os.makedirs(src)
        big = os.path.join(src, "region.img")
        gone_at, gone_len = 2 << 30, 4 * MIB   # data, then a hole
        half_at = 6 << 30                      # 2 MiB of data whose second half becomes a hole
        new_at = (9 << 30) + 12345             # a hole, then data (not block-aligned)
        sparse_file(big, HUGE, [(0, os.urandom(MIB)), (gone_at, os.urandom(gone_len)),
                                (half_at, os.urandom(2 * MIB))])
        ready = self.manager.wait_answer(self.prepare("mc", src, dst, "sp-2"), 300)
        self.assertTrue(ready["success"], ready)
        copy = os.path.join(dst, "region.img")
        self.assertFalse(is_hole(copy, gone_at, gone_len))
        punch(big, gone_at, gone_len)
        punch(big, half_at + MIB, MIB)
        fd = os.open(big, os.O_WRONLY)
        os.pwrite(fd, os.urandom(MIB + 100), new_at)
        os.close(fd)
        os.truncate(big, HUGE + (1 << 30))  # grown by a hole
        before = tree_state(src)
        ans, read = self.commit_reading("sp-2")
        self.assertTrue(ans["success"], ans)
        self.assertLess(read, 64 * MIB, "the commit read %d bytes of a file with 4 MiB of data" % read)
        self.assertEqual(tree_state(dst), before, "the copy differs from the source")
        self.assertTrue(is_hole(copy, gone_at, gone_len), "a hole of the source is a hole in the copy")
        self.assertTrue(is_hole(copy, half_at + MIB, MIB))
        self.assertFalse(is_hole(copy, new_at, MIB))
        self.assertLess(os.stat(copy).st_blocks * 512, 16 * MIB, "the copy stays sparse")
        st = os.stat(copy)
        self.assertEqual(st.st_size, HUGE + (1 << 30))
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assert_counts_honest("sp-2", HUGE + (1 << 30))

    def test_counters_stay_honest_while_a_rewritten_file_is_synced(self):
        """The final pass copies a large file again (every block changed):
        its bytes are work, not more tree; bytesCopied stays <= bytesTotal in
        every frame and ends at the tree's size."""
        self.start_agent()
        src = os.path.join(self.scratch.a, "mc")
        dst = os.path.join(self.scratch.b, "mc")
        os.makedirs(src)
        size = 96 * MIB
        big = os.path.join(src, "world.img")
        with open(big, "wb") as f:
            for _ in range(size // MIB):
                f.write(os.urandom(MIB))
        with open(os.path.join(src, "level.dat"), "w") as f:
            f.write("level\n")
        ready = self.manager.wait_answer(self.prepare("mc", src, dst, "sp-3"), 300)
        self.assertTrue(ready["success"], ready)
        with open(big, "r+b") as f:
            for _ in range(size // MIB):
                f.write(os.urandom(MIB))
        before = tree_state(src)
        ans = self.manager.wait_answer(self.manager.request("server.move_commit", {"moveId": "sp-3"}), 300)
        self.assertTrue(ans["success"], ans)
        self.assertIn(ans["bytesSynced"], (size, size + 6), ans)
        self.assertEqual(tree_state(dst), before)
        self.assert_counts_honest("sp-3", size + 6)
        self.assertEqual((ans["bytesCopied"], ans["filesCopied"]), (size + 6, 2), ans)


class SlowSourceCommitTest(FaultTestCase):
    tmpfs_size = "512m"

    def test_a_long_final_pass_on_a_slow_disk_is_progress_not_a_stall(self):
        """bytesCopied does not move while the final pass brings a file up
        to date, but the bytes it reads are progress: a pass of one file that
        takes longer than stall_timeout (a slow disk, each read answered well
        within it) completes."""
        fs = self.fuse("src")
        self.start_agent(extra={"stall_timeout": "10s"}, roots=[fs.mountpoint, self.scratch.b])
        back = os.path.join(fs.backing, "mc")
        src = os.path.join(fs.mountpoint, "mc")
        dst = os.path.join(self.scratch.b, "mc")
        os.makedirs(back)
        size = 24 * MIB
        with open(os.path.join(back, "world.img"), "wb") as f:
            f.write(os.urandom(size))
        with open(os.path.join(back, "level.dat"), "w") as f:
            f.write("level\n")
        ready = self.manager.wait_answer(self.manager.request(
            "server.move_prepare", {"serverName": "mc", "oldPath": src, "newPath": dst, "moveId": "sp-slow"}), 120)
        self.assertTrue(ready["success"], ready)
        with open(os.path.join(back, "world.img"), "r+b") as f:
            f.write(os.urandom(size))  # every block changed
        before = tree_state(back)
        # 600 ms per MiB, one read at a time: reading the file takes 14.4 s or
        # more, longer than stall_timeout; no single read takes 1 s.
        fs.slow("read", "mc/world.img", 600)
        ans = self.manager.wait_answer(self.manager.request("server.move_commit", {"moveId": "sp-slow"}), 120)
        fs.clear()
        self.assertTrue(ans["success"], ans)
        self.assertIn(ans["bytesSynced"], (size, size + 6), ans)
        self.assertGreaterEqual(ans["downtimeMs"], 14400, "the reads were slowed down: %s" % ans)
        self.assertEqual(tree_state(dst), before)
        for f in self.manager.frames("sp-slow"):
            self.assertLessEqual(f["bytesCopied"], f["bytesTotal"], f)
