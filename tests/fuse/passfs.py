"""passfs: the FUSE pass-through under the test filesystems (faultfs, crashfs),
server side: it mirrors a backing directory at a mount point, obeys the fault
rules every test filesystem has, and answers a Unix control socket.

PassFS is a pyfuse3.Operations that serves every request from the backing
tree. Before a request does anything it passes gate(op, path, nbytes), the
hook the filesystems build on (faultfs: fail, hang, slow; crashfs: the power
cut and its durability bookkeeping). The base gate applies the two rules both
have: "hang OP PATH" waits until "release", "fail OP PATH [ERRNO]" fails.
The ops gated and the names they pass: lookup getattr setattr opendir readdir
mkdir mknod symlink link unlink rmdir rename (the old path) open create read
write fsync fsyncdir setxattr removexattr; PATH is relative to the backing
root ("" for the root). Lookups and attributes are never cached by the
kernel (timeouts 0), so every path walk reaches the gate.

Inode numbers are the backing tree's own (inode_of; crashfs keeps its own).
rename(2) with RENAME_NOREPLACE is served (checked, then renamed); any other
flag is refused with EINVAL (rename_backing; crashfs passes every flag on).

Control: serve() listens on CONTROL_SOCKET; each connection sends one line,
which command() answers with one line ("ok ..." or "error ..."). The base
commands: fail, hang, release, clear, hung, ping (see faultfs.py).

Needs Debian's python3-pyfuse3 (run by /usr/bin/python3); the test side's
process wrapper is fusemount.py, which needs neither.
"""
import errno
import os

import pyfuse3
import trio

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def oserr(e):
    return pyfuse3.FUSEError(e.errno or errno.EIO)


def call(fn, *args, **kwargs):
    """fn(*args), its OSError answered as the request's error."""
    try:
        return fn(*args, **kwargs)
    except OSError as e:
        raise oserr(e)


def matches(rule_path, path):
    if rule_path == "*":
        return True
    if rule_path == "":
        return path == ""
    return path == rule_path or path.startswith(rule_path + "/")


def find(table, op, path):
    """The key of the first rule of table (a set or a dict keyed by (op, path))
    for op (or "any") on path or above it, or None."""
    for (rop, rpath) in (table if isinstance(table, set) else table.keys()):
        if rop in (op, "any") and matches(rpath, path):
            return (rop, rpath)
    return None


