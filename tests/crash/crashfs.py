"""crashfs: a FUSE filesystem that forgets what was not made durable, for the
crash test (tests/crash/run) and the in-filesystem fault tests.

It mirrors a backing directory at a mount point and keeps, beside the live
tree, a model of what a disk would still hold after a power cut. The rules
(ext4, data=ordered, delayed allocation; see docs/design.md "Power cuts"):

- a file's data, size and attributes (mode, owner, times, xattrs) become
  durable with fsync/fdatasync of that file; its own directory entry too
  (and those of new parent directories up to a durable one): ext4's fsync
  commits the running journal transaction, which holds the entry. We take
  only that entry, not the rest of the transaction: stricter than ext4.
- a directory's entries (create, mkdir, mknod, symlink, link, unlink, rmdir,
  rename in or out) and its own attributes become durable with fsync of the
  directory. A new entry made durable that way names an inode whose data was
  never synced: it comes back empty (delayed allocation: zero-length files
  after a crash), with its attributes and, for a symlink, its target.
  A rename is one journal transaction: fsync of either directory makes both
  sides durable (ext4 never shows one name gone and the other not there) —
  but the new name lands only in a directory the disk holds: renamed into a
  directory whose own entry is not durable yet, the old name's removal is
  made durable and the new name is not (stricter than ext4: a directory
  made and renamed into must be made durable first, docs/design.md).
- everything becomes durable with syncfs/sync (the agent's syncfs reaches
  us through the LD_PRELOAD shim syncfs_shim.c as an fsetxattr of the name
  "user.crashfs.syncfs" on the descriptor; see the shim).
- a power cut drops every unsynced write whole (not torn), and undoes every
  unsynced create, rename, unlink and attribute change.

Power cut: the filesystems of one test share a small state file (the
"clock", in /dev/shm): a counter of mutating operations (create, mkdir,
mknod, symlink, link, unlink, rmdir, rename, write, setattr, setxattr,
removexattr, fsync, fsyncdir, syncfs) over all mounts, the operation at which
the power goes, and a frozen flag. When the counter reaches the cut, that
operation and every later one on any mount waits, not done ("frozen"). The
test then kills the agent, sends "restore" to every mount: the waiting
operations fail with EIO without being done (their callers are dead), the
backing tree is rebuilt from the durable model, and the mount goes on.
Inode numbers are the filesystem's own (stable across the rebuild) and the
mount stays, so the device and inode identities the agent journaled are
still those of the same directories, as on a real disk after a reboot.

Faults (control commands, one line each, answered "ok ..." / "error ..."):
    fail OP PATH [ERRNO]   OP on PATH (and below it) fails with ERRNO (EIO)
    hang OP PATH           OP on PATH waits until "release"
    enospc N               writes fail with ENOSPC once N bytes were written
    release / clear        let waiting requests go / also drop every rule
    cut K                  the power goes at mutating operation K (0: never)
    freeze                 the power goes now
    count                  "ok N": mutating operations so far (all mounts)
    cutinfo                "ok N OP PATH": the operation the power went at here
    oplog                  "ok [[N, OP, PATH], ...]" (JSON): the mutating operations
                           done here since the last thaw
    frozen                 "ok 0|1"
    restore                power back: rebuild from what was durable
    thaw                   (after every mount's restore) the clock starts again
    sync                   make everything durable now (a clean state)
    ping
OP: lookup getattr open read write create mkdir mknod symlink link unlink
rmdir rename readdir setattr setxattr fsync fsyncdir syncfs any.

The pass-through itself (inodes, paths, the requests, the fail/hang rules,
the control socket) is tests/fuse/passfs.py; the process wrapper of the test
side is tests/fuse/fusemount.py.

Server (Debian's python3-pyfuse3, /usr/bin/python3):
    python3 crashfs.py BACKING MOUNTPOINT CONTROL_SOCKET CLOCK_FILE
"""
import ctypes
import errno
import json
import mmap
import os
import stat
import struct
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuse"))
from fusemount import FuseMount  # noqa: E402

SYNCFS_XATTR = "user.crashfs.syncfs"
OPS = ("lookup", "getattr", "open", "read", "write", "create", "mkdir", "mknod", "symlink", "link", "unlink",
       "rmdir", "rename", "readdir", "setattr", "setxattr", "fsync", "fsyncdir", "syncfs", "any")
CLOCK_SIZE = 24  # counter, cut, frozen: three u64


def new_clock(path):
    with open(path, "wb") as f:
        f.write(b"\0" * CLOCK_SIZE)
    return path


def build_shim(directory):
    """Compiles syncfs_shim.c into directory; returns the .so for LD_PRELOAD."""
    out = os.path.join(directory, "syncfs_shim.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", out,
                    os.path.join(os.path.dirname(os.path.abspath(__file__)), "syncfs_shim.c"), "-ldl"],
                   check=True)
    return out


