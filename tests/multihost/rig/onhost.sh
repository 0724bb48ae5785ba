#!/usr/bin/env bash
# onhost.sh hN CMD [ARGS...] - run CMD "on" rig host hN: inside its network
# namespace (when the rig uses them) with hostname hN (own UTS namespace), and
# with RIG_HOST=hN and RIG_SPOOL=<hN's mount of the shared spool> exported.
# The mount namespace is NOT changed: every mount stays visible and live.
# (nsenter --net=, not `ip netns exec`, which keeps a private mount table that
# pins FUSE mounts.)  Without ONHOST_PIDNS the exec chain ends in CMD itself,
# so the caller's child pid is CMD's pid.
# ONHOST_PIDNS=1 also gives the command its own PID namespace (a shell is pid 1
# there and CMD gets a low pid, so pids repeat across hosts as on real
# machines); /proc is not remounted, so tools reading /proc still see host pids.
# The project's copy of shared/rig/onhost.sh: the namespace name comes from
# rig.env (RIG_NETNS_HN) instead of being fixed.
set -euo pipefail
RIG_DIR=${RIG_DIR:-/tmp/spoolatp-rig}
[ $# -ge 2 ] || { echo "usage: $0 hN CMD [ARGS...]" >&2; exit 2; }
h=$1; shift
n=${h#h}
# shellcheck disable=SC1091
. "$RIG_DIR/rig.env"
var="RIG_MOUNT_H$n"; [ -n "${!var:-}" ] || { echo "no host $h in $RIG_DIR/rig.env" >&2; exit 2; }
export RIG_HOST=$h RIG_SPOOL=${!var}
net=()
if [ "$RIG_NETNS" = 1 ]; then
    nsv="RIG_NETNS_H$n"
    net=(nsenter "--net=/run/netns/${!nsv}" --)
fi
if [ "${ONHOST_PIDNS:-0}" = 1 ]; then
    # sh stays as pid 1 of the new namespace (pid 1 ignores default-action
    # signals, so CMD must not be pid 1); it forwards TERM/INT to CMD
    exec "${net[@]}" unshare --uts --pid --fork --kill-child -- sh -c \
        'hostname "$0" || exit 1; "$@" & c=$!; trap "kill \$c" TERM INT; wait $c; r=$?; wait $c 2>/dev/null; exit $r' "$h" "$@"
fi
exec "${net[@]}" unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$h" "$@"
