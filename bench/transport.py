#!/usr/bin/env python3
"""The two transports side by side (issue 13, item 7).

Idle: one agent on WebSocket (against the reference manager) and one on NATS
(against a local nats-server), both with the default config apart from their
transport, run at the same time; after they settled, their CPU time
(utime + stime from /proc/<pid>/stat) is taken over --idle seconds (30), and
their resident memory (VmRSS, VmHWM from /proc/<pid>/status) and threads at
the end.

Latency: a 3-node nats-server cluster on loopback; the agent is on node 0,
the receiver (nats.js, the requester of the tests) on node 2, so every frame
crosses a cluster route. The agent moves a tree of many small files back and
forth between two tmpfs mounts with progress_interval = 50ms until --samples
move.progress frames were received. For each frame:

  wire -> received   the PUB of the frame leaving the agent's socket (seen
                     on lo by an AF_PACKET socket with kernel timestamps)
                     until nats.js handed the message to the receiver;
  built -> received  the frame's own time (startedAt + elapsedMs, both in
                     ms: coarse) until the same receipt: adds the agent's
                     queueing and nats.c's buffering.

Same machine: one wall clock for all three. Prints medians and p99. Needs
root (tmpfs mounts, the packet socket), nats-server, node and nats.js
(npm ci in tests/nats). Usage: sudo bench/transport.py [--hostagent BIN]
"""
import argparse
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "manager"))
from natsbus import Bridge, NatsCluster  # noqa: E402
from refmanager import Manager  # noqa: E402
from harness import Scratch, many_files, wait_until  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SO_TIMESTAMPNS = 35  # Linux: SCM_TIMESTAMPNS carries a struct timespec
ETH_P_ALL = 0x0003


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def proc_sched_s(pid):
    """The same CPU time in ns from every thread's schedstat (stat counts in
    clock ticks of 10 ms, too coarse for an idle process)."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total / 1e9


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    return out


def start_agent(binary, base, name, conf, roots=None):
    path = os.path.join(base, name + ".conf")
    state = os.path.join(base, "state-" + name)
    os.makedirs(state, exist_ok=True)
    conf = dict(conf, agent_id=name, allowed_roots=roots or base, state_dir=state,
                control_socket=os.path.join(base, name + ".sock"))
    with open(path, "w") as f:
        for k, v in conf.items():
            f.write("%s = %s\n" % (k, v))
    log = open(os.path.join(base, name + ".log"), "w")
    proc = subprocess.Popen([binary, "--config", path], stdout=log, stderr=log)
    log.close()
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def idle(binary, base, seconds):
    manager = Manager().start()
    cluster = NatsCluster(base, 1)
    agents = {}
    try:
        agents["websocket"] = start_agent(binary, base, "idle-ws", {"manager_url": manager.url})
        agents["nats"] = start_agent(binary, base, "idle-nats",
                                     {"transport": "nats", "nats_servers": cluster.urls})
        manager.wait_connection(timeout=20)
        wait_until(lambda: "connected to NATS" in open(os.path.join(base, "idle-nats.log")).read(), 20,
                   "the NATS agent up")
        time.sleep(2)  # past the connect's own work
        t0 = time.monotonic()
        cpu0 = {k: proc_cpu_s(p.pid) for k, p in agents.items()}
        sched0 = {k: proc_sched_s(p.pid) for k, p in agents.items()}
        time.sleep(seconds)
        dt = time.monotonic() - t0
        out = {}
        for k, p in agents.items():
            if p.poll() is not None:
                raise SystemExit("the %s agent exited during the idle run" % k)
            cpu = proc_cpu_s(p.pid) - cpu0[k]
            sched = proc_sched_s(p.pid) - sched0[k]
            out[k] = dict(proc_status(p.pid), cpu_ms=cpu * 1000, sched_ms=sched * 1000, cpu_pct=100 * sched / dt,
                          seconds=dt)
        return out
    finally:
        for p in agents.values():
            stop(p)
        cluster.stop()
        manager.stop()


class WireTap:
    """Kernel timestamps of the agent's PUBs of move.progress on lo."""

    def __init__(self, port, subject):
        self.port = port
        self.pattern = re.compile(rb"PUB " + re.escape(subject.encode()) + rb" \d+\r\n(\{[^\r]*\})\r\n")
        self.sent = {}  # (moveId, seq) -> wall time in ms
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                data, anc, _, _ = self.sock.recvmsg(65536, 64)
            except socket.timeout:
                continue
            ts = None
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    ts = sec * 1000 + nsec / 1e6
            if ts is None or len(data) < 14 + 20 or data[12:14] != b"\x08\x00":
                continue
            ihl = (data[14] & 0x0F) * 4
            tcp = 14 + ihl
            if data[14 + 9] != 6 or len(data) < tcp + 20:
                continue
            dport = struct.unpack("!H", data[tcp + 2:tcp + 4])[0]
            if dport != self.port:
                continue
            payload = data[tcp + (data[tcp + 12] >> 4) * 4:]
            for m in self.pattern.finditer(payload):
                frame = json.loads(m.group(1))
                key = (frame["moveId"], frame["seq"])
                if key not in self.sent or ts < self.sent[key]:  # lo shows a packet going out and coming in
                    self.sent[key] = ts

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


