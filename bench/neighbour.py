#!/usr/bin/env python3
"""A neighbour's save latency while a server's data is moved (issue 22).

A game host runs many servers on the same disks. This bench plays one of
them: a neighbour that saves every 50 ms, on the destination disk (or, with
--where src, on the source disk), and measures how long each save takes
while nothing else runs and while the data of another server is moved by:

  hostagent   the daemon, asked by the reference manager (server.move_data),
              until its answer (the move durable, the source gone or handed
              to the reclaimer);
  move        `hostagent move` (the same engine in the foreground) until the
              process ended;
  mv+sync     GNU mv, then sync(1): what a panel does;
  rsync       rsync -a --remove-source-files, then sync(1);
  rsync-bw    the same with --bwlimit at hostagent's average rate in that run
              (the fixed write limit other panels answer lag reports with).

Neighbours (--neighbour):
  file        pwrite of 64 KiB at a rotating offset of a 16 MiB world file,
              then fsync: a save made durable;
  sqlite      a SQLite database in WAL mode (synchronous = FULL): a
              transaction replacing 16 rows of 4 KiB, committed (the commit
              fsyncs the WAL).

The disks are two ext4 filesystems on loop devices (direct I/O, so the loop
does not add a page cache of its own) made from image files under --work;
on this VM both lie on the same virtual disk. The data: one server of six
256 MiB region files and 4,000 small files (1.5 GiB), copied afresh onto the
source disk before each run (not timed). Runs alternate the tools' order.
For each tool: the neighbour's save latency p50/p99/max over the samples
taken while the tool ran, pooled over the runs, and the tool's time; ratios
against the idle latency and against mv + sync. Needs root.
"""
import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "manager"))

SAVE_INTERVAL = 0.05
SAVE_BYTES = 64 << 10
WORLD_BYTES = 16 << 20


# --- the neighbour (a child process: its saves are not slowed by our own work) ---

def neighbour_file(directory, stop):
    path = os.path.join(directory, "neighbour-world.dat")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, WORLD_BYTES)
    os.fsync(fd)
    buf = os.urandom(SAVE_BYTES)
    off = 0

    def save():
        nonlocal off
        os.pwrite(fd, buf, off)
        os.fsync(fd)
        off = (off + SAVE_BYTES) % WORLD_BYTES
    return save


