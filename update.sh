#!/bin/sh
# Bring an existing install up to date after a pull: dependencies, then the schema.
set -eu
cd "$(dirname "$0")"
sh install.sh
.venv/bin/tasks-server migrate
