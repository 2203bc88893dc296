"""The move engine through `hostagent move` (the daemon's engine, no manager):
fidelity field by field, failures leaving both sides clean, deep trees,
changes during the move, cancel, and memory."""
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import time
import unittest

from harness import BIN, SANITIZED, Scratch, dense_tree, make_tree, require_root, wait_until


def full_snapshot(root):
    """Every entry below root (and root itself) with everything a move must keep:
    type, mode, owner, size, mtime/atime (ns), link target, rdev, xattrs,
    content hash, allocated blocks, and hard-link groups. Reads with O_NOATIME
    so that taking it changes nothing."""
    import hashlib
    out, inodes = {}, {}

    def one(rel, fd_dir, name):
        st = os.lstat(name, dir_fd=fd_dir)
        rec = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
               "gid": st.st_gid, "mtime": st.st_mtime_ns}
        if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            rec["atime"] = st.st_atime_ns  # (reading a symlink sets its atime)
        if stat.S_ISLNK(st.st_mode):
            rec["link"] = os.readlink(name, dir_fd=fd_dir)
        elif stat.S_ISREG(st.st_mode):
            rec["size"] = st.st_size
            rec["sparse"] = st.st_blocks * 512 < st.st_size
            fd = os.open(name, os.O_RDONLY | os.O_NOATIME, dir_fd=fd_dir)
            try:
                h = hashlib.sha256()
                for chunk in iter(lambda: os.read(fd, 1 << 20), b""):
                    h.update(chunk)
                rec["sha256"] = h.hexdigest()
            finally:
                os.close(fd)
            if st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            rec["rdev"] = st.st_rdev
        if not stat.S_ISLNK(st.st_mode) and not stat.S_ISSOCK(st.st_mode) and not stat.S_ISFIFO(st.st_mode):
            path = "/proc/self/fd/%d/%s" % (fd_dir, name)
            rec["xattrs"] = {k: os.getxattr(path, k, follow_symlinks=False)
                             for k in sorted(os.listxattr(path, follow_symlinks=False))}
        return st, rec

    def walk(fd_dir, rel):
        for name in sorted(os.listdir(fd_dir)):
            r = name if not rel else rel + "/" + name
            st, rec = one(r, fd_dir, name)
            out[r] = rec
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd_dir)
                try:
                    walk(sub, r)
                finally:
                    os.close(sub)

    parent = os.open(os.path.dirname(root), os.O_RDONLY | os.O_DIRECTORY)
    try:
        out["."] = one(".", parent, os.path.basename(root))[1]
    finally:
        os.close(parent)
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walk(top, "")
    finally:
        os.close(top)
    out["#links"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return out


def posix_acl(entries):
    """The xattr form of a POSIX ACL: version 2, then (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


def rich_tree(root):
    """A game server's world with every kind of entry the engine must keep."""
    make_tree(root, n_small=40, big_mib=3)
    with open(os.path.join(root, "level.dat"), "wb") as f:
        f.write(os.urandom(5000))
    os.makedirs(os.path.join(root, "empty", "deeper-empty"))
    with open(os.path.join(root, "empty.txt"), "wb"):
        pass
    os.symlink("level.dat", os.path.join(root, "level-link"))
    os.symlink("/etc/passwd", os.path.join(root, "passwd-link"))
    os.symlink("../nowhere/at/all", os.path.join(root, "dangling"))
    # Hard links inside the tree (three names), and one whose other name is outside.
    os.makedirs(os.path.join(root, "links"))
    with open(os.path.join(root, "links", "a"), "wb") as f:
        f.write(os.urandom(70000))
    os.link(os.path.join(root, "links", "a"), os.path.join(root, "links", "b"))
    os.link(os.path.join(root, "links", "a"), os.path.join(root, "c-same-inode"))
    outside = root + ".outside"
    with open(outside, "wb") as f:
        f.write(b"shared with a file outside the tree\n")
    os.link(outside, os.path.join(root, "links", "outside"))
    # Holes stay holes.
    with open(os.path.join(root, "region.sparse"), "wb") as f:
        f.truncate(64 << 20)
        f.seek(10 << 20)
        f.write(os.urandom(8192))
        f.seek(40 << 20)
        f.write(b"middle")
    # Special files: recreated, never opened.
    os.mkfifo(os.path.join(root, "console.fifo"), 0o640)
    os.mknod(os.path.join(root, "null.dev"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(root, "rcon.sock"))
    s.close()
    # Permissions and owners.
    os.chmod(os.path.join(root, "level.dat"), 0o4755)
    os.makedirs(os.path.join(root, "shared"))
    os.chmod(os.path.join(root, "shared"), 0o3777)
    os.chown(os.path.join(root, "shared"), 1234, 5678)
    os.chown(os.path.join(root, "empty.txt"), 4321, 8765)
    os.chown(os.path.join(root, "level-link"), 1111, 2222, follow_symlinks=False)
    with open(os.path.join(root, "secret"), "wb") as f:
        f.write(b"no permissions at all\n")
    os.chmod(os.path.join(root, "secret"), 0)
    os.makedirs(os.path.join(root, "readonly", "inside"))
    with open(os.path.join(root, "readonly", "inside", "f"), "w") as f:
        f.write("x")
    os.chmod(os.path.join(root, "readonly", "inside"), 0o555)
    os.chmod(os.path.join(root, "readonly"), 0o500)
    # Extended attributes and an ACL.
    os.setxattr(os.path.join(root, "level.dat"), "user.game", b"minecraft")
    os.setxattr(os.path.join(root, "shared"), "user.note", b"\x00binary\xff")
    os.setxattr(os.path.join(root, "empty.txt"), "system.posix_acl_access",
                posix_acl([(0x01, 6, 0xFFFFFFFF), (0x02, 4, 1234), (0x04, 4, 0xFFFFFFFF),
                           (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]))
    # Times with nanoseconds, on files, links and directories (set last).
    for i, rel in enumerate(["level.dat", "level-link", "dangling", "links/a", "console.fifo", "empty",
                             "shared", "readonly/inside", "readonly", "."]):
        t = 1_600_000_000_123_456_789 + i * 1_000_003_007
        os.utime(os.path.join(root, rel), ns=(t - 5_000_000_000, t), follow_symlinks=False)
    return outside


class EngineCase(unittest.TestCase):
    tmpfs_size = "256m"

    def setUp(self):
        require_root()
        self.scratch = Scratch(self.tmpfs_size)

    def tearDown(self):
        self.scratch.close()

    def run_move(self, old, new, *opts, user=None, timeout=300):
        cmd = [BIN, "move", *opts, old, new]
        if user:
            cmd = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups", "--"] + cmd
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def start_move(self, old, new, *opts):
        return subprocess.Popen([BIN, "move", "--json", *opts, old, new], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def wait_phase(self, proc, phase):
        for line in proc.stdout:
            if json.loads(line)["phase"] == phase:
                return
        self.fail("the move ended before phase %s: %s" % (phase, proc.stderr.read()))

    def freeze_inside(self, proc, partial, size):
        """Stops the move while `partial` (a file of the copy) is part-written:
        let it run in short steps until the copy of that file is under way."""
        self.wait_phase(proc, "copying")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            os.kill(proc.pid, signal.SIGSTOP)
            wait_until(lambda: open("/proc/%d/stat" % proc.pid).read().rsplit(")", 1)[1].split()[0] == "T",
                       10, "move frozen")
            done = os.path.getsize(partial) if os.path.exists(partial) else 0
            if 0 < done < size:
                return
            if done >= size:
                self.fail("the copy of %s ended before it could be frozen inside" % partial)
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.001)
        self.fail("could not freeze the move inside %s" % partial)

    def assert_clean(self, src, before, dst):
        self.assertEqual(full_snapshot(src), before, "the source changed")
        self.assertFalse(os.path.lexists(dst), "a partial copy was left behind")


class FidelityTest(EngineCase):
    def test_every_kind_of_entry_is_kept(self):
        src = os.path.join(self.scratch.a, "world")
        rich_tree(src)
        before = full_snapshot(src)
        dst = os.path.join(self.scratch.b, "servers", "world")
        r = self.run_move(src, dst)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.lexists(src))
        after = full_snapshot(dst)
        for rel in sorted(before):
            self.assertEqual(after.get(rel), before[rel], rel)
        self.assertEqual(after, before)
        self.assertTrue(after["region.sparse"]["sparse"], "holes were filled")
        self.assertLess(os.lstat(os.path.join(dst, "region.sparse")).st_blocks * 512, 1 << 20)
        self.assertEqual(after["#links"], [["c-same-inode", "links/a", "links/b"]])

    def test_checksum_verification(self):
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=100, big_mib=8)
        before = full_snapshot(src)
        dst = os.path.join(self.scratch.b, "mc")
        r = self.run_move(src, dst, "--verify=checksum", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        states = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual(states[-1]["phase"], "complete")
        self.assertIn("verifying", [s["phase"] for s in states])
        self.assertEqual(full_snapshot(dst), before)

    def test_source_mount_point_stays(self):
        src = os.path.join(self.scratch.a, "mounted")
        os.mkdir(src)
        self.scratch.mount("-t", "tmpfs", "-o", "size=32m", "tmpfs", at=src)
        make_tree(os.path.join(src, "world"), n_small=20)
        os.chmod(src, 0o755)
        before = full_snapshot(src)
        dst = os.path.join(self.scratch.b, "mounted")
        r = self.run_move(src, dst)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.listdir(src), [], "the mount point should stay, empty")
        after = full_snapshot(dst)
        del before["."], after["."]
        self.assertEqual(after, before)

    def test_same_filesystem_is_a_rename(self):
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=30)
        before = full_snapshot(src)
        dst = os.path.join(self.scratch.a, "x", "y", "mc")
        r = self.run_move(src, dst, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([json.loads(s)["phase"] for s in r.stdout.splitlines()], ["calculating", "complete"])
        self.assertEqual(full_snapshot(dst), before)

    def test_destination_without_user_xattrs_warns(self):
        # ramfs keeps no user.* attributes: a warning, not a failed move.
        ram = os.path.join(self.scratch.base, "ram")
        os.mkdir(ram)
        self.scratch.mount("-t", "ramfs", "ramfs", at=ram)
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=5)
        with open(os.path.join(src, "level.dat"), "w") as f:
            f.write("level")
        os.setxattr(os.path.join(src, "level.dat"), "user.game", b"x")
        r = self.run_move(src, os.path.join(ram, "mc"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("extended attributes could not be copied", r.stderr)
        self.assertIn("user.game", r.stderr)

    def test_deep_tree_beyond_path_max(self):
        src = os.path.join(self.scratch.a, "deep")
        os.mkdir(src)
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(5000):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        with open(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
            f.write("the bottom\n")
        os.close(fd)
        dst = os.path.join(self.scratch.b, "deep")
        r = self.run_move(src, dst)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.lexists(src))
        fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
        depth = 0
        while "d" in os.listdir(fd):
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
            depth += 1
        with open(os.open("bottom.txt", os.O_RDONLY, dir_fd=fd)) as f:
            self.assertEqual(f.read(), "the bottom\n")
        os.close(fd)
        self.assertEqual(depth, 5000)

    def test_memory_stays_small_on_a_big_tree(self):
        src = os.path.join(self.scratch.a, "many")
        for d in range(50):
            os.makedirs(os.path.join(src, "dir%02d" % d))
            for f in range(999):
                open(os.path.join(src, "dir%02d" % d, "f%03d" % f), "wb").close()
        dst = os.path.join(self.scratch.b, "many")
        proc = subprocess.Popen([BIN, "move", src, dst], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # VmHWM (peak resident set since exec) only grows: sample it until the
        # end. (ru_maxrss would also count the forked Python before exec.)
        peak = 0
        while proc.poll() is None:
            try:
                with open("/proc/%d/status" % proc.pid) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.01)
        self.assertEqual(proc.wait(), 0, proc.stderr.read())
        self.assertEqual(sum(len(files) for _, _, files in os.walk(dst)), 49950)
        self.assertGreater(peak, 0)
        if not SANITIZED:  # ASan's shadow memory would dwarf the bound
            self.assertLess(peak, 16 * 1024, "peak RSS %d KiB" % peak)


class SmallDiskTest(EngineCase):
    tmpfs_size = "64m"

    def test_tree_larger_than_the_disk_fails_early(self):
        src = dense_tree(os.path.join(self.scratch.a, "big"), 80)
        before = full_snapshot(src)
        dst = os.path.join(self.scratch.b, "big")
        r = self.run_move(src, dst, "--json")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no_space", r.stderr)
        self.assertIn("needs", r.stderr)
        self.assertNotIn("copying", [json.loads(s)["phase"] for s in r.stdout.splitlines()])
        self.assert_clean(src, before, dst)
        self.assertEqual(os.listdir(self.scratch.b), [])


class FailureTest(EngineCase):
    """Each freezes the move early in a 200 MiB copy to act in the middle of it."""

    def test_disk_filling_up_during_the_copy_rolls_back(self):
        src = dense_tree(os.path.join(self.scratch.a, "big"), 200)
        make_tree(os.path.join(src, "small"), n_small=30)
        before = full_snapshot(src)
        dst = os.path.join(self.scratch.b, "new", "big")
        proc = self.start_move(src, dst)
        self.freeze_inside(proc, os.path.join(dst, "world.img"), 200 << 20)
        # Someone else fills the disk while the move is frozen.
        fd = os.open(os.path.join(self.scratch.b, "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while True:
                os.write(fd, b"\1" * (1 << 20))
        except OSError:
            pass
        finally:
            os.close(fd)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 1, err)
        self.assertIn("no_space", err)
        self.assertEqual(json.loads(out.splitlines()[-1])["code"], "no_space")
        self.assert_clean(src, before, dst)
        self.assertEqual(sorted(os.listdir(self.scratch.b)), ["filler"], "created parents must go too")

    def test_unreadable_file_as_nobody(self):
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=20)
        with open(os.path.join(src, "root-only"), "w") as f:
            f.write("secret")
        os.chmod(os.path.join(src, "root-only"), 0o600)
        subprocess.run(["chown", "-R", "nobody:nogroup", src], check=True)
        os.chown(os.path.join(src, "root-only"), 0, 0)
        os.chmod(self.scratch.b, 0o777)
        os.chown(self.scratch.a, 65534, 65534)  # so that nobody could remove the source
        before = full_snapshot(src)
        dst = os.path.join(self.scratch.b, "mc")
        r = self.run_move(src, dst, user="nobody")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("permission_denied", r.stderr)
        self.assertIn("root-only", r.stderr)
        self.assert_clean(src, before, dst)

    def test_file_changed_during_the_copy(self):
        src = dense_tree(os.path.join(self.scratch.a, "big"), 200)
        before_size = os.path.getsize(os.path.join(src, "world.img"))
        dst = os.path.join(self.scratch.b, "big")
        proc = self.start_move(src, dst)
        self.freeze_inside(proc, os.path.join(dst, "world.img"), 200 << 20)
        with open(os.path.join(src, "world.img"), "ab") as f:  # the game server writes
            f.write(b"more world")
        before = full_snapshot(src)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 1, err)
        self.assertIn("source_changed", err)
        self.assertIn("world.img", err)
        self.assert_clean(src, before, dst)
        self.assertEqual(os.path.getsize(os.path.join(src, "world.img")), before_size + 10)

    def test_ctrl_c_cancels_and_rolls_back(self):
        src = dense_tree(os.path.join(self.scratch.a, "big"), 200)
        before = full_snapshot(src)
        dst = os.path.join(self.scratch.b, "big")
        proc = self.start_move(src, dst)
        self.freeze_inside(proc, os.path.join(dst, "world.img"), 200 << 20)
        os.kill(proc.pid, signal.SIGINT)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 1, err)
        self.assertIn("cancelled", err)
        last = json.loads(out.splitlines()[-1])
        self.assertEqual((last["phase"], last["code"]), ("cancelled", "cancelled"))
        self.assert_clean(src, before, dst)

    def test_nested_paths_are_refused(self):
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=5)
        before = full_snapshot(src)
        for old, new in [(src, os.path.join(src, "inside")), (os.path.join(src, "plugins"), src),
                         (src, src), (src, src + "/"), (self.scratch.a, os.path.join(src, "x"))]:
            r = self.run_move(old, new)
            self.assertEqual(r.returncode, 1, (old, new))
            self.assertIn("invalid_paths", r.stderr, (old, new))
        self.assertEqual(full_snapshot(src), before)


if __name__ == "__main__":
    unittest.main()
