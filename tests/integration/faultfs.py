"""faultfs: a small FUSE passthrough filesystem that misbehaves on demand, for
the integration tests (a dying disk, a hung NFS mount).

It mirrors a backing directory at a mount point and obeys rules sent over a
Unix control socket, one line per command, answered with one line ("ok ..."
or "error ..."):

    fail OP PATH [ERRNO]   OP on PATH fails with ERRNO (default EIO)
    hang OP PATH           OP on PATH waits until "release"
    slow OP PATH MS        OP on PATH takes MS milliseconds per MiB it moves
                           (read, write; MS per request for the others), one
                           request at a time: a slow disk still making progress
    release                lets every waiting request go on and drops the
                           hang rules (fail rules stay)
    clear                  release, then drop every rule
    hung                   "ok N": how many requests are waiting now
    ping                   "ok"

OP is one of lookup, getattr, open, read, write, fsync, create, mkdir,
readdir, unlink, rmdir, rename (matched on the old path), or "any". PATH is relative to the mount point ("srv/world.img",
"" for the root), or "*" for every path. A rule for a directory also matches
everything below it ("srv" matches "srv/a/b"). Lookups and attributes are
never cached by the kernel (timeouts 0), so every path walk reaches us.
rename(2) with RENAME_NOREPLACE is served (checked, then renamed: nothing else
renames behind the tests' back); other rename flags are refused (EINVAL).

Server side (needs Debian's python3-pyfuse3; run with /usr/bin/python3):
    python3 faultfs.py BACKING MOUNTPOINT CONTROL_SOCKET

Test side (any Python): FaultFS(backing, mountpoint).start() ... .stop().
stop() always releases waiting requests before it unmounts (a hung request
would otherwise keep the mount and its users stuck), then unmounts with
fusermount3 -u, falling back to umount -l and the connection's abort switch in
/sys/fs/fuse/connections, so no hung mount is ever left behind.
"""
import errno
import os
import socket
import subprocess
import sys
import time

FUSE_PYTHON = "/usr/bin/python3"  # Debian's, with pyfuse3 and trio
OPS = ("lookup", "getattr", "open", "read", "write", "fsync", "create", "mkdir", "readdir", "unlink",
       "rmdir", "rename", "any")
RENAME_NOREPLACE = 1


# --- test side -------------------------------------------------------------------

