# byok-relay container image: non-root, SQLite in the /data volume, healthcheck on /health.
# No Python needed on the host: the image makes its own secrets.
#
#   docker build -t byok-relay --build-arg BUILD_COMMIT=$(git rev-parse --short HEAD) \
#       --build-arg BUILD_TIME=$(date -u +%FT%TZ) .
#   (umask 077; docker run --rm byok-relay byok-relay init --stdout > .env)   # fresh secrets
#   docker run -d --name byok-relay -p 127.0.0.1:3000:3000 --env-file .env \
#       -v byok-relay-data:/data --stop-timeout 40 byok-relay
#   curl http://127.0.0.1:3000/health
#
# SQLite by default (in the /data volume); set DATABASE_URL=postgresql://… and
# REDIS_URL=redis://… for the scale-out shape (see compose.yaml, docs/deployment.md).
# The same file builds the one-click deploys (render.yaml, railway.toml, fly.toml).
#
# BASE_IMAGE: any Debian-like image with Python >= 3.11 as `python3` plus its venv module
# (python:3.11-slim, or a base made locally from Debian packages: .ci/container-test.sh).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first (this layer is reused until pyproject.toml changes), then the package.
COPY pyproject.toml ./
RUN python3 -m venv /opt/venv \
 && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
        extra = p["optional-dependencies"]; \
        print("\n".join(p["dependencies"] + extra["postgres"] + extra["redis"]))' \
        > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY README.md LICENSE ./
COPY src ./src
RUN /opt/venv/bin/pip install --no-deps . && /opt/venv/bin/pip check

FROM ${BASE_IMAGE}
# Build metadata (GET /version) and the user the container starts as: the relay user.
# RUN_AS=root is for platforms that mount volumes root-owned (fly.toml): the entrypoint then
# gives /data to the relay user and runs the relay as it (uid 10001), so the relay never runs
# as root either way. (Declared before a RUN: podman/buildah 4.3 caches steps that have no RUN
# after their ARGs without looking at the ARG values.)
ARG BUILD_COMMIT=unknown
ARG BUILD_TIME=unknown
ARG RUN_AS=relay:relay
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=3000 \
    DATABASE_URL=sqlite:////data/relay.db \
    BUILD_COMMIT=$BUILD_COMMIT \
    BUILD_TIME=$BUILD_TIME
COPY deploy/container-entrypoint.sh /usr/local/bin/byok-relay-entrypoint
# A fixed, unprivileged uid (owner of the /data volume); no login shell, no home.
RUN chmod 0755 /usr/local/bin/byok-relay-entrypoint \
 && groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin relay \
 && install -d -o relay -g relay -m 0700 /data
COPY --from=build /opt/venv /opt/venv
USER ${RUN_AS}
WORKDIR /data
VOLUME ["/data"]
EXPOSE 3000
# SIGTERM: stop accepting, let open streams finish (SHUTDOWN_GRACE_S, default 30), exit 0.
# Give the container more than that to stop: `docker stop -t 40`, compose stop_grace_period.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '3000'), timeout=2).status == 200 else 1)"]
ENTRYPOINT ["byok-relay-entrypoint"]
CMD ["byok-relay", "serve"]
