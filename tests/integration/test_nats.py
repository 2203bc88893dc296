"""The agent on NATS against Debian's nats-server, driven by nats.js (see
natsbus.py): every request and code, the fleet-wide status, events, refused
credentials, JetStream outcomes across a missing stream and a restart, a
node of a 3-node cluster killed in the middle of a move, and 200 agents
answering a fleet-wide status; the reference manager's --nats mode driving
a move (its live view over NATS is in test_web.py)."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from harness import BIN, SANITIZED, Scratch, journal_record, make_tree, wait_until
from natsbus import Bridge, NatsCluster, auth_keys

PREFIX = "hostagent"
REFMANAGER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "manager", "refmanager.py")


def msg_id(agent_id, state, move_id):
    """The Nats-Msg-Id of a move's outcome: agent, moveId and the move's
    acceptance time (its journal record's)."""
    return "%s:%s:%d" % (agent_id, move_id, journal_record(state, move_id)["startedAtMs"])


class NatsAgent:
    """The real hostagent with transport = nats."""

    def __init__(self, base, servers, agent_id="na1", roots=(), state=None, extra=None, log_name=None,
                 name=None):
        """name: for its files (default agent_id): two agents of one agent_id."""
        self.base = base
        self.agent_id = agent_id
        name = name or agent_id
        self.state = state or os.path.join(base, "state-" + name)
        os.makedirs(self.state, exist_ok=True)
        self.cfg_path = os.path.join(base, "agent-%s.conf" % name)
        self.log_path = os.path.join(base, log_name or "agent-%s.log" % name)
        conf = {
            "transport": "nats",
            "nats_servers": servers,
            "agent_id": agent_id,
            "allowed_roots": ", ".join(roots) if roots else base,
            "state_dir": self.state,
            "control_socket": os.path.join(base, "ctl-%s.sock" % name),
            "heartbeat_interval": "1s",
            "progress_interval": "100ms",
            "reconnect_min": "100ms",
            "reconnect_max": "1s",
            "log_level": "debug",
        }
        conf.update(extra or {})
        with open(self.cfg_path, "w") as f:
            for k, v in conf.items():
                if v is not None:
                    f.write("%s = %s\n" % (k, v))
        self.logf = open(self.log_path, "a")
        self.proc = subprocess.Popen([BIN, "--config", self.cfg_path], stdout=self.logf, stderr=self.logf)

    def subject(self, s):
        return "%s.%s.%s" % (PREFIX, self.agent_id, s)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.logf.close()

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)
        self.logf.close()


class NatsCase(unittest.TestCase):
    nodes = 1
    jetstream = False
    auth = ""

    def setUp(self):
        self.scratch = Scratch("256m")
        self.cluster = NatsCluster(self.scratch.base, self.nodes, self.jetstream, self.server_auth())
        self.bridges = []
        self.agents = []

    def server_auth(self):
        """The servers' authentication configuration."""
        return self.auth

    def make_keys(self):
        """Keys and JWTs in self.keys (natsbus.auth_keys)."""
        self.keys = os.path.join(self.scratch.base, "keys")
        os.makedirs(self.keys)
        return auth_keys(self.keys)

    def tearDown(self):
        try:
            for a in self.agents:
                if a.proc.poll() is None:
                    rc = a.stop()
                    if rc != 0:
                        print(a.log()[-4000:])
                    self.assertEqual(rc, 0, "agent exit status (sanitizer report in its log?)")
        finally:
            for b in self.bridges:
                b.close()
            self.cluster.stop()
            self.scratch.close()

    def bridge(self, *args, urls=None):
        b = Bridge(urls or self.cluster.urls, *args)
        self.bridges.append(b)
        return b

    def agent(self, **kw):
        kw.setdefault("roots", (self.scratch.a, self.scratch.b))
        a = NatsAgent(self.scratch.base, kw.pop("servers", self.cluster.urls), **kw)
        self.agents.append(a)
        return a

    def stream_msgs(self, b, timeout=30):
        """The OUTCOMES stream's messages; asked again while the cluster is
        not ready to say (a node just killed, the bridge reconnecting, a
        stream leader being elected)."""
        got = {}

        def ok():
            got.update(b.call("stream_msgs", name="OUTCOMES"))
            return "msgs" in got
        wait_until(ok, timeout, "the OUTCOMES stream's messages (last: %s)" % got)
        return got["msgs"]

    def wait_up(self, agent, timeout=20):
        wait_until(lambda: "connection state from=hello to=up" in agent.log(), timeout, "agent up on NATS")


