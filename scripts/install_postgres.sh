#!/usr/bin/env bash
# Installs PostgreSQL's server binaries from the distribution's packages when they are missing.
# The cluster-mode tests start private servers from them (tests/common/pg.rs), which a clean
# runner lacks; without them those tests fail rather than skip. The slow `apt-get update` runs
# only when the install fails (a fresh image's package lists may be missing).
set -euo pipefail
if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
# env, not an exported variable: sudo resets the environment. Noninteractive: no prompts.
apt_install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; }
apt_install || { $sudo apt-get update && apt_install; }
