#!/bin/sh
# The demo: builds hostagent, makes a sample game-server tree on disk, mounts
# a tmpfs as a second filesystem ("the new SSD"), starts the reference
# manager (with its live view page on http://127.0.0.1:8080/) and the agent
# on 127.0.0.1, and has the manager ask for one server.move_data across the
# two filesystems. The page shows the move as a live progress bar; the
# terminal prints every move.progress frame; the agent's log follows. On a
# terminal the page stays up after the move until Ctrl-C (DEMO_NO_HOLD=1: exit
# at once). Needs root (for the tmpfs mount; as another user it goes through
# sudo if there is one); installs what it needs first (scripts/deps.sh --demo).
#
# On NATS (`./scripts/demo.sh --nats`, or DEMO_TRANSPORT=nats): the same move
# with a local nats-server on 127.0.0.1:${DEMO_NATS_PORT:-4222}, the agent
# with transport = nats, and the reference manager in its --nats mode
# (nats.js); it then also installs nats-server, node/npm and nats.js
# (scripts/deps.sh --demo-nats).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
port=${DEMO_PORT:-8765}
web_port=${DEMO_WEB_PORT:-8080}
size_mb=${DEMO_SIZE_MB:-768}
work=${DEMO_DIR:-/var/tmp/hostagent-demo}
transport=${DEMO_TRANSPORT:-websocket}
[ "${1:-}" = "--nats" ] && transport=nats
nats_port=${DEMO_NATS_PORT:-4222}
case "$transport" in
websocket | nats) ;;
*)
    echo "demo: DEMO_TRANSPORT is websocket or nats, not $transport" >&2
    exit 1
    ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        exec sudo --preserve-env=DEMO_PORT,DEMO_WEB_PORT,DEMO_SIZE_MB,DEMO_DIR,DEMO_NO_HOLD,DEMO_TRANSPORT,DEMO_NATS_PORT "$0" "$@"
    fi
    echo "demo: run as root (it mounts a tmpfs)" >&2
    exit 1
fi
if [ "$transport" = nats ]; then
    "$here/scripts/deps.sh" --demo-nats
else
    "$here/scripts/deps.sh" --demo
fi

echo "=== building"
cmake -S "$here" -B "$here/build/demo" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$here/build/demo" -j "$(nproc)" >/dev/null
bin="$here/build/demo/hostagent"
"$bin" --version

agent_pid=""
nats_pid=""
tail_pid=""
cleanup() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
    [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null && wait "$tail_pid" 2>/dev/null || true
    [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null || true
    mountpoint -q "$work/ssd" && umount "$work/ssd" || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
cleanup
mkdir -p "$work/disk/servers" "$work/ssd"
mount -t tmpfs -o size=$((size_mb * 2))m hostagent-demo "$work/ssd"
mkdir -p "$work/ssd/servers"

echo "=== making a sample server tree of about $size_mb MiB"
srv="$work/disk/servers/mc-survival"
mkdir -p "$srv/world/region" "$srv/world/playerdata" "$srv/plugins/empty" "$srv/logs"
big=$((size_mb / 2))
head -c "${big}M" /dev/urandom >"$srv/world/level.dat_backup"
i=0
while [ $i -lt $((size_mb - big)) ]; do
    head -c 1M /dev/urandom >"$srv/world/region/r.$i.0.mca"
    i=$((i + 1))
done
for p in alice bob carol; do echo "{\"name\": \"$p\"}" >"$srv/world/playerdata/$p.json"; done
echo "motd=hostagent demo" >"$srv/server.properties"
chmod 600 "$srv/server.properties"
ln -s world/level.dat_backup "$srv/level-link"
ln -s /nonexistent/target "$srv/logs/dangling"
touch -d "2024-01-02 03:04:05.123456789" "$srv/server.properties"
echo "    $(find "$srv" | wc -l) entries, $(du -sh "$srv" | cut -f1)"

if [ "$transport" = nats ]; then
    transport_conf="transport = nats
nats_servers = nats://127.0.0.1:$nats_port"
else
    transport_conf="manager_url = ws://127.0.0.1:$port/agent"
fi
cat >"$work/agent.conf" <<CONF
$transport_conf
agent_id = demo-host
allowed_roots = $work/disk/servers, $work/ssd/servers
state_dir = $work/state
progress_interval = 250ms
CONF
mkdir -p "$work/state"

wait_port() { # port what: waits until 127.0.0.1:port accepts
    tries=0
    until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null; do
        tries=$((tries + 1))
        if [ $tries -gt 50 ]; then
            echo "demo: $2 did not start (is port $1 free? $3=... picks another)" >&2
            exit 1
        fi
        sleep 0.1
    done
}
hold="--move-delay 0"
[ -t 0 ] && [ -z "${DEMO_NO_HOLD:-}" ] && hold="--hold --move-delay 8"
if [ "$transport" = nats ]; then
    echo "=== starting nats-server on 127.0.0.1:$nats_port (log: $work/nats.log)"
    nats-server -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
    nats_pid=$!
    wait_port "$nats_port" "nats-server" DEMO_NATS_PORT
    echo "=== starting the reference manager on NATS and the agent (log: $work/agent.log)"
    # The agent comes once the manager has subscribed (its first line says
    # so): its agent.hello is published once, at connect.
    : >"$work/manager.out"
    python3 "$here/tests/manager/refmanager.py" --nats "nats://127.0.0.1:$nats_port" --nats-agent demo-host \
        --web-port "$web_port" $hold --move mc-survival "$srv" "$work/ssd/servers/mc-survival" \
        >"$work/manager.out" &
    manager_pid=$!
    tail -n +1 -f -s 0.2 --pid="$manager_pid" "$work/manager.out" &
    tail_pid=$!
    tries=0
    until grep -q "reference manager on NATS" "$work/manager.out"; do
        tries=$((tries + 1))
        if [ $tries -gt 150 ] || ! kill -0 "$manager_pid" 2>/dev/null; then
            echo "demo: the reference manager did not start on NATS" >&2
            exit 1
        fi
        sleep 0.1
    done
else
    echo "=== starting the reference manager on port $port and the agent (log: $work/agent.log)"
    python3 "$here/tests/manager/refmanager.py" --port "$port" --web-port "$web_port" $hold \
        --move mc-survival "$srv" "$work/ssd/servers/mc-survival" &
    manager_pid=$!
    wait_port "$port" "the reference manager" DEMO_PORT
fi
"$bin" --config "$work/agent.conf" 2>"$work/agent.log" &
agent_pid=$!
echo "=== the live view: http://127.0.0.1:$web_port/ (the move shows there as it runs)"
status=0
wait "$manager_pid" || status=$?
kill "$agent_pid" && wait "$agent_pid" || true
agent_pid=""
if [ -n "$tail_pid" ]; then
    wait "$tail_pid" || true # it ends with the manager, after its last lines
    tail_pid=""
fi

echo "=== the agent's log"
cat "$work/agent.log"
echo "=== after the move"
echo "old path exists: $([ -e "$srv" ] && echo yes || echo no)"
ls -la "$work/ssd/servers/mc-survival" "$work/ssd/servers/mc-survival/logs"
exit $status
