"""`hostagent status` and `hostagent cancel` against the real daemon mid-move,
over its control socket: the table and --json, cancel by id and by server,
refusals, a peer that is not root refused (SO_PEERCRED), hostile clients that
never disturb a move, status from state_dir when no daemon runs, and the
socket's permissions and lifetime."""
import contextlib
import json
import os
import socket
import stat
import subprocess
import threading
import time

from harness import BIN, Agent, AgentTestCase, dense_tree, make_tree, snapshot, wait_until


def ctl(cfg, *args, user=None, timeout=30):
    cmd = [BIN, *args, "--config", cfg]
    if user:
        cmd = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups", "--"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)



def table_rows(lines):
    """`hostagent status`'s table rows by move id. A "reclaiming:" line may
    follow the table while a moved server's old files are still being deleted
    (for a while under a sanitizer)."""
    return {ln.split()[1]: ln.split() for ln in lines if ln and not ln.startswith("reclaiming:")}

class CtlTestCase(AgentTestCase):
    @contextlib.contextmanager
    def stalled_copy(self):
        """Holds the move threads still while the loop (and so the control
        socket) keeps running."""
        with contextlib.ExitStack() as frozen:
            with self.paused_agent():  # the copy cannot run on while the freezer is set
                frozen.enter_context(self.frozen_workers())
            yield

    def write_conf(self, name, sock):
        """A config of its own for a daemon or command line on socket sock."""
        path = os.path.join(self.scratch.base, name)
        with open(path, "w") as f:
            f.write("manager_url = %s\nagent_id = it-agent\ntoken = it-token-0123456789\n"
                    "allowed_roots = %s\nstate_dir = %s\ncontrol_socket = %s\nlog_level = debug\n"
                    % (self.manager.url, self.scratch.a, self.scratch.state, sock))
        os.chmod(path, 0o644)
        return path

    def status(self, *extra, user=None):
        return ctl(self.agent.cfg_path, "status", *extra, user=user)

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        s.connect(self.agent.control_socket)
        return Client(s)


class Client:
    """One control socket connection, read line by line."""

    def __init__(self, s):
        self.s = s
        self.buf = b""

    def sendall(self, data):
        self.s.sendall(data)

    def shutdown(self, how):
        self.s.shutdown(how)

    def _recv(self):
        try:
            return self.s.recv(65536)
        except ConnectionResetError:
            # The daemon closed with our bytes unread (an oversize line):
            # what it wrote before has been read already.
            return b""

    def read_line(self):
        while b"\n" not in self.buf:
            chunk = self._recv()
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def read_until_closed(self):
        while True:
            chunk = self._recv()
            if not chunk:
                out, self.buf = self.buf, b""
                return out
            self.buf += chunk

    def close(self):
        self.s.close()


