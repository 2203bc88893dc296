"""Logs as operators read them: JSON lines, journald priorities, and the
`hostagent move` progress bar on a terminal."""
import json
import os
import pty
import select
import subprocess
import time

from harness import BIN, AgentTestCase, dense_tree, make_tree


class LogTest(AgentTestCase):
    def test_json_lines_with_move_fields(self):
        self.start_agent(extra={"log_format": "json", "log_level": "info"})
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=20)
        self.assertTrue(self.move("mc", src, os.path.join(self.scratch.b, "mc"), move_id="mv-json")["success"])
        self.assertEqual(self.agent.stop(), 0)
        events = [json.loads(line) for line in self.agent.log().splitlines() if line.strip()]
        self.assertTrue(events)
        for e in events:
            self.assertTrue({"time", "level", "msg"} <= set(e), e)
            self.assertIn(e["level"], ("error", "warn", "info"))
        msgs = [e["msg"] for e in events]
        for m in ("hostagent starting", "connected", "hello sent", "move started", "move phase", "move ended",
                  "stopping", "hostagent stopped"):
            self.assertIn(m, msgs)
        ended = [e for e in events if e["msg"] == "move ended"][0]
        self.assertEqual((ended["move"], ended["server"], ended["outcome"]), ("mv-json", "mc", "complete"))
        self.assertIsInstance(ended["bytes"], int)
        phase = [e for e in events if e["msg"] == "move phase"]
        self.assertIn("copying", [p["to"] for p in phase])
        self.assertNotIn("it-token-0123456789", self.agent.log())

    def test_journald_priorities(self):
        # When stderr is the journal (JOURNAL_STREAM names it), lines carry <N>.
        self.start_agent(extra={"log_level": "info"})
        self.assertEqual(self.agent.stop(), 0)
        log_st = os.stat(self.agent.log_path)
        self.scratch_agent_env = {"JOURNAL_STREAM": "%d:%d" % (log_st.st_dev, log_st.st_ino)}
        from harness import Agent
        self.agent = Agent(self.manager, self.scratch, extra={"log_level": "info"},
                           env=self.scratch_agent_env, log_name="agent.log")
        self.manager.wait_for(lambda: len(self.manager.connections) >= 2, 20, "second connection")
        self.assertEqual(self.agent.stop(), 0)
        lines = [ln for ln in self.agent.log().splitlines() if ln]
        self.assertTrue(all(ln[0] == "<" and ln[2] == ">" for ln in lines), lines[:5])
        self.assertTrue(any(ln.startswith("<6>info hostagent starting") for ln in lines), lines[:5])


class ProgressBarTest(AgentTestCase):
    def test_bar_on_a_terminal(self):
        src = dense_tree(os.path.join(self.scratch.a, "big"), 150)
        dst = os.path.join(self.scratch.b, "big")
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(BIN, [BIN, "move", src, dst])
        out = b""
        deadline = time.time() + 60
        while time.time() < deadline:
            r, _, _ = select.select([fd], [], [], 1)
            if not r:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, out[-2000:])
        text = out.decode(errors="replace")
        self.assertIn("\r", text, "the bar is redrawn in place")
        self.assertIn("copying", text)
        self.assertIn("[#", text)
        self.assertIn("eta", text)
        self.assertIn("150.0MiB", text)
        self.assertIn("done: moved", text)
        # The last bar reads as finished: duration and average rate, not a
        # current rate of 0 and an ETA of 0.
        # (then the old files are deleted: reclaim = deferred)
        self.assertRegex(text, r"done: moved [^\n]*\r?\nreclaiming 2 entries \(150\.0MiB\) of the old files"
                               r"\.\.\.\r?\nreclaimed in \d+\.\d\d s\r?\n$")
        last_bar = [b for b in text[:text.index("done: moved")].split("\r") if b.strip()][-1]
        self.assertRegex(last_bar, r"^complete +\[#{20}\] 100\.0% 150\.0MiB/150\.0MiB \d+/\d+ files "
                                   r"avg \d+(\.\d)?[kMG]?B/s in \d+\.\d\d s", last_bar)
        self.assertNotIn("eta", last_bar)
        self.assertRegex(text, r"done: moved .* in \d+\.\d\d s \(avg \d+(\.\d)?[kMG]?B/s\)")
        self.assertFalse(os.path.exists(src))

    def test_plain_lines_when_not_a_terminal(self):
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=20)
        r = subprocess.run([BIN, "move", src, os.path.join(self.scratch.b, "mc")], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("\r", r.stdout)
        self.assertTrue(r.stdout.splitlines()[0].startswith("calculating"))
        lines = r.stdout.splitlines()
        self.assertTrue(lines[-3].startswith("done: moved"))
        self.assertTrue(lines[-2].startswith("reclaiming "))  # reclaim = deferred, in the foreground
        self.assertTrue(lines[-1].startswith("reclaimed in "))
        fin = lines[-4]
        self.assertRegex(fin, r"^complete +100\.00%  files \d+/\d+  bytes \d+/\d+  avg \S+B/s  in \d+\.\d\d s$")
