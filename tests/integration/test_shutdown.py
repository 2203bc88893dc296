"""Graceful stop: SIGTERM mid-move rolls back, answers shutting_down, closes
with 1001 "going away" and exits 0."""
import os
import signal
import time
import unittest

from harness import AgentTestCase, Scratch, dense_tree, make_tree, many_files, snapshot


class ShutdownTest(AgentTestCase):
    tmpfs_size = "1g"

    def test_sigterm_during_copy(self):
        conn = self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc-stop"), 200)
        make_tree(os.path.join(src, "extra"), n_small=20)
        before = snapshot(src, content=False)
        dst = os.path.join(self.scratch.b, "deep", "mc-stop")
        reply = self.manager.request("server.move_data",
                                     {"serverName": "mc-stop", "oldPath": src, "newPath": dst, "moveId": "mv-stop"})
        self.manager.wait_for(lambda: any(f["phase"] == "copying"
                                          for f in self.manager.frames("mv-stop")), 30, "copying")
        # Frozen early in the copy, the SIGTERM is pending when it resumes.
        with self.paused_agent():
            os.kill(self.agent.proc.pid, signal.SIGTERM)
        t0 = time.monotonic()
        rc = self.agent.proc.wait(10)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, self.agent.log()[-3000:])
        self.assertLess(took, 10)
        ans = self.manager.wait_answer(reply, 10)
        self.assertEqual((ans["success"], ans["code"], ans["moveId"]), (False, "shutting_down", "mv-stop"))
        term = self.manager.frames("mv-stop")[-1]
        self.assertEqual((term["phase"], term["code"]), ("error", "shutting_down"))
        self.assertLess(term["bytesCopied"], term["bytesTotal"])
        # Terminal frame before the answer, then a going-away close.
        subjects = [m["subject"] for m in self.manager.all_messages()]
        self.assertLess(max(i for i, m in enumerate(self.manager.all_messages())
                            if m["subject"] == "move.progress"), subjects.index(reply))
        self.manager.wait_for(lambda: conn.closed, 5, "connection closed")
        self.assertEqual(conn.close_code, 1001)
        self.assertEqual(snapshot(src, content=False), before)
        self.assertEqual(os.listdir(self.scratch.b), [])
        log = self.agent.log()
        self.assertIn("stopping", log)
        self.assertIn("hostagent stopped", log)

    def test_sigterm_during_cleaning_finishes_the_move(self):
        conn = self.start_agent()
        src = os.path.join(self.scratch.a, "many")
        many_files(src)
        dst = os.path.join(self.scratch.b, "many")
        reply = self.manager.request("server.move_data",
                                     {"serverName": "many", "oldPath": src, "newPath": dst, "moveId": "mv-cl"})
        self.manager.wait_for(lambda: any(f["phase"] == "cleaning" for f in self.manager.frames("mv-cl")),
                              30, "cleaning")
        # The copy is verified and the source half gone: the move completes first.
        with self.paused_agent():
            os.kill(self.agent.proc.pid, signal.SIGTERM)
        self.assertEqual(self.agent.proc.wait(30), 0, self.agent.log()[-3000:])
        ans = self.manager.wait_answer(reply, 10)
        self.assertTrue(ans["success"], ans)
        self.assertEqual(self.manager.frames("mv-cl")[-1]["phase"], "complete")
        self.assertFalse(os.path.exists(src))
        self.assertEqual(sum(len(f) for _, _, f in os.walk(dst)), 8000)
        self.manager.wait_for(lambda: conn.closed, 5, "connection closed")
        self.assertEqual(conn.close_code, 1001)

    def test_sigint_while_idle_and_disconnected(self):
        self.manager.accept = False
        from harness import Agent
        self.agent = Agent(self.manager, self.scratch)
        self.manager.wait_for(lambda: len(self.manager.attempts) >= 2, 10, "attempts")
        self.assertEqual(self.agent.stop(signal.SIGINT, timeout=10), 0)


if __name__ == "__main__":
    unittest.main()
