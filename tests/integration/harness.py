"""Shared pieces of the integration tests: the real hostagent binary, a real
WebSocket manager (tests/manager/refmanager.py), scratch directories with a
second filesystem (tmpfs), and tree snapshots that compare content and
metadata."""
import hashlib
import json
import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "manager"))
from refmanager import Manager  # noqa: E402

BIN = os.environ.get("HOSTAGENT_BIN") or os.path.join(HERE, "..", "..", "build", "hostagent")
SANITIZED = bool(os.environ.get("HOSTAGENT_SANITIZE"))



def journal_record(state_dir, move_id):
    """A move's journal record as the agent wrote it. Records are written
    into a reserved slot and may be followed by zero bytes (see journal.c)."""
    with open(os.path.join(state_dir, "moves", move_id + ".json"), "rb") as f:
        return json.loads(f.read().split(b"\0", 1)[0].decode())

def require_root():
    if os.geteuid() != 0:
        if os.environ.get("HOSTAGENT_ALLOW_SKIP_ROOT"):
            raise unittest.SkipTest("not root and HOSTAGENT_ALLOW_SKIP_ROOT is set: skipped on request")
        raise AssertionError("integration tests need root (tmpfs mounts, setpriv); "
                             "set HOSTAGENT_ALLOW_SKIP_ROOT=1 to skip them explicitly")


class Scratch:
    """A scratch directory with `a` on the disk's filesystem and `b` a tmpfs."""

    def __init__(self, tmpfs_size="256m"):
        require_root()
        self.base = tempfile.mkdtemp(prefix="hostagent-it-", dir="/var/tmp")
        os.chmod(self.base, 0o755)  # the agent may run as nobody
        self.a = os.path.join(self.base, "a")
        self.b = os.path.join(self.base, "b")
        self.state = os.path.join(self.base, "state")
        os.mkdir(self.a)
        os.mkdir(self.b)
        os.mkdir(self.state)
        self.extra_mounts = []
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + tmpfs_size, "tmpfs", self.b], check=True)
        assert os.stat(self.a).st_dev != os.stat(self.b).st_dev

    def mount(self, *args, at):
        """Mounts something more (unmounted again by close())."""
        subprocess.run(["mount", *args, at], check=True)
        self.extra_mounts.append(at)

    def close(self):
        for at in reversed(self.extra_mounts):
            subprocess.run(["umount", "-l", at], check=False)
        subprocess.run(["umount", "-l", self.b], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", self.base], check=False)


def private_hosts(scratch, text, agent=True):
    """The environment that makes a program resolve host names from `text`
    (a hosts file) instead of /etc/hosts: cwrap's nss_wrapper (Debian
    package libnss-wrapper), which keeps the file's order of addresses.
    agent: for the (maybe sanitized) agent rather than another program."""
    path = os.path.join(scratch.base, "hosts")
    with open(path, "w") as f:
        f.write(text)
    preload = ["libnss_wrapper.so"]
    if agent and SANITIZED:
        # The sanitizer runtime must come first, and its getaddrinfo
        # interceptor then calls on to nss_wrapper's (the next one).
        libs = subprocess.run(["ldd", BIN], capture_output=True, text=True, check=True).stdout.split()
        preload[:0] = [p for p in libs if re.search(r"/lib[at]san\.so", p)]
    return {"NSS_WRAPPER_HOSTS": path, "LD_PRELOAD": ":".join(preload)}


class Agent:
    """The real hostagent process with a generated config."""

    def __init__(self, manager, scratch, extra=None, env=None, user=None, roots=None, log_name="agent.log",
                 hosts=None):
        self.cfg_path = os.path.join(scratch.base, "agent.conf")
        self.log_path = os.path.join(scratch.base, log_name)
        # Each test its own control socket: agents of other checkouts may run
        # on this machine at the same time.
        self.control_socket = os.path.join(scratch.base, "run", "control.sock")
        if user and not os.path.isdir(os.path.dirname(self.control_socket)):
            os.mkdir(os.path.dirname(self.control_socket), 0o700)
            subprocess.run(["chown", user, os.path.dirname(self.control_socket)], check=True)
        conf = {
            "manager_url": manager.url,
            "agent_id": "it-agent",
            "token": "it-token-0123456789",
            "allowed_roots": ", ".join(roots or [scratch.a, scratch.b]),
            "state_dir": scratch.state,
            "heartbeat_interval": "15s",
            "ping_interval": "20s",
            "progress_interval": "100ms",
            "reconnect_min": "200ms",
            "reconnect_max": "2s",
            "log_level": "debug",
            "control_socket": self.control_socket,
        }
        conf.update(extra or {})
        with open(self.cfg_path, "w") as f:
            for k, v in conf.items():
                if v is not None:
                    f.write("%s = %s\n" % (k, v))
        os.chmod(self.cfg_path, 0o644)
        cmd = [BIN, "--config", self.cfg_path]
        if user:
            cmd = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups", "--"] + cmd
        full_env = dict(os.environ)
        full_env.pop("HOSTAGENT_TOKEN", None)
        full_env.update(env or {})
        if hosts is not None:
            full_env.update(private_hosts(scratch, hosts))
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stderr=self.logf, stdout=self.logf, env=full_env)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError("agent did not stop within %ss" % timeout)
        finally:
            self.logf.close()
        return rc

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


