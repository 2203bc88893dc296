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

Server (Debian's python3-pyfuse3, /usr/bin/python3):
    python3 crashfs.py BACKING MOUNTPOINT CONTROL_SOCKET CLOCK_FILE
"""
import ctypes
import errno
import json
import mmap
import os
import socket
import stat
import struct
import subprocess
import sys
import time

FUSE_PYTHON = "/usr/bin/python3"
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


# --- test side -------------------------------------------------------------------

class CrashFS:
    """Runs crashfs.py in a child process and talks to it."""

    def __init__(self, backing, mountpoint, clock):
        self.backing = backing
        self.mountpoint = mountpoint
        self.clock = clock
        self.control = mountpoint.rstrip("/") + ".ctl"
        self.log_path = mountpoint.rstrip("/") + ".log"
        self.proc = None

    def start(self, timeout=20):
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        if not os.path.exists(FUSE_PYTHON):
            raise AssertionError("crashfs needs %s with pyfuse3 (Debian: python3-pyfuse3)" % FUSE_PYTHON)
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([FUSE_PYTHON, os.path.abspath(__file__), self.backing, self.mountpoint,
                                      self.control, self.clock], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("crashfs exited at start: %s" % self.read_log())
            if os.path.ismount(self.mountpoint) and os.path.exists(self.control):
                self.conn_id = os.minor(os.stat(self.mountpoint).st_dev)
                try:
                    self.command("ping")
                    return self
                except ConnectionRefusedError:
                    pass  # bound, not listening yet
            time.sleep(0.05)
        self.stop()
        raise AssertionError("crashfs did not come up: %s" % self.read_log())

    def read_log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def command(self, line, timeout=30):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.control)
            s.sendall(line.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        reply = buf.decode().strip()
        if not reply.startswith("ok"):
            raise AssertionError("crashfs %r: %r" % (line, reply))
        return reply[2:].strip()

    def fail(self, op, path, err="EIO"):
        self.command("fail %s %s %s" % (op, path, err))

    def hang(self, op, path):
        self.command("hang %s %s" % (op, path))

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.command("clear", timeout=5)
            except (OSError, AssertionError):
                pass
        for _ in range(50):
            if not os.path.ismount(self.mountpoint):
                break
            if subprocess.run(["fusermount3", "-u", self.mountpoint], stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", self.mountpoint], stderr=subprocess.DEVNULL)
            try:
                with open("/sys/fs/fuse/connections/%d/abort" % self.conn_id, "w") as f:
                    f.write("1")
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.log.close()


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

def serve(backing, mountpoint, control, clock_path):
    import pyfuse3
    import trio

    libc = ctypes.CDLL(None, use_errno=True)
    clock_fd = os.open(clock_path, os.O_RDWR)
    clock = mmap.mmap(clock_fd, CLOCK_SIZE)

    def frozen():
        return struct.unpack_from("<Q", clock, 16)[0] != 0

    class State:
        def __init__(self):
            self.fail = {}  # (op, path) -> errno
            self.hang = set()
            self.release = trio.Event()
            self.thaw = trio.Event()
            self.waiting = 0
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

    s = State()

    def rel(path):
        r = os.path.relpath(path, backing)
        return "" if r == "." else r

    def vino_of(path, st=None):
        st = st or os.lstat(path)
        if path == backing:
            v = pyfuse3.ROOT_INODE
            s.b2v[st.st_ino] = v
        else:
            v = s.b2v.get(st.st_ino)
            if v is None:
                v = s.next_vino
                s.next_vino += 1
                s.b2v[st.st_ino] = v
        s.paths[v] = path
        return v

    def path_of(v):
        try:
            return s.paths[v]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT)

    def live_entries(dpath):
        return {name: vino_of(os.path.join(dpath, name)) for name in os.listdir(dpath)}

    # --- durability ----------------------------------------------------------
    def sync_all():
        """syncfs: the durable model becomes the live tree."""
        s.inodes, s.dents, s.pending_renames = {}, {}, []
        todo = [backing]
        while todo:
            d = todo.pop()
            dv = vino_of(d)
            s.inodes[dv] = capture(d)
            s.dents[dv] = live_entries(d)
            for name, v in s.dents[dv].items():
                p = os.path.join(d, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    todo.append(p)
                elif v not in s.inodes:
                    s.inodes[v] = capture(p)

    def ensure_inode(v, path):
        """An entry made durable names an inode the disk may not hold yet: it
        holds it with its attributes and without its unsynced data."""
        if v in s.inodes:
            return
        s.inodes[v] = capture(path, with_data=False)
        if stat.S_ISDIR(s.inodes[v].mode):
            s.dents[v] = {}

    def sync_entry(v, path):
        """Makes the entry naming `path` durable, and new parents' entries."""
        while path != backing:
            parent = os.path.dirname(path)
            pv = vino_of(parent)
            ensure_inode(v, path)
            known = pv in s.dents
            if not known:
                ensure_inode(pv, parent)
            s.dents[pv][os.path.basename(path)] = v
            if known:
                break
            v, path = pv, parent

    def apply_renames(dv):
        keep = []
        for (od, on, nd, nn, v) in s.pending_renames:
            if dv not in (od, nd):
                keep.append((od, on, nd, nn, v))
                continue
            if od in s.dents and s.dents[od].get(on) == v:
                del s.dents[od][on]
            np_ = os.path.join(s.paths.get(nd, ""), nn)
            if nd in s.dents and os.path.lexists(np_) and vino_of(np_) == v:
                ensure_inode(v, np_)
                s.dents[nd][nn] = v
        s.pending_renames = keep

    def sync_dir(dv):
        path = path_of(dv)
        apply_renames(dv)
        ensure_inode(dv, path)
        s.inodes[dv] = capture(path, with_data=False)
        s.dents[dv] = live_entries(path)
        for name, v in s.dents[dv].items():
            ensure_inode(v, os.path.join(path, name))

    def sync_file(v):
        path = path_of(v)
        if not os.path.lexists(path):
            return
        s.inodes[v] = capture(path)
        if stat.S_ISDIR(s.inodes[v].mode):
            sync_dir(v)
            return
        sync_entry(v, path)

    def restore():
        """Power back: the backing tree becomes what was durable."""
        for name in os.listdir(backing):
            p = os.path.join(backing, name)
            if os.path.isdir(p) and not os.path.islink(p):
                subprocess.run(["rm", "-rf", "--one-file-system", p], check=True)
            else:
                os.unlink(p)
        s.b2v, s.paths = {}, {}
        made = {}  # vino -> backing path, for hard links
        rootv = pyfuse3.ROOT_INODE
        vino_of(backing)
        todo = [(rootv, backing)]
        dirs = []
        while todo:
            dv, dpath = todo.pop()
            dirs.append((dv, dpath))
            for name, v in sorted(s.dents.get(dv, {}).items()):
                p = os.path.join(dpath, name)
                r = s.inodes[v]
                if v in made and not stat.S_ISDIR(r.mode):
                    os.link(made[v], p, follow_symlinks=False)
                    continue
                if v in made:
                    continue  # a directory has one name
                materialize(p, r)
                made[v] = p
                s.b2v[os.lstat(p).st_ino] = v
                s.paths[v] = p
                if stat.S_ISDIR(r.mode):
                    todo.append((v, p))
        for dv, dpath in reversed(dirs):  # contents first, then the times
            set_attrs(dpath, s.inodes[dv])
        s.pending_renames = []

    # --- the clock: counted operations and the power cut -----------------------
    async def gate(op, path, mutating):
        """Every request passes here first: the power cut, then the rules."""
        if mutating:
            fcntl_lock(True)
            try:
                n, cut, fr = struct.unpack_from("<QQQ", clock, 0)
                if not fr:
                    n += 1
                    if cut and n >= cut:
                        fr = 1
                        s.cut_info = "%d %s %s" % (n, op, path)
                        print("power cut at operation", s.cut_info, flush=True)
                    else:
                        s.oplog.append((n, op, path))
                    struct.pack_into("<QQQ", clock, 0, n, cut, fr)
            finally:
                fcntl_lock(False)
        if frozen():
            s.waiting += 1
            try:
                await s.thaw.wait()
            finally:
                s.waiting -= 1
            raise pyfuse3.FUSEError(errno.EIO)  # never done: its caller is dead
        if find(s.hang, op, path):
            ev = s.release
            s.waiting += 1
            print("hang", op, path, flush=True)
            try:
                await ev.wait()
            finally:
                s.waiting -= 1
        key = find(s.fail, op, path)
        if key:
            print("fail", op, path, flush=True)
            raise pyfuse3.FUSEError(s.fail[key])

    import fcntl

    def fcntl_lock(on):
        fcntl.lockf(clock_fd, fcntl.LOCK_EX if on else fcntl.LOCK_UN)

    def matches(rule_path, path):
        if rule_path == "*":
            return True
        if rule_path == "":
            return path == ""
        return path == rule_path or path.startswith(rule_path + "/")

    def find(table, op, path):
        for (rop, rpath) in (table if isinstance(table, set) else table.keys()):
            if rop in (op, "any") and matches(rpath, path):
                return (rop, rpath)
        return None

    def oserr(e):
        return pyfuse3.FUSEError(e.errno or errno.EIO)

    class Ops(pyfuse3.Operations):
        def attrs(self, path):
            try:
                st = os.lstat(path)
            except OSError as e:
                raise oserr(e)
            a = pyfuse3.EntryAttributes()
            for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_atime_ns",
                      "st_mtime_ns", "st_ctime_ns"):
                setattr(a, k, getattr(st, k))
            a.st_blksize = st.st_blksize
            a.st_blocks = st.st_blocks
            a.st_ino = vino_of(path, st)
            a.generation = 0
            a.entry_timeout = 0
            a.attr_timeout = 0
            return a

        def child(self, parent, name):
            return os.path.join(path_of(parent), os.fsdecode(name))

        async def lookup(self, parent_inode, name, ctx=None):
            path = self.child(parent_inode, name)
            await gate("lookup", rel(path), False)
            return self.attrs(path)

        async def getattr(self, inode, ctx=None):
            path = path_of(inode)
            await gate("getattr", rel(path), False)
            return self.attrs(path)

        async def setattr(self, inode, attr, fields, fh, ctx):
            path = path_of(inode)
            await gate("setattr", rel(path), True)
            try:
                if fields.update_size:
                    if fh is not None:
                        os.ftruncate(fh, attr.st_size)
                    else:
                        os.truncate(path, attr.st_size)
                if fields.update_mode and not os.path.islink(path):
                    os.chmod(path, attr.st_mode & 0o7777)
                if fields.update_uid or fields.update_gid:
                    os.chown(path, attr.st_uid if fields.update_uid else -1,
                             attr.st_gid if fields.update_gid else -1, follow_symlinks=False)
                if fields.update_atime or fields.update_mtime:
                    st = os.lstat(path)
                    at = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
                    mt = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
                    os.utime(path, ns=(at, mt), follow_symlinks=False)
            except OSError as e:
                raise oserr(e)
            return self.attrs(path)

        async def readlink(self, inode, ctx):
            try:
                return os.fsencode(os.readlink(path_of(inode)))
            except OSError as e:
                raise oserr(e)

        async def opendir(self, inode, ctx):
            await gate("open", rel(path_of(inode)), False)
            return inode

        async def readdir(self, fh, start_id, token):
            path = path_of(fh)
            await gate("readdir", rel(path), False)
            try:
                names = sorted(os.listdir(path))
            except OSError as e:
                raise oserr(e)
            for i, name in enumerate(names[start_id:], start_id + 1):
                try:
                    a = self.attrs(os.path.join(path, name))
                except pyfuse3.FUSEError:
                    continue
                if not pyfuse3.readdir_reply(token, os.fsencode(name), a, i):
                    break

        async def releasedir(self, fh):
            pass

        async def made(self, op, parent_inode, name, ctx, fn):
            path = self.child(parent_inode, name)
            await gate(op, rel(path), True)
            try:
                fn(path)
                os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
            except OSError as e:
                raise oserr(e)
            return self.attrs(path)

        async def mkdir(self, parent_inode, name, mode, ctx):
            return await self.made("mkdir", parent_inode, name, ctx, lambda p: os.mkdir(p, mode))

        async def mknod(self, parent_inode, name, mode, rdev, ctx):
            return await self.made("mknod", parent_inode, name, ctx, lambda p: os.mknod(p, mode, rdev))

        async def symlink(self, parent_inode, name, target, ctx):
            return await self.made("symlink", parent_inode, name, ctx,
                                   lambda p: os.symlink(os.fsdecode(target), p))

        async def link(self, inode, new_parent_inode, new_name, ctx):
            path = self.child(new_parent_inode, new_name)
            await gate("link", rel(path), True)
            try:
                os.link(path_of(inode), path, follow_symlinks=False)
            except OSError as e:
                raise oserr(e)
            return self.attrs(path)

        def forget_if_last(self, path):
            """A backing inode number freed by this removal may be reused."""
            try:
                st = os.lstat(path)
            except OSError:
                return
            if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
                s.b2v.pop(st.st_ino, None)

        async def unlink(self, parent_inode, name, ctx):
            path = self.child(parent_inode, name)
            await gate("unlink", rel(path), True)
            try:
                st = os.lstat(path)
                os.unlink(path)
            except OSError as e:
                raise oserr(e)
            if st.st_nlink <= 1:
                s.b2v.pop(st.st_ino, None)

        async def rmdir(self, parent_inode, name, ctx):
            path = self.child(parent_inode, name)
            await gate("rmdir", rel(path), True)
            try:
                st = os.lstat(path)
                os.rmdir(path)
            except OSError as e:
                raise oserr(e)
            s.b2v.pop(st.st_ino, None)

        async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
            old = self.child(parent_inode_old, name_old)
            new = self.child(parent_inode_new, name_new)
            await gate("rename", rel(old), True)
            try:
                vo = vino_of(old)
                vn = vino_of(new) if os.path.lexists(new) else None
                replaced = os.lstat(new) if vn is not None and flags == 0 else None
                if flags:
                    if libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
                        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
                else:
                    os.rename(old, new)
            except OSError as e:
                raise oserr(e)
            if replaced is not None and (replaced.st_nlink <= 1 or stat.S_ISDIR(replaced.st_mode)):
                s.b2v.pop(replaced.st_ino, None)
            s.pending_renames.append((parent_inode_old, os.path.basename(old), parent_inode_new,
                                      os.path.basename(new), vo))
            exchange = flags & 2
            if exchange and vn is not None:
                s.pending_renames.append((parent_inode_new, os.path.basename(new), parent_inode_old,
                                          os.path.basename(old), vn))
            for v, p in list(s.paths.items()):
                for a, b in ((old, new), (new, old)) if exchange else ((old, new),):
                    if p == a or p.startswith(a + "/"):
                        s.paths[v] = b + p[len(a):]
                        break
            # vino_of(new) after the swap, so paths are right
            vino_of(new)
            if exchange:
                vino_of(old)

        async def open(self, inode, flags, ctx):
            path = path_of(inode)
            await gate("open", rel(path), False)
            try:
                fd = os.open(path, flags & ~os.O_NOFOLLOW)
            except OSError as e:
                raise oserr(e)
            return pyfuse3.FileInfo(fh=fd, keep_cache=False)

        async def create(self, parent_inode, name, mode, flags, ctx):
            path = self.child(parent_inode, name)
            await gate("create", rel(path), True)
            try:
                fd = os.open(path, flags | os.O_CREAT, mode)
                os.fchown(fd, ctx.uid, ctx.gid)
            except OSError as e:
                raise oserr(e)
            return pyfuse3.FileInfo(fh=fd, keep_cache=False), self.attrs(path)

        def fd_path(self, fh):
            try:
                return os.readlink("/proc/self/fd/%d" % fh)
            except OSError:
                return "?"

        async def read(self, fh, off, size):
            await gate("read", rel(self.fd_path(fh)), False)
            try:
                return os.pread(fh, size, off)
            except OSError as e:
                raise oserr(e)

        async def write(self, fh, off, buf):
            await gate("write", rel(self.fd_path(fh)), True)
            if s.enospc is not None:
                if len(buf) > s.enospc:
                    raise pyfuse3.FUSEError(errno.ENOSPC)
                s.enospc -= len(buf)
            try:
                return os.pwrite(fh, buf, off)
            except OSError as e:
                raise oserr(e)

        async def flush(self, fh):
            pass

        async def fsync(self, fh, datasync):
            path = self.fd_path(fh)
            await gate("fsync", rel(path), True)
            try:
                sync_file(vino_of(path, os.fstat(fh)))
            except OSError as e:
                raise oserr(e)

        async def release(self, fh):
            os.close(fh)

        async def fsyncdir(self, fh, datasync):
            await gate("fsyncdir", rel(path_of(fh)), True)
            try:
                sync_dir(fh)
            except OSError as e:
                raise oserr(e)

        async def statfs(self, ctx):
            st = os.statvfs(backing)
            r = pyfuse3.StatvfsData()
            for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                      "f_favail", "f_namemax"):
                setattr(r, k, getattr(st, k))
            return r

        async def getxattr(self, inode, name, ctx):
            try:
                return os.getxattr(path_of(inode), os.fsdecode(name), follow_symlinks=False)
            except OSError as e:
                raise pyfuse3.FUSEError(errno.ENODATA if e.errno == errno.ENODATA else e.errno)

        async def setxattr(self, inode, name, value, ctx):
            path = path_of(inode)
            if os.fsdecode(name) == SYNCFS_XATTR:  # the shim's syncfs
                await gate("syncfs", rel(path), True)
                try:
                    sync_all()
                except OSError as e:
                    raise oserr(e)
                return
            await gate("setxattr", rel(path), True)
            try:
                os.setxattr(path, os.fsdecode(name), value, follow_symlinks=False)
            except OSError as e:
                raise oserr(e)

        async def listxattr(self, inode, ctx):
            try:
                return [os.fsencode(n) for n in os.listxattr(path_of(inode), follow_symlinks=False)]
            except OSError as e:
                raise oserr(e)

        async def removexattr(self, inode, name, ctx):
            path = path_of(inode)
            await gate("setxattr", rel(path), True)
            try:
                os.removexattr(path, os.fsdecode(name), follow_symlinks=False)
            except OSError as e:
                raise oserr(e)

    def command(words):
        cmd = words[0] if words else ""
        if cmd in ("fail", "hang"):
            op, path = words[1], (words[2] if len(words) > 2 else "")
            if op not in OPS:
                raise ValueError("unknown op " + op)
            path = "" if path in (".", "/") else path.strip("/") if path != "*" else path
            if cmd == "fail":
                s.fail[(op, path)] = getattr(errno, words[3]) if len(words) > 3 else errno.EIO
            else:
                s.hang.add((op, path))
        elif cmd in ("release", "clear"):
            s.hang.clear()
            s.release.set()
            s.release = trio.Event()
            if cmd == "clear":
                s.fail.clear()
                s.enospc = None
        elif cmd == "enospc":
            s.enospc = int(words[1])
        elif cmd == "cut":
            fcntl_lock(True)
            n, _, fr = struct.unpack_from("<QQQ", clock, 0)
            struct.pack_into("<QQQ", clock, 0, n, int(words[1]), fr)
            fcntl_lock(False)
        elif cmd == "freeze":  # the power goes now
            fcntl_lock(True)
            n, cut, _ = struct.unpack_from("<QQQ", clock, 0)
            struct.pack_into("<QQQ", clock, 0, n, cut, 1)
            fcntl_lock(False)
            print("power cut now, after operation", n, flush=True)
        elif cmd == "count":
            return "ok %d" % struct.unpack_from("<Q", clock, 0)[0]
        elif cmd == "cutinfo":
            return "ok " + s.cut_info
        elif cmd == "oplog":
            return "ok " + json.dumps(s.oplog)
        elif cmd == "frozen":
            return "ok %d" % int(frozen())
        elif cmd == "hung":
            return "ok %d" % s.waiting
        elif cmd == "restore":
            if not frozen():
                raise ValueError("the power is on")
            s.thaw.set()  # the frozen requests fail, never done
            s.thaw = trio.Event()
            restore()
        elif cmd == "thaw":  # every mount restored: the power is back
            fcntl_lock(True)
            struct.pack_into("<QQQ", clock, 0, 0, 0, 0)
            fcntl_lock(False)
            s.cut_info = ""
            s.oplog = []
            s.thaw.set()
            s.thaw = trio.Event()
        elif cmd == "sync":
            sync_all()
        elif cmd != "ping":
            raise ValueError("unknown command " + cmd)
        return "ok"

    async def control_client(conn):
        with conn:
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = await conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            try:
                reply = command(buf.decode().split())
            except (ValueError, IndexError, AttributeError, OSError) as e:
                reply = "error %r" % e
            out = reply.encode() + b"\n"
            while out:  # send(2) may take part of a long reply (oplog)
                out = out[await conn.send(out):]

    async def control_server():
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        # The socket appears under its name only once it listens: the test
        # side connects as soon as it sees the name (bind alone would let
        # that connect be refused).
        tmp = control + ".tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)
        await sock.bind(tmp)
        sock.listen(8)
        os.rename(tmp, control)
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await sock.accept()
                nursery.start_soon(control_client, conn)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control_server)
            await pyfuse3.main(max_tasks=64)
            nursery.cancel_scope.cancel()

    sync_all()  # what is there at mount time is on the disk
    options = set(pyfuse3.default_options)
    options.add("fsname=crashfs")
    options.add("allow_other")
    pyfuse3.init(Ops(), mountpoint, options)
    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=False)
        if os.path.exists(control):
            os.unlink(control)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: crashfs.py BACKING MOUNTPOINT CONTROL_SOCKET CLOCK_FILE")
    serve(os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
