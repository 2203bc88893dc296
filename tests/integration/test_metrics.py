"""metrics_file: the Prometheus text file, read back with the real Prometheus
text parser (Debian's python3-prometheus-client) and checked against moves
the test ran; its atomic replacement, reloads, a missing directory, and moves
recovered from the journal."""
import contextlib
import datetime
import os
import signal
import time

from harness import Agent, AgentTestCase, dense_tree, make_tree, snapshot, tree_totals, wait_until

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:  # a test that cannot run fails, saying why
    raise ImportError("test_metrics needs prometheus_client (Debian: python3-prometheus-client); "
                      "run the tests with /usr/bin/python3 (cmake -DPYTHON3=/usr/bin/python3)") from e

CODES = ["none", "invalid_request", "path_not_allowed", "invalid_paths", "source_missing",
         "destination_exists", "busy", "too_many_moves", "unknown_subject", "not_found", "no_space",
         "permission_denied", "io_error", "source_changed", "cancelled", "timeout", "shutting_down",
         "interrupted"]
STATES = ["idle", "connecting", "hello", "up", "duplicate", "backoff", "closing", "closed"]
TYPES = {
    "hostagent_info": "gauge",
    "hostagent_start_time_seconds": "gauge",
    "hostagent_connection_state": "gauge",
    "hostagent_reconnects": "counter",
    "hostagent_last_pong_timestamp_seconds": "gauge",
    "hostagent_moves_active": "gauge",
    "hostagent_moves_queued": "gauge",
    "hostagent_moves_ended": "counter",
    "hostagent_requests_refused": "counter",
    "hostagent_copied_bytes": "counter",
    "hostagent_copied_files": "counter",
    "hostagent_move_duration_seconds": "histogram",
}


class Metrics:
    """One parse of the file: samples by (name, labels)."""

    def __init__(self, text):
        self.text = text
        self.types = {}
        self.samples = {}
        for fam in text_string_to_metric_families(text):
            self.types[fam.name] = fam.type
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in self.samples, "duplicate sample %s" % (key,)
                self.samples[key] = s.value

    def __call__(self, name, **labels):
        return self.samples[(name, tuple(sorted(labels.items())))]

    def by_label(self, name, label):
        return {dict(k[1])[label]: v for k, v in self.samples.items() if k[0] == name}


def rfc3339_ms(s):
    t = datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return round(t.timestamp() * 1000)


