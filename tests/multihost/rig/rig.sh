#!/usr/bin/env bash
# rig.sh - multi-host shared-spool test rig (no kernel NFS needed).
#
# The project's copy of shared/rig/rig.sh, for tests/multihost.  Differences:
# its own names, subnet, port and directory (RIG_NAME, RIG_SUBNET, RIG_PORT,
# RIG_DIR), so it can run beside the shared rig; it refuses to start over a
# rig of the same name it did not make; every command but `up` reads the
# settings the rig was made with from rig.env; and it can hurt a host on
# purpose: `kill` (the whole host dies: every process in its network
# namespace, FUSE client included, frozen then SIGKILLed), `revive` (it boots
# again with a new mount), `cut`/`heal` (its link to the server down/up).
#
# One "server" exports $RIG_DIR/export; each simulated host hN gets its own
# network mount of it at $RIG_DIR/hosts/hN/spool, made by a separate FUSE
# client process.  With RIG_NETNS=1 (default) each host is a network namespace
# (veth on a bridge, IP $RIG_SUBNET.N) and its FUSE client talks to the server
# at $RIG_SUBNET.254 from inside that namespace; run a host's processes with
# onhost.sh (netns + own hostname).  All mounts live in the caller's mount
# namespace, so every process sees every mount.  $RIG_DIR/hosts/hN/ (outside
# spool/) stands for host hN's local disk.
#
#   rig.sh up          install what is missing, start server, make hosts, mount
#   rig.sh down        stop everything rig.sh started (by pid or namespace), unmount, clean up
#   rig.sh status      show what is up
#   rig.sh pids hN     pids of every process on host hN (its network namespace, per the kernel)
#   rig.sh kill hN     host hN dies: SIGSTOP, then SIGKILL, everything in its namespace
#   rig.sh revive hN   a killed host boots again: its dead mount is made anew
#   rig.sh cut hN      take hN's link to the server down (its processes stay)
#   rig.sh heal hN     bring the link back up
#
# Settings (environment, for `up`):
#   RIG_DIR=/tmp/spoolatp-rig  state, keys, logs, export dir, mount points
#   RIG_NAME=satp           prefix of the bridge (satp0), namespaces (satp-h1),
#                           server-side veths (satph1), GlusterFS volume; [a-z0-9]{1,8}
#   RIG_HOSTS=2             number of hosts h1..hN (N <= 200)
#   RIG_FS=sshfs            sshfs | glusterfs
#   RIG_CACHE=nocache       sshfs only: default (sshfs defaults: 20 s dir/attr
#                           cache + 1 s kernel caches) | nocache | nodircache
#                           (sshfs dir cache off, kernel 1 s caches kept)
#   RIG_SSHFS_OPTS=         extra comma-separated sshfs -o options
#   RIG_RECONNECT=1         sshfs -o reconnect: after a lost connection, calls
#                           fail with EIO until the server is reachable again;
#                           without it sshfs exits and the mount disappears
#   RIG_GLUSTER_OPTS=       GlusterFS only: "KEY=VALUE ..." set on the volume
#                           before it starts (e.g. network.ping-timeout=5)
#   RIG_NETNS=1             1: hosts are network namespaces; 0: all on 127.0.0.1
#   RIG_PORT=2223           sshd port (sshfs backend)
#   RIG_SUBNET=10.78.0      /24 of the bridge and hosts, which exist only inside this rig
#   RIG_INSTALL=1           apt-get install missing packages
#   RIG_KEEP=0              down: keep $RIG_DIR (logs) instead of deleting it
set -euo pipefail

RIG_DIR=${RIG_DIR:-/tmp/spoolatp-rig}
RIG_NAME=${RIG_NAME:-satp}
RIG_HOSTS=${RIG_HOSTS:-2}
RIG_FS=${RIG_FS:-sshfs}
RIG_CACHE=${RIG_CACHE:-nocache}
RIG_SSHFS_OPTS=${RIG_SSHFS_OPTS:-}
RIG_GLUSTER_OPTS=${RIG_GLUSTER_OPTS:-}
RIG_RECONNECT=${RIG_RECONNECT:-1}
RIG_NETNS=${RIG_NETNS:-1}
RIG_PORT=${RIG_PORT:-2223}
RIG_SUBNET=${RIG_SUBNET:-10.78.0}
RIG_INSTALL=${RIG_INSTALL:-1}
RIG_KEEP=${RIG_KEEP:-0}
# every command but `up` acts on the rig that is up, with the settings it was made with
if [ "${1:-}" != up ] && [ -f "$RIG_DIR/rig.env" ]; then
    # shellcheck disable=SC1091
    . "$RIG_DIR/rig.env"
