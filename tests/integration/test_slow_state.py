"""Issue 21, item 3: a slow state_dir never stops the loop. Every record of
state_dir (the journal's, the reclaimer's) is written on the journal writer
thread, so pings, heartbeats and frames go on while a record waits for its
fsync, and every outcome is still recorded before it is sent."""
import os
import time

from harness import dense_tree, journal_record, wait_until
from test_stuck import FaultTestCase

FSYNC_MS = 2000          # every fsync in state_dir
HEARTBEAT_GAP_MAX = 2.5  # seconds, with heartbeat_interval 1s
FRAME_GAP_MAX = 1.5      # seconds, with progress_interval 100ms while copying


class SlowStateDirTest(FaultTestCase):

    def heartbeat_times(self):
        return [t for c in self.manager.connections for (t, m, _) in c.messages
                if m is not None and m.get("subject") == "heartbeat"]

    def frame_times(self, move_id):
        return [(t, m["data"]) for c in self.manager.connections for (t, m, _) in c.messages
                if m is not None and m.get("subject") == "move.progress"
                and m["data"].get("moveId") == move_id]

    def wait_answer_recorded(self, reply, state, move_id, timeout=60):
        """Waits for the answer and, at the moment it is seen, reads the move's
        record through the backing directory (not the slow mount): it must
        already hold the outcome."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answers = self.manager.answers(reply)
            if answers:
                rec = journal_record(state.backing, move_id)
                self.assertIn(rec["phase"], ("complete", "error", "cancelled"),
                              "%s was answered before its outcome was recorded: %s" % (move_id, rec))
                return answers[0]["data"], rec
            time.sleep(0.005)
        raise AssertionError("no answer for %s" % move_id)

    def test_moves_and_a_reclaim_on_a_slow_state_dir_never_stop_the_loop(self):
        state = self.fuse("state")
        src_fs = self.fuse("src")
        dense_tree(os.path.join(src_fs.backing, "mc"), 80)
        os.makedirs(os.path.join(self.scratch.a, "lobby", "world"))
        with open(os.path.join(self.scratch.a, "lobby", "world", "level.dat"), "w") as f:
            f.write("lobby")
        state.slow("fsync", "*", FSYNC_MS)
        # The copy reads its source slowly (a chunk of 8 MiB, a progress
        # report, every 0.8 s), so that it is still copying while the second
        # move's acceptance is recorded.
        src_fs.slow("read", "mc", 100)
        self.start_agent(extra={"state_dir": state.mountpoint, "heartbeat_interval": "1s",
                                "reclaim": "deferred"},
                         roots=[src_fs.mountpoint, self.scratch.a, self.scratch.b])
        t_start = time.monotonic()
        a = self.request_move("mc", os.path.join(src_fs.mountpoint, "mc"),
                              os.path.join(self.scratch.b, "mc"), "mv-copy")
        self.manager.wait_for(lambda: any(d["phase"] == "copying" and d["bytesCopied"] > 0
                                          for _, d in self.frame_times("mv-copy")),
                              40, "the copy under way")
        # A second move accepted while the first copies: its record and slot
        # (two fsyncs, 4 s) are written off the loop, and the copy's frames
        # keep coming meanwhile.
        t_b = time.monotonic()
        b = self.request_move("lobby", os.path.join(self.scratch.a, "lobby"),
                              os.path.join(self.scratch.a, "lobby2"), "mv-rename")
        self.manager.wait_for(lambda: self.frame_times("mv-rename"), 30, "the rename accepted")
        t_b_accepted = time.monotonic()
        self.assertGreater(t_b_accepted - t_b, FSYNC_MS / 1000.0,
                           "the acceptance's record took its fsyncs")
        copying = [t for t, d in self.frame_times("mv-copy") if d["phase"] == "copying"]
        during = [t for t in copying if t_b <= t <= t_b_accepted]
        self.assertGreaterEqual(len(during), 3, "copy frames while the rename's record was written")
        window = [t_b] + during
        gaps = [y - x for x, y in zip(window, window[1:])]
        self.assertLess(max(gaps), FRAME_GAP_MAX, "copy frames stopped: %s" % gaps)

        # Every outcome is on disk when its answer arrives.
        ans_b, _ = self.wait_answer_recorded(b, state, "mv-rename")
        self.assertTrue(ans_b["success"], ans_b)
        ans_a, _ = self.wait_answer_recorded(a, state, "mv-copy")
        self.assertTrue(ans_a["success"], ans_a)
        # Delivered (a pong after the answer), recorded too; the reclaim of the
        # copy's source recorded, done and its record removed.
        wait_until(lambda: journal_record(state.backing, "mv-copy")["delivered"]
                   and journal_record(state.backing, "mv-rename")["delivered"], 30, "deliveries recorded")
        wait_until(lambda: not os.listdir(os.path.join(state.backing, "reclaim"))
                   and not any(n.startswith(".hostagent-reclaim") for n in os.listdir(src_fs.backing)),
                   30, "the reclaim done")
        self.assertIn("reclaim done", self.agent.log())

        # The loop never stopped: a heartbeat a second all along.
        beats = [t for t in self.heartbeat_times() if t >= t_start]
        self.assertGreater(len(beats), 10, beats)
        gaps = [y - x for x, y in zip(beats, beats[1:])]
        self.assertLess(max(gaps), HEARTBEAT_GAP_MAX, "heartbeat gaps: %s" % ["%.1f" % g for g in gaps])