def neighbour_sqlite(directory, stop):
    db = sqlite3.connect(os.path.join(directory, "neighbour-world.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE IF NOT EXISTS chunk (id INTEGER PRIMARY KEY, data BLOB)")
    blob = os.urandom(4096)
    n = 0

    def save():
        nonlocal n
        db.execute("BEGIN")
        for i in range(16):
            db.execute("INSERT OR REPLACE INTO chunk VALUES (?, ?)", ((n * 16 + i) % 4096, blob))
        db.execute("COMMIT")
        n += 1
    return save


def neighbour_main(kind, directory, out):
    """Saves every SAVE_INTERVAL until SIGTERM; writes [[t, seconds], ...]
    (t: CLOCK_MONOTONIC at the save's start) to out."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    save = (neighbour_file if kind == "file" else neighbour_sqlite)(directory, stop)
    samples = []
    print("ready", flush=True)
    next_t = time.monotonic()
    while not stop:
        t0 = time.monotonic()
        save()
        samples.append([t0, time.monotonic() - t0])
        next_t += SAVE_INTERVAL
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.monotonic()  # a save longer than the interval: no burst to catch up
    with open(out, "w") as f:
        json.dump(samples, f)


class Neighbour:
    def __init__(self, kind, directory, out):
        self.out = out
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", kind, directory,
                                      out], stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("neighbour: did not start")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        with open(self.out) as f:
            return json.load(f)


# --- disks and data ----------------------------------------------------------------

def sh(*cmd):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


class Disk:
    def __init__(self, work, name, size_gib):
        self.img = os.path.join(work, name + ".img")
        self.mnt = os.path.join(work, name)
        os.makedirs(self.mnt)
        with open(self.img, "wb") as f:
            f.truncate(size_gib << 30)
        # Inode tables and journal initialised now: ext4lazyinit would
        # otherwise write them in the background during the first runs.
        sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", self.img)
        self.dev = sh("losetup", "--find", "--show", "--direct-io=on", self.img)
        sh("mount", self.dev, self.mnt)

    def close(self):
        subprocess.run(["umount", self.mnt], check=False)
        subprocess.run(["losetup", "-d", self.dev], check=False)
        os.unlink(self.img)


def make_server(root, region_mib=256):
    rnd = random.Random(3)
    region = os.path.join(root, "world", "region")
    os.makedirs(region)
    for i in range(6):
        with open(os.path.join(region, "r.%d.0.mca" % i), "wb") as f:
            for _ in range(region_mib):
                f.write(os.urandom(1 << 20))
    subs = ("playerdata", "stats", "advancements", "plugins/conf", "logs")
    for sub in subs:
        os.makedirs(os.path.join(root, "world", sub))
    for i in range(4000):
        with open(os.path.join(root, "world", subs[i % 5], "e%04d.dat" % i), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(200, 16384)))


def tree_bytes(root):
    total = 0
    for d, _, names in os.walk(root):
        total += sum(os.lstat(os.path.join(d, n)).st_size for n in names)
    return total


# --- the movers --------------------------------------------------------------------

class Daemon:
    """hostagent as a daemon, with the reference manager asking."""

    def __init__(self, binary, work, roots):
        from refmanager import Manager
        self.manager = Manager().start()
        conf = {"manager_url": self.manager.url, "agent_id": "bench", "token": "bench-token-0123456789",
                "allowed_roots": ", ".join(roots), "state_dir": os.path.join(work, "state"),
                "control_socket": os.path.join(work, "agent.sock"), "log_level": "info"}
        os.makedirs(conf["state_dir"], exist_ok=True)
        self.cfg = os.path.join(work, "agent.conf")
        with open(self.cfg, "w") as f:
            for k, v in conf.items():
                f.write("%s = %s\n" % (k, v))
        self.log = open(os.path.join(work, "agent.log"), "w")
        self.proc = subprocess.Popen([binary, "--config", self.cfg], stdout=self.log, stderr=self.log)
        self.manager.wait_connection(timeout=20)
        self.n = 0

    def move(self, src, dst):
        self.n += 1
        reply = self.manager.request("server.move_data", {"serverName": "bench", "oldPath": src, "newPath": dst,
                                                          "moveId": "bench-%d" % self.n})
        ans = self.manager.wait_answer(reply, 600)
        if not ans.get("success"):
            raise SystemExit("hostagent daemon: the move failed: %s" % ans)

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        shutil.copy(self.log.name, "/tmp/hostagent-neighbour-agent.log")  # kept for a look after the run
        self.manager.stop()


def run_tool(tool, src, dst, ctx):
    if tool == "hostagent":
        ctx["daemon"].move(src, dst)
    elif tool == "move":
        subprocess.run([ctx["binary"], "move", src, dst], check=True, stdout=subprocess.DEVNULL)
    elif tool == "mv+sync":
        subprocess.run(["mv", src, dst], check=True)
        subprocess.run(["sync"], check=True)
    else:
        os.mkdir(dst)
        cmd = ["rsync", "-a", "--remove-source-files"]
        if tool == "rsync-bw":
            cmd.append("--bwlimit=%dK" % max(1, int(ctx["rate"] / 1024)))
        subprocess.run(cmd + [src + "/", dst + "/"], check=True)
        shutil.rmtree(src)  # the directories rsync leaves
        subprocess.run(["sync"], check=True)


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        neighbour_main(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hostagent", default=os.path.join(HERE, "..", "build", "bench", "hostagent"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--neighbour", choices=("file", "sqlite"), default="file")
    ap.add_argument("--where", choices=("dst", "src"), default="dst",
                    help="the disk the neighbour saves on")
    ap.add_argument("--tools", default="hostagent,move,mv+sync,rsync,rsync-bw")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of the idle measurement per run")
    ap.add_argument("--region-mib", type=int, default=256, help="size of each of the six region files")
    ap.add_argument("--work", default="/var/tmp/hostagent-neighbour")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("neighbour: run as root (loop mounts)")
    for t in ("mv", "rsync", "mkfs.ext4", "losetup"):
        if not shutil.which(t):
            sys.exit("neighbour: %s is not installed" % t)
    tools = args.tools.split(",")
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    disks = []
    daemon = None
    lat = {t: [] for t in ["idle"] + tools}
    took = {t: [] for t in tools}
    try:
        srcdisk = Disk(work, "srcdisk", 4)
        disks.append(srcdisk)
        dstdisk = Disk(work, "dstdisk", 3)
        disks.append(dstdisk)
        template = os.path.join(srcdisk.mnt, "template")
        print("== making the server's data", flush=True)
        make_server(template, args.region_mib)
        size = tree_bytes(template)
        home = os.path.join((dstdisk if args.where == "dst" else srcdisk).mnt, "neighbour")
        os.makedirs(home)
        ctx = {"binary": args.hostagent, "rate": 0}
        if "hostagent" in tools:
            daemon = ctx["daemon"] = Daemon(args.hostagent, work, [srcdisk.mnt, dstdisk.mnt])
        src = os.path.join(srcdisk.mnt, "server")
        dst = os.path.join(dstdisk.mnt, "server")
        for run in range(args.runs):
            order = tools[run % len(tools):] + tools[:run % len(tools)]
            if "rsync-bw" in order and "hostagent" in order:  # it needs this run's rate
                order.remove("rsync-bw")
                order.insert(order.index("hostagent") + 1, "rsync-bw")
            for tool in ["idle"] + order:
                if tool != "idle":
                    subprocess.run(["cp", "-a", template, src], check=True)
                subprocess.run(["sync"], check=True)
                time.sleep(1)  # the copy's writeback settled
                nb = Neighbour(args.neighbour, home, os.path.join(work, "samples.json"))
                time.sleep(1)  # its first saves (file creation) out of the way
                t0 = time.monotonic()
                if tool == "idle":
                    time.sleep(args.idle)
                else:
                    run_tool(tool, src, dst, ctx)
                t1 = time.monotonic()
                samples = nb.stop()
                lat[tool].extend(s for t, s in samples if t0 <= t <= t1)
                if tool != "idle":
                    took[tool].append(t1 - t0)
                    if tool == "hostagent":
                        ctx["rate"] = size / (t1 - t0)
                    shutil.rmtree(dst)
                    shutil.rmtree(src, ignore_errors=True)
                    subprocess.run(["sync"], check=True)
            print("   run %d: %s" % (run + 1, "  ".join("%s %.1fs" % (t, took[t][-1]) for t in order)),
                  flush=True)
    finally:
        if daemon:
            daemon.close()
        for d in reversed(disks):
            d.close()
        shutil.rmtree(work, ignore_errors=True)

    idle99 = pct(lat["idle"], 99)
    mv99 = pct(lat["mv+sync"], 99) if lat.get("mv+sync") else None
    mvt = statistics.median(took["mv+sync"]) if took.get("mv+sync") else None
    print()
    print("neighbour: %s save every %d ms on the %s disk; %d runs; %.2f GiB moved from one loop-mounted ext4 "
          "to another" % (args.neighbour, SAVE_INTERVAL * 1000, args.where, args.runs, size / (1 << 30)))
    print("%-10s %7s %8s %8s %8s %9s %11s %8s %9s" % ("during", "saves", "p50 ms", "p99 ms", "max ms",
                                                     "p99/idle", "p99/mv+sync", "time s", "t/mv+sync"))
    for tool in ["idle"] + tools:
        v = lat[tool]
        if not v:
            continue
        p99 = pct(v, 99)
        t = statistics.median(took[tool]) if tool in took else None
        print("%-10s %7d %8.1f %8.1f %8.1f %9.2f %11s %8s %9s" % (
            tool, len(v), 1000 * pct(v, 50), 1000 * p99, 1000 * max(v), p99 / idle99,
            "%.2f" % (p99 / mv99) if mv99 else "-", "%.1f" % t if t else "-",
            "%.2f" % (t / mvt) if t and mvt else "-"))


if __name__ == "__main__":
    main()
