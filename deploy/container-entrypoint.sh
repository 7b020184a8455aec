#!/bin/sh
# The container image's entrypoint (Dockerfile). Started as the relay user (uid 10001, the
# image's default), it runs the command as it is. Started as root, which a platform needs
# whose volumes are mounted root-owned (fly.toml builds with RUN_AS=root; on Railway set
# RAILWAY_RUN_UID=0), it first gives /data to the relay user, then runs the command as that
# user: the relay itself never runs as root.
set -eu
if [ "$(id -u)" = 0 ]; then
    find /data -xdev \( ! -user relay -o ! -group relay \) -exec chown relay:relay {} +
    chmod 0700 /data
    exec setpriv --reuid=relay --regid=relay --init-groups -- "$@"
fi
exec "$@"
