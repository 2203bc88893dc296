"""fusemount: the test side of a test filesystem (faultfs, crashfs): runs its
server (a passfs.PassFS, under Debian's /usr/bin/python3 with pyfuse3) in a
child process and talks to its control socket. Any Python runs this side.

stop() always clears the rules first (a hung request would otherwise keep the
mount and its users stuck), then unmounts with fusermount3 -u, falling back
to umount -l and the connection's abort switch in /sys/fs/fuse/connections,
so no hung mount is ever left behind.
"""
import os
import socket
import subprocess
import time

FUSE_PYTHON = "/usr/bin/python3"  # Debian's, with pyfuse3 and trio


class FuseMount:
    """A subclass names its server (NAME, SCRIPT: run as SCRIPT ARGS...)."""
    NAME = None
    SCRIPT = None
    LOG_MODE = "w"  # the log beside the mount point: "a" keeps earlier runs'
    COMMAND_TIMEOUT = 10

    def __init__(self, backing, mountpoint):
        self.backing = backing
        self.mountpoint = mountpoint
        self.control = mountpoint.rstrip("/") + ".ctl"
        self.log_path = mountpoint.rstrip("/") + ".log"
        self.proc = None
        self.conn_id = None

    def args(self):
        """The server's arguments."""
        return [self.backing, self.mountpoint, self.control]

    def start(self, timeout=20):
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        if not os.path.exists(FUSE_PYTHON):
            raise AssertionError("%s needs %s with pyfuse3 (Debian: python3-pyfuse3)" % (self.NAME, FUSE_PYTHON))
        self.log = open(self.log_path, self.LOG_MODE)
        self.proc = subprocess.Popen([FUSE_PYTHON, self.SCRIPT] + self.args(), stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("%s exited at start: %s" % (self.NAME, self.read_log()))
            if os.path.ismount(self.mountpoint) and os.path.exists(self.control):
                self.conn_id = os.minor(os.stat(self.mountpoint).st_dev)
                try:
                    self.command("ping")
                    return self
                except ConnectionRefusedError:
                    pass  # bound, not listening yet
            time.sleep(0.05)
        self.stop()
        raise AssertionError("%s did not come up: %s" % (self.NAME, self.read_log()))

    def read_log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def command(self, line, timeout=None):
        """Sends one control line; returns the reply after its "ok"."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout or self.COMMAND_TIMEOUT)
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
            raise AssertionError("%s %r: %r" % (self.NAME, line, reply))
        return reply[2:].strip()

    def fail(self, op, path, err="EIO"):
        self.command("fail %s %s %s" % (op, path, err))

    def hang(self, op, path):
        self.command("hang %s %s" % (op, path))

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