def shim_env(shim):
    """The agent's environment with the shim (ASan wants to be first: told not to mind)."""
    return {"LD_PRELOAD": shim,
            "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}

class CrashFS(FuseMount):
    """Runs crashfs.py in a child process and talks to it."""
    NAME = "crashfs"
    SCRIPT = os.path.abspath(__file__)
    LOG_MODE = "a"
    COMMAND_TIMEOUT = 30

    def __init__(self, backing, mountpoint, clock):
        super().__init__(backing, mountpoint)
        self.clock = clock

    def args(self):
        return super().args() + [self.clock]


# --- the durable model -------------------------------------------------------------

class Rec:
    """One inode as the disk holds it."""
    __slots__ = ("mode", "uid", "gid", "atime", "mtime", "xattrs", "size", "regions", "target", "rdev")


def capture(path, with_data=True):
    st = os.lstat(path)
    r = Rec()
    r.mode, r.uid, r.gid = st.st_mode, st.st_uid, st.st_gid
    r.atime, r.mtime, r.rdev = st.st_atime_ns, st.st_mtime_ns, st.st_rdev
    r.target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    r.xattrs = {}
    if not stat.S_ISLNK(st.st_mode):
        for n in os.listxattr(path, follow_symlinks=False):
            try:
                r.xattrs[n] = os.getxattr(path, n, follow_symlinks=False)
            except OSError:
                pass
    r.size, r.regions = 0, []
    if stat.S_ISREG(st.st_mode) and with_data:
        r.size = st.st_size
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            off = 0
            while off < st.st_size:
                try:
                    start = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:
                    break
                end = os.lseek(fd, start, os.SEEK_HOLE)
                r.regions.append((start, os.pread(fd, end - start, start)))
                off = end
        finally:
            os.close(fd)
    return r


def materialize(path, r):
    """Makes `path` hold inode r (its parent exists, the name is free)."""
    kind = stat.S_IFMT(r.mode)
    if kind == stat.S_IFDIR:
        os.mkdir(path, 0o700)
    elif kind == stat.S_IFLNK:
        os.symlink(r.target, path)
    elif kind == stat.S_IFREG:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for off, data in r.regions:
                os.pwrite(fd, data, off)
            os.ftruncate(fd, r.size)
        finally:
            os.close(fd)
    else:
        os.mknod(path, kind | 0o600, r.rdev)
    set_attrs(path, r)


def set_attrs(path, r):
    islnk = stat.S_ISLNK(r.mode)
    os.chown(path, r.uid, r.gid, follow_symlinks=False)
    if not islnk:
        for n in os.listxattr(path, follow_symlinks=False):
            if n not in r.xattrs:
                os.removexattr(path, n, follow_symlinks=False)
        for n, v in r.xattrs.items():
            os.setxattr(path, n, v, follow_symlinks=False)
        os.chmod(path, stat.S_IMODE(r.mode))
    os.utime(path, ns=(r.atime, r.mtime), follow_symlinks=False)


# --- server side -------------------------------------------------------------------

# The mutating operations (those the clock counts), and the names the rules
# and the clock know two requests by.
MUTATING = {"create", "mkdir", "mknod", "symlink", "link", "unlink", "rmdir", "rename", "write", "setattr",
            "setxattr", "fsync", "fsyncdir", "syncfs"}
ALIASES = {"opendir": "open", "removexattr": "setxattr"}


def serve(backing, mountpoint, control, clock_path):
    import fcntl

    import passfs
    import pyfuse3
    import trio

    libc = ctypes.CDLL(None, use_errno=True)

    class CrashOps(passfs.PassFS):
        OPS = OPS

        def __init__(self):
            super().__init__(backing)
            self.clock_fd = os.open(clock_path, os.O_RDWR)
            self.clock = mmap.mmap(self.clock_fd, CLOCK_SIZE)
            self.thaw_ev = trio.Event()
            self.enospc = None  # bytes left before ENOSPC
            # vino <-> backing: the inode numbers we show stay the same
            # when the backing tree is rebuilt after a power cut.
            self.b2v = {}
            self.paths = {}
            self.next_vino = 2
            # the durable model: vino -> Rec, directory vino -> {name: vino}
            self.inodes = {}
            self.dents = {}
            self.cut_info = ""
            self.pending_renames = []  # (old dir, old name, new dir, new name, vino)
            self.oplog = []  # (n, op, path) of the mutating operations here since the thaw

        def frozen(self):
            return struct.unpack_from("<Q", self.clock, 16)[0] != 0

        def fcntl_lock(self, on):
            fcntl.lockf(self.clock_fd, fcntl.LOCK_EX if on else fcntl.LOCK_UN)

        def inode_of(self, path, st=None):
            """Our own numbers (vino), not the backing tree's."""
            st = st or os.lstat(path)
            if path == backing:
                v = pyfuse3.ROOT_INODE
                self.b2v[st.st_ino] = v
            else:
                v = self.b2v.get(st.st_ino)
                if v is None:
                    v = self.next_vino
                    self.next_vino += 1
                    self.b2v[st.st_ino] = v
            self.paths[v] = path
            return v

        def live_entries(self, dpath):
            return {name: self.inode_of(os.path.join(dpath, name)) for name in os.listdir(dpath)}

        # --- durability ------------------------------------------------------
        def sync_all(self):
            """syncfs: the durable model becomes the live tree."""
            self.inodes, self.dents, self.pending_renames = {}, {}, []
            todo = [backing]
            while todo:
                d = todo.pop()
                dv = self.inode_of(d)
                self.inodes[dv] = capture(d)
                self.dents[dv] = self.live_entries(d)
                for name, v in self.dents[dv].items():
                    p = os.path.join(d, name)
                    if os.path.isdir(p) and not os.path.islink(p):
                        todo.append(p)
                    elif v not in self.inodes:
                        self.inodes[v] = capture(p)

        def ensure_inode(self, v, path):
            """An entry made durable names an inode the disk may not hold yet: it
            holds it with its attributes and without its unsynced data."""
            if v in self.inodes:
                return
            self.inodes[v] = capture(path, with_data=False)
            if stat.S_ISDIR(self.inodes[v].mode):
                self.dents[v] = {}

        def sync_entry(self, v, path):
            """Makes the entry naming `path` durable, and new parents' entries."""
            while path != backing:
                parent = os.path.dirname(path)
                pv = self.inode_of(parent)
                self.ensure_inode(v, path)
                known = pv in self.dents
                if not known:
                    self.ensure_inode(pv, parent)
                self.dents[pv][os.path.basename(path)] = v
                if known:
                    break
                v, path = pv, parent

        def apply_renames(self, dv):
            keep = []
            for (od, on, nd, nn, v) in self.pending_renames:
                if dv not in (od, nd):
                    keep.append((od, on, nd, nn, v))
                    continue
                if od in self.dents and self.dents[od].get(on) == v:
                    del self.dents[od][on]
                np_ = os.path.join(self.paths.get(nd, ""), nn)
                if nd in self.dents and os.path.lexists(np_) and self.inode_of(np_) == v:
                    self.ensure_inode(v, np_)
                    self.dents[nd][nn] = v
            self.pending_renames = keep

        def sync_dir(self, dv):
            path = self.path_of(dv)
            self.apply_renames(dv)
            self.ensure_inode(dv, path)
            self.inodes[dv] = capture(path, with_data=False)
            self.dents[dv] = self.live_entries(path)
            for name, v in self.dents[dv].items():
                self.ensure_inode(v, os.path.join(path, name))

        def sync_file(self, v):
            path = self.path_of(v)
            if not os.path.lexists(path):
                return
            self.inodes[v] = capture(path)
            if stat.S_ISDIR(self.inodes[v].mode):
                self.sync_dir(v)
                return
            self.sync_entry(v, path)

        def sync_fd(self, fh, path):
            self.sync_file(self.inode_of(path, os.fstat(fh)))

        def restore(self):
            """Power back: the backing tree becomes what was durable."""
            for name in os.listdir(backing):
                p = os.path.join(backing, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    subprocess.run(["rm", "-rf", "--one-file-system", p], check=True)
                else:
                    os.unlink(p)
            self.b2v, self.paths = {}, {}
            made = {}  # vino -> backing path, for hard links
            rootv = pyfuse3.ROOT_INODE
            self.inode_of(backing)
            todo = [(rootv, backing)]
            dirs = []
            while todo:
                dv, dpath = todo.pop()
                dirs.append((dv, dpath))
                for name, v in sorted(self.dents.get(dv, {}).items()):
                    p = os.path.join(dpath, name)
                    r = self.inodes[v]
                    if v in made and not stat.S_ISDIR(r.mode):
                        os.link(made[v], p, follow_symlinks=False)
                        continue
                    if v in made:
                        continue  # a directory has one name
                    materialize(p, r)
                    made[v] = p
                    self.b2v[os.lstat(p).st_ino] = v
                    self.paths[v] = p
                    if stat.S_ISDIR(r.mode):
                        todo.append((v, p))
            for dv, dpath in reversed(dirs):  # contents first, then the times
                set_attrs(dpath, self.inodes[dv])
            self.pending_renames = []

        # --- the clock: counted operations and the power cut -------------------
        async def gate(self, op, path, nbytes=0):
            """Every request passes here first: the power cut, then the rules."""
            op = ALIASES.get(op, op)
            if op in MUTATING:
                self.fcntl_lock(True)
                try:
                    n, cut, fr = struct.unpack_from("<QQQ", self.clock, 0)
                    if not fr:
                        n += 1
                        if cut and n >= cut:
                            fr = 1
                            self.cut_info = "%d %s %s" % (n, op, path)
                            print("power cut at operation", self.cut_info, flush=True)
                        else:
                            self.oplog.append((n, op, path))
                        struct.pack_into("<QQQ", self.clock, 0, n, cut, fr)
                finally:
                    self.fcntl_lock(False)
            if self.frozen():
                self.waiting += 1
                try:
                    await self.thaw_ev.wait()
                finally:
                    self.waiting -= 1
                raise pyfuse3.FUSEError(errno.EIO)  # never done: its caller is dead
            await super().gate(op, path)
            if op == "write" and self.enospc is not None:
                if nbytes > self.enospc:
                    raise pyfuse3.FUSEError(errno.ENOSPC)
                self.enospc -= nbytes

        # --- what the requests leave to us -----------------------------------
        def unlinked(self, st):
            """A backing inode number freed by this removal may be reused."""
            if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
                self.b2v.pop(st.st_ino, None)

        def rename_backing(self, parent_old, old, parent_new, new, flags):
            """Every flag is passed on (RENAME_NOREPLACE, RENAME_EXCHANGE)."""
            vo = self.inode_of(old)
            vn = self.inode_of(new) if os.path.lexists(new) else None
            replaced = os.lstat(new) if vn is not None and flags == 0 else None
            if flags:
                if libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            else:
                os.rename(old, new)
            return vo, vn, replaced

        def renamed(self, parent_old, old, parent_new, new, flags, before):
            vo, vn, replaced = before
            if replaced is not None:
                self.unlinked(replaced)
            self.pending_renames.append((parent_old, os.path.basename(old), parent_new, os.path.basename(new), vo))
            exchange = flags & passfs.RENAME_EXCHANGE
            if exchange and vn is not None:
                self.pending_renames.append((parent_new, os.path.basename(new), parent_old,
                                             os.path.basename(old), vn))
            # after the paths followed the rename (an exchange swaps them)
            self.inode_of(new)
            if exchange:
                self.inode_of(old)

        async def setxattr(self, inode, name, value, ctx):
            if os.fsdecode(name) != SYNCFS_XATTR:
                return await super().setxattr(inode, name, value, ctx)
            await self.gate("syncfs", self.rel(self.path_of(inode)))  # the shim's syncfs
            passfs.call(self.sync_all)

        # --- control -----------------------------------------------------------
        def clear(self):
            super().clear()
            self.enospc = None

        def command(self, words):
            cmd = words[0] if words else ""
            clock = self.clock
            if cmd == "enospc":
                self.enospc = int(words[1])
            elif cmd == "cut":
                self.fcntl_lock(True)
                n, _, fr = struct.unpack_from("<QQQ", clock, 0)
                struct.pack_into("<QQQ", clock, 0, n, int(words[1]), fr)
                self.fcntl_lock(False)
            elif cmd == "freeze":  # the power goes now
                self.fcntl_lock(True)
                n, cut, _ = struct.unpack_from("<QQQ", clock, 0)
                struct.pack_into("<QQQ", clock, 0, n, cut, 1)
                self.fcntl_lock(False)
                print("power cut now, after operation", n, flush=True)
            elif cmd == "count":
                return "ok %d" % struct.unpack_from("<Q", clock, 0)[0]
            elif cmd == "cutinfo":
                return "ok " + self.cut_info
            elif cmd == "oplog":
                return "ok " + json.dumps(self.oplog)
            elif cmd == "frozen":
                return "ok %d" % int(self.frozen())
            elif cmd == "restore":
                if not self.frozen():
                    raise ValueError("the power is on")
                self.thaw_ev.set()  # the frozen requests fail, never done
                self.thaw_ev = trio.Event()
                self.restore()
            elif cmd == "thaw":  # every mount restored: the power is back
                self.fcntl_lock(True)
                struct.pack_into("<QQQ", clock, 0, 0, 0, 0)
                self.fcntl_lock(False)
                self.cut_info = ""
                self.oplog = []
                self.thaw_ev.set()
                self.thaw_ev = trio.Event()
            elif cmd == "sync":
                self.sync_all()
            else:
                return super().command(words)
            return "ok"

    fs = CrashOps()
    fs.sync_all()  # what is there at mount time is on the disk
    passfs.serve(fs, "crashfs", mountpoint, control)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: crashfs.py BACKING MOUNTPOINT CONTROL_SOCKET CLOCK_FILE")
    serve(os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
