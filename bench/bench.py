#!/usr/bin/env python3
"""Moves the same data with `hostagent move`, GNU `mv` and
`rsync -a --remove-source-files` from the root filesystem to a tmpfs, in
alternating order, several runs per data set, and prints medians and ratios:
the whole time of each, and hostagent's answer time (until its `complete`
state, after which it deletes the old files: reclaim = deferred) as a ratio
of mv's whole move.

Data sets: one 1 GiB file; 20,000 files of 4 KiB; a game-server-like mix (a
few large region files and thousands of small ones). Each run moves a fresh
copy (made with `cp -a` on the source filesystem, not timed; its pages are
in the cache, as a just-stopped game server's would be). Needs root (tmpfs).
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def make_one_big(root):
    os.makedirs(root)
    with open(os.path.join(root, "world.img"), "wb") as f:
        for _ in range(1024):
            f.write(os.urandom(1 << 20))


def make_small(root, n=20000, size=4096):
    rnd = random.Random(1)
    for i in range(n):
        d = os.path.join(root, "d%03d" % (i // 500))
        if i % 500 == 0:
            os.makedirs(d)
        with open(os.path.join(d, "f%05d" % i), "wb") as f:
            f.write(rnd.randbytes(size))


def make_mix(root):
    rnd = random.Random(2)
    region = os.path.join(root, "world", "region")
    os.makedirs(region)
    for i in range(8):
        with open(os.path.join(region, "r.%d.0.mca" % i), "wb") as f:
            for _ in range(48):
                f.write(os.urandom(1 << 20))
    for sub in ("playerdata", "stats", "advancements", "plugins/conf", "logs"):
        os.makedirs(os.path.join(root, "world", sub))
    for i in range(4000):
        sub = ("playerdata", "stats", "advancements", "plugins/conf", "logs")[i % 5]
        with open(os.path.join(root, "world", sub, "e%04d.dat" % i), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(200, 16384)))
    os.symlink("world/region", os.path.join(root, "regions"))


SETS = {"1GiB-file": make_one_big, "20k-small": make_small, "server-mix": make_mix}


def tools(hostagent):
    return {
        "hostagent": lambda s, d: [hostagent, "move", s, d],
        "mv": lambda s, d: ["mv", s, d],
        "rsync": lambda s, d: ["rsync", "-a", "--remove-source-files", s + "/", d + "/"],
    }


def timed(cmd):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit("%s failed: %s" % (" ".join(cmd), r.stderr.decode()))
    return dt


def timed_answer(cmd):
    """Runs `hostagent move --json`: the seconds until it printed its
    `complete` MoveState (the move answered: with reclaim = deferred the old
    files are deleted after that, in the foreground) and until it ended."""
    t0 = time.perf_counter()
    answer = None
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in p.stdout:
        if answer is None and b'"phase":"complete"' in line:
            answer = time.perf_counter() - t0
    err = p.stderr.read()
    rc = p.wait()
    dt = time.perf_counter() - t0
    if rc != 0 or answer is None:
        sys.exit("%s failed: %s" % (" ".join(cmd), err.decode()))
    return answer, dt


def count_syscalls(cmd):
    out = tempfile.mktemp(prefix="hostagent-bench-strace-")
    subprocess.run(["strace", "-f", "-c", "-o", out] + cmd, stdout=subprocess.DEVNULL, check=True)
    with open(out) as f:
        lines = f.read().splitlines()
    os.unlink(out)
    for line in lines:
        if line.strip().endswith("total"):
            return int(line.split()[3])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hostagent", default=os.path.join(HERE, "..", "build", "bench", "hostagent"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--work", default="/var/tmp/hostagent-bench")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it mounts a tmpfs)")
    for t in ("mv", "rsync"):
        if not shutil.which(t):
            sys.exit("bench: %s is not installed" % t)

    work = args.work
    tmpfs = os.path.join(work, "tmpfs")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(tmpfs)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g", "hostagent-bench", tmpfs], check=True)
    results = {}
    try:
        for name in args.sets.split(","):
            template = os.path.join(work, "template-" + name)
            print("== %s: making the data" % name, flush=True)
            SETS[name](template)
            results[name] = {t: [] for t in tools(args.hostagent)}
            for run in range(args.runs):
                order = list(tools(args.hostagent).items())
                order = order[run % 3:] + order[:run % 3]  # alternate who goes first
                for tool, cmd in order:
                    src = os.path.join(work, "src-" + name)
                    dst = os.path.join(tmpfs, "dst")
                    subprocess.run(["cp", "-a", template, src], check=True)
                    subprocess.run(["sync"], check=True)
                    if tool == "rsync":
                        os.mkdir(dst)
                    if tool == "hostagent":
                        answer, dt = timed_answer(cmd(src, dst)[:2] + ["--json"] + cmd(src, dst)[2:])
                        results[name].setdefault("answer", []).append(answer)
                    else:
                        dt = timed(cmd(src, dst))
                    results[name][tool].append(dt)
                    shutil.rmtree(src, ignore_errors=True)
                    shutil.rmtree(dst)
                print("   run %d: %s" % (run + 1, "  ".join("%s %.3fs" % (t, results[name][t][-1])
                                                          for t in results[name]
                                                          if t != "syscalls")), flush=True)
            if name == "20k-small" and shutil.which("strace"):
                per = {}
                for tool, cmd in tools(args.hostagent).items():
                    src = os.path.join(work, "src-" + name)
                    dst = os.path.join(tmpfs, "dst")
                    subprocess.run(["cp", "-a", template, src], check=True)
                    if tool == "rsync":
                        os.mkdir(dst)
                    per[tool] = count_syscalls(cmd(src, dst)) / 20000.0
                    shutil.rmtree(src, ignore_errors=True)
                    shutil.rmtree(dst)
                results[name]["syscalls"] = per
            shutil.rmtree(template)
    finally:
        subprocess.run(["umount", tmpfs], check=False)
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("median seconds over %d runs (root filesystem -> tmpfs); ratio = hostagent / other, "
          "below 1.00 is faster" % args.runs)
    print("(answer: until `hostagent move` printed `complete`, the moment a manager gets its answer; "
          "hostagent: until it ended, the old files deleted)")
    print("%-12s %10s %10s %10s %10s %12s %12s %12s" % ("set", "answer", "hostagent", "mv", "rsync",
                                                      "answer/mv", "vs mv", "vs rsync"))
    for name, r in results.items():
        med = {t: statistics.median(v) for t, v in r.items() if t != "syscalls"}
        print("%-12s %10.3f %10.3f %10.3f %10.3f %12.2f %12.2f %12.2f" % (
            name, med["answer"], med["hostagent"], med["mv"], med["rsync"], med["answer"] / med["mv"],
            med["hostagent"] / med["mv"], med["hostagent"] / med["rsync"]))
    for name, r in results.items():
        if "syscalls" in r:
            print("system calls per file (%s, strace -c -f): %s" % (
                name, ", ".join("%s %.1f" % (t, v) for t, v in r["syscalls"].items())))


if __name__ == "__main__":
    main()
