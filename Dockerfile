# syntax=docker/dockerfile:1
# tasks-server image: build pycurl against Debian's libcurl in one stage, copy only the
# virtual environment into a slim runtime stage that runs as a non-root user.
#   docker build -t tasks-server .
#   docker run -p 127.0.0.1:9420:9420 -e CIPHER_KEY=... -v tasks-db:/data tasks-server
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Packages are not pinned to versions (DL3008): Debian drops superseded versions when it
# ships security fixes, so pins break rebuilds; the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libcurl4-openssl-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYCURL_SSL_LIBRARY=openssl
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tasks_server ./tasks_server
# pycurl from source: its wheels bundle a libcurl without HTTP/2 or NTLM
RUN python -m venv /opt/tasks-server \
    && /opt/tasks-server/bin/pip install --no-cache-dir --no-binary pycurl . \
    && /opt/tasks-server/bin/tasks-server --version

FROM ${PYTHON_IMAGE}
# libcurl4 is the runtime half of the libcurl4-openssl-dev the build stage compiled against
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcurl4 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tasks \
    && useradd --system --uid 10001 --gid tasks --home-dir /data --no-create-home tasks \
    && mkdir -p /data \
    && chown tasks:tasks /data
COPY --from=build /opt/tasks-server /opt/tasks-server
# HOST 0.0.0.0 so that the published port reaches the server; publish it on 127.0.0.1
# (docker-compose.yaml does) or put a TLS proxy in front
ENV PATH=/opt/tasks-server/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=9420 \
    PATH_SQLITE=/data/tasks.db \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9420
# /readyz: the database answers and is writable, and the scheduler loop is alive
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '9420'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tasks-server"]
CMD ["serve"]
