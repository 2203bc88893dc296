"""The reference manager's live view in a real headless Chromium (Debian's
chromium, driven with playwright-core from npm): a move is started from the
page and its bar advances to 100 %, with the agent on WebSocket and on NATS
(the manager's --nats mode, against Debian's nats-server). The screenshots
are kept in the test output."""
import json
import os
import shutil
import subprocess
import sys
import time
import unittest

from harness import AgentTestCase, Scratch, dense_tree, make_tree
from natsbus import NatsCluster, ensure_npm
from test_nats import NatsAgent

HERE = os.path.dirname(os.path.abspath(__file__))
WEB = os.path.join(HERE, "..", "web")
sys.path.insert(0, os.path.join(HERE, "..", "manager"))
from liveview import LiveView  # noqa: E402
from refmanager import NatsManager  # noqa: E402


def page_tools(case):
    case.assertIsNotNone(shutil.which("node"), "node is needed")
    case.assertTrue(os.path.exists("/usr/bin/chromium"), "Debian's chromium is needed")
    if not os.path.isdir(os.path.join(WEB, "node_modules", "playwright-core")):
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=WEB, check=True, capture_output=True)


def drive_page(case, view, scratch, shot_name, agent_id="it-agent"):
    """Starts a 600 MiB move from the page and checks what it showed."""
    src = dense_tree(os.path.join(scratch.a, "mc-web"), 600)
    make_tree(os.path.join(src, "world"), n_small=200)
    dst = os.path.join(scratch.b, "servers", "mc-web")
    out_dir = os.environ.get("HOSTAGENT_TEST_OUTPUT", os.path.join(HERE, "..", "..", "build", "test-output"))
    os.makedirs(out_dir, exist_ok=True)
    shot = os.path.join(out_dir, shot_name)
    r = subprocess.run(["node", os.path.join(WEB, "page_test.mjs"), view.url, "mc-web", src, dst, shot, agent_id],
                       capture_output=True, text=True, timeout=300)
    case.assertEqual(r.returncode, 0, r.stdout + r.stderr)
    print("\nlive view: %s; screenshot %s" % (r.stdout.strip(), shot))
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    case.assertGreater(seen["midCopy"], 0)
    case.assertTrue(os.path.getsize(shot) > 10000)
    case.assertFalse(os.path.exists(src))
    case.assertEqual(os.path.getsize(os.path.join(dst, "world.img")), 600 << 20)
    return seen


class LiveViewTest(AgentTestCase):
    tmpfs_size = "1g"

    def test_move_from_the_page(self):
        page_tools(self)
        view = LiveView(self.manager).start()
        try:
            self.start_agent(extra={"progress_interval": "100ms"})
            drive_page(self, view, self.scratch, "liveview.png")
        finally:
            view.stop()  # before tearDown stops the manager's loop
            time.sleep(0.2)


class LiveViewNatsTest(unittest.TestCase):
    """The same page with the manager on NATS: the agent (transport = nats) is
    heard on <prefix>.*.agent.hello, the page's move goes out as a request on
    hostagent.<id>.server.move_data, its bar follows <id>.move.progress."""

    def test_move_from_the_page_over_nats(self):
        page_tools(self)
        ensure_npm()
        scratch = Scratch("1g")
        cluster = manager = view = agent = None
        try:
            cluster = NatsCluster(scratch.base, 1)
            manager = NatsManager(cluster.urls).start()
            view = LiveView(manager).start()
            agent = NatsAgent(scratch.base, cluster.urls, agent_id="web-nats", roots=(scratch.a, scratch.b),
                              extra={"progress_interval": "100ms", "log_level": "info"})
            conn = manager.wait_connection(timeout=20)
            self.assertEqual(conn.agent_id, "web-nats")
            drive_page(self, view, scratch, "liveview-nats.png", agent_id="web-nats")
            # What the page showed came from the agent's frames on NATS, and
            # the page's request was answered on the manager's reply inbox.
            # The page waited for the terminal frame; the answer travels on
            # another subject and may come after it: wait for it.
            phases = [f["phase"] for f in manager.frames()]
            self.assertEqual(phases[-1], "complete")

            def answers():
                return [m for m in manager.all_messages() if m["subject"].startswith(manager.inbox)]
            manager.wait_for(answers, 30, "the answer to the page's request")
            self.assertEqual(len(answers()), 1, answers())
            self.assertTrue(answers()[0]["data"]["success"])
            self.assertEqual(manager.errors, [])
        finally:
            if view:
                view.stop()
                time.sleep(0.2)
            if agent:
                rc = agent.stop()
                if rc != 0:
                    print(agent.log()[-4000:])
            if manager:
                manager.stop()
            if cluster:
                cluster.stop()
            scratch.close()
        self.assertEqual(rc, 0, "agent exit status (sanitizer report in its log?)")