class TestNatsSingle(NatsCase):
    def test_every_request_and_code(self):
        b = self.bridge()
        b.subscribe(PREFIX + ".na1.>")
        a = self.agent()
        self.wait_up(a)
        b.wait_for(lambda: b.messages(".agent.hello"), 10, "agent.hello")
        hello = json.loads(b.messages(".agent.hello")[0]["data"])
        self.assertEqual(hello["agentId"], "na1")
        self.assertIn("server.move_data", hello["capabilities"])
        # Every request the agent announces is served on its subject.
        for cap in hello["capabilities"]:
            ans = b.try_request(a.subject(cap), "{}")
            self.assertTrue(ans["ok"], "no answer on %s: %s" % (cap, ans))
        # Codes: unknown subject, invalid payloads, a refused path, not found.
        unk = b.request(a.subject("server.nope"), {})
        self.assertEqual(unk["code"], "unknown_subject")
        self.assertEqual(b.request(a.subject("server.move_data"), "not json")["code"], "invalid_request")
        self.assertEqual(b.request(a.subject("server.move_data"), {"serverName": 5})["code"],
                         "invalid_request")
        deep = "[" * 40 + "]" * 40
        self.assertEqual(b.request(a.subject("server.move_data"), '{"x":%s}' % deep)["code"], "invalid_request")
        outside = b.request(a.subject("server.move_data"),
                            {"serverName": "s", "oldPath": "/etc", "newPath": self.scratch.b + "/s"})
        self.assertEqual(outside["code"], "path_not_allowed")
        self.assertEqual(b.request(a.subject("server.move_cancel"), {"moveId": "nope"})["code"], "not_found")
        st = b.request(a.subject("server.move_status"), {})
        self.assertEqual(st, {"success": True, "moves": [], "reclaimingBytes": 0, "reclaimingEntries": 0})
        # A move: answer on the reply subject, progress events in seq order.
        make_tree(os.path.join(self.scratch.a, "s1"), n_small=50)
        ans = b.request(a.subject("server.move_data"),
                        {"serverName": "s1", "oldPath": self.scratch.a + "/s1",
                         "newPath": self.scratch.b + "/s1", "moveId": "mv-1"}, 30000)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(ans["method"], "copy")
        b.wait_for(lambda: any(json.loads(m["data"])["phase"] == "complete"
                               for m in b.messages(".move.progress")), 10, "terminal frame")
        seqs = [json.loads(m["data"])["seq"] for m in b.messages(".move.progress")]
        self.assertEqual(seqs, sorted(seqs))
        again = b.request(a.subject("server.move_data"),
                          {"serverName": "s1", "oldPath": self.scratch.a + "/s1",
                           "newPath": self.scratch.b + "/s1", "moveId": "mv-1"}, 30000)
        self.assertEqual(again, ans, "an idempotent retry gets the same answer")
        fleet = b.request(PREFIX + ".all.server.move_status", {"moveId": "mv-1"})
        self.assertEqual(fleet["moves"][0]["phase"], "complete")
        # A prepared move over NATS: ready answered on the prepare's reply,
        # the commit's answer on its own, with the downtime.
        make_tree(os.path.join(self.scratch.a, "s2"), n_small=30)
        self.assertIn("server.move_prepare", hello["capabilities"])
        ready = b.request(a.subject("server.move_prepare"),
                          {"serverName": "s2", "oldPath": self.scratch.a + "/s2",
                           "newPath": self.scratch.b + "/s2", "moveId": "pr-1"}, 30000)
        self.assertTrue(ready["success"], ready)
        self.assertEqual(b.request(a.subject("server.move_commit"), {"moveId": "nope"})["code"], "not_found")
        done = b.request(a.subject("server.move_commit"), {"moveId": "pr-1"}, 30000)
        self.assertTrue(done["success"], done)
        self.assertIn("downtimeMs", done)
        self.assertFalse(os.path.exists(self.scratch.a + "/s2"))
        def phases():
            return [json.loads(m["data"])["phase"] for m in b.messages(".move.progress")
                    if json.loads(m["data"])["moveId"] == "pr-1"]
        # Frames and answers travel on different subjects: their order at the
        # receiver is not the agent's.
        b.wait_for(lambda: "complete" in phases(), 10, "the terminal frame of pr-1")
        phases = phases()
        self.assertIn("ready", phases)
        self.assertIn("syncing", phases)
        self.assertEqual(phases[-1], "complete")
        b.wait_for(lambda: b.messages(".heartbeat"), 10, "a heartbeat")
        self.assertEqual(a.stop(), 0)

    def test_bad_config_is_refused(self):
        conf = os.path.join(self.scratch.base, "bad.conf")
        cases = [
            ("transport = nats\n", "missing required key nats_servers"),
            ("transport = nats\nnats_servers = http://x\n", "nats:// or tls://"),
            ("transport = nats\nnats_servers = nats://u:p@x:4222\n", "user information"),
            ("transport = nats\nnats_servers = nats://x\nnats_subject_prefix = a.*\n", "nats_subject_prefix"),
            ("transport = nats\nnats_servers = nats://x\nnats_user = u\n", "needs nats_password_file"),
            ("transport = nats\nnats_servers = nats://x\nnats_creds_file = /nonexistent\n", "cannot be read"),
            ("transport = nats\nnats_servers = nats://x\nmanager_url = ws://x/\n", "only used with transport = websocket"),
            ("manager_url = ws://x/\nnats_servers = nats://x\n", "only used with transport = nats"),
            ("transport = nats\nnats_servers = nats://x\nagent_id = a.b\n", "one NATS subject token"),
            ("transport = nats\nnats_servers = nats://x\ntoken = t\nnats_nkey_seed_file = %s\n" % conf,
             "more than one NATS authentication"),
        ]
        for text, want in cases:
            with open(conf, "w") as f:
                f.write(text)
            r = subprocess.run([BIN, "--check-config", "--config", conf], capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0, text)
            self.assertIn(want, r.stderr + r.stdout, text)


