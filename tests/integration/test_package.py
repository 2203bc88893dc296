"""Install and package: `cmake --install` lays out the binary, the unit, the
man page and /etc/hostagent/agent.conf (only when absent); `cpack -G DEB`
builds a package with the right dependencies that installs and runs."""
import os
import shutil
import subprocess
import tempfile
import unittest

SRC = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


class PackageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for tool in ("cmake", "cpack", "dpkg", "dpkg-deb"):
            if not shutil.which(tool):
                raise AssertionError("%s is needed" % tool)
        cls.work = tempfile.mkdtemp(prefix="hostagent-pkg-")
        cls.build = os.path.join(cls.work, "build")
        subprocess.run(["cmake", "-S", SRC, "-B", cls.build, "-DCMAKE_BUILD_TYPE=Release",
                        "-DCMAKE_INSTALL_PREFIX=/usr"], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", cls.build, "-j", "2", "--target", "hostagent"], check=True,
                       capture_output=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work, ignore_errors=True)

    def test_install_keeps_an_existing_config(self):
        dest = os.path.join(self.work, "dest")
        env = dict(os.environ, DESTDIR=dest)
        subprocess.run(["cmake", "--install", self.build], check=True, capture_output=True, env=env)
        for rel in ("usr/bin/hostagent", "usr/share/man/man8/hostagent.8", "usr/lib/systemd/system/hostagent.service",
                    "etc/hostagent/agent.conf", "usr/share/doc/hostagent/agent.conf.example"):
            self.assertTrue(os.path.exists(os.path.join(dest, rel)), rel)
        with open(os.path.join(dest, "usr/lib/systemd/system/hostagent.service")) as f:
            self.assertIn("ExecStart=/usr/bin/hostagent --config /etc/hostagent/agent.conf", f.read())
        conf = os.path.join(dest, "etc/hostagent/agent.conf")
        with open(conf, "w") as f:
            f.write("manager_url = ws://operator.example/agent\n")
        r = subprocess.run(["cmake", "--install", self.build], check=True, capture_output=True, text=True, env=env)
        self.assertIn("Keeping the existing", r.stdout)
        with open(conf) as f:
            self.assertEqual(f.read(), "manager_url = ws://operator.example/agent\n")

    def test_man_page_covers_every_key_and_signal(self):
        with open(os.path.join(SRC, "docs", "hostagent.8")) as f:
            man = f.read()
        with open(os.path.join(SRC, "agent.conf.example")) as f:
            keys = {line.lstrip("#").split("=")[0].strip() for line in f
                    if "=" in line and line.lstrip("#").split("=")[0].strip().replace("_", "").isalpha()}
        self.assertGreaterEqual(len(keys), 20)
        for k in keys:
            self.assertIn(k, man)
        for word in ("SIGTERM", "SIGHUP", "--check-config", "move"):
            self.assertIn(word.replace("-", "\\-"), man.replace("\\-", "\\-"))

    def test_deb_installs_and_runs(self):
        r = subprocess.run(["cpack", "-G", "DEB"], cwd=self.build, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        debs = [f for f in os.listdir(self.build) if f.endswith(".deb")]
        self.assertEqual(len(debs), 1)
        deb = os.path.join(self.build, debs[0])
        info = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], capture_output=True, text=True).stdout
        for dep in ("libwebsockets17", "libwebsockets-evlib-uv", "libuv1", "libcjson1", "libxxhash0"):
            self.assertIn(dep, info)
        ctl = os.path.join(self.work, "ctl")
        subprocess.run(["dpkg-deb", "-e", deb, ctl], check=True)
        with open(os.path.join(ctl, "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/hostagent/agent.conf"])
        # Install it into an empty root of our own (its own dpkg database).
        root = os.path.join(self.work, "root")
        os.makedirs(os.path.join(root, "var/lib/dpkg/info"))
        os.makedirs(os.path.join(root, "var/lib/dpkg/updates"))
        os.makedirs(os.path.join(root, "var/log"))
        open(os.path.join(root, "var/lib/dpkg/status"), "w").close()
        r = subprocess.run(["dpkg", "--root=" + root, "--force-depends", "--force-script-chrootless", "-i", deb],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        binary = os.path.join(root, "usr/bin/hostagent")
        self.assertEqual(subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip(),
                         "hostagent 0.1.0")
        r = subprocess.run([binary, "--check-config", "--config", os.path.join(root, "etc/hostagent/agent.conf")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
