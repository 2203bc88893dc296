"""NATS for the tests: Debian's nats-server (single node or a cluster with
JetStream) started on free loopback ports, and a NATS client no one here
wrote — the official nats.js (npm `nats`, pinned in tests/nats) — driven
through tests/nats/bridge.mjs, one JSON line per command."""
import json
import os
import shutil
import socket
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NATS_DIR = os.path.join(HERE, "..", "nats")
NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_npm():
    """nats.js and @nats-io/jwt from the lockfile (npm ci) when they are not
    installed yet."""
    modules = os.path.join(NATS_DIR, "node_modules")
    if not all(os.path.isdir(os.path.join(modules, m)) for m in ("nats", "@nats-io/jwt")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NATS_DIR, check=True,
                       capture_output=True)


def auth_keys(directory):
    """Keys and JWTs made by tests/nats/authgen.mjs (the NATS project's own
    libraries) in directory; returns {"userPub", "accountPub", "accountJwt"}."""
    ensure_npm()
    out = subprocess.run(["node", os.path.join(NATS_DIR, "authgen.mjs"), directory], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


class NatsCluster:
    """n nats-server processes on loopback; a cluster (routes) when n > 1."""

    def __init__(self, base, n=1, jetstream=False, auth="", name="nats"):
        if not os.path.exists(NATS_SERVER):
            raise AssertionError("nats-server is not installed (Debian package nats-server)")
        self.base = base
        self.name = name
        self.n = n
        self.ports = [free_port() for _ in range(n)]
        self.cports = [free_port() for _ in range(n)] if n > 1 else []
        self.procs = [None] * n
        self.confs = []
        for i in range(n):
            conf = os.path.join(base, "%s-%d.conf" % (name, i))
            lines = ["server_name: n%d" % i, "listen: 127.0.0.1:%d" % self.ports[i], auth]
            if jetstream:
                lines.append('jetstream { store_dir: "%s" }' % os.path.join(base, "%s-js-%d" % (name, i)))
            if n > 1:
                routes = ", ".join("nats-route://127.0.0.1:%d" % p for j, p in enumerate(self.cports) if j != i)
                lines.append("cluster { name: c1, listen: 127.0.0.1:%d, routes: [%s] }" % (self.cports[i], routes))
            with open(conf, "w") as f:
                f.write("\n".join(lines) + "\n")
            self.confs.append(conf)
        for i in range(n):
            self.start(i)

    def url(self, i):
        return "nats://127.0.0.1:%d" % self.ports[i]

    @property
    def urls(self):
        return ",".join(self.url(i) for i in range(self.n))

    def start(self, i):
        log = open(os.path.join(self.base, "%s-%d.log" % (self.name, i)), "a")
        self.procs[i] = subprocess.Popen([NATS_SERVER, "-c", self.confs[i]], stdout=log, stderr=log)
        log.close()
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.ports[i]), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nats-server %d did not start" % i)

    def kill(self, i):
        self.procs[i].kill()
        self.procs[i].wait(10)

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.terminate()
        for p in self.procs:
            if p:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


class Bridge:
    """One nats.js connection: requests, scatter-gather, subscriptions, streams."""

    def __init__(self, urls, *args):
        ensure_npm()
        self.proc = subprocess.Popen(["node", os.path.join(NATS_DIR, "bridge.mjs"), urls, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.cond = threading.Condition()
        self.answers = {}
        self.msgs = []
        self.next_id = 0
        self.ready = None
        threading.Thread(target=self._read, daemon=True).start()
        with self.cond:
            if not self.cond.wait_for(lambda: self.ready is not None, 15):
                raise AssertionError("the nats.js bridge did not connect")
        if "error" in self.ready:
            raise AssertionError("nats.js could not connect: %s" % self.ready["error"])

    def _read(self):
        for line in self.proc.stdout:
            o = json.loads(line)
            with self.cond:
                if o.get("event") == "msg":
                    self.msgs.append(o)
                elif o.get("event") in ("ready", "error"):
                    self.ready = o
                else:
                    self.answers[o["id"]] = o
                self.cond.notify_all()
        with self.cond:
            if self.ready is None:
                self.ready = {"error": "bridge exited"}
            self.cond.notify_all()

    def call(self, op, wait=30, **kw):
        """One bridge operation; `wait`: seconds to wait for the bridge's
        answer (kw goes to the bridge, a request's `timeout` in ms too)."""
        with self.cond:
            self.next_id += 1
            i = self.next_id
        self.proc.stdin.write(json.dumps(dict(kw, id=i, op=op)) + "\n")
        self.proc.stdin.flush()
        with self.cond:
            if not self.cond.wait_for(lambda: i in self.answers, wait):
                raise AssertionError("bridge: no answer to %s" % op)
            return self.answers.pop(i)

    def request(self, subject, data, timeout=5000):
        """The answer's data object (a request's payload is its data object)."""
        payload = data if isinstance(data, str) else json.dumps(data)
        a = self.call("request", wait=timeout / 1000 + 10, subject=subject, data=payload, timeout=timeout)
        if not a["ok"]:
            raise AssertionError("request %s failed: %s" % (subject, a["error"]))
        return json.loads(a["data"])

    def try_request(self, subject, data, timeout=5000):
        payload = data if isinstance(data, str) else json.dumps(data)
        return self.call("request", wait=timeout / 1000 + 10, subject=subject, data=payload, timeout=timeout)

    def subscribe(self, subject):
        assert self.call("sub", subject=subject)["ok"]

    def messages(self, subject_suffix=None):
        with self.cond:
            return [m for m in self.msgs if subject_suffix is None or m["subject"].endswith(subject_suffix)]

    def wait_for(self, pred, timeout=20, what="condition"):
        with self.cond:
            if not self.cond.wait_for(pred, timeout):
                raise AssertionError("timed out waiting for " + what)

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