fi
[[ $RIG_NAME =~ ^[a-z0-9]{1,8}$ ]] || { echo "RIG_NAME must be 1-8 of [a-z0-9]" >&2; exit 2; }
BR=${RIG_NAME}0          # bridge
NSP=${RIG_NAME}-         # netns name prefix: satp-h1 ...
VETH=${RIG_NAME}h        # server-side veth prefix: satph1 ...
VOL=$RIG_NAME            # gluster volume name
ST=$RIG_DIR/state

log() { printf '[rig %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

wait_for() {  # wait_for SECONDS CMD...  (poll every 0.1 s)
    local t=$(( $1 * 10 )); shift
    while ! "$@" >/dev/null 2>&1; do
        t=$((t - 1)); [ "$t" -gt 0 ] || return 1; sleep 0.1
    done
}

alive() {  # alive PID: running and not a zombie (daemons here are reaped by pid 1, late)
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

stop_pid() {  # stop_pid PID [NAME]: TERM, wait 5 s, KILL; only this pid
    local p=$1
    [ -n "$p" ] && alive "$p" || return 0
    kill "$p" 2>/dev/null || true
    for _ in $(seq 50); do alive "$p" || return 0; sleep 0.1; done
    log "pid $p ($2) ignored TERM, sending KILL"; kill -9 "$p" 2>/dev/null || true
}

any_alive() {  # any_alive PID...: is any of them running?
    local p
    for p in "$@"; do alive "$p" && return 0; done
    return 1
}

stop_pids() {  # stop_pids WHAT PID...: TERM them all at once, wait up to 5 s, KILL the rest; only these pids
    local what=$1 p live=() left=()
    shift
    for p in "$@"; do alive "$p" && live+=("$p"); done
    [ ${#live[@]} -gt 0 ] || return 0
    kill "${live[@]}" 2>/dev/null || true
    for _ in $(seq 50); do any_alive "${live[@]}" || return 0; sleep 0.1; done
    for p in "${live[@]}"; do alive "$p" && left+=("$p"); done
    log "$what: pids ${left[*]} ignored TERM, sending KILL"
    kill -9 "${left[@]}" 2>/dev/null || true
}

install_pkgs() {
    local need=()
    command -v ip >/dev/null || need+=(iproute2)
    command -v nsenter >/dev/null || need+=(util-linux)
    if [ "$RIG_FS" = sshfs ]; then
        command -v sshfs >/dev/null || need+=(sshfs)
        [ -x /usr/sbin/sshd ] || need+=(openssh-server)
        command -v ssh-keygen >/dev/null || need+=(openssh-client)
    else
        command -v glusterd >/dev/null || need+=(glusterfs-server)
        command -v glusterfs >/dev/null || need+=(glusterfs-client)
    fi
    [ ${#need[@]} -eq 0 ] && return 0
    [ "$RIG_INSTALL" = 1 ] || die "missing packages: ${need[*]} (RIG_INSTALL=0)"
    log "installing ${need[*]}"
    # keep package scripts from starting system daemons (sshd on :22, glusterd)
    local prc=/usr/sbin/policy-rc.d made=0
    if [ ! -e $prc ]; then printf '#!/bin/sh\nexit 101\n' > $prc; chmod +x $prc; made=1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ $made = 1 ] && rm -f $prc
    return 0
}

host_ns()   { echo "${NSP}h$1"; }
host_mnt()  { echo "$RIG_DIR/hosts/h$1/spool"; }
# prefix that runs a command with host N's network (mount namespace unchanged)
host_pfx()  { if [ "$RIG_NETNS" = 1 ]; then echo "nsenter --net=/run/netns/$(host_ns "$1") --"; fi; }

server_ip() {
    if [ "$RIG_NETNS" = 1 ] || [ "$RIG_FS" = glusterfs ]; then echo "$RIG_SUBNET.254"; else echo 127.0.0.1; fi
}

net_up() {
    # a bridge carries the server address (gluster refuses loopback addresses)
    if [ "$RIG_NETNS" = 1 ] || [ "$RIG_FS" = glusterfs ]; then
        ip link add $BR type bridge
        echo "link $BR" >> $ST/created
        ip addr add "$RIG_SUBNET.254/24" dev $BR
        ip link set $BR up
    fi
    [ "$RIG_NETNS" = 1 ] || return 0
    local i ns
    for i in $(seq "$RIG_HOSTS"); do
        ns=$(host_ns "$i")
        ip netns add "$ns"
        echo "netns $ns" >> $ST/created
        ip link add "$VETH$i" type veth peer name eth0 netns "$ns"
        echo "link $VETH$i" >> $ST/created
        ip link set "$VETH$i" master $BR up
        ip -n "$ns" addr add "$RIG_SUBNET.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
}

sshd_up() {
    local s=$RIG_DIR/server
    mkdir -p "$s" /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$s/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$s/client_key"
    cp "$s/client_key.pub" "$s/authorized_keys"
    cat > "$s/sshd_config" <<EOF
Port $RIG_PORT
ListenAddress $(server_ip)
HostKey $s/host_key
AuthorizedKeysFile $s/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $s/sshd.pid
Subsystem sftp internal-sftp
MaxStartups 200:30:400
MaxSessions 200
ClientAliveInterval 5
ClientAliveCountMax 3
LogLevel INFO
EOF
    /usr/sbin/sshd -t -f "$s/sshd_config"
    /usr/sbin/sshd -f "$s/sshd_config" -E "$s/sshd.log" < /dev/null > /dev/null 2>&1
    wait_for 10 test -s "$s/sshd.pid" || die "sshd did not start (see $s/sshd.log)"
    echo "sshd $(cat "$s/sshd.pid")" >> $ST/pids
}

sshfs_cache_opts() {
    case "$RIG_CACHE" in
        default)    echo "" ;;
        nocache)    echo "dir_cache=no,entry_timeout=0,attr_timeout=0,negative_timeout=0" ;;
        nodircache) echo "dir_cache=no" ;;
        *) die "RIG_CACHE must be default|nocache|nodircache" ;;
    esac
}

sshfs_mount() {  # sshfs_mount N
    local i=$1 mnt s=$RIG_DIR/server opts pid
    mnt=$(host_mnt "$i")
    opts="port=$RIG_PORT,IdentityFile=$s/client_key,StrictHostKeyChecking=no"
    opts+=",UserKnownHostsFile=/dev/null,BatchMode=yes,LogLevel=ERROR"
    opts+=",ServerAliveInterval=5,ServerAliveCountMax=3"
    [ "$RIG_RECONNECT" = 1 ] && opts+=",reconnect"
    local c; c=$(sshfs_cache_opts); [ -n "$c" ] && opts+=",$c"
    [ -n "$RIG_SSHFS_OPTS" ] && opts+=",$RIG_SSHFS_OPTS"
    # -f: stay in the foreground so that $! is the sshfs pid (nsenter execs)
    # shellcheck disable=SC2046
    $(host_pfx "$i") sshfs -f "root@$(server_ip):$RIG_DIR/export" "$mnt" -o "$opts" \
        > "$RIG_DIR/hosts/h$i/client.log" 2>&1 < /dev/null &
    pid=$!
    echo "client h$i $pid" >> $ST/pids
    wait_for 15 mountpoint -q "$mnt" || die "sshfs for h$i did not mount (see $RIG_DIR/hosts/h$i/client.log)"
    record_aux "$i" "$pid"
}

record_aux() {  # record_aux N CLIENT_PID: the other rig processes now in hN's netns
    [ "$RIG_NETNS" = 1 ] || return 0   # (sshfs's ssh child; it exits with sshfs)
    local p
    for p in $(ip netns pids "$(host_ns "$1")"); do
        [ "$p" = "$2" ] || echo "aux h$1 $p" >> $ST/pids
    done
}

gluster_up() {
    local g=$RIG_DIR/server
    mkdir -p "$g/glusterd-wd"
    glusterd -p "$g/glusterd.pid" -l "$g/glusterd.log" \
        --xlator-option "management.working-directory=$g/glusterd-wd" \
        < /dev/null >> "$g/glusterd.log" 2>&1
    wait_for 10 test -s "$g/glusterd.pid" || die "glusterd did not start"
    echo "glusterd $(cat "$g/glusterd.pid")" >> $ST/pids
    wait_for 20 gluster --mode=script pool list || die "glusterd not answering"
    gluster --mode=script volume create $VOL "$(server_ip):$RIG_DIR/export" force >/dev/null
    echo "glustervol $VOL" >> $ST/created
    local kv
    for kv in $RIG_GLUSTER_OPTS; do
        gluster --mode=script volume set $VOL "${kv%%=*}" "${kv#*=}" >/dev/null
    done
    gluster --mode=script volume start $VOL >/dev/null
}

gluster_mount() {  # gluster_mount N
    local i=$1 mnt pid
    mnt=$(host_mnt "$i")
    # -N: no daemon, so $! is the client pid
    # shellcheck disable=SC2046
    $(host_pfx "$i") glusterfs -N --process-name fuse --volfile-server="$(server_ip)" \
        --volfile-id=/$VOL -l "$RIG_DIR/hosts/h$i/client.log" "$mnt" \
        < /dev/null >> "$RIG_DIR/hosts/h$i/client.log" 2>&1 &
    pid=$!
    echo "client h$i $pid" >> $ST/pids
    wait_for 20 mountpoint -q "$mnt" || die "glusterfs client for h$i did not mount"
    record_aux "$i" "$pid"
}

write_env() {
    local f=$RIG_DIR/rig.env i v
    {
        for v in RIG_DIR RIG_NAME RIG_FS RIG_CACHE RIG_HOSTS RIG_NETNS RIG_PORT RIG_SUBNET \
                 RIG_RECONNECT RIG_SSHFS_OPTS RIG_GLUSTER_OPTS; do
            printf '%s=%q\n' "$v" "${!v}"
        done
        echo "RIG_EXPORT=$RIG_DIR/export"; echo "RIG_SERVER_IP=$(server_ip)"
        for i in $(seq "$RIG_HOSTS"); do
            echo "RIG_MOUNT_H$i=$(host_mnt "$i")"
            [ "$RIG_NETNS" = 1 ] && echo "RIG_NETNS_H$i=$(host_ns "$i")"
        done
    } > "$f"
    cat "$f"
}

up() {
    [ "$(id -u)" = 0 ] || die "must run as root"
    [ -c /dev/fuse ] || die "/dev/fuse missing"
    [ -e "$ST/pids" ] && { log "previous rig state found; tearing it down first"; down; }
    # never take over (and later tear down) what another rig or another run made
    ip link show $BR >/dev/null 2>&1 && die "a bridge $BR exists that this rig did not make (another rig up? set RIG_NAME)"
    ip netns list | grep -q "^$NSP" && die "network namespaces $NSP* exist that this rig did not make (set RIG_NAME)"
    if [ "$RIG_FS" = glusterfs ] && command -v gluster >/dev/null &&
        timeout 5 gluster --mode=script pool list >/dev/null 2>&1; then
        die "a glusterd is already running on this machine (only one can); stop that rig first"
    fi
    local t0=$SECONDS
    install_pkgs
    log "packages ready ($((SECONDS - t0)) s)"
    mkdir -p "$ST" "$RIG_DIR/export"; : > "$ST/pids"; : > "$ST/created"
    # everything needed to undo 'up' is recorded in $ST; a failure below is
    # cleaned up by 'down'
    trap 'log "up failed; run: $0 down"' ERR
    net_up
    local i
    for i in $(seq "$RIG_HOSTS"); do
        mkdir -p "$(host_mnt "$i")"
        # an unmounted mount point refuses writes (EPERM) instead of silently
        # taking them on the local disk (needs ext4/xfs/btrfs; not tmpfs)
        chattr +i "$(host_mnt "$i")" 2>/dev/null || log "chattr +i not supported for $(host_mnt "$i")"
    done
    if [ "$RIG_FS" = sshfs ]; then
        sshd_up
        for i in $(seq "$RIG_HOSTS"); do sshfs_mount "$i"; done
    elif [ "$RIG_FS" = glusterfs ]; then
        gluster_up
        for i in $(seq "$RIG_HOSTS"); do gluster_mount "$i"; done
    else
        die "RIG_FS must be sshfs or glusterfs"
    fi
    # smoke test: a file made through h1 is readable through every host
    local probe=".rig-smoke-$$"
    echo ok > "$(host_mnt 1)/$probe"
    for i in $(seq "$RIG_HOSTS"); do
        [ "$(cat "$(host_mnt "$i")/$probe")" = ok ] || die "h$i cannot read h1's file"
    done
    rm -f "$(host_mnt 1)/$probe"
    trap - ERR
    write_env
    log "up: $RIG_FS, $RIG_HOSTS hosts, netns=$RIG_NETNS, cache=$RIG_CACHE ($((SECONDS - t0)) s)"
}

down() {
    local t0=$SECONDS what name pid m
    [ -d "$ST" ] || { log "nothing to tear down in $RIG_DIR"; return 0; }
    # 1. unmount every mount under RIG_DIR (lazily if still busy)
    for m in $(findmnt -rn -o TARGET | grep "^$RIG_DIR/" | sort -r); do
        fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || {
            log "$m busy: lazy unmount"; umount -l "$m"; }
    done
    # 2. the FUSE clients exit by themselves once unmounted (within 3 s),
    #    and their ssh child with them; stop those that do not, all at once
    if [ -f "$ST/pids" ]; then
        local fuse
        # shellcheck disable=SC2207
        fuse=($(awk '$1 == "client" || $1 == "aux" {print $3}' "$ST/pids"))
        for _ in $(seq 30); do any_alive "${fuse[@]}" || break; sleep 0.1; done
        stop_pids "FUSE clients" "${fuse[@]}"
    fi
    # 3. whatever still runs in a host namespace (workers a test left behind,
    #    an ssh that sshfs -o reconnect started - it has SIGTERM blocked, so it
    #    gets KILL after 5 s); pids come from the kernel, not from names
    if [ -f "$ST/created" ]; then
        local left=()
        while read -r what name; do
            [ "$what" = netns ] || continue
            for pid in $(ip netns pids "$name" 2>/dev/null); do
                alive "$pid" || continue
                log "stopping pid $pid left in $name: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)"
                left+=("$pid")
            done
        done < "$ST/created"
        stop_pids "left in host namespaces" "${left[@]}"
    fi
    # 4. server side
    if grep -q "^glustervol " "$ST/created" 2>/dev/null; then
        local bricks; bricks=$(cat /var/run/gluster/vols/$VOL/*.pid 2>/dev/null || true)
        gluster --mode=script volume stop $VOL force >/dev/null 2>&1 || true
        gluster --mode=script volume delete $VOL >/dev/null 2>&1 || true
        for pid in $bricks; do stop_pid "$pid" glusterfsd; done
    fi
    if [ -f "$ST/pids" ]; then
        while read -r what name pid; do
            case "$what" in sshd|glusterd) stop_pid "$name" "$what" ;; esac
        done < "$ST/pids"
    fi
    # sshd per-connection children of this rig's sshd (they normally exit
    # with their client); found by parent pid, not by name
    local sp; sp=$(awk '$1=="sshd"{print $2}' "$ST/pids" 2>/dev/null || true)
    if [ -n "$sp" ]; then
        for pid in $(ps -eo pid=,ppid= | awk -v p="$sp" '$2==p{print $1}'); do stop_pid "$pid" "sshd session"; done
    fi
    # 5. network: veths, namespaces, bridge (reverse order of creation)
    if [ -f "$ST/created" ]; then
        tac "$ST/created" | while read -r what name; do
            case "$what" in
                link)  ip link del "$name" 2>/dev/null || true ;;
                netns) ip netns del "$name" 2>/dev/null || true ;;
            esac
        done
    fi
    # 6. files (only when nothing under RIG_DIR is still mounted)
    if findmnt -rn -o TARGET | grep -q "^$RIG_DIR/"; then
        log "something is still mounted under $RIG_DIR; not deleting it"
    else
        for m in "$RIG_DIR"/hosts/*/spool; do [ -d "$m" ] && chattr -i "$m" 2>/dev/null; done
        if [ "$RIG_KEEP" = 1 ]; then rm -rf "$ST"; else rm -rf "$RIG_DIR"; fi
    fi
    log "down ($((SECONDS - t0)) s)"
}

status() {
    [ -f "$RIG_DIR/rig.env" ] && cat "$RIG_DIR/rig.env"
    findmnt -rn -o TARGET,FSTYPE,SOURCE | grep "^$RIG_DIR/" || echo "(no mounts under $RIG_DIR)"
    if [ -f "$ST/pids" ]; then
        while read -r what name pid; do
            case "$what" in client|aux) name="$what $name" ;; *) pid=$name; name=$what ;; esac
            if alive "$pid"; then echo "$name pid $pid alive"; else echo "$name pid $pid DEAD"; fi
        done < "$ST/pids"
    fi
    ip netns list | grep "^$NSP" || true
}