class MetricsTest(AgentTestCase):
    def setUp(self):
        super().setUp()
        self.prom_dir = os.path.join(self.scratch.base, "textfile")
        os.mkdir(self.prom_dir)
        self.prom = os.path.join(self.prom_dir, "hostagent.prom")

    def config(self, **more):
        conf = {"metrics_file": self.prom, "heartbeat_interval": "1s", "ping_interval": "1s"}
        conf.update(more)
        return conf

    def read(self, path=None):
        with open(path or self.prom) as f:
            return Metrics(f.read())

    def wait_metrics(self, pred, what, timeout=20):
        seen = []

        def check():
            try:
                m = self.read()
            except FileNotFoundError:
                return None
            seen[:] = [m]
            return m if pred(m) else None
        try:
            return wait_until(check, timeout, what)
        except AssertionError:
            raise AssertionError("timed out waiting for %s; last file:\n%s"
                                 % (what, seen[0].text if seen else "(none)"))

    def sighup_with(self, **changes):
        """Rewrites the agent's config file with changes (None: key removed) and reloads."""
        with open(self.agent.cfg_path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.split(" = ")[0] not in changes]
        lines += ["%s = %s" % (k, v) for k, v in changes.items() if v is not None]
        with open(self.agent.cfg_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        n = self.agent.log().count("config reloaded")
        self.agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.agent.log().count("config reloaded") > n, 10, "the reload")

    def check_types_and_codes(self, m):
        self.assertEqual({k: m.types.get(k) for k in TYPES}, TYPES)
        self.assertEqual(set(m.by_label("hostagent_moves_ended_total", "code")), set(CODES))
        self.assertEqual(set(m.by_label("hostagent_requests_refused_total", "code")), set(CODES) - {"none"})
        self.assertEqual(set(m.by_label("hostagent_connection_state", "state")), set(STATES))
        self.assertEqual(m.by_label("hostagent_info", "agent_id"), {"it-agent": 1})

    def check_histogram(self, m, durations_ms):
        name = "hostagent_move_duration_seconds"
        self.assertEqual(m(name + "_count"), len(durations_ms))
        self.assertAlmostEqual(m(name + "_sum"), sum(durations_ms) / 1000.0, places=6)
        buckets = m.by_label(name + "_bucket", "le")
        self.assertIn("+Inf", buckets)
        self.assertEqual(buckets["+Inf"], len(durations_ms))
        for le, count in buckets.items():
            bound = float("inf") if le == "+Inf" else float(le)
            self.assertEqual(count, sum(1 for d in durations_ms if d / 1000.0 <= bound), "le=%s" % le)

    # --- the counters against real moves ------------------------------------

    def test_counts_moves_bytes_durations_connection_and_gauges(self):
        t0 = time.time()
        self.start_agent(extra=self.config(max_concurrent_moves="1"))
        m = self.wait_metrics(lambda m: m("hostagent_connection_state", state="up") == 1, "connected")
        self.check_types_and_codes(m)
        self.assertTrue(t0 - 1 <= m("hostagent_start_time_seconds") <= time.time(), m.text)
        self.assertEqual(sum(m.by_label("hostagent_moves_ended_total", "code").values()), 0)
        self.assertEqual(m("hostagent_reconnects_total"), 0)
        self.assertEqual(os.stat(self.prom).st_mode & 0o777, 0o644)

        # A copy that completes.
        src = make_tree(os.path.join(self.scratch.a, "mc-1"), n_small=100, big_mib=4)
        entries, size = tree_totals(snapshot(src))
        ans = self.move("mc-1", src, os.path.join(self.scratch.b, "mc-1"), move_id="mv-1")
        self.assertTrue(ans["success"], ans)
        self.assertEqual((ans["bytesCopied"], ans["filesCopied"]), (size, entries))
        durations, total_bytes, total_files = [ans["durationMs"]], size, entries

        # A refusal is not a move: counted apart.
        full = os.path.join(self.scratch.b, "full")
        os.makedirs(full)
        open(os.path.join(full, "x"), "w").close()
        self.assert_refused({"serverName": "mc-2", "oldPath": make_tree(os.path.join(self.scratch.a, "mc-2"),
                                                                         n_small=3),
                             "newPath": full}, "destination_exists")

        # One move running (frozen), one queued behind it: the gauges.
        big = dense_tree(os.path.join(self.scratch.a, "big"), 200)
        small = make_tree(os.path.join(self.scratch.a, "small"), n_small=5)
        big_reply = self.request_move("big", big, os.path.join(self.scratch.b, "big"), "mv-big")
        self.wait_phase("mv-big", "copying")
        # Frozen once it has copied something (the phase's first frame may
        # come before any byte: seen under ASan in a fresh chroot).
        self.manager.wait_for(lambda: any(f.get("bytesCopied", 0) > 0 for f in self.manager.frames("mv-big")),
                              60, "the big move's first bytes")
        with contextlib.ExitStack() as frozen:
            with self.paused_agent():
                frozen.enter_context(self.frozen_workers())
            small_reply = self.request_move("small", small, os.path.join(self.scratch.b, "small"), "mv-small")
            self.wait_phase("mv-small", "queued")
            m = self.wait_metrics(lambda m: (m("hostagent_moves_active"), m("hostagent_moves_queued")) == (1, 1),
                                  "one move active and one queued")
            for server in ("small", "big"):
                reply = self.manager.request("server.move_cancel", {"serverName": server})
                self.assertTrue(self.manager.wait_answer(reply, 20)["success"])
            self.assertEqual(self.manager.wait_answer(small_reply, 20)["code"], "cancelled")
        self.assertEqual(self.manager.wait_answer(big_reply, 60)["code"], "cancelled")
        for move_id in ("mv-small", "mv-big"):
            term = self.manager.frames(move_id)[-1]
            self.assertEqual(term["phase"], "cancelled")
            durations.append(rfc3339_ms(term["endedAt"]) - rfc3339_ms(term["startedAt"]))
            total_bytes += term["bytesCopied"]
            total_files += term["filesCopied"]
        self.assertGreater(self.manager.frames("mv-big")[-1]["bytesCopied"], 0, "the cancelled copy had begun")

        m = self.wait_metrics(lambda m: m("hostagent_move_duration_seconds_count") == 3
                              and m("hostagent_moves_active") == 0, "three moves ended")
        ended = m.by_label("hostagent_moves_ended_total", "code")
        self.assertEqual({k: v for k, v in ended.items() if v}, {"none": 1, "cancelled": 2})
        refused = m.by_label("hostagent_requests_refused_total", "code")
        self.assertEqual({k: v for k, v in refused.items() if v}, {"destination_exists": 1})
        self.assertEqual(m("hostagent_copied_bytes_total"), total_bytes)
        self.assertEqual(m("hostagent_copied_files_total"), total_files)
        self.assertEqual(m("hostagent_moves_queued"), 0)
        self.check_histogram(m, durations)
        self.assertEqual(m.by_label("hostagent_connection_state", "state"),
                         {s: 1 if s == "up" else 0 for s in STATES})
        self.assertEqual(m("hostagent_reconnects_total"), 0)
        # Pings every second (ping_interval = 1s): the last answer is recent.
        m = self.read()
        pong = m("hostagent_last_pong_timestamp_seconds")
        self.assertTrue(time.time() - 8 < pong <= time.time() + 0.01, (pong, time.time()))
        self.assertGreaterEqual(pong, m("hostagent_start_time_seconds"))

        # The last write at the stop: closed, nothing running, the counts kept.
        self.assertEqual(self.agent.stop(), 0)
        m = self.read()
        self.assertEqual(m("hostagent_connection_state", state="closed"), 1)
        self.assertEqual(m("hostagent_connection_state", state="up"), 0)
        self.assertEqual((m("hostagent_moves_active"), m("hostagent_moves_queued")), (0, 0))
        self.check_histogram(m, durations)
        self.assertEqual(os.listdir(self.prom_dir), ["hostagent.prom"], "a temporary file was left")

    def test_recovered_move_counts_when_it_ends(self):
        conf = self.config()
        self.start_agent(extra=conf)
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        reply = self.request_move("mc", src, os.path.join(self.scratch.b, "mc"), "mv-kill")
        self.wait_phase("mv-kill", "copying")
        with self.paused_agent():
            self.agent.proc.kill()
            self.agent.proc.wait(10)
            self.agent.logf.close()
        before = len(self.manager.connections)
        self.agent = Agent(self.manager, self.scratch, extra=conf, log_name="agent-1.log")
        self.manager.wait_for(lambda: len(self.manager.connections) > before, 20, "the agent reconnecting")
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual(ans["code"], "interrupted")
        term = self.manager.frames("mv-kill")[-1]
        m = self.wait_metrics(lambda m: m("hostagent_move_duration_seconds_count") == 1, "the recovered move")
        ended = m.by_label("hostagent_moves_ended_total", "code")
        self.assertEqual({k: v for k, v in ended.items() if v}, {"interrupted": 1})
        self.assertEqual(m("hostagent_copied_bytes_total"), term["bytesCopied"])
        self.check_histogram(m, [rfc3339_ms(term["endedAt"]) - rfc3339_ms(term["startedAt"])])

    # --- the file -------------------------------------------------------------

    def test_file_is_replaced_atomically_and_reconnects_are_counted(self):
        self.start_agent(extra=self.config())
        wait_until(lambda: os.path.exists(self.prom), 10, "the metrics file")
        inodes, reads = set(), 0
        # One rewrite a second (heartbeat_interval): three new files within
        # 10 s even on a loaded machine under ASan; read all the while.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(inodes) < 3 or reads <= 100):
            # Whatever moment a reader opens it, the file is whole.
            with open(self.prom) as f:
                inodes.add(os.fstat(f.fileno()).st_ino)
                text = f.read()
            reads += 1
            self.assertTrue(text.endswith("hostagent_move_duration_seconds_count 0\n"), text[-200:])
            self.check_types_and_codes(Metrics(text))
        self.assertGreaterEqual(len(inodes), 3, "expected a new file (a rename) each second")
        self.assertGreater(reads, 100)

        self.manager.current.drop()
        self.manager.wait_connection(2)
        m = self.wait_metrics(lambda m: m("hostagent_reconnects_total") >= 1
                              and m("hostagent_connection_state", state="up") == 1, "the reconnect")
        self.assertEqual(m("hostagent_reconnects_total"), 1)

    def test_unset_means_no_file_and_a_reload_moves_or_removes_it(self):
        self.start_agent(extra={"heartbeat_interval": "1s"})
        time.sleep(2.5)
        self.assertEqual(os.listdir(self.prom_dir), [])
        self.assertNotIn("metrics", self.agent.log())

        self.sighup_with(metrics_file=self.prom)
        self.assertTrue(os.path.exists(self.prom), "written at the reload")
        other = os.path.join(self.prom_dir, "other.prom")
        self.sighup_with(metrics_file=other)
        self.assertEqual(os.listdir(self.prom_dir), ["other.prom"])
        self.assertEqual(self.read(other)("hostagent_connection_state", state="up"), 1)
        self.sighup_with(metrics_file=None)
        self.assertEqual(os.listdir(self.prom_dir), [])
        time.sleep(2.5)
        self.assertEqual(os.listdir(self.prom_dir), [], "written after metrics_file was removed")

    def test_missing_directory_is_logged_once_and_harmless(self):
        missing = os.path.join(self.scratch.base, "not-yet")
        self.prom = os.path.join(missing, "hostagent.prom")
        self.start_agent(extra=self.config())
        time.sleep(3.5)  # three or four more writes
        log = self.agent.log()
        self.assertEqual(log.count("cannot write the metrics file"), 1, log)
        self.assertIn("No such file or directory", log)
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=10)
        self.assertTrue(self.move("mc", src, os.path.join(self.scratch.b, "mc"))["success"])
        os.mkdir(missing)
        m = self.wait_metrics(lambda m: True, "the file once the directory exists")
        self.assertEqual(m("hostagent_moves_ended_total", code="none"), 1)
        wait_until(lambda: "metrics file written again" in self.agent.log(), 5, "the recovery logged")
        self.assertEqual(self.agent.log().count("cannot write the metrics file"), 1)