def rfc3339_ms(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp() * 1000


def latency(binary, base, samples, files):
    scratch = Scratch("512m")
    cluster = NatsCluster(base, 3)
    bridge = agent = tap = None
    try:
        subject = "hostagent.lat.move.progress"
        bridge = Bridge(cluster.url(2))
        bridge.subscribe(subject)
        bridge.subscribe("_INBOX.bench.>")
        tap = WireTap(cluster.ports[0], subject)
        agent = start_agent(binary, base, "lat", {"transport": "nats", "nats_servers": cluster.url(0),
                                                  "progress_interval": "50ms"},
                            roots="%s, %s" % (scratch.a, scratch.b))
        wait_until(lambda: "connected to NATS" in open(os.path.join(base, "lat.log")).read(), 20, "agent up")
        time.sleep(0.5)
        src, dst = os.path.join(scratch.a, "srv"), os.path.join(scratch.b, "srv")
        many_files(src, dirs=8, per_dir=files // 8)
        n = 0
        while len(bridge.messages(".move.progress")) < samples:
            n += 1
            # A request by hand (publish with a reply subject we listen to):
            # a move can take longer than nats.js' request timeout.
            reply = "_INBOX.bench.%d" % n
            bridge.call("publish", subject="hostagent.lat.server.move_data", reply=reply,
                        data=json.dumps({"serverName": "srv", "oldPath": src, "newPath": dst, "moveId": "lat-%d" % n}))
            bridge.wait_for(lambda: bridge.messages(reply), 300, "the answer of move %d" % n)
            a = json.loads(bridge.messages(reply)[0]["data"])
            if not a.get("success"):
                raise SystemExit("move failed: %s" % a)
            src, dst = dst, src
        time.sleep(0.5)
        wire, built = [], []
        for m in bridge.messages(".move.progress"):
            f = json.loads(m["data"])
            got = m["hrt"]
            built.append(got - (rfc3339_ms(f["startedAt"]) + f["elapsedMs"]))
            sent = tap.sent.get((f["moveId"], f["seq"]))
            if sent is not None:
                wire.append(got - sent)
        return {"moves": n, "frames": len(built), "wire": wire, "built": built,
                "path": "agent -> n0 -> route -> n2 -> nats.js"}
    finally:
        if tap:
            tap.close()
        if agent:
            stop(agent)
        if bridge:
            bridge.close()
        cluster.stop()
        scratch.close()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hostagent", default=os.environ.get("HOSTAGENT_BIN",
                                                          os.path.join(HERE, "..", "build", "bench", "hostagent")))
    ap.add_argument("--idle", type=float, default=30, help="idle measurement, seconds (30)")
    ap.add_argument("--samples", type=int, default=400, help="move.progress frames to time (400)")
    ap.add_argument("--files", type=int, default=8000, help="small files in the moved tree (8000)")
    ap.add_argument("--work", default="/var/tmp/hostagent-bench-transport")
    ap.add_argument("--skip-idle", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("transport.py needs root (tmpfs mounts, a packet socket on lo)")
    if not os.access(args.hostagent, os.X_OK):
        raise SystemExit("no hostagent binary at %s (--hostagent; bench/run.sh builds build/bench)" % args.hostagent)
    os.makedirs(args.work, exist_ok=True)
    base = os.path.join(args.work, str(os.getpid()))
    os.makedirs(base)
    print("hostagent %s; %d CPUs; %s" % (args.hostagent, os.cpu_count(), os.uname().release), flush=True)
    if not args.skip_idle:
        res = idle(args.hostagent, base, args.idle)
        print("\nidle agent (default config, heartbeat every 15 s), over %.0f s:" % res["nats"]["seconds"])
        print("%-10s %10s %10s %8s %12s %14s %8s" % ("transport", "RSS", "peak RSS", "threads", "CPU (stat)",
                                                     "CPU (schedstat)", "CPU %"))
        for k in ("websocket", "nats"):
            r = res[k]
            print("%-10s %6.1f MiB %6.1f MiB %8d %9.0f ms %11.1f ms %7.3f%%" % (
                k, r["VmRSS"] / 1024, r["VmHWM"] / 1024, r["Threads"], r["cpu_ms"], r["sched_ms"], r["cpu_pct"]))
    lat = latency(args.hostagent, base, args.samples, args.files)
    print("\nmove.progress publish -> receipt on a 3-node cluster (%s), %d frames of %d moves:"
          % (lat["path"], lat["frames"], lat["moves"]))
    for name, key in (("wire -> received", "wire"), ("built -> received", "built")):
        xs = lat[key]
        if not xs:
            print("%-18s no samples" % name)
            continue
        print("%-18s median %.3f ms  p99 %.3f ms  max %.3f ms  (%d frames)" % (
            name, statistics.median(xs), pct(xs, 99), max(xs), len(xs)))


if __name__ == "__main__":
    main()
