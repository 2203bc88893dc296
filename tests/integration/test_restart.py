"""Nothing lost: the journal across agent kills and restarts, a manager that
goes away mid-move, a corrupt journal file, one agent per state_dir."""
import json
import os
import subprocess

from harness import BIN, AgentTestCase, dense_tree, make_tree, many_files, snapshot
from refmanager import Manager


class RestartTest(AgentTestCase):
    def test_killed_mid_copy_is_rolled_back_and_answered_interrupted(self):
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        make_tree(os.path.join(src, "world"), n_small=20)
        before = snapshot(src, content=False)
        dst = os.path.join(self.scratch.b, "new", "deeper", "mc")
        reply = self.request_move("mc", src, dst, "mv-kill")
        self.wait_phase("mv-kill", "copying")
        with self.paused_agent():
            self.kill_agent()
        self.assertTrue(os.path.exists(dst), "expected a partial copy to clean up")
        last_seq = self.manager.frames("mv-kill")[-1]["seq"]
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 60)
        self.assertEqual((ans["success"], ans["code"], ans["moveId"]), (False, "interrupted", "mv-kill"))
        term = self.manager.frames("mv-kill")[-1]
        self.assertEqual((term["phase"], term["code"]), ("error", "interrupted"))
        self.assertGreater(term["seq"], last_seq, "seq continues across the restart")
        self.assertEqual(snapshot(src, content=False), before)
        self.assertEqual(os.listdir(self.scratch.b), [], "the partial copy and its parents are gone")
        # The answer came on the new connection, after its hello.
        conn = self.manager.connections[-1]
        subjects = [m["subject"] for _, m, _ in conn.messages if m]
        self.assertEqual(subjects[0], "agent.hello")
        self.assertIn(reply, subjects)
        self.assertIn("found a move the agent did not finish", self.agent.log())

    def test_killed_while_cleaning_is_finished_and_answered_success(self):
        src = many_files(os.path.join(self.scratch.a, "many"))
        self.start_agent()
        dst = os.path.join(self.scratch.b, "many")
        reply = self.request_move("many", src, dst, "mv-kc")
        self.wait_phase("mv-kc", "cleaning")
        with self.paused_agent():
            self.kill_agent()
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 60)
        self.assertTrue(ans["success"], ans)
        self.assertEqual((ans["moveId"], ans["method"], ans["filesCopied"]), ("mv-kc", "copy", 8008))
        self.assertEqual(self.manager.frames("mv-kc")[-1]["phase"], "complete")
        self.assertFalse(os.path.exists(src))
        self.assertEqual(sum(len(f) for _, _, f in os.walk(dst)), 8000)

    def test_manager_away_mid_move_gets_the_outcome_after_hello(self):
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 150)
        dst = os.path.join(self.scratch.b, "mc")
        reply = self.request_move("mc", src, dst, "mv-away")
        self.wait_phase("mv-away", "copying")
        port = self.manager.port
        with self.paused_agent():
            self.manager.stop()  # the manager goes away mid-move
        self.manager = Manager(port=port)
        self.manager.wait_for(lambda: "move ended" in self.agent.log(), 60, "the move to end offline")
        self.manager.start()  # back on the same port
        ans = self.manager.wait_answer(reply, 30)
        self.assertTrue(ans["success"], ans)
        conn = self.manager.connections[0]
        subjects = [m["subject"] for _, m, _ in conn.messages if m]
        self.assertEqual(subjects[0], "agent.hello")
        hello = conn.messages[0][1]["data"]
        self.assertIn("mv-away", [m["moveId"] for m in hello["moves"]])
        term = [m for _, m, _ in conn.messages if m and m["subject"] == "move.progress"][-1]["data"]
        self.assertEqual((term["moveId"], term["phase"]), ("mv-away", "complete"))
        self.assertLess(subjects.index("move.progress"), subjects.index(reply))
        self.assertFalse(os.path.exists(src))
        self.assertEqual(os.path.getsize(os.path.join(dst, "world.img")), 150 << 20)

    def test_retry_after_restart_gets_the_recorded_answer(self):
        self.start_agent()
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=10)
        first = self.move("mc", src, os.path.join(self.scratch.b, "mc"), move_id="mv-once")
        self.assertTrue(first["success"])
        self.manager.wait_for(lambda: "move outcome delivered" in self.agent.log(), 20, "delivery")
        self.assertEqual(self.agent.stop(), 0)
        self.restart_agent(1)
        again = self.move("mc", src, os.path.join(self.scratch.b, "mc2"), move_id="mv-once")
        self.assertEqual(again, first)
        self.assertFalse(os.path.exists(os.path.join(self.scratch.b, "mc2")))

    def test_corrupt_journal_file_is_set_aside(self):
        moves = os.path.join(self.scratch.state, "moves")
        os.makedirs(moves, exist_ok=True)
        with open(os.path.join(moves, "mv-broken.json"), "w") as f:
            f.write('{"version": 1, "moveId": "mv-broken", "phase": "copy')  # cut short
        with open(os.path.join(moves, "mv-odd.json"), "w") as f:
            json.dump({"version": 1, "moveId": "mv-odd", "phase": "cleaning"}, f)  # fields missing
        self.start_agent()
        self.manager.wait_for(lambda: "set aside" in self.agent.log(), 10, "the warning")
        self.assertTrue(os.path.exists(os.path.join(moves, "mv-broken.json.corrupt")))
        self.assertTrue(os.path.exists(os.path.join(moves, "mv-odd.json.corrupt")))
        src = make_tree(os.path.join(self.scratch.a, "mc"), n_small=5)
        self.assertTrue(self.move("mc", src, os.path.join(self.scratch.b, "mc"))["success"])

    def test_second_agent_on_the_same_state_dir_refuses_to_start(self):
        self.start_agent()
        r = subprocess.run([BIN, "--config", self.agent.cfg_path], capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 1)
        self.assertIn("another hostagent (pid %d)" % self.agent.proc.pid, r.stderr)

    def test_recovery_never_follows_a_symlink_swapped_into_the_destination(self):
        # After a crash, the partial copy's parent is swapped for a symlink to a
        # directory outside the roots that holds a same-named tree. Undoing the
        # copy must not follow it: the outside tree is untouched.
        self.start_agent()
        src = dense_tree(os.path.join(self.scratch.a, "mc"), 200)
        dst = os.path.join(self.scratch.b, "new", "mc")
        reply = self.request_move("mc", src, dst, "mv-swap")
        self.wait_phase("mv-swap", "copying")
        with self.paused_agent():
            self.kill_agent()
        outside = os.path.join(self.scratch.base, "outside")
        make_tree(os.path.join(outside, "mc"), n_small=10)
        before_outside = snapshot(outside)
        os.rename(os.path.join(self.scratch.b, "new"), os.path.join(self.scratch.b, "new.real"))
        os.symlink(outside, os.path.join(self.scratch.b, "new"))
        self.restart_agent(1)
        ans = self.manager.wait_answer(reply, 60)
        # The disk is not as journaled: nothing is touched, the operator must look.
        self.assertEqual((ans["success"], ans["code"]), (False, "needs_attention"), ans)
        self.assertIn("touched nothing", ans["error"])
        self.assertEqual(snapshot(outside), before_outside, "the rollback followed a symlink")
        self.assertTrue(os.path.isdir(os.path.join(src)), "the source is whole")
        self.assertIn("does not match the journal", self.agent.log())
