"""The reference manager's live view in a real headless Chromium (Debian's
chromium, driven with playwright-core from npm): a move is started from the
page and its bar advances to 100 %. The screenshot is kept in the test output."""
import json
import os
import shutil
import subprocess
import sys
import time

from harness import AgentTestCase, dense_tree, make_tree

HERE = os.path.dirname(os.path.abspath(__file__))
WEB = os.path.join(HERE, "..", "web")
sys.path.insert(0, os.path.join(HERE, "..", "manager"))
from liveview import LiveView  # noqa: E402


class LiveViewTest(AgentTestCase):
    tmpfs_size = "1g"

    def test_move_from_the_page(self):
        self.assertIsNotNone(shutil.which("node"), "node is needed")
        self.assertTrue(os.path.exists("/usr/bin/chromium"), "Debian's chromium is needed")
        if not os.path.isdir(os.path.join(WEB, "node_modules", "playwright-core")):
            subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=WEB, check=True, capture_output=True)
        view = LiveView(self.manager).start()
        try:
            self.drive(view)
        finally:
            view.stop()  # before tearDown stops the manager's loop
            time.sleep(0.2)

    def drive(self, view):
        self.start_agent(extra={"progress_interval": "100ms"})
        src = dense_tree(os.path.join(self.scratch.a, "mc-web"), 600)
        make_tree(os.path.join(src, "world"), n_small=200)
        dst = os.path.join(self.scratch.b, "servers", "mc-web")
        out_dir = os.environ.get("HOSTAGENT_TEST_OUTPUT", os.path.join(HERE, "..", "..", "build", "test-output"))
        os.makedirs(out_dir, exist_ok=True)
        shot = os.path.join(out_dir, "liveview.png")
        r = subprocess.run(["node", os.path.join(WEB, "page_test.mjs"), view.url, "mc-web", src, dst, shot],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        print("\nlive view: %s; screenshot %s" % (r.stdout.strip(), shot))
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertGreater(seen["midCopy"], 0)
        self.assertTrue(os.path.getsize(shot) > 10000)
        self.assertFalse(os.path.exists(src))
        self.assertEqual(os.path.getsize(os.path.join(dst, "world.img")), 600 << 20)