YIELDS = "error another hostagent runs with this agent_id and comes first: this one does not serve it"
SERVES = "error another hostagent runs with this agent_id: this one serves it, the other does not"
SERVING = "serving the agent_id's requests"


class TestNatsOneAgentId(NatsCase):
    """Two agents with one agent_id (a cloned config or VM): one serves it,
    the other refuses to, loudly; a request gets one answer, never two."""

    def clone_root(self):
        # The clone's allowed root: the paths of the first agent's moves are
        # not allowed there, so an answer from it would be path_not_allowed
        # (as in the report: that answer first, then the real one).
        root = os.path.join(self.scratch.base, "clone-root")
        os.makedirs(root, exist_ok=True)
        return (root,)

    def presence(self, b, agent, serving):
        """The agent's announcements on the presence subject saying serving."""
        out = []
        for m in b.messages(".agent.presence"):
            d = json.loads(m["data"])
            if d.get("pid") == agent.proc.pid and d.get("serving") is serving and not d.get("leaving"):
                out.append(d)
        return out

    def answers_to(self, b, reply):
        return [json.loads(m["data"]) for m in b.messages() if m["subject"] == reply]

    def ask(self, b, agent, request, data, reply):
        """Publishes a request with its own reply subject (b subscribed to
        _INBOX.dup.>): every answer to it is seen, not only the first."""
        b.call("publish", subject=agent.subject(request), reply=reply, data=json.dumps(data))
        b.wait_for(lambda: self.answers_to(b, reply), 60, "an answer on " + reply)

    def one_answer_each(self, b, replies):
        """Every reply subject got exactly one answer, and the fleet-wide
        status (every agent answers it) one from this agent_id: a second
        answer would come within the gather's window."""
        fleet = b.call("gather", subject=PREFIX + ".all.server.move_status", data="{}", wait=1500, expect=2)
        self.assertEqual(len(fleet["replies"]), 1, fleet)
        for r in replies:
            self.assertEqual(len(self.answers_to(b, r)), 1, (r, self.answers_to(b, r)))
        return json.loads(fleet["replies"][0]["data"])

    def test_a_second_agent_of_an_agent_id_does_not_serve_it(self):
        b = self.bridge()
        b.subscribe(PREFIX + ".dup.>")
        b.subscribe("_INBOX.dup.>")
        first = self.agent(agent_id="dup", name="first")
        self.wait_up(first)
        b.wait_for(lambda: self.presence(b, first, True), 20, "the first agent serving")
        prom = os.path.join(self.scratch.base, "clone.prom")
        clone = self.agent(agent_id="dup", name="clone", roots=self.clone_root(), extra={"metrics_file": prom})
        wait_until(lambda: YIELDS in clone.log(), 30, "the clone standing back, loudly")
        line = next(x for x in clone.log().splitlines() if YIELDS in x)
        self.assertIn("other_pid=%d" % first.proc.pid, line)
        self.assertIn("connection state from=hello to=duplicate", clone.log())

        def prom_text():
            try:
                with open(prom) as f:
                    return f.read()
            except FileNotFoundError:
                return ""
        wait_until(lambda: 'hostagent_connection_state{state="duplicate"} 1' in prom_text(), 30,
                   "the clone's metrics saying duplicate")
        wait_until(lambda: SERVES in first.log(), 30, "the conflict in the first agent's log")
        self.assertIn("other_pid=%d" % clone.proc.pid, next(x for x in first.log().splitlines() if SERVES in x))
        # A move: one answer (the first agent's success), never the clone's.
        src = make_tree(os.path.join(self.scratch.a, "s1"), n_small=20)
        dst = os.path.join(self.scratch.b, "s1")
        self.ask(b, first, "server.move_data",
                 {"serverName": "s1", "oldPath": src, "newPath": dst, "moveId": "dup-1"}, "_INBOX.dup.1")
        ans = self.answers_to(b, "_INBOX.dup.1")[0]
        self.assertTrue(ans["success"], ans)
        self.assertTrue(os.path.isdir(dst))
        self.ask(b, first, "server.move_status", {}, "_INBOX.dup.2")
        st = self.one_answer_each(b, ["_INBOX.dup.1", "_INBOX.dup.2"])
        self.assertEqual([m["moveId"] for m in st["moves"]], ["dup-1"])
        self.assertNotIn(SERVING, clone.log())
        self.assertNotIn("request refused", clone.log())
        # Nothing of the clone's on the agent_id's subjects but its presence.
        self.assertEqual([json.loads(m["data"])["pid"] for m in b.messages(".agent.hello")], [first.proc.pid])
        self.assertTrue(self.presence(b, clone, False))
        self.assertFalse(self.presence(b, clone, True))
        # The first agent goes: the other one serves the agent_id now.
        self.assertEqual(first.stop(), 0)
        wait_until(lambda: SERVING + ": no other hostagent serves it any more" in clone.log(), 30,
                   "the clone serving")
        self.wait_up(clone)
        b.wait_for(lambda: len(b.messages(".agent.hello")) == 2, 20, "the clone's hello")
        self.assertEqual(json.loads(b.messages(".agent.hello")[1]["data"])["pid"], clone.proc.pid)
        self.ask(b, clone, "server.move_status", {}, "_INBOX.dup.3")
        self.assertEqual(self.answers_to(b, "_INBOX.dup.3")[0]["moves"], [], "the clone's own (empty) history")

    def test_the_serving_agent_killed_the_other_takes_over(self):
        b = self.bridge()
        b.subscribe(PREFIX + ".dup.>")
        first = self.agent(agent_id="dup", name="first")
        self.wait_up(first)
        b.wait_for(lambda: self.presence(b, first, True), 20, "the first agent serving")
        clone = self.agent(agent_id="dup", name="clone", roots=self.clone_root())
        wait_until(lambda: YIELDS in clone.log(), 30, "the clone standing back")
        first.kill()  # no goodbye: the clone waits until the first is not heard any more
        wait_until(lambda: SERVING in clone.log(), 60, "the clone serving")
        self.assertIn("the other hostagent with this agent_id is not heard any more", clone.log())
        self.wait_up(clone)
        self.assertEqual(b.request(clone.subject("server.move_status"), {})["moves"], [])

    def test_an_agent_paused_and_resumed_takes_its_agent_id_back(self):
        """A VM paused (SIGSTOP stands in): the other agent of the agent_id
        no longer hears it and serves; resumed, the first one (serving
        since earlier) keeps the agent_id and the other stands back again,
        also when both were serving."""
        b = self.bridge()
        b.subscribe(PREFIX + ".dup.>")
        b.subscribe("_INBOX.dup.>")
        first = self.agent(agent_id="dup", name="first")
        self.wait_up(first)
        b.wait_for(lambda: self.presence(b, first, True), 20, "the first agent serving")
        clone = self.agent(agent_id="dup", name="clone", roots=self.clone_root())
        wait_until(lambda: YIELDS in clone.log(), 30, "the clone standing back")
        os.kill(first.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: SERVING in clone.log(), 60, "the clone serving while the first is paused")
            self.wait_up(clone)
            back = len(self.presence(b, clone, False))
        finally:
            os.kill(first.proc.pid, signal.SIGCONT)
        back_again = "connection state from=up to=duplicate"
        wait_until(lambda: back_again in clone.log() and YIELDS in clone.log().split(back_again)[-1], 30,
                   "the clone standing back again, loudly")
        b.wait_for(lambda: len(self.presence(b, clone, False)) > back, 20, "the clone's announcement")
        wait_until(lambda: SERVES in first.log(), 30, "the conflict in the first agent's log")
        self.assertNotIn("to=duplicate", first.log())
        self.ask(b, first, "server.move_status", {}, "_INBOX.dup.p1")
        self.one_answer_each(b, ["_INBOX.dup.p1"])

    def test_started_at_once_one_serves(self):
        """Both connect at the same instant: both may take the agent_id
        before their announcements cross; then one stands back (the one that
        began serving later), and requests get one answer each."""
        b = self.bridge()
        b.subscribe(PREFIX + ".dup.>")
        b.subscribe("_INBOX.dup.>")
        x = self.agent(agent_id="dup", name="x")
        y = self.agent(agent_id="dup", name="y")
        wait_until(lambda: YIELDS in x.log() or YIELDS in y.log(), 30, "one of them standing back")
        loser, winner = (x, y) if YIELDS in x.log() else (y, x)
        # Its "not serving" goes out after it unsubscribed, on the same
        # connection: once it is here, the server hands the loser no request.
        b.wait_for(lambda: self.presence(b, loser, False), 20, "the loser's announcement")
        self.wait_up(winner)
        self.assertNotIn(YIELDS, winner.log())
        replies = []
        for i in range(5):
            replies.append("_INBOX.dup.r%d" % i)
            self.ask(b, winner, "server.move_status", {}, replies[-1])
        self.one_answer_each(b, replies)
        self.assertNotIn("to=up", loser.log().split(YIELDS)[-1], "the loser stays back")


