#!/usr/bin/env bash
# Installs the Debian packages l1forge needs (HDL simulator, synthesis, a headless browser for
# the dashboard test), only those missing.
set -euo pipefail
declare -A need=([iverilog]=iverilog [yosys]=yosys [chromium]=chromium)
missing=()
for cmd in "${!need[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "setup: installing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1
    fi
fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
