"""faultfs: a small FUSE passthrough filesystem that misbehaves on demand, for
the integration tests (a dying disk, a hung NFS mount).

It mirrors a backing directory at a mount point (the pass-through is
tests/fuse/passfs.py) and obeys rules sent over a Unix control socket, one
line per command, answered with one line ("ok ..." or "error ..."):

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

Test side (any Python): FaultFS(backing, mountpoint).start() ... .stop()
(tests/fuse/fusemount.py: stop() releases waiting requests before it unmounts
and never leaves a hung mount behind).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuse"))
from fusemount import FuseMount  # noqa: E402

OPS = ("lookup", "getattr", "open", "read", "write", "fsync", "create", "mkdir", "readdir", "unlink",
       "rmdir", "rename", "any")


# --- test side -------------------------------------------------------------------

class FaultFS(FuseMount):
    """Runs faultfs.py in a child process and talks to it."""
    NAME = "faultfs"
    SCRIPT = os.path.abspath(__file__)

    def slow(self, op, path, ms_per_mib):
        self.command("slow %s %s %d" % (op, path, ms_per_mib))


# --- server side -------------------------------------------------------------------

def serve(backing, mountpoint, control):
    import passfs
    import trio

    class FaultOps(passfs.PassFS):
        OPS = OPS

        def __init__(self):
            super().__init__(backing)
            self.slow = {}  # (op, path) -> ms per MiB
            self.slow_lock = trio.Lock()

        async def gate(self, op, path, nbytes=0):
            if op not in OPS:
                return  # not an op rules name (mknod, setxattr...): never held
            slow = passfs.find(self.slow, op, path)
            if slow:
                async with self.slow_lock:
                    mib = nbytes / (1 << 20) if nbytes else 1
                    # The rule may have been cleared while this request waited for the lock.
                    await trio.sleep(self.slow.get(slow, 0) / 1000.0 * mib)
            await super().gate(op, path)

        def clear(self):
            super().clear()
            self.slow.clear()

        def command(self, words):
            if words and words[0] == "slow":
                self.slow[self.rule(words)] = int(words[3])
                return "ok"
            return super().command(words)

    passfs.serve(FaultOps(), "faultfs", mountpoint, control)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: faultfs.py BACKING MOUNTPOINT CONTROL_SOCKET")
    serve(os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3])