class AgentTestCase(unittest.TestCase):
    """Starts a manager, a scratch area and (on demand) an agent per test."""

    tmpfs_size = "256m"

    def setUp(self):
        self.scratch = Scratch(self.tmpfs_size)
        self.manager = Manager().start()
        self.agent = None

    def start_agent(self, **kw):
        self.agent = Agent(self.manager, self.scratch, **kw)
        return self.manager.wait_connection(timeout=20)

    def tearDown(self):
        try:
            if self.agent is not None and self.agent.proc.poll() is None:
                rc = self.agent.stop()
                if rc != 0:
                    print(self.agent.log()[-5000:], file=sys.stderr)
                self.assertEqual(rc, 0, "agent exit status (sanitizer or leak report in log?)")
            self.assertEqual(self.manager.errors, [])
        finally:
            self.manager.stop()
            self.scratch.close()

    # --- helpers --------------------------------------------------------
    @contextlib.contextmanager
    def frozen_workers(self, comm="ha-move"):
        """Freezes only the agent's move threads ("ha-move"; or the threads
        named comm, e.g. the reclaimer's "ha-reclaim") with the cgroup v2
        freezer: the event loop keeps running (timers, frames, requests) while
        the copy makes no progress at all. The agent goes into a cgroup of its
        own with a threaded child holding the move threads, and that child is
        frozen. cgroup2 is mounted privately, so this works the same on a
        cgroup v2 host (Debian 12), a hybrid one, and in a chroot whose /sys
        shows no cgroup mounts."""
        pid = self.agent.proc.pid
        tids = []
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                if f.read().strip() == comm:
                    tids.append(tid)
        self.assertTrue(tids, "no %s thread to freeze" % comm)
        with open("/proc/%d/cgroup" % pid) as f:
            home = [line.strip()[3:] for line in f if line.startswith("0::")]
        with contextlib.ExitStack() as undo:
            root = tempfile.mkdtemp(prefix="hostagent-cg2-")
            undo.callback(os.rmdir, root)
            r = subprocess.run(["mount", "-t", "cgroup2", "cgroup2", root], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, "the cgroup v2 freezer is needed for this test: " + r.stderr)
            undo.callback(subprocess.run, ["umount", root], check=True)
            own = os.path.join(root, "hostagent-test-%d" % os.getpid())
            cg = os.path.join(own, "move")

            def put(path, value):
                with open(path, "w") as f:
                    f.write(value)

            def frozen():
                with open(os.path.join(cg, "cgroup.events")) as f:
                    return dict(line.split() for line in f)["frozen"]

            def go_home():
                # Back where it was (all its threads follow), if it still runs.
                try:
                    put(os.path.join(root, home[0].lstrip("/") if home else "", "cgroup.procs"), str(pid))
                except ProcessLookupError:
                    pass  # it has ended
            # Undone in reverse: thaw, go home, remove the two cgroups.
            os.mkdir(own)
            undo.callback(os.rmdir, own)
            os.mkdir(cg)
            undo.callback(os.rmdir, cg)
            put(os.path.join(own, "cgroup.procs"), str(pid))
            undo.callback(go_home)
            put(os.path.join(cg, "cgroup.type"), "threaded")
            for tid in tids:
                put(os.path.join(cg, "cgroup.threads"), tid)
            undo.callback(wait_until, lambda: frozen() == "0", 10, "move threads thawed")
            undo.callback(put, os.path.join(cg, "cgroup.freeze"), "0")
            put(os.path.join(cg, "cgroup.freeze"), "1")
            wait_until(lambda: frozen() == "1", 10, "move threads frozen")
            yield

    @contextlib.contextmanager
    def paused_agent(self):
        """Freezes the agent (all its threads) while the body runs: what the
        body sends waits in the socket, and the copy resumes where it was."""
        pid = self.agent.proc.pid
        os.kill(pid, signal.SIGSTOP)
        def state():
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        wait_until(lambda: state() == "T", 10, "agent stopped")
        try:
            yield
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass  # the body killed it

    # --- killing and restarting (the journal's tests) ---------------------
    def request_move(self, server, src, dst, move_id):
        return self.manager.request("server.move_data", {"serverName": server, "oldPath": src,
                                                         "newPath": dst, "moveId": move_id})

    def wait_phase(self, move_id, phase, timeout=30):
        self.manager.wait_for(lambda: any(f["phase"] == phase for f in self.manager.frames(move_id)),
                              timeout, "%s in phase %s" % (move_id, phase))

    def kill_agent(self):
        self.agent.proc.kill()
        self.agent.proc.wait(10)
        self.agent.logf.close()

    def restart_agent(self, n, **kw):
        before = len(self.manager.connections)
        self.agent = Agent(self.manager, self.scratch, log_name="agent-%d.log" % n, **kw)
        self.manager.wait_for(lambda: len(self.manager.connections) > before, 20, "the agent reconnecting")

    def move(self, server, old, new, move_id=None, timeout=120):
        data = {"serverName": server, "oldPath": old, "newPath": new}
        if move_id:
            data["moveId"] = move_id
        reply = self.manager.request("server.move_data", data)
        return self.manager.wait_answer(reply, timeout)

    def assert_refused(self, data, code, contains=None):
        known = {f["moveId"] for f in self.manager.frames()}
        reply = self.manager.request("server.move_data", data)
        ans = self.manager.wait_answer(reply, 20)
        self.assertFalse(ans["success"], ans)
        self.assertEqual(ans["code"], code, ans)
        self.assertNotIn("moveId", ans)
        self.assertIsInstance(ans["error"], str)
        if contains:
            self.assertIn(contains, ans["error"])
        self.assertEqual({f["moveId"] for f in self.manager.frames()} - known, set(),
                         "a refused request started a move")
        return ans


