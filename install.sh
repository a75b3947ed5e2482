#!/usr/bin/env bash
# Set up fedmq on a fresh Debian or Ubuntu machine. Idempotent: run it again at any time.
#  - Mosquitto and its command-line clients from the system packages, when missing (and what the tests use:
#    python3-venv, systemd's analysis tools, runuser, chromium)
#  - a virtual environment in .venv
#  - the four distributions (shared, broker, node, coordinator) installed editable, with test extras
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

need_apt=()
have mosquitto || need_apt+=(mosquitto)
have mosquitto_pub || need_apt+=(mosquitto-clients)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need_apt+=(python3-venv)
# deploy.md's services run from a venv of the system's python3; the tests make one as docs/deploy.md does
if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
# the tests check the systemd units with systemd-analyze and systemd-escape (nothing is started)
have systemd-analyze || need_apt+=(systemd)
have runuser || need_apt+=(util-linux)
# the dashboard's browser test drives Debian's Chromium through Playwright (no browser download)
have chromium || need_apt+=(chromium)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "==> installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "==> installing fedmq (editable) with test extras"
.venv/bin/python -m pip install -q \
  -e "./shared[test]" -e "./broker[test]" -e "./node[sklearn,tflite,secure,test]" -e "./coordinator[all,test]"
echo "==> done: run the tests with .venv/bin/pytest, the demo with .venv/bin/fedmq demo"
