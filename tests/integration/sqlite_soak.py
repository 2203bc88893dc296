#!/usr/bin/env python3
"""Many commits that meet a running SQLite writer, with timestamps (issue 20,
item 11): the soak form of test_sqlite_commit, not part of the suite.

    sudo HOSTAGENT_BIN=build/plain/hostagent nice -n 10 \\
        python3 tests/integration/sqlite_soak.py --runs 12 --variant ns-ext4-tmpfs --out runs.jsonl

Each run picks a journal mode (WAL and DELETE in turn), `synchronous`, the
writer's pause between transactions (--gaps), the row size, the number of
other files and how many rows it writes while the move rests in `ready`; it
prints one JSON line per run (also appended to --out): the answer, the phases'
receive times and the answer's in ms from the commit request, and every row
missing at newPath with the time its COMMIT returned, classed as
before_request (a broken rule), before_syncing_frame, before_cleaning_frame,
before_answer or after_answer (writes of a server that was not stopped). A
`source_changed` run is committed again with the writer stopped, which must
bring every row (verdict). Exit status 1 when any run broke the rule."""
import argparse
import json
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_sqlite_commit import SqliteCommitCase  # noqa: E402

VARIANTS = ("ns-ext4-tmpfs", "1s-ext4-xfs", "1s-ext4-tmpfs")


class Soak(SqliteCommitCase):
    opts = None
    broken = 0

    def runTest(self):
        o = self.opts
        if o.variant == "ns-ext4-tmpfs":
            src_root, dst_root = self.scratch.a, self.scratch.b
        else:
            src_root = self.mount_image("ext4-1s", os.path.join(self.scratch.a, "coarse"))
            dst_root = (self.mount_image("xfs", os.path.join(self.scratch.b, "xfs")) if o.variant.endswith("xfs")
                        else self.scratch.b)
        self.start_agent()
        rnd = random.Random("%s/%s" % (o.seed, o.variant))
        gaps = [float(g) for g in o.gaps.split(",")]
        for k in range(o.runs):
            mode = ("WAL", "DELETE")[k % 2]
            gap = rnd.choice(gaps)
            rows_in_ready = rnd.choice([5, 50, 300])
            if gap * rows_in_ready > 2:
                rows_in_ready = max(3, int(2 / gap))
            res = self.run_commit(src_root, dst_root, "r%d" % k, mode=mode, sync=rnd.choice(["NORMAL", "FULL"]),
                                  gap=gap, pad=rnd.choice([200, 1500, 4000]),
                                  n_filler=rnd.choice([0, 200, 1000, 3000]), rows_in_ready=rows_in_ready, seed=k)
            try:
                self.assert_rule(res)
                res["verdict"] = "ok"
            except AssertionError as exc:
                res["verdict"] = "BROKEN: %s" % str(exc)[:2000]
                Soak.broken += 1
            for key in ("_rows", "_t_send", "_dst", "_move_id"):
                res.pop(key)
            res["variant"] = o.variant
            line = json.dumps(res)
            print(line, flush=True)
            if o.out:
                with open(o.out, "a") as f:
                    f.write(line + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--variant", choices=VARIANTS, default=VARIANTS[0])
    ap.add_argument("--gaps", default="0,0.002,0.02,0.05,0.1,0.25",
                    help="the writer's pauses between transactions to pick from, in s (a whole-second source "
                         "succeeds only with pauses above 1 s)")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--out")
    Soak.opts = ap.parse_args()
    result = unittest.TextTestRunner(verbosity=0).run(Soak())
    sys.exit(0 if result.wasSuccessful() and Soak.broken == 0 else 1)


if __name__ == "__main__":
    main()