# --- trees --------------------------------------------------------------------

def make_tree(root, n_small=300, big_mib=0, seed=1):
    """A game-server-like tree: nested dirs, small files with varied modes and
    nanosecond mtimes, an empty dir, relative/absolute/dangling symlinks, an
    optional big file of random-ish content. Returns the tree's root."""
    os.makedirs(root)
    rnd = seed
    dirs = [root]
    for d in ("world", "world/region", "world/data", "plugins", "plugins/conf", "logs", "empty"):
        p = os.path.join(root, d)
        os.makedirs(p, exist_ok=True)
        dirs.append(p)
    modes = [0o644, 0o600, 0o755, 0o640, 0o444, 0o4755, 0o2750]
    for i in range(n_small):
        rnd = (rnd * 1103515245 + 12345) & 0x7FFFFFFF
        d = dirs[1 + rnd % 5]
        p = os.path.join(d, "file-%04d.dat" % i)
        with open(p, "wb") as f:
            f.write(hashlib.sha256(b"%d" % i).digest() * (1 + rnd % 40))
        os.chmod(p, modes[i % len(modes)])
        os.utime(p, ns=(1600000000_000000000 + i * 1_000_001, 1650000000_123456789 + i * 7_000_003))
    with open(os.path.join(root, "name with spaces & \"quotes\".txt"), "w") as f:
        f.write("odd name\n")
    os.symlink("world/data/file-0003.dat", os.path.join(root, "rel-link"))
    os.symlink("/etc/hostname", os.path.join(root, "abs-link"))
    os.symlink("does/not/exist", os.path.join(root, "plugins", "dangling"))
    os.utime(os.path.join(root, "rel-link"), ns=(1500000000_000000001, 1500000000_999999999), follow_symlinks=False)
    if big_mib:
        with open(os.path.join(root, "world", "big.bin"), "wb") as f:
            block = hashlib.sha512(b"big").digest() * 16384  # 1 MiB
            for i in range(big_mib):
                f.write(block[i % 64:] + block[:i % 64])
    os.chmod(os.path.join(root, "plugins", "conf"), 0o750)
    for i, d in enumerate(reversed(dirs)):
        os.utime(d, ns=(1700000000_000000000 + i, 1700000000_555555555 + i))
    return root


