"""The daemon under valgrind: connect, move a tree, stop; no errors, no leaks.
Registered only for builds without sanitizers (they cannot share a process)."""
import os
import re
import shutil
import signal
import subprocess
import time
import unittest

from harness import BIN, AgentTestCase, Manager, make_tree, snapshot


class ValgrindTest(AgentTestCase):
    def test_daemon_is_valgrind_clean(self):
        self.assertIsNotNone(shutil.which("valgrind"), "valgrind is not installed")
        src = make_tree(os.path.join(self.scratch.a, "vg"), n_small=30, big_mib=1)
        before = snapshot(src)
        conf = os.path.join(self.scratch.base, "vg.conf")
        with open(conf, "w") as f:
            f.write("manager_url = %s\nallowed_roots = %s, %s\nstate_dir = %s\nprogress_interval = 50ms\n"
                    % (self.manager.url, self.scratch.a, self.scratch.b, self.scratch.state))
        vlog = os.path.join(self.scratch.base, "valgrind.log")
        proc = subprocess.Popen(["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                                 "--error-exitcode=99", "--log-file=" + vlog, BIN, "--config", conf],
                                stderr=subprocess.DEVNULL)
        try:
            self.manager.wait_connection(timeout=60)
            ans = self.move("vg", src, os.path.join(self.scratch.b, "vg"), timeout=120)
            self.assertTrue(ans["success"], ans)
            self.assertEqual(snapshot(os.path.join(self.scratch.b, "vg")), before)
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(120)
        report = open(vlog).read()
        self.assertEqual(rc, 0, report[-4000:])
        self.assertIn("ERROR SUMMARY: 0 errors", report)
        m = re.search(r"definitely lost: ([\d,]+) bytes", report)
        self.assertTrue(m is None or m.group(1) == "0", report[-4000:])


    def test_daemon_on_nats_is_valgrind_clean(self):
        """The NATS transport too: nats.c's threads, the helper, JetStream."""
        from natsbus import Bridge, NatsCluster
        self.assertIsNotNone(shutil.which("valgrind"), "valgrind is not installed")
        cluster = NatsCluster(self.scratch.base, 1, jetstream=True)
        bridge = None
        try:
            bridge = Bridge(cluster.urls)
            self.assertTrue(bridge.call("stream_add", name="OUT", subjects=["hostagent.*.move.outcome"])["ok"])
            src = make_tree(os.path.join(self.scratch.a, "vgn"), n_small=30)
            conf = os.path.join(self.scratch.base, "vgn.conf")
            with open(conf, "w") as f:
                f.write("transport = nats\nnats_servers = %s\nnats_jetstream = true\nagent_id = vg\n"
                        "allowed_roots = %s, %s\nstate_dir = %s\ncontrol_socket = %s\nlog_level = debug\n"
                        % (cluster.urls, self.scratch.a, self.scratch.b, self.scratch.state,
                           os.path.join(self.scratch.base, "vgn.sock")))
            vlog = os.path.join(self.scratch.base, "valgrind-nats.log")
            alog = open(os.path.join(self.scratch.base, "vgn-agent.log"), "w")
            proc = subprocess.Popen(["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                                     "--error-exitcode=99", "--log-file=" + vlog, BIN, "--config", conf],
                                    stderr=alog)
            try:
                for _ in range(60):
                    r = bridge.try_request("hostagent.vg.server.move_status", "{}", timeout=1000)
                    if r["ok"]:
                        break
                    time.sleep(0.5)  # no responders yet: valgrind starts slowly
                ans = bridge.request("hostagent.vg.server.move_data",
                                     {"serverName": "vgn", "oldPath": src, "newPath": self.scratch.b + "/vgn",
                                      "moveId": "vgn-1"}, 120000)
                self.assertTrue(ans["success"], ans)
                for _ in range(60):
                    if bridge.call("stream_msgs", name="OUT")["msgs"]:
                        break
                    time.sleep(0.5)
            finally:
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(120)
                alog.close()
            report = open(vlog).read()
            with open(os.path.join(self.scratch.base, "vgn-agent.log")) as f:
                agent_tail = f.read()[-3000:]
            died = report.find("Process terminating")
            self.assertEqual(rc, 0, "the agent's log ends:\n%s\nvalgrind's report %s:\n%s"
                             % (agent_tail, "where the agent died" if died >= 0 else "ends",
                                report[died:died + 3000] if died >= 0 else report[-3000:]))
            self.assertIn("ERROR SUMMARY: 0 errors", report)
            m = re.search(r"definitely lost: ([\d,]+) bytes", report)
            self.assertTrue(m is None or m.group(1) == "0", report[-4000:])
        finally:
            if bridge:
                bridge.close()
            cluster.stop()


if __name__ == "__main__":
    unittest.main()
