#!/bin/sh
# Create bench/.venv with the peers the benchmarks compare spoolatp against.
# They are the benchmark's own dependencies, never spoolatp's: the venv sees the
# interpreter's site-packages (spoolatp and its handler packages) and adds the peers.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
if [ ! -x "$here/.venv/bin/python" ]; then
    "$python" -m venv --system-site-packages "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "huey>=2.5" "dirq>=1.8" "persist-queue>=1.0" "rq>=1.16" "redis>=5" "py-spy" "pyinstrument"
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } \
            || echo "setup.sh: could not install redis-server; RQ figures will be skipped" >&2
    else
        echo "setup.sh: redis-server is not installed and cannot be installed here; RQ figures will be skipped" >&2
    fi
fi
echo "$here/.venv/bin/python"
