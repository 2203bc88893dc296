"""Install and package: `cmake --install` lays out the binary, the unit, the
man page and /etc/hostagent/agent.conf (only when absent); `cpack -G DEB`
(built with Debian's hardening flags, as a Debian build would be) makes a
package that installs where Debian expects, has the right run-time
dependencies, passes lintian without errors, and installs and runs."""
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import unittest

SRC = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# Every path in the package, as `dpkg -c` lists it (directories end in /).
DEB_FILES = """
./etc/ ./etc/hostagent/ ./etc/hostagent/agent.conf
./lib/ ./lib/systemd/ ./lib/systemd/system/ ./lib/systemd/system/hostagent.service
./usr/ ./usr/bin/ ./usr/bin/hostagent ./usr/lib/ ./usr/lib/sysusers.d/ ./usr/lib/sysusers.d/hostagent.conf
./usr/share/ ./usr/share/doc/ ./usr/share/doc/hostagent/ ./usr/share/doc/hostagent/README.md
./usr/share/doc/hostagent/agent.conf.example ./usr/share/doc/hostagent/changelog.gz
./usr/share/doc/hostagent/copyright
./usr/share/man/ ./usr/share/man/man8/ ./usr/share/man/man8/hostagent.8.gz
""".split()


def debian_build_env():
    """The environment of a Debian package build: dpkg-buildflags' hardened
    CFLAGS (with its CPPFLAGS, which CMake does not read) and LDFLAGS."""
    env = dict(os.environ, DEB_BUILD_MAINT_OPTIONS="hardening=+all")

    def flags(name):
        return subprocess.run(["dpkg-buildflags", "--get", name], check=True, capture_output=True, text=True,
                              env=env).stdout.strip()
    env["CFLAGS"] = flags("CFLAGS") + " " + flags("CPPFLAGS")
    env["LDFLAGS"] = flags("LDFLAGS")
    return env


def project_version():
    with open(os.path.join(SRC, "CMakeLists.txt")) as f:
        return re.search(r"project\(hostagent VERSION (\S+)", f.read()).group(1)


def satisfied(dep):
    """None when the installed packages satisfy one Depends entry (no
    alternatives), else why not."""
    m = re.fullmatch(r"\s*([a-z0-9.+-]+)(?:\s*\((>=|<=|>>|<<|=)\s*(\S+)\))?\s*", dep)
    if not m:
        return "unparsable"
    name, op, want = m.groups()
    q = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", name], capture_output=True, text=True)
    if q.returncode != 0 or not q.stdout.startswith("install ok installed"):
        return "not installed"
    have = q.stdout.split()[-1]
    ops = {">=": "ge", "<=": "le", ">>": "gt", "<<": "lt", "=": "eq"}
    if op and subprocess.run(["dpkg", "--compare-versions", have, ops[op], want]).returncode != 0:
        return "installed " + have
    return None


def unsatisfied(depends):
    """The entries of a Depends field that the installed packages do not satisfy."""
    bad = []
    for dep in depends.split(","):
        # "a | b": one installed alternative satisfies it.
        why = [satisfied(alt) for alt in dep.split("|")]
        if all(why):
            bad.append(dep + " (" + why[0] + ")")
    return bad


class PackageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for tool in ("cmake", "cpack", "dpkg", "dpkg-deb", "dpkg-buildflags", "dpkg-shlibdeps", "file", "lintian"):
            if not shutil.which(tool):
                raise AssertionError("%s is needed" % tool)
        cls.work = tempfile.mkdtemp(prefix="hostagent-pkg-")
        cls.build = os.path.join(cls.work, "build")
        subprocess.run(["cmake", "-S", SRC, "-B", cls.build, "-DCMAKE_BUILD_TYPE=Release",
                        "-DCMAKE_INSTALL_PREFIX=/usr"], check=True, capture_output=True, env=debian_build_env())
        subprocess.run(["cmake", "--build", cls.build, "-j", "2", "--target", "hostagent", "hostagent_docs"],
                       check=True, capture_output=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work, ignore_errors=True)

    def test_install_keeps_an_existing_config(self):
        dest = os.path.join(self.work, "dest")
        env = dict(os.environ, DESTDIR=dest)
        subprocess.run(["cmake", "--install", self.build], check=True, capture_output=True, env=env)
        for rel in ("usr/bin/hostagent", "usr/share/man/man8/hostagent.8.gz", "lib/systemd/system/hostagent.service",
                    "etc/hostagent/agent.conf", "usr/share/doc/hostagent/agent.conf.example"):
            self.assertTrue(os.path.exists(os.path.join(dest, rel)), rel)
        with open(os.path.join(dest, "lib/systemd/system/hostagent.service")) as f:
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

    def test_deb_layout_dependencies_and_lintian(self):
        deb = self.deb()
        listing = subprocess.run(["dpkg", "-c", deb], check=True, capture_output=True, text=True).stdout
        rows = [line.split() for line in listing.splitlines()]
        self.assertEqual(sorted(r[5] for r in rows), sorted(DEB_FILES), listing)
        modes = {r[5]: (r[0], r[1]) for r in rows}
        for path, (mode, owner) in modes.items():
            self.assertEqual(owner, "root/root", path)
            want = "drwxr-xr-x" if path.endswith("/") else "-rwxr-xr-x" if path == "./usr/bin/hostagent" else "-rw-r--r--"
            self.assertEqual(mode, want, path)
        # Stripped: no symbol table left.
        tmp = os.path.join(self.work, "x")
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
        kind = subprocess.run(["file", "-b", os.path.join(tmp, "usr/bin/hostagent")], check=True, capture_output=True,
                              text=True).stdout.strip()
        self.assertTrue(kind.endswith(", stripped"), kind)
        with open(os.path.join(tmp, "lib/systemd/system/hostagent.service")) as f:
            self.assertIn("ExecStart=/usr/bin/hostagent --config /etc/hostagent/agent.conf", f.read())
        # The copyright file carries the project's license text.
        with open(os.path.join(SRC, "LICENSE")) as f:
            license_text = f.read().split("\n\n", 2)[2].split()
        with open(os.path.join(tmp, "usr/share/doc/hostagent/copyright")) as f:
            self.assertEqual(f.read().split("License: Expat\n", 2)[2].replace(" .\n", "").split(), license_text)
        # The changelog's newest entry is this version.
        head = subprocess.run(["zcat", os.path.join(tmp, "usr/share/doc/hostagent/changelog.gz")],
                              capture_output=True, text=True).stdout.splitlines()[0]
        self.assertTrue(head.startswith("hostagent (%s) " % project_version()), head)

        depends = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        names = [d.split()[0] for d in depends.split(", ")]
        # libc and the linked libraries (found by dpkg-shlibdeps), and the libuv
        # event library of libwebsockets, which is only loaded at run time.
        for dep in ("libc6", "libwebsockets17", "libwebsockets-evlib-uv", "libuv1", "libcjson1", "libxxhash0"):
            self.assertIn(dep, names, depends)
        # Every dependency is satisfied by this Debian (the build host has them all).
        self.assertEqual(unsatisfied(depends), [], depends)

        r = subprocess.run(["lintian", "--allow-root", "--fail-on", "error", "--no-tag-display-limit", deb],
                           capture_output=True, text=True)
        print("\nlintian:\n" + (r.stdout.strip() or "(nothing)"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotRegex(r.stdout, r"(?m)^[EW]: ", r.stdout)

    def test_deb_needs_a_usr_build(self):
        other = os.path.join(self.work, "local")
        subprocess.run(["cmake", "-S", SRC, "-B", other, "-DCMAKE_INSTALL_PREFIX=/usr/local"], check=True,
                       capture_output=True)
        r = subprocess.run(["cpack", "-G", "DEB"], cwd=other, capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stdout + r.stderr, r"needs a build configured with\s+-DCMAKE_INSTALL_PREFIX=/usr")
        self.assertEqual([f for f in os.listdir(other) if f.endswith(".deb")], [])

    def deb(self):
        """The package, made once for the tests that look at it."""
        if getattr(PackageTest, "_deb", None) is None:
            r = subprocess.run(["cpack", "-G", "DEB"], cwd=self.build, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            debs = [f for f in os.listdir(self.build) if f.endswith(".deb")]
            self.assertEqual(len(debs), 1)
            PackageTest._deb = os.path.join(self.build, debs[0])
        return PackageTest._deb

    def test_deb_installs_and_runs(self):
        deb = self.deb()
        ctl = os.path.join(self.work, "ctl")
        subprocess.run(["dpkg-deb", "-e", deb, ctl], check=True)
        with open(os.path.join(ctl, "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/hostagent/agent.conf"])
        # The maintainer scripts (dh_installsystemd's behaviour), executable,
        # and no others.
        self.assertEqual(sorted(n for n in os.listdir(ctl) if n not in ("control", "md5sums", "conffiles")),
                         ["postinst", "postrm", "prerm"])
        for name in ("postinst", "prerm", "postrm"):
            path = os.path.join(ctl, name)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o755, name)
            with open(path) as f:
                text = f.read()
            self.assertTrue(text.startswith("#!/bin/sh\n"), name)
            self.assertEqual(subprocess.run(["sh", "-n", path]).returncode, 0, name)
        with open(os.path.join(ctl, "postinst")) as f:
            text = f.read()
        for word in ("deb-systemd-helper --quiet was-enabled", "deb-systemd-invoke", "daemon-reload",
                     "wait_for_moves", "UPGRADE_WAIT_MINUTES", "systemd-sysusers"):
            self.assertIn(word, text)
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
                         "hostagent " + project_version())
        r = subprocess.run([binary, "--check-config", "--config", os.path.join(root, "etc/hostagent/agent.conf")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        # The postinst ran for the root, not for this machine (DPKG_ROOT):
        # enabled there, nothing started here.
        self.assertTrue(os.path.islink(os.path.join(root, "etc/systemd/system/multi-user.target.wants/"
                                                          "hostagent.service")))
        # The service's system user, made in the root (systemd-sysusers).
        with open(os.path.join(root, "etc/passwd")) as f:
            self.assertRegex(f.read(), r"(?m)^hostagent:x:\d+:\d+:[^:]*:/var/lib/hostagent:/usr/sbin/nologin$")
        # The unit knows the example it shipped as unconfigured (its hash).
        with open(os.path.join(root, "lib/systemd/system/hostagent.service")) as f:
            unit = f.read()
        with open(os.path.join(root, "etc/hostagent/agent.conf"), "rb") as f:
            self.assertIn(hashlib.sha256(f.read()).hexdigest() + "  /etc/hostagent/agent.conf", unit)
        # Purge removes the package's files and the config directory.
        r = subprocess.run(["dpkg", "--root=" + root, "--force-script-chrootless", "--purge", "hostagent"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for rel in ("usr/bin/hostagent", "etc/hostagent", "etc/systemd/system/multi-user.target.wants/"
                    "hostagent.service"):
            self.assertFalse(os.path.lexists(os.path.join(root, rel)), rel)
