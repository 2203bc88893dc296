"""The systemd unit in contrib/: systemd-analyze verify passes, and it carries
the service settings and the hardening the README promises."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from harness import BIN

UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "contrib", "hostagent.service")


class UnitTest(unittest.TestCase):
    def settings(self):
        out = {}
        with open(UNIT) as f:
            for line in f:
                m = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
                if m:
                    out.setdefault(m.group(1), []).append(m.group(2))
        return out

    def test_systemd_analyze_verify(self):
        self.assertIsNotNone(shutil.which("systemd-analyze"), "systemd-analyze is needed")
        d = tempfile.mkdtemp()
        try:
            with open(UNIT) as f:
                text = f.read().replace("/usr/bin/hostagent", os.path.abspath(BIN))
            path = os.path.join(d, "hostagent.service")
            with open(path, "w") as f:
                f.write(text)
            r = subprocess.run(["systemd-analyze", "verify", "--man=no", path], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn("hostagent.service", r.stderr, r.stderr)
        finally:
            shutil.rmtree(d)

    def test_service_and_hardening(self):
        s = self.settings()
        for key, value in [("Type", "notify"), ("Restart", "on-failure"), ("NoNewPrivileges", "yes"),
                           ("ProtectSystem", "strict"), ("PrivateTmp", "yes"), ("ProtectHome", "read-only"),
                           ("User", "hostagent"), ("Group", "hostagent"),
                           ("StateDirectory", "hostagent"), ("RuntimeDirectory", "hostagent"),
                           ("RuntimeDirectoryMode", "0700")]:
            self.assertEqual(s.get(key), [value], key)
        self.assertIn("kill -HUP", s["ExecReload"][0])
        self.assertTrue(s.get("WatchdogSec"))
        self.assertTrue(s.get("ReadWritePaths"))
        self.assertEqual(set(s["RestrictAddressFamilies"][0].split()), {"AF_UNIX", "AF_INET", "AF_INET6"})
        self.assertEqual(set(s["CapabilityBoundingSet"][0].split()),
                         {"CAP_CHOWN", "CAP_FOWNER", "CAP_FSETID", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH",
                          "CAP_MKNOD", "CAP_SETFCAP"})
        # Not root: its user holds what the bounding set allows, no more.
        self.assertEqual(set(s["AmbientCapabilities"][0].split()), set(s["CapabilityBoundingSet"][0].split()))

    def test_exposure(self):
        d = tempfile.mkdtemp()
        try:
            path = os.path.join(d, "hostagent.service")
            shutil.copy(UNIT, path)
            r = subprocess.run(["systemd-analyze", "security", "--offline=true", path], capture_output=True,
                               text=True)
            m = re.search(r"Overall exposure level for hostagent.service: ([0-9.]+)", r.stdout)
            self.assertIsNotNone(m, r.stdout + r.stderr)
            self.assertLessEqual(float(m.group(1)), 2.5, r.stdout)
        finally:
            shutil.rmtree(d)