class StatusCancelTest(CtlTestCase):
    def test_status_table_json_and_cancel_by_id_mid_move(self):
        self.start_agent()
        small = make_tree(os.path.join(self.scratch.a, "small"), n_small=5)
        done = self.request_move("small", small, os.path.join(self.scratch.b, "small"), "mv-small")
        self.assertTrue(self.manager.wait_answer(done, 30)["success"])
        big = dense_tree(os.path.join(self.scratch.a, "big"), 200)
        before = snapshot(big, content=False)
        move = self.request_move("big", big, os.path.join(self.scratch.b, "big"), "mv-big")
        self.wait_phase("mv-big", "copying")
        with self.stalled_copy():
            r = self.status()
            self.assertEqual(r.returncode, 0, r.stderr)
            lines = r.stdout.splitlines()
            self.assertEqual(lines[0].split(), ["SERVER", "MOVE", "ID", "PHASE", "PERCENT", "RATE", "ETA", "CODE"])
            rows = table_rows(lines[1:])
            self.assertEqual(set(rows), {"mv-big", "mv-small"}, r.stdout)
            self.assertEqual(rows["mv-big"][:3], ["big", "mv-big", "copying"])
            self.assertTrue(rows["mv-big"][3].endswith("%"))
            self.assertEqual(rows["mv-big"][6], "-")
            self.assertEqual(rows["mv-small"], ["small", "mv-small", "complete", "100.0%", "-", "-", "-"])
            self.assertEqual(lines[1].split()[1], "mv-big", "moves not ended come first")

            r = self.status("--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            moves = {m["moveId"]: m for m in json.loads(r.stdout)}
            self.assertEqual(set(moves), {"mv-big", "mv-small"})
            for key in ("serverName", "phase", "percent", "bytesPerSecond", "bytesTotal", "bytesCopied",
                        "filesTotal", "filesCopied", "seq", "startedAt", "oldPath", "newPath", "method"):
                self.assertIn(key, moves["mv-big"], key)
            self.assertEqual((moves["mv-big"]["serverName"], moves["mv-big"]["phase"]), ("big", "copying"))
            self.assertLess(moves["mv-big"]["bytesCopied"], moves["mv-big"]["bytesTotal"])
            self.assertEqual((moves["mv-small"]["phase"], moves["mv-small"]["percent"]), ("complete", 100))
            self.assertIn("endedAt", moves["mv-small"])

            r = ctl(self.agent.cfg_path, "cancel", "mv-big")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("mv-big", r.stdout)
        ans = self.manager.wait_answer(move, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "cancelled"), ans)
        self.assertEqual(snapshot(big, content=False), before)
        self.assertEqual(sorted(os.listdir(self.scratch.b)), ["small"])
        log = self.agent.log()
        self.assertRegex(log, r'move cancel requested move=mv-big queued=no via="control socket uid 0 pid \d+"')
        rows = table_rows(self.status().stdout.splitlines()[1:])
        self.assertEqual((rows["mv-big"][2], rows["mv-big"][6]), ("cancelled", "cancelled"))

    def test_cancel_by_server_and_refusals(self):
        self.start_agent()
        big = dense_tree(os.path.join(self.scratch.a, "big"), 200)
        move = self.request_move("big", big, os.path.join(self.scratch.b, "big"), "mv-srv")
        self.wait_phase("mv-srv", "copying")
        with self.stalled_copy():
            for args, code in [(["nope"], "not_found"), (["--server", "nobody-here"], "not_found"),
                               (["bad id"], "invalid_request"), (["--server", ""], "invalid_request")]:
                r = ctl(self.agent.cfg_path, "cancel", *args)
                self.assertEqual(r.returncode, 1, (args, r.stdout, r.stderr))
                self.assertTrue(r.stderr.startswith("hostagent cancel: %s: " % code), (args, r.stderr))
            for args in ([], ["a", "b"], ["a", "--server", "big"], ["--server"], ["--what"]):
                r = ctl(self.agent.cfg_path, "cancel", *args)
                self.assertEqual(r.returncode, 2, (args, r.stderr))
                self.assertIn("usage", r.stderr)
            self.assertEqual(ctl(self.agent.cfg_path, "status", "--bogus").returncode, 2)
            self.assertEqual(self.manager.frames("mv-srv")[-1]["phase"], "copying", "refusals touch nothing")
            r = ctl(self.agent.cfg_path, "cancel", "--server", "big")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("move mv-srv: cancel requested", r.stdout)
        ans = self.manager.wait_answer(move, 60)
        self.assertEqual((ans["success"], ans["code"]), (False, "cancelled"), ans)
        r = ctl(self.agent.cfg_path, "cancel", "mv-srv")
        self.assertEqual(r.returncode, 1)
        self.assertIn("not_found", r.stderr, "an ended move cannot be cancelled")

    def test_peer_that_is_not_root_is_refused(self):
        self.start_agent()
        sock = self.agent.control_socket
        self.assertEqual(stat.S_IMODE(os.stat(sock).st_mode), 0o600)
        # As shipped, the file system already keeps others out ...
        r = self.status(user="nobody")
        self.assertEqual(r.returncode, 1)
        self.assertIn("Permission denied", r.stderr)
        # ... and with the permissions opened up, SO_PEERCRED still does.
        os.chmod(os.path.dirname(sock), 0o755)
        os.chmod(sock, 0o666)
        r = self.status(user="nobody")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("hostagent status: permission_denied: the control socket serves only root", r.stderr)
        r = ctl(self.agent.cfg_path, "cancel", "--server", "x", user="nobody")
        self.assertIn("permission_denied", r.stderr)
        self.assertRegex(self.agent.log(), r"control socket client refused: not root or the daemon's user "
                                           r"uid=65534 pid=\d+")
        self.assertEqual(self.status().returncode, 0, "root is still served")


