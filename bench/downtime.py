#!/usr/bin/env python3
"""Downtime of a move: what a game host pays while its server is stopped.

For each data set, in one run and on the same data (root filesystem -> tmpfs):

  mv        GNU mv of the whole tree: the server is stopped for all of it.
  move      `hostagent move --json`: time until the move is answered (the
            `complete` state; with reclaim = deferred the source's deletion
            runs after it) and until the process ends.
  live      `hostagent move --live --json`: the preparing copy runs while a
            "server" still owns the tree; at `ready`, 1 % of the entries are
            changed (appended, rewritten with the old mtime put back,
            created, deleted), then Enter commits. Downtime is from Enter to
            the commit's answer (the agent's own `downtimeMs` is printed too).

Ratios are against mv's whole move of the same tree in the same run; the
issue's targets are live downtime <= 0.05 x mv and the plain move answered in
<= 0.3 x mv on 20,000 small files. Data sets: 20,000 files of 4 KiB, and a
game-like mix (4,000 small files and one 256 MiB region file); the mix is
also run with the region file changed in one place among the 1 %. Needs root.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import make_small  # noqa: E402  (the same 20,000 files as bench.py)


def make_mix(root):
    rnd = random.Random(2)
    region = os.path.join(root, "world", "region")
    os.makedirs(region)
    with open(os.path.join(region, "r.0.0.mca"), "wb") as f:
        for _ in range(256):
            f.write(os.urandom(1 << 20))
    subs = ("playerdata", "stats", "advancements", "plugins/conf", "logs")
    for sub in subs:
        os.makedirs(os.path.join(root, "world", sub))
    for i in range(4000):
        with open(os.path.join(root, "world", subs[i % 5], "e%04d.dat" % i), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(200, 16384)))


SETS = {"20k-small": make_small, "game-mix": make_mix, "game-mix+region": make_mix}


def files_of(root):
    out = []
    for d, _, names in os.walk(root):
        out.extend(os.path.join(d, n) for n in names)
    return sorted(out)


def change_one_percent(root, seed, region_too):
    """Changes 1 % of the entries, as a running server would have."""
    rnd = random.Random(seed)
    files = [f for f in files_of(root) if not f.endswith(".mca")]
    n = max(1, (len(files) + 1) // 100)
    picked = rnd.sample(files, n)
    for i, path in enumerate(picked):
        kind = i % 4
        if kind == 0:
            with open(path, "ab") as f:
                f.write(b"appended by the server\n")
        elif kind == 1:
            st = os.stat(path)
            with open(path, "r+b") as f:
                f.write(rnd.randbytes(64))
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif kind == 2:
            os.unlink(path)
        else:
            with open(path + ".new", "wb") as f:
                f.write(rnd.randbytes(2048))
    if region_too:
        region = os.path.join(root, "world", "region", "r.0.0.mca")
        with open(region, "r+b") as f:
            f.seek(100 << 20)
            f.write(rnd.randbytes(8192))
    return n + (1 if region_too else 0)


def run_mv(src, dst):
    t0 = time.perf_counter()
    subprocess.run(["mv", src, dst], check=True)
    return time.perf_counter() - t0


def json_lines(proc):
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            yield json.loads(line)


def run_move(hostagent, src, dst):
    """Seconds until the answer (complete), and until the process ended."""
    t0 = time.perf_counter()
    p = subprocess.Popen([hostagent, "move", "--json", src, dst], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    answered = None
    for obj in json_lines(p):
        if answered is None and obj.get("phase") == "complete":
            answered = time.perf_counter() - t0
    if p.wait() != 0 or answered is None:
        sys.exit("downtime: hostagent move failed")
    return answered, time.perf_counter() - t0


def run_live(hostagent, src, dst, seed, region_too):
    """(downtime seconds measured here, the agent's downtimeMs, entries changed,
    filesSynced, bytesSynced)."""
    p = subprocess.Popen([hostagent, "move", "--live", "--json", src, dst], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = json_lines(p)
    for obj in lines:
        if "success" in obj:
            if not obj["success"]:
                sys.exit("downtime: the preparation failed: %s" % obj)
            break
    changed = change_one_percent(src, seed, region_too)
    t0 = time.perf_counter()
    p.stdin.write("\n")
    p.stdin.flush()
    answer = None
    for obj in lines:
        if "success" in obj:
            answer = obj
            break
    t1 = time.perf_counter()
    p.stdin.close()
    for _ in lines:
        pass
    if p.wait() != 0 or not answer or not answer.get("success"):
        sys.exit("downtime: the commit failed: %s" % answer)
    return (t1 - t0, answer["downtimeMs"], changed, answer.get("filesSynced", 0),
            answer.get("bytesSynced", 0))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hostagent", default=os.path.join(HERE, "..", "build", "bench", "hostagent"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--work", default="/var/tmp/hostagent-downtime")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("downtime: run as root (it mounts a tmpfs)")
    work = args.work
    tmpfs = os.path.join(work, "tmpfs")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(tmpfs)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g", "hostagent-downtime", tmpfs], check=True)
    results = {}
    try:
        for name in args.sets.split(","):
            template = os.path.join(work, "template")
            shutil.rmtree(template, ignore_errors=True)
            print("== %s: making the data" % name, flush=True)
            SETS[name](template)
            r = results[name] = {"mv": [], "answer": [], "whole": [], "down": [], "agent": [],
                                 "changed": 0, "synced": [], "synced_bytes": []}
            for run in range(args.runs):
                src = os.path.join(work, "src")
                dst = os.path.join(tmpfs, "dst")
                for tool in ("mv", "move", "live"):
                    subprocess.run(["cp", "-a", template, src], check=True)
                    subprocess.run(["sync"], check=True)
                    if tool == "mv":
                        r["mv"].append(run_mv(src, dst))
                    elif tool == "move":
                        a, w = run_move(args.hostagent, src, dst)
                        r["answer"].append(a)
                        r["whole"].append(w)
                    else:
                        d, agent_ms, changed, fs, bs = run_live(args.hostagent, src, dst, run,
                                                                name.endswith("+region"))
                        r["down"].append(d)
                        r["agent"].append(agent_ms / 1000.0)
                        r["changed"] = changed
                        r["synced"].append(fs)
                        r["synced_bytes"].append(bs)
                    shutil.rmtree(src, ignore_errors=True)
                    shutil.rmtree(dst, ignore_errors=True)
                print("   run %d: mv %.3fs  move answered %.3fs (ended %.3fs)  live downtime %.3fs"
                      % (run + 1, r["mv"][-1], r["answer"][-1], r["whole"][-1], r["down"][-1]),
                      flush=True)
            shutil.rmtree(template, ignore_errors=True)
    finally:
        subprocess.run(["umount", tmpfs], check=False)
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("median seconds over %d runs (root filesystem -> tmpfs); ratios against mv's whole move"
          % args.runs)
    print("%-16s %8s %9s %9s %9s %9s %10s %10s %8s" % (
        "set", "mv", "answered", "vs mv", "live", "vs mv", "downtimeMs", "changed", "synced"))
    for name, r in results.items():
        mv = statistics.median(r["mv"])
        ans = statistics.median(r["answer"])
        down = statistics.median(r["down"])
        print("%-16s %8.3f %9.3f %9.3f %9.3f %9.3f %10.0f %10d %8.0f" % (
            name, mv, ans, ans / mv, down, down / mv, 1000 * statistics.median(r["agent"]),
            r["changed"], statistics.median(r["synced"])))
    print("(answered: a plain `hostagent move` until its answer; live: Enter to the commit's answer, "
          "1 %% of the entries changed at ready; bytes synced, median: %s)" % ", ".join(
              "%s %d" % (n, statistics.median(r["synced_bytes"])) for n, r in results.items()))


if __name__ == "__main__":
    main()
