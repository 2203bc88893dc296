"""The Debian package on a booted Debian 12 with systemd as PID 1 (of a PID
and mount namespace of its own: see boot.sh; the network is the host's, so
the reference manager on 127.0.0.1 is reachable): installed with apt,
enabled and waiting unstarted until configured, a move, the journal, a
reload, an upgrade during a move, a stop during a copy, the watchdog, the
ReadWritePaths error, a root under /home, the sandbox's rating, remove and
purge. The daemon runs as the system user hostagent with the capabilities of
a faithful copy: the moves keep owners, device nodes and xattrs.

The root comes from sysroot.sh (debootstrap once, then cached); each run
boots an overlay on it, so nothing of a run stays. The two packages (the
project's version and a higher one, +systemtest2) are built here with cpack.
The steps run in order and build on each other (test_01 ... test_10).

Run: python3 -m unittest -v test_debian (as root), from tests/system."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "manager"))
from faultfs import FaultFS  # noqa: E402
from harness import dense_tree, make_tree, snapshot, wait_until  # noqa: E402
from refmanager import Manager  # noqa: E402

CACHE = os.environ.get("HOSTAGENT_SYSTEMTEST_CACHE", "/var/cache/hostagent-systemtest")
SUFFIX2 = "+systemtest2"
# What `systemd-analyze security hostagent` may rate the unit at most: see
# the README's Security section for why it is not lower.
EXPOSURE_MAX = 2.5
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def project_version():
    with open(os.path.join(SRC, "CMakeLists.txt")) as f:
        return re.search(r"project\(hostagent VERSION (\S+)", f.read()).group(1)


def log(msg):
    print("[%6.1f] %s" % (time.monotonic() - T0, msg), flush=True)


T0 = time.monotonic()


class DebianSystemTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root")
        for tool in ("debootstrap", "unshare", "nsenter", "cpack", "dpkg-shlibdeps"):
            if not shutil.which(tool):
                raise AssertionError("%s is needed" % tool)
        cls.work = tempfile.mkdtemp(prefix="hostagent-sys-", dir="/var/tmp")
        cls.mounts, cls.proc, cls.pid, cls.fs, cls.manager, cls.cgroup = [], None, None, None, None, None
        try:
            cls.debs = cls.build_packages()
            log("packages built: %s" % [os.path.basename(d) for d in cls.debs])
            cls.root = subprocess.run([os.path.join(HERE, "sysroot.sh"), CACHE], check=True,
                                      capture_output=True, text=True).stdout.strip().splitlines()[-1]
            log("root ready: %s" % cls.root)
            cls.boot()
            log("booted: systemd is host pid %d" % cls.pid)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def build_packages(cls):
        """The project's package and one with a higher version (its binary
        says so too), from one build directory."""
        build = os.path.join(cls.work, "build")
        out = []
        for suffix in ("", SUFFIX2):
            subprocess.run(["cmake", "-S", SRC, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                            "-DCMAKE_INSTALL_PREFIX=/usr", "-DHOSTAGENT_VERSION_SUFFIX=" + suffix],
                           check=True, capture_output=True)
            subprocess.run(["cmake", "--build", build, "-j", "2", "--target", "hostagent", "hostagent_docs"],
                           check=True, capture_output=True)
            r = subprocess.run(["cpack", "-G", "DEB"], cwd=build, capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
            name = "hostagent_%s%s_amd64.deb" % (project_version(), suffix)
            dst = os.path.join(cls.work, name)
            shutil.move(os.path.join(build, name), dst)
            out.append(dst)
        shutil.rmtree(build, ignore_errors=True)
        return out

    @classmethod
    def mount(cls, *args):
        subprocess.run(["mount", *args], check=True)
        cls.mounts.append(args[-1])

    @classmethod
    def boot(cls):
        m = cls.merged = os.path.join(cls.work, "merged")
        for d in ("upper", "ovwork", "merged", "backing"):
            os.makedirs(os.path.join(cls.work, d))
        cls.mount("-t", "overlay", "overlay", "-o", "lowerdir=%s,upperdir=%s,workdir=%s" % (
            cls.root, os.path.join(cls.work, "upper"), os.path.join(cls.work, "ovwork")), m)
        # The game servers' filesystems, made before the boot (a mount made
        # later under a ReadWritePaths= location would reach a running
        # service only after its restart): two tmpfs under /srv/games (the
        # unit's ReadWritePaths), a slow disk there (faultfs, served from
        # the host), and /opt/games, an allowed root the unit does not list.
        # /home/games, a plain directory, is listed later (ProtectHome=read-only).
        os.makedirs(os.path.join(m, "home/games"))
        for d in ("srv/games/a", "srv/games/b", "opt/games"):
            os.makedirs(os.path.join(m, d))
            cls.mount("-t", "tmpfs", "-o", "size=512m", "tmpfs", os.path.join(m, d))
        cls.fs = FaultFS(os.path.join(cls.work, "backing"), os.path.join(m, "srv/games/slow"))
        cls.fs.start()
        for deb in cls.debs:
            shutil.copy(deb, os.path.join(m, "root"))
        # boot.sh's own messages go to boot.log; the booted system's
        # /dev/kmsg is the file kmsg (see boot.sh).
        cls.boot_log, cls.kmsg = os.path.join(cls.work, "boot.log"), os.path.join(cls.work, "kmsg")
        open(cls.kmsg, "w").close()
        # A cgroup of its own in the unified hierarchy (mounted here: a
        # chroot's /sys may show none), the root of the booted system's
        # cgroup namespace: systemd keeps to it (and another booted system
        # to its own), and the teardown removes what it made there.
        cls.cgroot = os.path.join(cls.work, "cgroup2")
        os.makedirs(cls.cgroot)
        subprocess.run(["mount", "-t", "cgroup2", "cgroup2", cls.cgroot], check=True)
        cls.cgroup = os.path.join(cls.cgroot, "hostagent-systemtest-" + os.path.basename(cls.work))
        os.mkdir(cls.cgroup)
        with open(cls.boot_log, "w") as out:
            # --kill-child: the booted system ends with unshare, even when
            # systemd's pid was never known.
            cls.proc = subprocess.Popen(["sh", "-c", 'echo $$ >"$0/cgroup.procs" && exec "$@"', cls.cgroup,
                                         "unshare", "--pid", "--fork", "--kill-child", "--mount", "--cgroup",
                                         "--propagation", "unchanged", os.path.join(HERE, "boot.sh"), m, cls.kmsg],
                                        stdout=out, stderr=subprocess.STDOUT)

        def systemd_pid():
            if cls.proc.poll() is not None:
                raise AssertionError("unshare and boot.sh ended with exit %d" % cls.proc.returncode)
            try:
                with open("/proc/%d/task/%d/children" % (cls.proc.pid, cls.proc.pid)) as f:
                    kids = f.read().split()
            except OSError:
                return None
            return int(kids[0]) if kids else None
        try:
            cls.pid = wait_until(systemd_pid, 20, "systemd started")
            wait_until(lambda: systemd_pid() and cls.sh("systemctl is-system-running", check=False).stdout.strip()
                       in ("running", "degraded"), 60, "the system booted")
        except AssertionError as e:
            raise AssertionError("%s\n%s" % (e, cls.boot_report())) from None
        cls.manager = Manager()
        cls.manager.start()

    @classmethod
    def tearDownClass(cls):
        if cls.proc is not None:
            # systemd is the PID namespace's init: its end is everyone's.
            if cls.pid is not None:
                subprocess.run(["kill", "-9", str(cls.pid)], capture_output=True)
            else:
                cls.proc.kill()
            try:
                cls.proc.wait(20)
            except subprocess.TimeoutExpired:
                cls.proc.kill()
        if cls.cgroup is not None:
            cls.remove_cgroup()
        if cls.fs is not None:
            cls.fs.stop()
        for mnt in reversed(cls.mounts):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        if cls.manager is not None:
            cls.manager.stop()
        shutil.rmtree(cls.work, ignore_errors=True)

    @classmethod
    def remove_cgroup(cls):
        """Removes the booted system's cgroup tree (bottom up, once the
        killed processes have left it), then unmounts the hierarchy."""
        deadline = time.monotonic() + 20
        while os.path.isdir(cls.cgroup) and time.monotonic() < deadline:
            for d, _, _ in os.walk(cls.cgroup, topdown=False):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            if os.path.isdir(cls.cgroup):
                time.sleep(0.1)
        if os.path.isdir(cls.cgroup):
            print("left behind: cgroup %s" % cls.cgroup, file=sys.stderr)
        subprocess.run(["umount", cls.cgroot], capture_output=True)

    # --- inside ------------------------------------------------------------------

    @classmethod
    def inside(cls):
        """The command line's start that runs a program in the booted system:
        its PID and mount namespaces, and its root (-r; in a chroot, the
        mount namespace's own root is not the booted system's: boot.sh)."""
        return ["nsenter", "-t", str(cls.pid), "-p", "-m", "-r", "-w"]

    @classmethod
    def boot_report(cls):
        """What to know when the boot failed: boot.sh's messages, what
        systemd logged before its journal ran, and the journal if it answers."""
        def tail(path, n=40):
            try:
                with open(path, errors="replace") as f:
                    return "".join(f.readlines()[-n:])
            except OSError as e:
                return str(e)
        out = "--- boot.sh (unshare's output):\n%s--- systemd's early log (its /dev/kmsg), last lines:\n%s" % (
            tail(cls.boot_log), tail(cls.kmsg))
        if cls.pid is not None and cls.proc.poll() is None:
            r = subprocess.run(cls.inside() + ["systemctl", "--no-pager", "--failed"], capture_output=True,
                               text=True, timeout=30)
            out += "--- systemctl --failed:\n" + r.stdout + r.stderr + cls.journal_tail()
        return out

    @classmethod
    def sh(cls, cmd, check=True, timeout=300):
        """cmd (a shell line) run in the booted system."""
        r = subprocess.run(cls.inside() + ["env", "-i", "PATH=" + PATH, "LANG=C.UTF-8", "/bin/sh", "-c", cmd],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError("%s: exit %d\n%s%s%s" % (cmd, r.returncode, r.stdout, r.stderr, cls.journal_tail()))
        return r

    @classmethod
    def journal_tail(cls):
        r = subprocess.run(cls.inside() + ["journalctl", "--no-pager", "-n", "40"], capture_output=True, text=True,
                           timeout=60)
        return "\n--- the journal's last lines:\n" + r.stdout

    def spawn(self, cmd):
        return subprocess.Popen(self.inside() + ["env", "-i", "PATH=" + PATH, "LANG=C.UTF-8",
                                                 "DEBIAN_FRONTEND=noninteractive", "/bin/sh", "-c", cmd],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def prop(self, name):
        return self.sh("systemctl show -P %s hostagent" % name).stdout.strip()

    def path(self, rel):
        """A path of the booted system as the host reaches it."""
        return os.path.join(self.merged, rel.lstrip("/"))

    def apt(self, args):
        return self.sh("DEBIAN_FRONTEND=noninteractive apt-get -y -q %s 2>&1" % args)

    def write_config(self, heartbeat="15s"):
        with open(self.path("/etc/hostagent/agent.conf"), "w") as f:
            f.write("manager_url = %s\nagent_id = systemtest\nallowed_roots = /srv/games, /opt/games, /home/games\n"
                    "heartbeat_interval = %s\n" % (self.manager.url, heartbeat))

    def request_move(self, src, dst, move_id):
        return self.manager.request("server.move_data", {"serverName": "mc", "oldPath": src, "newPath": dst,
                                                         "moveId": move_id})

    def wait_phase(self, move_id, phase, timeout=60):
        self.manager.wait_for(lambda: any(f["phase"] == phase for f in self.manager.frames(move_id)), timeout,
                              "%s in phase %s" % (move_id, phase))

    def hellos(self):
        return [m for m in self.manager.all_messages() if m.get("subject") == "agent.hello"]

    def wait_reconnected(self, n_hellos):
        """Waits for a hello after the first n_hellos: a restarted daemon's."""
        self.manager.wait_for(lambda: len(self.hellos()) > n_hellos, 30, "hello after the restart")

    def slow_tree(self, name, mib=48):
        """A tree on the slow disk whose copy runs until fs.clear()."""
        dense_tree(os.path.join(self.work, "backing", name), mib)
        self.fs.slow("read", name, 400)
        return "/srv/games/slow/" + name

    # --- the steps ---------------------------------------------------------------

    def test_01_install_enabled_and_waiting_until_configured(self):
        r = self.apt("install /root/" + os.path.basename(self.debs[0]))
        log("installed")
        self.assertIn("Setting up hostagent (%s)" % project_version(), r.stdout)
        self.assertEqual(self.sh("systemctl is-enabled hostagent").stdout.strip(), "enabled")
        # Unconfigured: skipped by its condition, not failed, not restarting.
        time.sleep(3)
        self.assertEqual(self.sh("systemctl is-active hostagent", check=False).stdout.strip(), "inactive")
        self.assertEqual(self.prop("Result"), "exec-condition")
        self.assertEqual(self.prop("NRestarts"), "0")
        self.assertIn("is still the example the package installed",
                      self.sh("journalctl -u hostagent --no-pager").stdout)
        self.write_config()
        self.sh("systemctl restart hostagent")
        self.assertEqual(self.sh("systemctl is-active hostagent").stdout.strip(), "active")
        conn = self.manager.wait_connection(1, 30)
        self.assertEqual(conn.messages[0][1]["data"]["version"], project_version())

    def test_02_move_with_owners_devices_and_xattrs(self):
        src = self.path("/srv/games/a/mc")
        make_tree(src, n_small=60)
        os.chown(os.path.join(src, "world"), 1234, 5678)
        os.chown(os.path.join(src, "rel-link"), 4321, 8765, follow_symlinks=False)
        os.mknod(os.path.join(src, "null-dev"), 0o20640, os.makedev(1, 3))
        os.mkfifo(os.path.join(src, "fifo"), 0o600)
        os.setxattr(os.path.join(src, "world"), "user.kind", b"world")
        before = snapshot(src)
        reply = self.request_move("/srv/games/a/mc", "/srv/games/b/new/mc", "sys-move")
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual((ans["success"], ans["moveId"]), (True, "sys-move"), ans)
        dst = self.path("/srv/games/b/new/mc")
        self.assertEqual(snapshot(dst), before)
        self.assertEqual(os.getxattr(os.path.join(dst, "world"), "user.kind"), b"world")
        self.assertFalse(os.path.exists(src))
        journal = self.sh("journalctl -u hostagent --no-pager -o cat").stdout
        self.assertRegex(journal, r"sys-move")
        # Done by the user hostagent, not root, with the copy's capabilities
        # effective; root's `hostagent status` believes it (the owner of
        # /run/hostagent) and is served.
        status = self.sh("grep -E '^(Uid|CapEff):' /proc/%s/status" % self.prop("MainPID")).stdout
        uid = self.sh("id -u hostagent").stdout.strip()
        self.assertRegex(status, r"Uid:\t%s\t%s\t" % (uid, uid))
        self.assertNotEqual(uid, "0")
        self.assertIn("CapEff:\t000000008800001f\n", status)  # CHOWN DAC_* FOWNER FSETID MKNOD SETFCAP
        self.assertEqual(self.sh("stat -c %U /var/lib/hostagent /run/hostagent").stdout.split(), ["hostagent"] * 2)
        self.assertIn("sys-move", self.sh("hostagent status --config /etc/hostagent/agent.conf").stdout)

    def test_03_reload_applies_a_changed_setting(self):
        def beats():
            return [t for c in self.manager.connections for (t, m, _) in list(c.messages)
                    if m and m.get("subject") == "heartbeat"]
        pid = self.prop("MainPID")
        self.write_config("1s")
        self.sh("systemctl reload hostagent")
        n = len(beats())
        # The timer takes its new period after its next (old period's) beat.
        wait_until(lambda: len(beats()) >= n + 4, 25, "heartbeats every second")
        self.assertEqual(self.prop("MainPID"), pid, "a reload, not a restart")
        self.assertIn("config reloaded", self.sh("journalctl -u hostagent --no-pager -o cat").stdout)

    def test_04_upgrade_waits_for_the_running_move(self):
        # State left by a version run as root: the restart gives it to the
        # user (StateDirectory=).
        self.sh("chown -R 0:0 /var/lib/hostagent")
        src = self.slow_tree("up")
        before = snapshot(self.path(src))
        old_pid = self.prop("MainPID")
        reply = self.request_move(src, "/srv/games/b/up", "sys-upgrade")
        self.wait_phase("sys-upgrade", "copying")
        apt = self.spawn("apt-get -y -q install /root/" + os.path.basename(self.debs[1]) + " 2>&1")
        # The postinst waits: the old daemon keeps copying, nothing answered yet.
        time.sleep(8)
        if apt.poll() is not None:
            self.fail("apt did not wait for the move:\n" + apt.communicate()[0] + self.journal_tail())
        self.assertEqual(self.prop("MainPID"), old_pid)
        self.assertEqual(self.manager.answers(reply), [])
        self.fs.clear()
        out = apt.communicate(timeout=240)[0]
        self.assertEqual(apt.returncode, 0, out)
        self.assertIn("waiting for 1 running move(s) to end before restarting", out)
        ans = self.manager.wait_answer(reply, 30)
        self.assertEqual((ans["success"], ans["moveId"]), (True, "sys-upgrade"), ans)
        self.assertEqual(snapshot(self.path("/srv/games/b/up")), before)
        # The new binary runs: a new process, whose hello says the new version.
        wait_until(lambda: self.sh("systemctl is-active hostagent", check=False).stdout.strip() == "active", 30,
                   "active again")
        self.assertNotEqual(self.prop("MainPID"), old_pid)
        self.manager.wait_for(lambda: any(h["data"]["version"] == project_version() + SUFFIX2
                                          for h in self.hellos()), 30, "hello of the new version")
        self.assertEqual(len(self.manager.answers(reply)), 1, "answered exactly once")
        self.assertEqual(self.sh("dpkg-query -W -f='${Version}' hostagent").stdout, project_version() + SUFFIX2)
        self.assertEqual(self.sh("systemctl is-enabled hostagent").stdout.strip(), "enabled")
        self.assertEqual(self.sh("find /var/lib/hostagent ! -user hostagent -o ! -group hostagent").stdout, "")

    def test_05_stop_during_a_copy_rolls_back(self):
        src = self.slow_tree("stop")
        before = snapshot(self.path(src))
        reply = self.request_move(src, "/srv/games/b/stop", "sys-stop")
        self.wait_phase("sys-stop", "copying")
        t = time.monotonic()
        self.sh("systemctl stop hostagent")
        log("stop took %.1f s" % (time.monotonic() - t))
        ans = self.manager.wait_answer(reply, 10)
        self.assertEqual((ans["success"], ans["code"]), (False, "shutting_down"), ans)
        self.assertEqual(snapshot(self.path(src)), before)
        self.assertFalse(os.path.exists(self.path("/srv/games/b/stop")))
        self.fs.clear()
        n = len(self.hellos())
        self.sh("systemctl start hostagent")
        self.wait_reconnected(n)

    def test_06_watchdog_restarts_a_frozen_daemon(self):
        # A shorter watchdog than the unit's 30 s, so that the test is short.
        os.makedirs(self.path("/etc/systemd/system/hostagent.service.d"), exist_ok=True)
        with open(self.path("/etc/systemd/system/hostagent.service.d/watchdog.conf"), "w") as f:
            f.write("[Service]\nWatchdogSec=6s\n")
        n = len(self.hellos())
        self.sh("systemctl daemon-reload && systemctl restart hostagent")
        self.wait_reconnected(n)
        src = self.slow_tree("frozen")
        before = snapshot(self.path(src))
        reply = self.request_move(src, "/srv/games/b/frozen", "sys-watchdog")
        self.wait_phase("sys-watchdog", "copying")
        pid = self.prop("MainPID")
        self.sh("kill -STOP %s" % pid)
        wait_until(lambda: self.prop("MainPID") not in ("0", pid) and
                   self.sh("systemctl is-active hostagent", check=False).stdout.strip() == "active", 60,
                   "restarted by the watchdog")
        self.fs.clear()
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "interrupted"), ans)
        self.assertEqual(snapshot(self.path(src)), before)
        self.assertFalse(os.path.exists(self.path("/srv/games/b/frozen")))
        self.assertGreaterEqual(int(self.prop("NRestarts")), 1)
        journal = self.sh("journalctl -u hostagent --no-pager -o cat").stdout
        self.assertIn("Watchdog timeout", journal)
        self.assertIn("found a move the agent did not finish", journal)
        os.unlink(self.path("/etc/systemd/system/hostagent.service.d/watchdog.conf"))
        self.sh("systemctl daemon-reload")

    def test_07_a_root_missing_from_read_write_paths_is_named(self):
        make_tree(self.path("/opt/games/mc"), n_small=5)
        reply = self.request_move("/opt/games/mc", "/srv/games/b/opt-mc", "sys-rwp")
        ans = self.manager.wait_answer(reply, 30)
        self.assertEqual((ans["success"], ans["code"]), (False, "permission_denied"), ans)
        self.assertIn("read-only in this service's sandbox", ans["error"])
        self.assertIn("ReadWritePaths=", ans["error"])
        self.assertIn("/opt/games", ans["error"])
        self.assertTrue(os.path.isdir(self.path("/opt/games/mc")))

    def test_07b_a_root_under_home_listed_in_read_write_paths(self):
        # ProtectHome=read-only: /home/games, once listed, is writable; a move
        # into it and one out of it (the source removed) keep owners.
        os.makedirs(self.path("/etc/systemd/system/hostagent.service.d"), exist_ok=True)
        with open(self.path("/etc/systemd/system/hostagent.service.d/home.conf"), "w") as f:
            f.write("[Service]\nReadWritePaths=/home/games\n")
        n = len(self.hellos())
        self.sh("systemctl daemon-reload && systemctl restart hostagent")
        self.wait_reconnected(n)
        src = self.path("/srv/games/a/home-mc")
        make_tree(src, n_small=20)
        os.chown(os.path.join(src, "world"), 1234, 5678)
        before = snapshot(src)
        for i, (a, b) in enumerate([("/srv/games/a/home-mc", "/home/games/mc"),
                                    ("/home/games/mc", "/srv/games/b/from-home")]):
            ans = self.manager.wait_answer(self.request_move(a, b, "sys-home-%d" % i), 60)
            self.assertEqual((ans["success"], ans["moveId"]), (True, "sys-home-%d" % i), ans)
            self.assertEqual(snapshot(self.path(b)), before)
            self.assertFalse(os.path.exists(self.path(a)))

    def test_08_sandbox_rating(self):
        out = self.sh("systemd-analyze security --no-pager hostagent").stdout
        m = re.search(r"Overall exposure level for hostagent.service: ([0-9.]+)", out)
        self.assertIsNotNone(m, out)
        log("systemd-analyze security: %s" % m.group(1))
        self.assertLessEqual(float(m.group(1)), EXPOSURE_MAX, out)

    def test_09_remove_stops_the_daemon(self):
        self.apt("remove hostagent")
        self.assertEqual(self.sh("systemctl is-active hostagent", check=False).stdout.strip(), "inactive")
        self.assertEqual(self.sh("pgrep -x hostagent", check=False).returncode, 1, "no daemon left")
        self.assertFalse(os.path.exists(self.path("/usr/bin/hostagent")))
        # Not purged: the config and the state stay.
        self.assertTrue(os.path.exists(self.path("/etc/hostagent/agent.conf")))
        self.assertTrue(os.path.isdir(self.path("/var/lib/hostagent")))

    def test_10_purge_removes_what_the_package_made(self):
        self.apt("purge hostagent")
        self.assertEqual(self.sh("test -e /run/hostagent", check=False).returncode, 1)
        for p in ("/etc/hostagent", "/var/lib/hostagent",
                  "/etc/systemd/system/multi-user.target.wants/hostagent.service",
                  "/var/lib/systemd/deb-systemd-helper-enabled/hostagent.service.dsh-also",
                  "/var/lib/systemd/deb-systemd-helper-masked/hostagent.service"):
            self.assertFalse(os.path.lexists(self.path(p)), p)
        q = self.sh("dpkg-query -W -f='${Status}' hostagent", check=False)
        self.assertTrue(q.returncode == 1 or q.stdout.strip() == "unknown ok not-installed", q.stdout)


if __name__ == "__main__":
    unittest.main()