class OwnUserTest(CtlTestCase):
    def test_the_daemons_own_user_is_served(self):
        os.chown(self.scratch.state, 65534, 65534)
        self.start_agent(user="nobody")
        self.assertEqual(os.stat(self.agent.control_socket).st_uid, 65534)
        for user in ("nobody", None):
            r = self.status("--json", user=user)
            self.assertEqual((r.returncode, r.stdout), (0, "[]\n"), r.stderr)


class HostileClientsTest(CtlTestCase):
    def test_bad_requests_are_answered_and_the_move_completes(self):
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 120)
        make_tree(os.path.join(src, "world"), n_small=100)
        before = snapshot(src)
        dst = os.path.join(self.scratch.b, "mc")
        move = self.request_move("mc", src, dst, "mv-hostile")
        self.wait_phase("mv-hostile", "copying")
        with self.stalled_copy():
            s = self.connect()
            bad = [(b"garbage", "invalid_request"), (b"[1,2]", "invalid_request"),
                   (b'{"subject":7}', "invalid_request"), (b'{"subject":"server.move_status","data":[]}',
                                                           "invalid_request"),
                   (b'{"subject":"server.move_status","data":{"moveId":"a b"}}', "invalid_request"),
                   (b'{"subject":"server.move_cancel","data":{}}', "invalid_request"),
                   (b"\xff\xfe\x00", "invalid_request"), (b"[" * 5000, "invalid_request"),
                   (b'{"subject":"server.move_status"} trailing', "invalid_request"),
                   (b'{"subject":"server.move_data","data":{"serverName":"x","oldPath":"/a","newPath":"/b"}}',
                    "unknown_subject"),
                   (b'{"subject":"nope"}', "unknown_subject")]
            for line, code in bad:
                s.sendall(line + b"\n")
                ans = s.read_line()
                self.assertEqual((ans["success"], ans["code"]), (False, code), (line[:40], ans))
                self.assertIsInstance(ans["error"], str)
            # Empty lines are skipped; CRLF works; the same connection serves on.
            s.sendall(b'\n\r\n{"subject":"server.move_status","data":{"serverName":"mc"}}\r\n')
            ans = s.read_line()
            self.assertEqual([m["moveId"] for m in ans["moves"]], ["mv-hostile"])
            # Pipelined requests are answered one by one, in order.
            s.sendall(b'{"subject":"server.move_status"}\n' * 50)
            for _ in range(50):
                self.assertTrue(s.read_line()["success"])
            s.close()

            # A line of exactly 64 KiB is served; one byte more is refused and closed.
            env = '{"subject":"server.move_status","pad":"%s"}'
            exact = (env % ("x" * (65536 - len(env % "")))).encode()
            self.assertEqual(len(exact), 65536)
            s = self.connect()
            s.sendall(exact + b"\n")
            self.assertTrue(s.read_line()["success"])
            s.sendall(b"y" * 65537)
            ans = json.loads(s.read_until_closed())
            self.assertEqual(ans["code"], "invalid_request")
            self.assertIn("longer than 65536 bytes", ans["error"])
            s.close()
            s = self.connect()
            try:
                s.sendall(b"z" * (1 << 20))  # far more: still one answer, then closed
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed before all of it was taken
            self.assertEqual(json.loads(s.read_until_closed())["code"], "invalid_request")
            s.close()

            # At most 8 clients at once; the next ones are told and closed.
            held = [self.connect() for _ in range(8)]
            for h in held:
                h.sendall(b'{"subject":"server.move_status"}\n')
                self.assertTrue(h.read_line()["success"])
            for _ in range(4):
                extra = self.connect()
                ans = json.loads(extra.read_until_closed())
                self.assertEqual(ans["code"], "busy", ans)
                extra.close()
            held.pop().close()
            r = wait_until(lambda: (lambda r: r if r.returncode == 0 else None)(self.status()), 10,
                           "a free slot after one client left")
            self.assertIn("mv-hostile", r.stdout)
            # A silent client is closed after 10 s.
            t0 = time.monotonic()
            quiet = self.connect()
            quiet.sendall(b'{"subject":"server.move_st')
            ans = json.loads(quiet.read_until_closed())
            waited = time.monotonic() - t0
            self.assertEqual(ans["code"], "timeout")
            self.assertGreater(waited, 9)
            self.assertLess(waited, 20)
            quiet.close()
            for h in held:
                h.close()
            # A client that connects and leaves at once, and one that half-closes.
            socket.socket(socket.AF_UNIX).connect(self.agent.control_socket)
            s = self.connect()
            s.sendall(b'{"subject":"server.move_status","data":{"moveId":"mv-hostile"}}')
            s.shutdown(socket.SHUT_WR)
            ans = json.loads(s.read_until_closed())
            self.assertEqual([m["moveId"] for m in ans["moves"]], ["mv-hostile"])
            s.close()
            self.assertEqual(self.manager.frames("mv-hostile")[-1]["phase"], "copying")
        ans = self.manager.wait_answer(move, 120)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(snapshot(dst), before, "the move completed byte for byte")
        self.assertFalse(os.path.exists(src))
        self.assertEqual(self.status().returncode, 0)
        self.assertTrue(self.manager.wait_answer(self.manager.request("server.move_status", {}), 20)["success"])


