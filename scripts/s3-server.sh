#!/usr/bin/env bash
# A throw-away S3 server for tests and local development: a one-node Ceph cluster (one monitor, one OSD on
# memstore, one RADOS Gateway) living entirely in DIR, bound to 127.0.0.1. No system-wide state is touched.
#
#   scripts/s3-server.sh start  DIR   # prints the endpoint; writes DIR/env (source it for the AWS_* variables)
#   scripts/s3-server.sh status DIR   # exit 0 when the gateway answers
#   scripts/s3-server.sh stop   DIR   # stops the daemons (DIR is left for the caller to delete)
#
# Environment: S3_PORT (gateway port, default: a free one), S3_ACCESS_KEY / S3_SECRET_KEY (fixed test keys by
# default), S3_OBJECTSTORE (memstore, default; or bluestore on a file in DIR), S3_STORE_BYTES (default 2 GiB).
# Needs the Debian packages ceph-mon ceph-osd radosgw (scripts/install-system-deps.sh).
set -euo pipefail

cmd=${1:-}; dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|stop|status DIR" >&2; exit 2
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
ACCESS_KEY=${S3_ACCESS_KEY:-moodlenstestaccesskey}
SECRET_KEY=${S3_SECRET_KEY:-moodlenstestsecretkey0123456789abcdefgh}

free_port() {
    # A random high port nothing answers on (bash's /dev/tcp: no python or netcat needed).
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
    done
    echo "no free port found" >&2; return 1
}

ceph_() { ceph -c "$conf" --connect-timeout 10 "$@"; }

# Running and not a zombie (daemons are re-parented to PID 1, which may be slow to reap them).
pid_alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
daemon_alive() { [ -f "$dir/run/$1.pid" ] && pid_alive "$(cat "$dir/run/$1.pid")"; }

gateway_up() {
    # An HTTP answer on the gateway's port (bash's /dev/tcp, so curl is not needed either).
    [ -f "$dir/endpoint" ] || return 1
    local port
    port=$(sed 's/.*://' "$dir/endpoint")
    timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && head -c 8 <&3" \
        2>/dev/null | grep -q '^HTTP/1'
}

start() {
    for b in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool; do
        command -v "$b" >/dev/null || { echo "$b not found: run scripts/install-system-deps.sh" >&2; exit 3; }
    done
    if gateway_up; then cat "$dir/endpoint"; return 0; fi
    rm -rf "${dir:?}"/{mon,osd,run,log,ceph.conf,keyring,monmap,endpoint,env}
    mkdir -p "$dir"/{mon/a,osd/0,run,log}
    local mon_port rgw_port fsid store
    mon_port=$(free_port)
    rgw_port=${S3_PORT:-$(free_port)}
    fsid=$(cat /proc/sys/kernel/random/uuid)
    store=${S3_OBJECTSTORE:-memstore}
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_port]
public addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
# auth none does not work for the gateway: cephx with keys kept in DIR
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $dir/keyring
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
mon cluster log file = $dir/log/cluster.log
# one OSD: single-copy pools, few placement groups, no warnings about it
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon data avail warn = 1
mon data avail crit = 0
# a developer machine or CI runner: keep memory and threads small
osd memory target = 536870912
osd op num shards = 1
osd op num threads per shard = 2

[mon.a]
mon data = $dir/mon/a

[osd.0]
osd data = $dir/osd/0
osd objectstore = $store
memstore device bytes = ${S3_STORE_BYTES:-2147483648}
bluestore block path = $dir/osd/0/block
bluestore block create = true
bluestore block size = ${S3_STORE_BYTES:-2147483648}
bluestore fsck on mount = false

[client.rgw.a]
rgw data = $dir/rgw
# tcp_nodelay: without it every small GET waits ~40 ms on Nagle + delayed ACK
rgw frontends = beast endpoint=127.0.0.1:$rgw_port tcp_nodelay=1
rgw thread pool size = 64
rgw enable usage log = false
rgw dns name = localhost
EOF
    # Keys: monitor, admin (this script's ceph commands), gateway. The OSD's key is added with `osd new`.
    ceph-authtool "$dir/keyring" --create-keyring --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$dir/keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
    ceph-authtool "$dir/keyring" --gen-key -n client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' >/dev/null
    monmaptool --create --addv a "[v2:127.0.0.1:$mon_port]" --fsid "$fsid" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" --keyring "$dir/keyring" 2>>"$dir/log/setup.log"
    ceph-mon -c "$conf" -i a 2>>"$dir/log/setup.log"
    ceph_ auth import -i "$dir/keyring" 2>>"$dir/log/setup.log"

    local osd_uuid osd_key
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    osd_key=$(ceph-authtool --gen-print-key)
    printf '{"cephx_secret": "%s"}' "$osd_key" | ceph_ osd new "$osd_uuid" -i - >/dev/null 2>>"$dir/log/setup.log"
    ceph-authtool "$dir/osd/0/keyring" --create-keyring --name osd.0 --add-key "$osd_key" >/dev/null
    # --no-mon-config: mkfs must not wait for the monitor's config database
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" --no-mon-config \
        --keyring "$dir/osd/0/keyring" >>"$dir/log/setup.log" 2>&1
    ceph-osd -c "$conf" -i 0 --keyring "$dir/osd/0/keyring" 2>>"$dir/log/setup.log"

    radosgw -c "$conf" -n client.rgw.a --keyring "$dir/keyring" 2>>"$dir/log/setup.log"
    echo "http://127.0.0.1:$rgw_port" >"$dir/endpoint"
    local t=0
    until gateway_up; do
        t=$((t + 1))
        if [ $t -gt 120 ] || ! daemon_alive client.rgw.a; then
            echo "RADOS Gateway did not come up; logs in $dir/log" >&2
            tail -n 20 "$dir/log/client.rgw.a.log" >&2 2>/dev/null || true
            stop; exit 1
        fi
        sleep 0.5
    done
    radosgw-admin -c "$conf" -n client.admin user create --uid=moodlens --display-name=moodlens \
        --access-key="$ACCESS_KEY" --secret="$SECRET_KEY" >/dev/null 2>>"$dir/log/setup.log"
    cat >"$dir/env" <<EOF
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_DEFAULT_REGION=us-east-1
export MOODLENS_S3_ENDPOINT=http://127.0.0.1:$rgw_port
EOF
    cat "$dir/endpoint"
}

stop() {
    # SIGTERM, gateway first; SIGKILL for a daemon still running after 5 s.
    local name pid
    for name in client.rgw.a osd.0 mon.a; do
        if daemon_alive "$name"; then
            pid=$(cat "$dir/run/$name.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do pid_alive "$pid" || break; sleep 0.1; done
            pid_alive "$pid" && kill -9 "$pid" 2>/dev/null
        fi
        rm -f "$dir/run/$name.pid"
    done
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status)
        if gateway_up; then echo "up $(cat "$dir/endpoint")"; else echo "down"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status DIR" >&2; exit 2 ;;
esac