class FaultFS:
    """Runs faultfs.py in a child process and talks to it."""

    def __init__(self, backing, mountpoint):
        self.backing = backing
        self.mountpoint = mountpoint
        self.control = mountpoint.rstrip("/") + ".ctl"
        self.proc = None
        self.log_path = mountpoint.rstrip("/") + ".log"
        self.conn_id = None

    def start(self, timeout=20):
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        if not os.path.exists(FUSE_PYTHON):
            raise AssertionError("faultfs needs %s with pyfuse3 (Debian: python3-pyfuse3)" % FUSE_PYTHON)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([FUSE_PYTHON, os.path.abspath(__file__), self.backing, self.mountpoint,
                                      self.control], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("faultfs exited at start: %s" % self.read_log())
            if os.path.ismount(self.mountpoint) and os.path.exists(self.control):
                self.conn_id = os.minor(os.stat(self.mountpoint).st_dev)
                self.command("ping")
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError("faultfs did not come up: %s" % self.read_log())

    def read_log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def command(self, line, timeout=10):
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
            raise AssertionError("faultfs %r: %r" % (line, reply))
        return reply[2:].strip()

    def fail(self, op, path, err="EIO"):
        self.command("fail %s %s %s" % (op, path, err))

    def hang(self, op, path):
        self.command("hang %s %s" % (op, path))

    def slow(self, op, path, ms_per_mib):
        self.command("slow %s %s %d" % (op, path, ms_per_mib))

    def release(self):
        self.command("release")

    def clear(self):
        self.command("clear")

    def hung(self):
        return int(self.command("hung"))

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.command("clear", timeout=5)
            except (OSError, AssertionError):
                pass
        unmounted = False
        for _ in range(50):
            if not os.path.ismount(self.mountpoint):
                unmounted = True
                break
            if subprocess.run(["fusermount3", "-u", self.mountpoint], stderr=subprocess.DEVNULL).returncode == 0:
                unmounted = True
                break
            time.sleep(0.1)
        if not unmounted:
            # Still busy (a user has a file open): detach it, and abort the
            # connection so that nobody can stay blocked on it.
            subprocess.run(["umount", "-l", self.mountpoint], stderr=subprocess.DEVNULL)
            self.abort()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.abort()
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.log.close()

    def abort(self):
        if self.conn_id is not None:
            try:
                with open("/sys/fs/fuse/connections/%d/abort" % self.conn_id, "w") as f:
                    f.write("1")
            except OSError:
                pass


# --- server side -------------------------------------------------------------------

def serve(backing, mountpoint, control):
    import pyfuse3
    import trio

    class Rules:
        def __init__(self):
            self.fail = {}  # (op, path) -> errno
            self.hang = set()
            self.slow = {}  # (op, path) -> ms per MiB
            self.slow_lock = trio.Lock()
            self.release = trio.Event()
            self.waiting = 0

        @staticmethod
        def matches(rule_path, path):
            if rule_path == "*":
                return True
            if rule_path == "":
                return path == ""
            return path == rule_path or path.startswith(rule_path + "/")

        def find(self, table, op, path):
            for (rop, rpath) in (table if isinstance(table, set) else table.keys()):
                if rop in (op, "any") and self.matches(rpath, path):
                    return (rop, rpath)
            return None

        async def apply(self, op, path, nbytes=0):
            slow = self.find(self.slow, op, path)
            if slow:
                async with self.slow_lock:
                    mib = nbytes / (1 << 20) if nbytes else 1
                    # The rule may have been cleared while this request waited for the lock.
                    await trio.sleep(self.slow.get(slow, 0) / 1000.0 * mib)
            if self.find(self.hang, op, path):
                ev = self.release
                self.waiting += 1
                print("hang", op, path, flush=True)
                try:
                    await ev.wait()
                finally:
                    self.waiting -= 1
            key = self.find(self.fail, op, path)
            if key:
                print("fail", op, path, flush=True)
                raise pyfuse3.FUSEError(self.fail[key])

        def do_release(self):
            self.hang.clear()
            self.release.set()
            self.release = trio.Event()

    rules = Rules()

    class Ops(pyfuse3.Operations):
        def __init__(self):
            super().__init__()
            self.paths = {pyfuse3.ROOT_INODE: backing}

        def rel(self, path):
            r = os.path.relpath(path, backing)
            return "" if r == "." else r

        def path_of(self, inode):
            try:
                return self.paths[inode]
            except KeyError:
                raise pyfuse3.FUSEError(errno.ENOENT)

        def inode_of(self, path, st):
            ino = pyfuse3.ROOT_INODE if path == backing else st.st_ino
            self.paths[ino] = path
            return ino

        def attrs(self, path, st=None):
            try:
                st = st or os.lstat(path)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)
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

        def child(self, parent, name):
            return os.path.join(self.path_of(parent), os.fsdecode(name))

        async def lookup(self, parent_inode, name, ctx=None):
            path = self.child(parent_inode, name)
            await rules.apply("lookup", self.rel(path))
            return self.attrs(path)

        async def getattr(self, inode, ctx=None):
            path = self.path_of(inode)
            await rules.apply("getattr", self.rel(path))
            return self.attrs(path)

        async def setattr(self, inode, attr, fields, fh, ctx):
            path = self.path_of(inode)
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
                raise pyfuse3.FUSEError(e.errno)
            return self.attrs(path)

        async def readlink(self, inode, ctx):
            try:
                return os.fsencode(os.readlink(self.path_of(inode)))
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start_id, token):
            path = self.path_of(fh)
            await rules.apply("readdir", self.rel(path))
            try:
                names = sorted(os.listdir(path))
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)
            for i, name in enumerate(names[start_id:], start_id + 1):
                try:
                    a = self.attrs(os.path.join(path, name))
                except pyfuse3.FUSEError:
                    continue
                if not pyfuse3.readdir_reply(token, os.fsencode(name), a, i):
                    break

        async def releasedir(self, fh):
            pass

        async def mkdir(self, parent_inode, name, mode, ctx):
            path = self.child(parent_inode, name)
            await rules.apply("mkdir", self.rel(path))
            try:
                os.mkdir(path, mode)
                os.chown(path, ctx.uid, ctx.gid)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)
            return self.attrs(path)

        async def mknod(self, parent_inode, name, mode, rdev, ctx):
            path = self.child(parent_inode, name)
            try:
                os.mknod(path, mode, rdev)
                os.chown(path, ctx.uid, ctx.gid)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)
            return self.attrs(path)

        async def symlink(self, parent_inode, name, target, ctx):
            path = self.child(parent_inode, name)
            try:
                os.symlink(os.fsdecode(target), path)
                os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)
            return self.attrs(path)

        async def link(self, inode, new_parent_inode, new_name, ctx):
            path = self.child(new_parent_inode, new_name)
            try:
                os.link(self.path_of(inode), path, follow_symlinks=False)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)
            return self.attrs(path)

        async def unlink(self, parent_inode, name, ctx):
            path = self.child(parent_inode, name)
            await rules.apply("unlink", self.rel(path))
            try:
                os.unlink(path)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)

        async def rmdir(self, parent_inode, name, ctx):
            path = self.child(parent_inode, name)
            await rules.apply("rmdir", self.rel(path))
            try:
                os.rmdir(path)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)

        async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
            old = self.child(parent_inode_old, name_old)
            new = self.child(parent_inode_new, name_new)
            await rules.apply("rename", self.rel(old))
            # RENAME_NOREPLACE is kept (the reclaim renames with it); any
            # other flag is not served.
            if flags & ~RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EINVAL)
            if flags & RENAME_NOREPLACE and os.path.lexists(new):
                raise pyfuse3.FUSEError(errno.EEXIST)
            try:
                os.rename(old, new)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)
            for ino, p in list(self.paths.items()):
                if p == old or p.startswith(old + "/"):
                    self.paths[ino] = new + p[len(old):]

        async def open(self, inode, flags, ctx):
            path = self.path_of(inode)
            await rules.apply("open", self.rel(path))
            try:
                fd = os.open(path, flags & ~os.O_NOFOLLOW)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)
            return pyfuse3.FileInfo(fh=fd, keep_cache=False)

        async def create(self, parent_inode, name, mode, flags, ctx):
            path = self.child(parent_inode, name)
            await rules.apply("create", self.rel(path))
            try:
                fd = os.open(path, flags | os.O_CREAT, mode)
                os.fchown(fd, ctx.uid, ctx.gid)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)
            return pyfuse3.FileInfo(fh=fd, keep_cache=False), self.attrs(path)

        def fd_path(self, fh):
            try:
                return self.rel(os.readlink("/proc/self/fd/%d" % fh))
            except OSError:
                return "?"

        async def read(self, fh, off, size):
            await rules.apply("read", self.fd_path(fh), size)
            try:
                return os.pread(fh, size, off)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)

        async def write(self, fh, off, buf):
            await rules.apply("write", self.fd_path(fh), len(buf))
            try:
                return os.pwrite(fh, buf, off)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)

        async def flush(self, fh):
            pass

        async def fsync(self, fh, datasync):
            await rules.apply("fsync", self.fd_path(fh))
            try:
                os.fsync(fh)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)

        async def release(self, fh):
            os.close(fh)

        async def fsyncdir(self, fh, datasync):
            pass

        async def statfs(self, ctx):
            st = os.statvfs(backing)
            s = pyfuse3.StatvfsData()
            for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                      "f_favail", "f_namemax"):
                setattr(s, k, getattr(st, k))
            return s

        async def getxattr(self, inode, name, ctx):
            try:
                return os.getxattr(self.path_of(inode), os.fsdecode(name), follow_symlinks=False)
            except OSError as e:
                raise pyfuse3.FUSEError(errno.ENODATA if e.errno == errno.ENODATA else e.errno)

        async def setxattr(self, inode, name, value, ctx):
            try:
                os.setxattr(self.path_of(inode), os.fsdecode(name), value, follow_symlinks=False)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)

        async def listxattr(self, inode, ctx):
            try:
                return [os.fsencode(n) for n in os.listxattr(self.path_of(inode), follow_symlinks=False)]
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)

        async def removexattr(self, inode, name, ctx):
            try:
                os.removexattr(self.path_of(inode), os.fsdecode(name), follow_symlinks=False)
            except OSError as e:
                raise pyfuse3.FUSEError(e.errno)

    async def control_client(conn):
        with conn:
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = await conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            words = buf.decode().split()
            reply = "ok"
            try:
                cmd = words[0] if words else ""
                if cmd in ("fail", "hang", "slow"):
                    op, path = words[1], (words[2] if len(words) > 2 else "")
                    if op not in OPS:
                        raise ValueError("unknown op " + op)
                    path = "" if path in (".", "/") else path.strip("/") if path != "*" else path
                    if cmd == "fail":
                        rules.fail[(op, path)] = getattr(errno, words[3]) if len(words) > 3 else errno.EIO
                    elif cmd == "slow":
                        rules.slow[(op, path)] = int(words[3])
                    else:
                        rules.hang.add((op, path))
                elif cmd == "release":
                    rules.do_release()
                elif cmd == "clear":
                    rules.do_release()
                    rules.fail.clear()
                    rules.slow.clear()
                elif cmd == "hung":
                    reply = "ok %d" % rules.waiting
                elif cmd != "ping":
                    raise ValueError("unknown command " + cmd)
            except (ValueError, IndexError, AttributeError) as e:
                reply = "error %s" % e
            await conn.send(reply.encode() + b"\n")

    async def control_server(nursery):
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
        while True:
            conn, _ = await sock.accept()
            nursery.start_soon(control_client, conn)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control_server, nursery)
            await pyfuse3.main(max_tasks=64)
            nursery.cancel_scope.cancel()

    options = set(pyfuse3.default_options)
    options.add("fsname=faultfs")
    options.add("allow_other")
    pyfuse3.init(Ops(), mountpoint, options)
    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=False)
        if os.path.exists(control):
            os.unlink(control)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: faultfs.py BACKING MOUNTPOINT CONTROL_SOCKET")
    serve(os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3])
