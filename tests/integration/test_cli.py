"""The command line: --version, --help, --check-config, bad usage, move."""
import json
import os
import subprocess
import tempfile
import unittest

from harness import BIN, Scratch, make_tree, snapshot

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def run(*args, **kw):
    return subprocess.run([BIN] + list(args), capture_output=True, text=True, timeout=60, **kw)


class CliTest(unittest.TestCase):
    def test_version_and_help(self):
        r = run("--version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^hostagent \d+\.\d+\.\d+\n$")
        r = run("--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("--check-config", r.stdout)
        self.assertIn("move", r.stdout)

    def test_bad_usage_exits_2(self):
        self.assertEqual(run("--bogus").returncode, 2)
        self.assertEqual(run("--config").returncode, 2)
        self.assertEqual(run("move", "/only-one").returncode, 2)
        self.assertEqual(run("move", "--frobnicate", "/a", "/b").returncode, 2)

    def test_shipped_example_config_is_valid(self):
        r = run("--check-config", "--config", os.path.join(ROOT, "agent.conf.example"))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_check_config_reports_every_problem(self):
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
            f.write("# bad\nmanager_url = http://x\nverify = sometimes\nwhat = 1\n")
        try:
            r = run("--check-config", "--config", f.name)
            self.assertEqual(r.returncode, 1)
            lines = r.stderr.strip().split("\n")
            self.assertEqual(len(lines), 3, r.stderr)
            self.assertTrue(lines[0].startswith(f.name + ":2: manager_url"))
            self.assertTrue(lines[1].startswith(f.name + ":3: verify"))
            self.assertTrue(lines[2].startswith(f.name + ":4: unknown key"))
            # The daemon refuses to start on the same file, with status 1.
            r = run("--config", f.name)
            self.assertEqual(r.returncode, 1)
            self.assertIn(":3: verify", r.stderr)
        finally:
            os.unlink(f.name)
        r = run("--check-config", "--config", "/nonexistent/agent.conf")
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent/agent.conf: cannot open", r.stderr)

    def test_move_command(self):
        s = Scratch("64m")
        try:
            src = make_tree(os.path.join(s.a, "cli"), n_small=40, big_mib=2)
            before = snapshot(src)
            dst = os.path.join(s.b, "cli")
            r = run("move", "--json", "--verify=checksum", src, dst)
            self.assertEqual(r.returncode, 0, r.stderr)
            states = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
            self.assertEqual([x["phase"] for x in states][:1], ["calculating"])
            self.assertIn("cleaning", [x["phase"] for x in states])
            self.assertEqual(snapshot(dst), before)
            self.assertFalse(os.path.exists(src))
            r = run("move", dst, os.path.join(s.b, "cli"))
            self.assertEqual(r.returncode, 1)
            self.assertIn("invalid_paths", r.stderr)
            r = run("move", os.path.join(s.a, "missing"), os.path.join(s.b, "x"))
            self.assertEqual(r.returncode, 1)
            self.assertIn("source_missing", r.stderr)
        finally:
            s.close()

    def test_move_reclaims_in_the_foreground_and_leaves_nothing_hidden(self):
        s = Scratch("64m")
        try:
            src = make_tree(os.path.join(s.a, "cli"), n_small=200)
            before = snapshot(src)
            entries = len(before) - 1
            dst = os.path.join(s.b, "cli")
            r = run("move", src, dst)
            self.assertEqual(r.returncode, 0, r.stderr)
            lines = r.stdout.splitlines()
            done = [i for i, l in enumerate(lines) if l.startswith("done: moved")]
            rec = [i for i, l in enumerate(lines) if l.startswith("reclaiming %d entries" % entries)]
            self.assertTrue(done and rec and done[0] < rec[0], r.stdout)
            self.assertTrue(lines[-1].startswith("reclaimed in "), r.stdout)
            self.assertEqual(snapshot(dst), before)
            self.assertFalse(os.path.exists(src))
            self.assertEqual([n for n in os.listdir(s.a) if n.startswith(".hostagent-reclaim-")], [])
            # --json: the complete state is the last line, and nothing is left either.
            r = run("move", "--json", dst, src)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout.splitlines()[-1])["phase"], "complete")
            self.assertEqual([n for n in os.listdir(s.b) if n.startswith(".hostagent-reclaim-")], [])
            self.assertEqual(snapshot(src), before)
        finally:
            s.close()

    def test_move_takes_relative_paths_like_mv(self):
        s = Scratch("64m")
        try:
            src = make_tree(os.path.join(s.a, "srv", "mc"), n_small=20, big_mib=1)
            before = snapshot(src)
            os.symlink(s.b, os.path.join(s.a, "ssd"))  # ".." after a symlink goes up from its target
            os.mkdir(os.path.join(s.b, "games"))
            cwd = os.path.join(s.a, "srv")
            # Relative to the current directory, across filesystems, with "./"
            # and ".." components and a trailing slash, as mv takes them.
            r = run("move", "mc/", "../ssd/games/../games/./mc", cwd=cwd)
            self.assertEqual(r.returncode, 0, r.stderr)
            dst = os.path.join(s.b, "games", "mc")
            self.assertEqual(snapshot(dst), before)
            self.assertFalse(os.path.exists(src))
            # Back again from inside the destination filesystem, on one
            # filesystem (a rename) and with a plain relative name.
            r = run("move", "mc", "mc2", cwd=os.path.join(s.b, "games"))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(snapshot(os.path.join(s.b, "games", "mc2")), before)
            # Errors name the path as typed and as resolved.
            r = run("move", "missing", "../x", cwd=cwd)
            self.assertEqual(r.returncode, 1)
            self.assertIn("source_missing: missing (%s) is not a directory" % os.path.join(cwd, "missing"),
                          r.stderr)
            r = run("move", "mc2", "mc2/inside", cwd=os.path.join(s.b, "games"))
            self.assertEqual(r.returncode, 1)
            self.assertIn("invalid_paths: OLD mc2 (%s)" % os.path.join(s.b, "games", "mc2"), r.stderr)
            os.mkdir(os.path.join(s.a, "full"))
            open(os.path.join(s.a, "full", "x"), "w").close()
            r = run("move", "../../b/games/mc2", "../full", cwd=cwd)
            self.assertEqual(r.returncode, 1)
            self.assertIn("destination_exists: ../full (%s)" % os.path.join(s.a, "full"), r.stderr)
            # "." and ".." name a directory by where it is seen from: refused.
            for bad in (".", "..", "mc2/.", "./.."):
                r = run("move", bad, os.path.join(s.b, "y"), cwd=os.path.join(s.b, "games"))
                self.assertEqual(r.returncode, 1, bad)
                self.assertIn("path_not_allowed: OLD %s:" % bad, r.stderr)
            self.assertEqual(snapshot(os.path.join(s.b, "games", "mc2")), before)
        finally:
            s.close()


if __name__ == "__main__":
    unittest.main()