class TestRefManagerNats(NatsCase):
    """tests/manager/refmanager.py --nats: the demo's manager drives a move of
    an agent with transport = nats and exits on its answer."""

    def test_move_driven_by_refmanager(self):
        b = self.bridge()
        b.subscribe(PREFIX + ".rm1.server.>")  # to see the request as it went out
        make_tree(os.path.join(self.scratch.a, "s1"), n_small=300, big_mib=8)
        src, dst = self.scratch.a + "/s1", self.scratch.b + "/servers/s1"
        mgr = subprocess.Popen([sys.executable, REFMANAGER, "--nats", self.cluster.urls, "--nats-agent", "rm1",
                                "--print-frames", "--move", "s1", src, dst],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # The manager says it listens once its subscriptions are in place;
            # then the agents come, and the named one's hello is its cue.
            first = mgr.stdout.readline()
            self.assertIn("reference manager on NATS", first, first + mgr.stderr.read() if not first else first)
            other = self.agent(agent_id="rm0")  # another agent on the bus: not the one named
            self.agent(agent_id="rm1", extra={"progress_interval": "50ms"})
            out, err = mgr.communicate(timeout=60)
        finally:
            if mgr.poll() is None:
                mgr.kill()
                mgr.wait()
        self.assertEqual(mgr.returncode, 0, out[-3000:] + err[-3000:])
        msgs = [json.loads(x) for x in out.splitlines()]
        # Frames and the answer travel on different subjects: their order in
        # the output is not the agent's. The answer is the one message on
        # the manager's inbox, wherever it is; the manager exited once it
        # had it and the move's terminal frame.
        answers = [m for m in msgs if m["subject"].startswith("_INBOX.refmanager-")]
        self.assertEqual(len(answers), 1, out)
        hellos = [m["data"]["agentId"] for m in msgs if m["subject"] == "agent.hello"]
        self.assertIn("rm1", hellos)
        frames = [m["data"] for m in msgs if m["subject"] == "move.progress"]
        self.assertTrue(frames, out)
        self.assertEqual({f["newPath"] for f in frames}, {dst})
        seqs = [f["seq"] for f in frames]
        self.assertEqual(seqs, sorted(seqs))
        phases = [f["phase"] for f in frames]
        for p in ("copying", "verifying", "complete"):
            self.assertIn(p, phases)
        answer = answers[0]
        self.assertTrue(answer["data"]["success"], answer)
        self.assertEqual(answer["data"]["moveId"], frames[-1]["moveId"])
        self.assertEqual(frames[-1]["phase"], "complete")
        # The request went to the named agent's subject, with the manager's inbox.
        reqs = b.messages(".server.move_data")
        self.assertEqual([m["subject"] for m in reqs], [PREFIX + ".rm1.server.move_data"])
        self.assertEqual(json.loads(reqs[0]["data"]), {"serverName": "s1", "oldPath": src, "newPath": dst})
        self.assertFalse(os.path.exists(src))
        self.assertTrue(os.path.isdir(dst))
        self.assertEqual(b.request(other.subject("server.move_status"), {})["moves"], [])


class TestNatsAuth(NatsCase):
    auth = "authorization { user: agent, password: right }"

    def test_refused_credentials_are_logged_and_good_ones_work(self):
        pw = os.path.join(self.scratch.base, "pw")
        with open(pw, "w") as f:
            f.write("wrong\n")
        a = self.agent(extra={"nats_user": "agent", "nats_password_file": pw})
        wait_until(lambda: "refused the agent's credentials" in a.log(), 20, "the refusal logged")
        self.assertEqual(a.stop(), 0)
        with open(pw, "w") as f:
            f.write("right\n")
        b = self.bridge("--user", "agent", "--pass", "right")
        a2 = self.agent(agent_id="na2", extra={"nats_user": "agent", "nats_password_file": pw})
        self.wait_up(a2)
        self.assertEqual(b.request(a2.subject("server.move_status"), {})["moves"], [])


class TestNatsNKey(NatsCase):
    """nats_nkey_seed_file: the agent signs the server's nonce with its own
    Ed25519 code (nkey.c) for a key the server lists."""

    def server_auth(self):
        info = self.make_keys()
        return "authorization { users = [ {nkey: %s}, {user: mgr, password: mgrpw} ] }" % info["userPub"]

    def test_listed_key_is_let_in_and_an_unknown_one_refused(self):
        a = self.agent(extra={"nats_nkey_seed_file": os.path.join(self.keys, "user.nk")})
        self.wait_up(a)
        b = self.bridge("--user", "mgr", "--pass", "mgrpw")
        self.assertEqual(b.request(a.subject("server.move_status"), {})["moves"], [])
        a2 = self.agent(agent_id="na2", extra={"nats_nkey_seed_file": os.path.join(self.keys, "other.nk")})
        wait_until(lambda: "refused the agent's credentials" in a2.log(), 20, "the refusal logged")
        self.assertNotIn("connection state from=hello to=up", a2.log())
        self.assertNotIn("error cannot subscribe", a2.log(), "only the refusal is an error")


class TestNatsCreds(NatsCase):
    """nats_creds_file: a user JWT and its nkey, on a server in operator
    (decentralised JWT) mode, as NATS fleets are run."""

    def server_auth(self):
        info = self.make_keys()
        return 'operator: "%s"\nresolver: MEMORY\nresolver_preload: { %s: "%s" }' % (
            os.path.join(self.keys, "operator.jwt"), info["accountPub"], info["accountJwt"])

    def test_a_user_of_the_account_moves_and_a_stranger_is_refused(self):
        a = self.agent(extra={"nats_creds_file": os.path.join(self.keys, "agent.creds")})
        self.wait_up(a)
        b = self.bridge("--creds", os.path.join(self.keys, "bridge.creds"))
        b.subscribe(a.subject("move.progress"))
        src = make_tree(os.path.join(self.scratch.a, "s1"), n_small=5)
        dst = os.path.join(self.scratch.b, "s1")
        ans = b.request(a.subject("server.move_data"), {"serverName": "s1", "oldPath": src, "newPath": dst,
                                                       "moveId": "cr-1"}, timeout=60000)
        self.assertTrue(ans["success"], ans)
        wait_until(lambda: any(json.loads(m["data"]).get("phase") == "complete" for m in b.messages()), 20,
                   "the progress frames through the account")
        a2 = self.agent(agent_id="na2", extra={"nats_creds_file": os.path.join(self.keys, "stranger.creds")})
        wait_until(lambda: "refused the agent's credentials" in a2.log(), 20, "the refusal logged")
        self.assertNotIn("connection state from=hello to=up", a2.log())


class TestNatsTls(NatsCase):
    """tls:// servers: verified against ca_file, host name included; a
    certificate the agent cannot trust is refused, named in the log."""

    def server_auth(self):
        from test_tls import make_pki
        self.pki = os.path.join(self.scratch.base, "pki")
        os.makedirs(self.pki)
        make_pki(self.pki)
        return self.tls_conf("good")

    def tls_conf(self, cert):
        return 'tls { cert_file: "%s", key_file: "%s" }' % (os.path.join(self.pki, cert + ".pem"),
                                                           os.path.join(self.pki, cert + ".key"))

    def tls_urls(self, cluster):
        return cluster.urls.replace("nats://", "tls://")

    def test_verified_server_and_refused_ones(self):
        ca = os.path.join(self.pki, "ca.pem")
        a = self.agent(servers=self.tls_urls(self.cluster), extra={"ca_file": ca})
        self.wait_up(a)
        b = self.bridge("--ca", ca)
        self.assertEqual(b.request(a.subject("server.move_status"), {})["moves"], [])
        # The same server without ca_file: the system store does not know the test CA.
        a2 = self.agent(agent_id="na2", servers=self.tls_urls(self.cluster))
        # A server whose certificate names another host.
        wrong = NatsCluster(self.scratch.base, 1, auth=self.tls_conf("wrong"), name="wrong")
        self.addCleanup(wrong.stop)
        a3 = self.agent(agent_id="na3", servers=self.tls_urls(wrong), extra={"ca_file": ca})
        for ag, why in ((a2, "unable to get local issuer certificate"), (a3, "IP address mismatch")):
            wait_until(lambda: "TLS certificate was not accepted" in ag.log(), 20, "the refusal in the log")
            self.assertIn(why, ag.log())
            self.assertNotIn("to=up", ag.log())
        self.assertNotIn("certificate", a.log())


class TestNatsJetStream(NatsCase):
    jetstream = True

    def test_outcome_kept_until_a_stream_stores_it_across_a_restart(self):
        b = self.bridge()
        a = self.agent(extra={"nats_jetstream": "true"})
        self.wait_up(a)
        os.makedirs(self.scratch.a + "/s1")
        with open(self.scratch.a + "/s1/f", "w") as f:
            f.write("x" * 10000)
        ans = b.request(a.subject("server.move_data"),
                        {"serverName": "s1", "oldPath": self.scratch.a + "/s1",
                         "newPath": self.scratch.b + "/s1", "moveId": "js-1"}, 30000)
        self.assertTrue(ans["success"], ans)
        wait_until(lambda: "JetStream did not store the move outcome" in a.log(), 20, "the warning")
        self.assertFalse(journal_record(a.state, "js-1")["delivered"])
        # Restart with the outcome still unacknowledged; the stream comes later.
        self.assertEqual(a.stop(), 0)
        self.agents.remove(a)
        a2 = self.agent(extra={"nats_jetstream": "true"}, log_name="agent-na1-2.log")
        self.wait_up(a2)
        time.sleep(1)
        self.assertTrue(b.call("stream_add", name="OUTCOMES", subjects=[PREFIX + ".*.move.outcome"])["ok"])
        wait_until(lambda: journal_record(a2.state, "js-1")["delivered"], 30, "outcome acknowledged")
        msgs = self.stream_msgs(b)
        self.assertEqual(len(msgs), 1, msgs)
        self.assertEqual(msgs[0]["msgId"], msg_id("na1", a2.state, "js-1"))
        self.assertEqual(json.loads(msgs[0]["data"]), ans)

    def move(self, b, a, server, move_id):
        os.makedirs(os.path.join(self.scratch.a, server))
        with open(os.path.join(self.scratch.a, server, "f"), "w") as f:
            f.write(server * 1000)
        return b.request(a.subject("server.move_data"),
                         {"serverName": server, "oldPath": os.path.join(self.scratch.a, server),
                          "newPath": os.path.join(self.scratch.b, server), "moveId": move_id}, 30000)

    def test_two_agents_moves_of_one_move_id_are_two_outcomes(self):
        """Managers pick moveIds, and agent-made ones can meet across hosts:
        the outcome of each agent's move is stored, the second one is not
        taken for a repeat of the first."""
        b = self.bridge()
        self.assertTrue(b.call("stream_add", name="OUTCOMES", subjects=[PREFIX + ".*.move.outcome"])["ok"])
        ja = self.agent(agent_id="ja", extra={"nats_jetstream": "true"})
        jb = self.agent(agent_id="jb", extra={"nats_jetstream": "true"})
        self.wait_up(ja)
        self.wait_up(jb)
        answers = {}
        for ag, server in ((ja, "s1"), (jb, "s2")):
            answers[ag.agent_id] = self.move(b, ag, server, "same")
            self.assertTrue(answers[ag.agent_id]["success"], answers[ag.agent_id])
            wait_until(lambda: journal_record(ag.state, "same")["delivered"], 30, "outcome acknowledged")
        msgs = self.stream_msgs(b)
        self.assertEqual(sorted(m["subject"] for m in msgs),
                         [PREFIX + ".ja.move.outcome", PREFIX + ".jb.move.outcome"], msgs)
        for m in msgs:
            agent_id = m["subject"].split(".")[1]
            state = ja.state if agent_id == "ja" else jb.state
            self.assertEqual(m["msgId"], msg_id(agent_id, state, "same"))
            self.assertEqual(json.loads(m["data"]), answers[agent_id])
        self.assertNotIn("duplicate=yes", jb.log())

    def test_outcome_sent_again_after_a_restart_is_dropped_as_a_repeat(self):
        """The PubAck lost (a stream that sends none stands in for it): the
        outcome is published again, also by the next run, with the same
        Nats-Msg-Id; the stream keeps one copy, and the PubAck that finally
        comes says "duplicate"."""
        b = self.bridge()
        self.assertTrue(b.call("stream_add", name="OUTCOMES", subjects=[PREFIX + ".*.move.outcome"],
                               no_ack=True)["ok"])
        a = self.agent(extra={"nats_jetstream": "true"})
        self.wait_up(a)
        ans = self.move(b, a, "s1", "js-2")
        self.assertTrue(ans["success"], ans)
        wait_until(lambda: len(self.stream_msgs(b)) == 1, 30, "the outcome in the stream")
        wait_until(lambda: "JetStream did not store the move outcome" in a.log(), 30, "the PubAck missed")
        self.assertEqual(a.stop(), 0)
        self.agents.remove(a)
        self.assertFalse(journal_record(a.state, "js-2")["delivered"])
        a2 = self.agent(extra={"nats_jetstream": "true"}, log_name="agent-na1-2.log")
        self.wait_up(a2)
        self.assertFalse(b.call("stream_update", name="OUTCOMES", no_ack=False)["no_ack"])
        wait_until(lambda: journal_record(a2.state, "js-2")["delivered"], 30, "outcome acknowledged")
        self.assertIn("move outcome stored by JetStream move=js-2", a2.log())
        stored = [l for l in a2.log().splitlines() if "move outcome stored by JetStream" in l]
        self.assertIn("duplicate=yes", stored[-1])
        msgs = self.stream_msgs(b)
        self.assertEqual(len(msgs), 1, msgs)
        self.assertEqual(msgs[0]["msgId"], msg_id("na1", a2.state, "js-2"))
        self.assertEqual(json.loads(msgs[0]["data"]), ans)


class TestNatsCluster(NatsCase):
    nodes = 3
    jetstream = True

    def wait_stream(self, b):
        def ok():
            r = b.call("stream_add", name="OUTCOMES", subjects=[PREFIX + ".*.move.outcome"], replicas=3)
            return r["ok"] or "already in use" in r.get("error", "")
        wait_until(ok, 30, "JetStream meta leader and the stream")

    def test_node_killed_mid_move(self):
        b = self.bridge()
        self.wait_stream(b)
        a = self.agent(servers=self.cluster.url(0), extra={"nats_jetstream": "true"})
        self.wait_up(a)
        b.subscribe(PREFIX + ".na1.move.progress")
        # Slow enough to kill a node in the middle: a big tree on disk to tmpfs.
        make_tree(os.path.join(self.scratch.a, "big"), n_small=200, big_mib=150)
        b.call("publish", subject=a.subject("server.move_data"),
               data=json.dumps({"serverName": "big", "oldPath": self.scratch.a + "/big",
                                "newPath": self.scratch.b + "/big", "moveId": "fo-1"}))
        b.wait_for(lambda: any(json.loads(m["data"])["phase"] == "copying"
                               for m in b.messages(".move.progress")), 30, "copying")
        # Agent on node 0 (its only configured server: the others are announced).
        self.cluster.kill(0)
        wait_until(lambda: "reconnected to NATS" in a.log(), 30, "failover")
        b.wait_for(lambda: any(json.loads(m["data"])["phase"] == "complete"
                               for m in b.messages(".move.progress")), 120, "move complete")
        wait_until(lambda: journal_record(a.state, "fo-1")["delivered"], 30, "outcome stored")
        msgs = [m for m in self.stream_msgs(b) if m["msgId"] == msg_id("na1", a.state, "fo-1")]
        self.assertEqual(len(msgs), 1, msgs)
        self.assertTrue(json.loads(msgs[0]["data"])["success"])
        self.assertEqual(a.stop(), 0)

    def test_200_agents_fleet_status(self):
        n = 200 if not SANITIZED else 60
        b = self.bridge()
        procs = []
        for i in range(n):
            procs.append(self.agent(agent_id="f%03d" % i, servers=self.cluster.urls,
                                    extra={"log_level": "info", "heartbeat_interval": "30s"}))
        wait_until(lambda: all("connected to NATS" in p.log() for p in procs), 90, "all agents up")
        best = None
        for _ in range(3):
            r = b.call("gather", subject=PREFIX + ".all.server.move_status", data="{}", wait=2000, expect=n)
            ids = set()
            for rep in r["replies"]:
                ids.add(rep["data"])
            if len(r["replies"]) >= n:
                best = max(x["ms"] for x in r["replies"])
                break
        self.assertIsNotNone(best, "not every agent answered within 2 s")
        print("fleet-wide status: %d agents answered in %.0f ms" % (n, best))
        self.assertLess(best, 2000)


if __name__ == "__main__":
    unittest.main()