def many_files(root, dirs=8, per_dir=1000):
    """dirs directories of per_dir empty files: slow to clean, quick to copy."""
    for d in range(dirs):
        os.makedirs(os.path.join(root, "d%d" % d))
        for i in range(per_dir):
            open(os.path.join(root, "d%d" % d, "f%d" % i), "wb").close()
    return root


def dense_tree(root, size_mib):
    """One big file of real (allocated) zero blocks, so copying it takes time."""
    os.makedirs(root)
    chunk = b"\0" * (1 << 20)
    with open(os.path.join(root, "world.img"), "wb") as f:
        for _ in range(size_mib):
            f.write(chunk)
    with open(os.path.join(root, "level.dat"), "w") as f:
        f.write("level\n")
    return root


def sparse_tree(root, size_mib):
    os.makedirs(root)
    with open(os.path.join(root, "sparse.img"), "wb") as f:
        f.truncate(size_mib << 20)
    with open(os.path.join(root, "level.dat"), "w") as f:
        f.write("level\n")
    return root


def snapshot(root, content=True):
    """rel path -> (type, mode, size, mtime_ns, uid, gid, link target, sha256)."""
    out = {}
    st = os.lstat(root)
    out["."] = ("d", stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, st.st_uid, st.st_gid, None, None)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            link = digest = None
            if stat.S_ISLNK(st.st_mode):
                kind, link = "l", os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                kind = "d"
            elif stat.S_ISREG(st.st_mode):
                kind = "f"
                if content:
                    h = hashlib.sha256()
                    with open(p, "rb") as f:
                        for chunk in iter(lambda: f.read(1 << 20), b""):
                            h.update(chunk)
                    digest = h.hexdigest()
            else:
                kind = "other"
            size = st.st_size if kind == "f" else 0
            out[rel] = (kind, stat.S_IMODE(st.st_mode), size, st.st_mtime_ns, st.st_uid, st.st_gid, link, digest)
    return out


def tree_totals(snap):
    entries = len(snap) - 1
    size = sum(v[2] for v in snap.values() if v[0] == "f")
    return entries, size


def wait_until(pred, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)