class PassFS(pyfuse3.Operations):
    OPS = ()  # the ops a rule may name (the filesystem's own list)

    def __init__(self, backing):
        super().__init__()
        self.backing = backing
        self.paths = {pyfuse3.ROOT_INODE: backing}
        self.fail = {}  # (op, path) -> errno
        self.hang = set()
        self.release_ev = trio.Event()
        self.waiting = 0  # requests waiting now (the "hung" command)

    # --- rules -----------------------------------------------------------------
    async def gate(self, op, path, nbytes=0):
        """Every request passes here first: a hang rule holds it until
        "release", then a fail rule fails it."""
        if find(self.hang, op, path):
            ev = self.release_ev
            self.waiting += 1
            print("hang", op, path, flush=True)
            try:
                await ev.wait()
            finally:
                self.waiting -= 1
        key = find(self.fail, op, path)
        if key:
            print("fail", op, path, flush=True)
            raise pyfuse3.FUSEError(self.fail[key])

    def release_all(self):
        self.hang.clear()
        self.release_ev.set()
        self.release_ev = trio.Event()

    def clear(self):
        """release, then drop every rule (filesystems drop their own too)."""
        self.release_all()
        self.fail.clear()

    def rule(self, words):
        """(op, path) of a rule command "CMD OP [PATH] ...": "." and "/" are
        the root, other paths lose their slashes at either end."""
        op, path = words[1], (words[2] if len(words) > 2 else "")
        if op not in self.OPS:
            raise ValueError("unknown op " + op)
        return op, ("" if path in (".", "/") else path.strip("/") if path != "*" else path)

    def command(self, words):
        """Answers one control line (split into words); raises ValueError (or
        IndexError, AttributeError, OSError) for a bad one."""
        cmd = words[0] if words else ""
        if cmd == "fail":
            self.fail[self.rule(words)] = getattr(errno, words[3]) if len(words) > 3 else errno.EIO
        elif cmd == "hang":
            self.hang.add(self.rule(words))
        elif cmd == "release":
            self.release_all()
        elif cmd == "clear":
            self.clear()
        elif cmd == "hung":
            return "ok %d" % self.waiting
        elif cmd != "ping":
            raise ValueError("unknown command " + cmd)
        return "ok"

    # --- inodes and paths --------------------------------------------------------
    def rel(self, path):
        if path == "?":  # a descriptor whose path is unknown (fd_path)
            return path
        r = os.path.relpath(path, self.backing)
        return "" if r == "." else r

    def path_of(self, inode):
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT)

    def inode_of(self, path, st=None):
        """The inode number shown for path (and path remembered for it)."""
        st = st or os.lstat(path)
        ino = pyfuse3.ROOT_INODE if path == self.backing else st.st_ino
        self.paths[ino] = path
        return ino

    def child(self, parent, name):
        return os.path.join(self.path_of(parent), os.fsdecode(name))

    def fd_path(self, fh):
        try:
            return os.readlink("/proc/self/fd/%d" % fh)
        except OSError:
            return "?"

    def attrs(self, path, st=None):
        st = st or call(os.lstat, path)
        a = pyfuse3.EntryAttributes()
        for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_atime_ns",
                  "st_mtime_ns", "st_ctime_ns"):
            setattr(a, k, getattr(st, k))
        a.st_blksize = st.st_blksize
        a.st_blocks = st.st_blocks
        a.st_ino = self.inode_of(path, st)
        a.generation = 0
        a.entry_timeout = 0
        a.attr_timeout = 0
        return a

    # --- hooks for what a filesystem does beside the backing tree ----------------
    def unlinked(self, st):
        """An entry with these (pre-removal) attributes was removed."""

    def rename_backing(self, parent_old, old, parent_new, new, flags):
        """Renames in the backing tree; returns what renamed() gets."""
        # RENAME_NOREPLACE is kept (the reclaim renames with it); any other
        # flag is not served.
        if flags & ~RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if flags & RENAME_NOREPLACE and os.path.lexists(new):
            raise pyfuse3.FUSEError(errno.EEXIST)
        os.rename(old, new)

    def renamed(self, parent_old, old, parent_new, new, flags, before):
        """After a rename, once the path table follows it."""

    def sync_fd(self, fh, path):
        os.fsync(fh)

    def sync_dir(self, inode):
        pass

    # --- the requests ----------------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        path = self.child(parent_inode, name)
        await self.gate("lookup", self.rel(path))
        return self.attrs(path)

    async def getattr(self, inode, ctx=None):
        path = self.path_of(inode)
        await self.gate("getattr", self.rel(path))
        return self.attrs(path)

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self.path_of(inode)
        await self.gate("setattr", self.rel(path))
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
        return os.fsencode(call(os.readlink, self.path_of(inode)))

    async def opendir(self, inode, ctx):
        await self.gate("opendir", self.rel(self.path_of(inode)))
        return inode

    async def readdir(self, fh, start_id, token):
        path = self.path_of(fh)
        await self.gate("readdir", self.rel(path))
        names = sorted(call(os.listdir, path))
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
        """Makes an entry with fn(path), owned by the caller."""
        path = self.child(parent_inode, name)
        await self.gate(op, self.rel(path))
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
        return await self.made("symlink", parent_inode, name, ctx, lambda p: os.symlink(os.fsdecode(target), p))

    async def link(self, inode, new_parent_inode, new_name, ctx):
        path = self.child(new_parent_inode, new_name)
        await self.gate("link", self.rel(path))
        call(os.link, self.path_of(inode), path, follow_symlinks=False)
        return self.attrs(path)

    async def removed(self, op, parent_inode, name, fn):
        """Removes an entry with fn(path)."""
        path = self.child(parent_inode, name)
        await self.gate(op, self.rel(path))
        try:
            st = os.lstat(path)
            fn(path)
        except OSError as e:
            raise oserr(e)
        self.unlinked(st)

    async def unlink(self, parent_inode, name, ctx):
        await self.removed("unlink", parent_inode, name, os.unlink)

    async def rmdir(self, parent_inode, name, ctx):
        await self.removed("rmdir", parent_inode, name, os.rmdir)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old = self.child(parent_inode_old, name_old)
        new = self.child(parent_inode_new, name_new)
        await self.gate("rename", self.rel(old))
        before = call(self.rename_backing, parent_inode_old, old, parent_inode_new, new, flags)
        exchange = flags & RENAME_EXCHANGE
        for ino, p in list(self.paths.items()):
            for a, b in ((old, new), (new, old)) if exchange else ((old, new),):
                if p == a or p.startswith(a + "/"):
                    self.paths[ino] = b + p[len(a):]
                    break
        self.renamed(parent_inode_old, old, parent_inode_new, new, flags, before)

    async def open(self, inode, flags, ctx):
        path = self.path_of(inode)
        await self.gate("open", self.rel(path))
        fd = call(os.open, path, flags & ~os.O_NOFOLLOW)
        return pyfuse3.FileInfo(fh=fd, keep_cache=False)

    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self.child(parent_inode, name)
        await self.gate("create", self.rel(path))
        try:
            fd = os.open(path, flags | os.O_CREAT, mode)
            os.fchown(fd, ctx.uid, ctx.gid)
        except OSError as e:
            raise oserr(e)
        return pyfuse3.FileInfo(fh=fd, keep_cache=False), self.attrs(path)

    async def read(self, fh, off, size):
        await self.gate("read", self.rel(self.fd_path(fh)), size)
        return call(os.pread, fh, size, off)

    async def write(self, fh, off, buf):
        await self.gate("write", self.rel(self.fd_path(fh)), len(buf))
        return call(os.pwrite, fh, buf, off)

    async def flush(self, fh):
        pass

    async def fsync(self, fh, datasync):
        path = self.fd_path(fh)
        await self.gate("fsync", self.rel(path))
        call(self.sync_fd, fh, path)

    async def release(self, fh):
        os.close(fh)

    async def fsyncdir(self, fh, datasync):
        await self.gate("fsyncdir", self.rel(self.path_of(fh)))
        call(self.sync_dir, fh)

    async def statfs(self, ctx):
        st = os.statvfs(self.backing)
        s = pyfuse3.StatvfsData()
        for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                  "f_favail", "f_namemax"):
            setattr(s, k, getattr(st, k))
        return s

    async def getxattr(self, inode, name, ctx):
        return call(os.getxattr, self.path_of(inode), os.fsdecode(name), follow_symlinks=False)

    async def setxattr(self, inode, name, value, ctx):
        path = self.path_of(inode)
        await self.gate("setxattr", self.rel(path))
        call(os.setxattr, path, os.fsdecode(name), value, follow_symlinks=False)

    async def listxattr(self, inode, ctx):
        return [os.fsencode(n) for n in call(os.listxattr, self.path_of(inode), follow_symlinks=False)]

    async def removexattr(self, inode, name, ctx):
        path = self.path_of(inode)
        await self.gate("removexattr", self.rel(path))
        call(os.removexattr, path, os.fsdecode(name), follow_symlinks=False)


# --- the control socket and the mount -------------------------------------------------

async def control_client(fs, conn):
    with conn:
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = await conn.recv(4096)
            if not chunk:
                return
            buf += chunk
        try:
            reply = fs.command(buf.decode().split())
        except (ValueError, IndexError, AttributeError, OSError) as e:
            reply = "error %r" % e
        out = reply.encode() + b"\n"
        while out:  # send(2) may take part of a long reply (crashfs' oplog)
            out = out[await conn.send(out):]


async def control_server(fs, control):
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
            nursery.start_soon(control_client, fs, conn)


def serve(fs, fsname, mountpoint, control):
    """Mounts fs (a PassFS) at mountpoint and serves it and its control
    socket until it is unmounted."""
    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control_server, fs, control)
            await pyfuse3.main(max_tasks=64)
            nursery.cancel_scope.cancel()

    options = set(pyfuse3.default_options)
    options.add("fsname=" + fsname)
    options.add("allow_other")
    pyfuse3.init(fs, mountpoint, options)
    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=False)
        if os.path.exists(control):
            os.unlink(control)