host_of() {  # host_of hN: the host number, if hN is a host namespace this rig made
    local n=${1#h}
    [[ $n =~ ^[0-9]+$ ]] || die "not a host name: $1 (h1, h2, ...)"
    [ "$RIG_NETNS" = 1 ] || die "needs RIG_NETNS=1"
    grep -qx "netns $(host_ns "$n")" "$ST/created" 2>/dev/null || die "$1 is not a host of the rig in $RIG_DIR"
    echo "$n"
}

pids_of() {  # every process whose network namespace is host N's, per the kernel
    ip netns pids "$(host_ns "$1")" 2>/dev/null || true
}

kill_host() {
    # A host dies: all its processes stop at once and never run again, its
    # FUSE client (and so its mount) included; the server and the other hosts
    # stay.  Freeze everything first (SIGSTOP) so that no process of the host
    # acts on another's death, then SIGKILL; repeat until the kernel lists
    # nothing, so that a process forked meanwhile dies too.
    local n ps all=""
    n=$(host_of "$1")
    for _ in $(seq 100); do
        ps=$(pids_of "$n")
        [ -n "$ps" ] || break
        # shellcheck disable=SC2086
        kill -STOP $ps 2>/dev/null || true
        ps=$(pids_of "$n")
        # shellcheck disable=SC2086
        [ -n "$ps" ] && { kill -KILL $ps 2>/dev/null || true; all="$all $(echo $ps)"; }
        sleep 0.02
    done
    [ -z "$(pids_of "$n")" ] || die "h$n: processes still listed after 100 rounds: $(pids_of "$n" | tr '\n' ' ')"
    echo "dead h$n" >> "$ST/created"
    log "h$n killed (pids:$all)"
}

revive_host() {
    # a killed host boots again: its dead mount is cleared and mounted anew
    local n mnt
    n=$(host_of "$1")
    grep -qx "dead h$n" "$ST/created" || die "h$n was not killed (rig.sh kill h$n)"
    mnt=$(host_mnt "$n")
    fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || umount -l "$mnt"
    if [ "$RIG_FS" = sshfs ]; then sshfs_mount "$n"; else gluster_mount "$n"; fi
    sed -i "/^dead h$n\$/d" "$ST/created"
    log "h$n revived"
}

link_set() {  # link_set hN up|down: the server side of hN's veth
    local n
    n=$(host_of "$1")
    ip link set "$VETH$n" "$2"
    log "h$n link $2"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    pids) pids_of "$(host_of "${2:?usage: $0 pids hN}")" ;;
    kill) kill_host "${2:?usage: $0 kill hN}" ;;
    revive) revive_host "${2:?usage: $0 revive hN}" ;;
    cut) link_set "${2:?usage: $0 cut hN}" down ;;
    heal) link_set "${2:?usage: $0 heal hN}" up ;;
    *) echo "usage: $0 up|down|status|pids hN|kill hN|revive hN|cut hN|heal hN   (settings: see the top of $0)" >&2
       exit 2 ;;
esac
