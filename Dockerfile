# byok-relay container image: python:3.11-slim, non-root, healthcheck on /health.
#
#   docker build -t byok-relay --build-arg BUILD_COMMIT=$(git rev-parse --short HEAD) \
#       --build-arg BUILD_TIME=$(date -u +%FT%TZ) .
#   docker run -d -p 127.0.0.1:3000:3000 -e ENCRYPTION_SECRET=... -v relay-data:/data byok-relay
#
# SQLite by default (in the /data volume); set DATABASE_URL=postgresql://… and
# REDIS_URL=redis://… for the scale-out shape (see compose.yaml, docs/deployment.md).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[postgres,redis]"

FROM python:3.11-slim
ARG BUILD_COMMIT=unknown
ARG BUILD_TIME=unknown
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=3000 \
    DATABASE_URL=sqlite:////data/relay.db \
    BUILD_COMMIT=$BUILD_COMMIT \
    BUILD_TIME=$BUILD_TIME
# A fixed, unprivileged uid (owner of the /data volume); no login shell, no home.
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin relay \
 && install -d -o relay -g relay -m 0700 /data
COPY --from=build /opt/venv /opt/venv
USER relay:relay
WORKDIR /data
VOLUME ["/data"]
EXPOSE 3000
# SIGTERM: stop accepting, let open streams finish (SHUTDOWN_GRACE_S, default 30), exit 0.
# Give the container more than that to stop: `docker stop -t 40`, compose stop_grace_period.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '3000'), timeout=2).status == 200 else 1)"]
CMD ["byok-relay", "serve"]
