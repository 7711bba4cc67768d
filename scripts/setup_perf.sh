#!/usr/bin/env bash
# Installs linux perf on Debian (linux-perf) or Ubuntu (linux-tools for the running kernel)
# and lets unprivileged users record (perf_event_paranoid = 1).
set -euo pipefail
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! perf --version >/dev/null 2>&1; then
    sudo_if_needed apt-get update -qq
    if grep -qi ubuntu /etc/os-release; then
        sudo_if_needed apt-get install -y -qq linux-tools-common "linux-tools-$(uname -r)" \
            || sudo_if_needed apt-get install -y -qq linux-tools-generic
    else
        sudo_if_needed apt-get install -y -qq linux-perf
    fi
fi
current=$(cat /proc/sys/kernel/perf_event_paranoid)
if [ "$current" -gt 1 ]; then
    sudo_if_needed sysctl -q kernel.perf_event_paranoid=1 || echo "warning: cannot lower perf_event_paranoid ($current)" >&2
fi
perf --version