class SlowDripTest(CtlTestCase):
    def test_slow_drip_clients_are_closed_and_free_their_slots(self):
        """8 clients that send a byte every 2 s and never a newline take every
        slot, but only for their 10 s: the idle time counts from the
        connection (or the last request line), not from the last byte. Then
        a real `hostagent status` is served."""
        self.start_agent()
        drippers = [self.connect() for _ in range(8)]
        extra = self.connect()
        self.assertEqual(json.loads(extra.read_until_closed())["code"], "busy", "the 8 hold every slot")
        extra.close()
        answers = [None] * len(drippers)
        prefix = b'{"subject":"server.move_status","data":{"serverName":"' + b"x" * 64

        def drip(i, c):
            # A byte, then 2 s of waiting for the daemon's answer, again and
            # again: 60 s of it is six times the promised 10 s.
            c.s.settimeout(2)
            for k in range(30):
                try:
                    c.sendall(prefix[k:k + 1])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # closed already: its answer is waiting to be read
                try:
                    chunk = c.s.recv(65536)
                except socket.timeout:
                    continue
                c.s.settimeout(20)
                answers[i] = json.loads(chunk + c.read_until_closed())
                return

        threads = [threading.Thread(target=drip, args=(i, c)) for i, c in enumerate(drippers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in drippers:
            c.close()
        for ans in answers:
            self.assertIsNotNone(ans, "a client dripping a byte every 2 s was never timed out")
            self.assertEqual((ans["success"], ans["code"]), (False, "timeout"), ans)
            self.assertIn("no complete request line within 10 s", ans["error"])
        r = self.status("--json")
        self.assertEqual((r.returncode, r.stdout), (0, "[]\n"), r.stderr)


# A server that answers every request on the control socket's path with a
# forged success, as whoever runs it (here: nobody).
FAKE_SERVER = r"""
import json, socket, sys
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen(8)
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    line = conn.makefile("rb").readline()
    if line:
        subject = json.loads(line)["subject"]
        answer = ({"success": True, "moves": [], "reclaimingBytes": 0, "reclaimingEntries": 0}
                  if subject == "server.move_status" else {"success": True, "moveId": "forged"})
        conn.sendall(json.dumps(answer).encode() + b"\n")
        print("answered", subject, flush=True)
    conn.close()
"""


class PeerCheckTest(CtlTestCase):
    """The command line believes only root, its own user, or the owner of the
    socket's directory when only root (or that owner) could have made it."""

    @contextlib.contextmanager
    def fake_server(self, sock, user="nobody"):
        proc = subprocess.Popen(["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups", "--",
                                 "/usr/bin/python3", "-c", FAKE_SERVER, sock], stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(proc.stdout.readline(), "ready\n")
            yield proc
        finally:
            proc.kill()
            proc.wait()
            proc.output = proc.stdout.read()  # what it printed after "ready"
            proc.stdout.close()

    def assert_not_believed(self, cfg, sock, words):
        for args in (["status"], ["status", "--json"], ["cancel", "mv-x"], ["cancel", "--server", "mc"]):
            r = ctl(cfg, *args)
            self.assertEqual((r.returncode, r.stdout), (1, ""), (args, r.stderr))
            self.assertIn("hostagent %s: the process answering on control socket %s runs as uid 65534 (pid "
                          % (args[0], sock), r.stderr)
            self.assertIn(words, r.stderr)

    def test_a_stranger_on_the_socket_is_not_believed(self):
        base = self.scratch.base
        # A directory anyone may write to (a mistake the daemon refuses):
        # nobody's socket there is not believed by root's command line.
        shared = os.path.join(base, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        sock = os.path.join(shared, "control.sock")
        with self.fake_server(sock) as fake:
            self.assert_not_believed(self.write_conf("shared.conf", sock), sock,
                                     "not root, you (uid 0) or the owner of its directory %s (uid 0)" % shared)
        self.assertEqual(fake.output, "", "no request is sent to a stranger")

        # nobody's own directory, but in a directory anyone may make one in
        # (sticky, as /tmp): its owner is not taken for the daemon's user.
        tmp = os.path.join(base, "tmp")
        os.mkdir(tmp)
        os.chmod(tmp, 0o1777)
        theirs = os.path.join(tmp, "hostagent")
        subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--",
                        "mkdir", "-m", "0700", theirs], check=True)
        sock = os.path.join(theirs, "control.sock")
        with self.fake_server(sock) as fake:
            self.assert_not_believed(self.write_conf("tmp.conf", sock), sock,
                                     "it owns its directory %s, but %s, the directory above the control socket's, "
                                     "is writable by its group or others (mode 1777)" % (theirs, tmp))
        self.assertEqual(fake.output, "")

        # The same server in a directory of nobody's that only root could
        # have made for it (as systemd's RuntimeDirectory for User=nobody):
        # believed, as the daemon run as nobody is (OwnUserTest).
        run = os.path.join(base, "run")
        os.mkdir(run, 0o700)
        os.chown(run, 65534, 65534)
        sock = os.path.join(run, "control.sock")
        with self.fake_server(sock) as fake:
            r = ctl(self.write_conf("run.conf", sock), "status", "--json")
            self.assertEqual((r.returncode, r.stdout), (0, "[]\n"), r.stderr)
        self.assertEqual(fake.output, "answered server.move_status\n")


class StuckListenerTest(CtlTestCase):
    def test_a_listener_that_never_accepts_is_given_up_on(self):
        """A stopped daemon whose backlog is full: the command line waits at
        most 5 s for its connection, then says so (exit 1)."""
        run = os.path.join(self.scratch.base, "run")
        os.mkdir(run, 0o700)
        sock = os.path.join(run, "control.sock")
        listener = socket.socket(socket.AF_UNIX)
        self.addCleanup(listener.close)
        listener.bind(sock)
        listener.listen(0)
        for _ in range(64):  # fill its backlog: the next connect would wait
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            self.addCleanup(c.close)
            try:
                c.connect(sock)
            except BlockingIOError:
                break
        else:
            self.fail("the backlog never filled")
        cfg = self.write_conf("stuck.conf", sock)
        for args in (["status"], ["status", "--json"], ["cancel", "mv-x"]):
            r = ctl(cfg, *args, timeout=60)
            self.assertEqual((r.returncode, r.stdout), (1, ""), (args, r.stderr))
            self.assertIn("hostagent %s: something listens on control socket %s but took no connection within 5 s"
                          % (args[0], sock), r.stderr)
        # A daemon started on that socket does not wait for it either: the
        # socket is taken (and stays).
        r = subprocess.run([BIN, "--config", cfg], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr[-2000:])
        self.assertIn("a process listens on control_socket %s but took no connection within 5 s" % sock, r.stderr)
        self.assertTrue(stat.S_ISSOCK(os.lstat(sock).st_mode))


class NoDaemonTest(CtlTestCase):
    def test_status_reads_state_dir_when_no_daemon_runs(self):
        self.start_agent()
        small = make_tree(os.path.join(self.scratch.a, "small"), n_small=5)
        self.assertTrue(self.manager.wait_answer(
            self.request_move("small", small, os.path.join(self.scratch.b, "small"), "mv-done"), 30)["success"])
        big = dense_tree(os.path.join(self.scratch.a, "big"), 200)
        before = snapshot(big, content=False)
        reply = self.request_move("big", big, os.path.join(self.scratch.b, "big"), "mv-cut")
        self.wait_phase("mv-cut", "copying")
        with self.paused_agent():
            self.agent.proc.kill()
            self.agent.proc.wait(10)
            self.agent.logf.close()
        sock, state = self.agent.control_socket, self.scratch.state
        self.assertTrue(stat.S_ISSOCK(os.lstat(sock).st_mode), "a killed daemon leaves its socket behind")
        journal = os.path.join(state, "moves")
        files_before = {n: os.stat(os.path.join(journal, n)).st_mtime_ns for n in os.listdir(journal)}

        r = self.status()
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[0], "no hostagent daemon is running (control socket %s); from state_dir %s:"
                         % (sock, state))
        rows = {ln.split()[1]: ln.split() for ln in lines[2:4]}
        self.assertEqual(rows["mv-cut"][:3], ["big", "mv-cut", "copying"])
        self.assertEqual(rows["mv-done"][:4], ["small", "mv-done", "complete", "100.0%"])
        self.assertEqual(lines[2].split()[1], "mv-cut", "the unfinished move first")
        self.assertIn("1 move did not end: the daemon's next start rolls it back", r.stdout)

        r = self.status("--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("no hostagent daemon is running", r.stderr)
        moves = {m["moveId"]: m for m in json.loads(r.stdout)}
        self.assertEqual(set(moves), {"mv-cut", "mv-done"})
        self.assertEqual(moves["mv-cut"]["phase"], "copying")
        self.assertEqual(moves["mv-done"]["phase"], "complete")
        r = ctl(self.agent.cfg_path, "cancel", "mv-cut")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no hostagent daemon is running", r.stderr)
        self.assertEqual({n: os.stat(os.path.join(journal, n)).st_mtime_ns for n in os.listdir(journal)},
                         files_before, "status without a daemon changes nothing")

        # The stale socket is replaced by the next daemon, which settles the move.
        before_conns = len(self.manager.connections)
        self.agent = Agent(self.manager, self.scratch, log_name="agent-2.log")
        self.manager.wait_for(lambda: len(self.manager.connections) > before_conns, 20, "the restarted agent")
        self.assertIn("stale control socket replaced", self.agent.log())
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual(ans["code"], "interrupted")
        self.assertEqual(snapshot(big, content=False), before)
        rows = table_rows(self.status().stdout.splitlines()[1:])
        self.assertEqual((rows["mv-cut"][2], rows["mv-cut"][6]), ("error", "interrupted"))

    def test_status_names_a_daemon_on_another_control_socket(self):
        self.start_agent()
        other = os.path.join(self.scratch.base, "other.conf")
        with open(self.agent.cfg_path) as f:
            text = f.read().replace(self.agent.control_socket, os.path.join(self.scratch.base, "elsewhere.sock"))
        with open(other, "w") as f:
            f.write(text)
        r = ctl(other, "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("the hostagent daemon holding state_dir (pid %d) does not answer" % self.agent.proc.pid,
                      r.stdout)

    def test_status_without_daemon_or_journal(self):
        self.start_agent()
        lingering = self.connect()  # a client half-way through a line does not hold up a stop
        lingering.sendall(b'{"subject":')
        t0 = time.monotonic()
        self.assertEqual(self.agent.stop(), 0)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(lingering.read_until_closed(), b"")
        lingering.close()
        self.assertFalse(os.path.exists(self.agent.control_socket), "a stopped daemon removes its socket")
        r = self.status()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[1:],
                         ["no moves: none running or queued, none ended in the last hour"])
        os.rmdir(os.path.join(self.scratch.state, "moves"))
        self.assertEqual(self.status().returncode, 0, "no journal yet is not an error")


class SocketTest(CtlTestCase):
    def test_permissions_one_daemon_per_socket_and_cleanup(self):
        self.start_agent()
        sock = self.agent.control_socket
        st = os.lstat(sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid), (0o600, 0))
        dst = os.stat(os.path.dirname(sock))
        self.assertEqual((stat.S_IMODE(dst.st_mode), dst.st_uid), (0o700, 0))
        self.assertIn("control socket listening", self.agent.log())

        # A second daemon (its own state_dir) on the same socket refuses to start.
        second_state = os.path.join(self.scratch.base, "state2")
        cfg2 = os.path.join(self.scratch.base, "second.conf")
        with open(self.agent.cfg_path) as f:
            text = f.read().replace("state_dir = %s\n" % self.scratch.state, "state_dir = %s\n" % second_state)
        with open(cfg2, "w") as f:
            f.write(text)
        r = subprocess.run([BIN, "--config", cfg2], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("another hostagent daemon answers on control_socket %s" % sock, r.stderr)
        self.assertEqual(self.status().returncode, 0, "the first daemon still serves")
        self.assertEqual(self.agent.stop(), 0)
        self.assertFalse(os.path.exists(sock))

        # Something that is not a socket in its place is never removed.
        with open(sock, "w") as f:
            f.write("keep me\n")
        r = subprocess.run([BIN, "--config", cfg2], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("exists and is not a socket", r.stderr)
        with open(sock) as f:
            self.assertEqual(f.read(), "keep me\n")
        os.unlink(sock)

    def test_unsafe_socket_directory_is_refused(self):
        """Whoever may write to the socket's directory, or to one above it
        without the sticky bit, could put their own socket in its place: the
        daemon refuses to start there (exit 1, logged), touching nothing."""
        base = self.scratch.base

        def tree(*parts, mode=0o700, owner=0):
            d = os.path.join(base, *parts)
            os.makedirs(d, exist_ok=True)
            os.chmod(d, mode)
            os.chown(d, owner, owner)
            return d

        cases = []
        d = tree("theirs", owner=65534)
        cases.append((d, "the control socket's directory %s belongs to uid 65534, not to root or uid 0" % d))
        for mode, shown in ((0o777, "0777"), (0o770, "0770"), (0o1777, "1777")):
            d = tree("mode%o" % mode, mode=mode)
            cases.append((d, "the control socket's directory %s is writable by its group or others (mode %s)"
                          % (d, shown)))
        real = tree("real")
        link = os.path.join(base, "link")
        os.symlink(real, link)
        cases.append((link, "the control socket's directory %s is a symbolic link" % link))
        above = tree("open", mode=0o777)
        cases.append((tree("open", "run"), "%s, above the control socket's directory, is writable by its group or "
                      "others without the sticky bit (mode 0777)" % above))
        above = tree("nob", mode=0o755, owner=65534)
        cases.append((tree("nob", "run"), "%s, above the control socket's directory, belongs to uid 65534" % above))
        # A symlink above it: the directories of the resolved path count too.
        deeper = os.path.dirname(tree("open", "deeper", "run"))
        os.symlink(deeper, os.path.join(base, "via"))
        cases.append((os.path.join(base, "via", "run"), "%s, above the control socket's directory, is writable"
                      % os.path.dirname(deeper)))

        for d, words in cases:
            sock = os.path.join(d, "control.sock")
            stale = socket.socket(socket.AF_UNIX)  # a dead daemon's socket, which must stay
            stale.bind(sock)
            stale.close()
            before = os.lstat(d)
            r = subprocess.run([BIN, "--config", self.write_conf("unsafe.conf", sock)], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(r.returncode, 1, (d, r.stderr[-2000:]))
            self.assertIn("cannot start", r.stderr)
            self.assertIn(words, r.stderr)
            self.assertTrue(stat.S_ISSOCK(os.lstat(sock).st_mode), "nothing in it is touched")
            after = os.lstat(d)
            self.assertEqual((after.st_mode, after.st_uid), (before.st_mode, before.st_uid))
            os.unlink(sock)

        # Under a sticky directory (as /tmp), and in a directory of root's
        # that only root may write (0755): served.
        tree("sticky", mode=0o1777)
        tree("sticky", "run")
        tree("plain", mode=0o755)
        sock = os.path.join(base, "sticky", "run", "control.sock")
        self.start_agent(extra={"control_socket": sock})
        r = ctl(self.write_conf("sticky.conf", sock), "status", "--json")
        self.assertEqual((r.returncode, r.stdout), (0, "[]\n"), r.stderr)
        self.assertEqual(self.agent.stop(), 0)
        sock = os.path.join(base, "plain", "control.sock")
        self.agent = Agent(self.manager, self.scratch, extra={"control_socket": sock}, log_name="agent-2.log")
        wait_until(lambda: "control socket listening" in self.agent.log(), 30, "the second daemon's socket")
        r = ctl(self.agent.cfg_path, "status", "--json")
        self.assertEqual((r.returncode, r.stdout), (0, "[]\n"), r.stderr)

    def test_socket_directory_is_made_0700(self):
        deep = os.path.join(self.scratch.base, "made", "here", "ctl.sock")
        self.start_agent(extra={"control_socket": deep})
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(deep)).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.scratch.base, "made")).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(deep).st_mode), 0o600)
        r = ctl(self.agent.cfg_path, "status", "--json")
        self.assertEqual((r.returncode, r.stdout), (0, "[]\n"), r.stderr)


if __name__ == "__main__":
    import unittest
    unittest.main()
