#!/bin/sh
# Install tasks-server on Debian/Ubuntu: system packages (libcurl headers for pycurl),
# a virtual environment in .venv with the project and its test tools, and .env files.
# Usage: sh install.sh            (safe to run again; it only adds what is missing)
set -eu

cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"

need_apt=""
command -v curl-config >/dev/null 2>&1 || need_apt="$need_apt libcurl4-openssl-dev"
command -v wrk >/dev/null 2>&1 || need_apt="$need_apt wrk"  # the load generator of bench/limits.py
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt="$need_apt libssl-dev"
command -v gcc >/dev/null 2>&1 || need_apt="$need_apt gcc"
"$PYTHON" -c "import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'],'Python.h')))" \
    || need_apt="$need_apt python3-dev"
"$PYTHON" -c "import venv, ensurepip" 2>/dev/null || need_apt="$need_apt python3-venv"
"$PYTHON" -c "import sqlite3" 2>/dev/null || need_apt="$need_apt libsqlite3-0"
# the README's examples are run by a test with curl and jq
command -v curl >/dev/null 2>&1 || need_apt="$need_apt curl"
command -v jq >/dev/null 2>&1 || need_apt="$need_apt jq"
# the dashboard's browser tests drive Debian's Chromium with its driver (nothing downloaded)
[ -x /usr/bin/chromium ] || need_apt="$need_apt chromium"
[ -x /usr/bin/chromedriver ] || need_apt="$need_apt chromium-driver"
# the PostgreSQL tests start a throwaway cluster with initdb and pg_ctl
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt="$need_apt postgresql"
if [ -n "$need_apt" ]; then
    echo "install.sh: installing system packages:$need_apt"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need_apt
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: Python 3.11 or newer is required ($PYTHON is $("$PYTHON" --version))" >&2
    exit 1
}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# pycurl is built from source against the system libcurl: its wheels bundle a libcurl
# without HTTP/2 or NTLM.
PYCURL_SSL_LIBRARY=openssl .venv/bin/python -m pip install --quiet --no-binary pycurl \
    -e ".[test]"

[ -f .env ] || cp .env.example .env
mkdir -p .database
.venv/bin/python -c "import pycurl; print('install.sh: ready with', pycurl.version)"
