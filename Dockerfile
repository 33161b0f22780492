# mysql-pool-proxy container image.
#
#   docker build -t mysql-pool-proxy .
#   docker run -d --name mysql-pool-proxy -p 127.0.0.1:3307:3307 \
#       -v /srv/mysql-pool-proxy/config.yaml:/etc/mysql-pool-proxy/config.yaml:ro \
#       --stop-timeout 40 --cpu-shares 3072 mysql-pool-proxy
#
# The config is mounted, not baked in: it holds the server address and (unless given by
# password_file or ${ENV}) a password. It must be readable by uid 10001, e.g.
# chown 10001 config.yaml && chmod 600 config.yaml.
#
# Inside a container, listen.host must be 0.0.0.0: the example config binds 127.0.0.1,
# which is the container's own loopback and unreachable from the app. Publish the port
# on the host's loopback (-p 127.0.0.1:3307:3307) or a private network only.
#
# SIGTERM drains for shutdown_timeout (30 s by default), longer than docker's 10 s
# default stop timeout: hence --stop-timeout 40.
#
# --cpu-shares 3072 (3x docker's default 1024) is the systemd unit's CPUWeight=300: every
# client's query passes through the proxy's one thread, so when the app keeps the CPUs busy
# the proxy should not wait behind it (README, Performance).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid so a mounted config can be chowned to it from the host.
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin proxy

COPY . /tmp/src
# uvloop ships manylinux wheels, so no compiler is needed; the source goes once installed.
RUN pip install --no-cache-dir '/tmp/src[speed]' && rm -rf /tmp/src

USER proxy
EXPOSE 3307

# Healthy when the port answers with a MySQL handshake (protocol version 10 in the first
# packet). Python only, so the slim image needs no client tools. The probe disconnects
# right after the greeting; the proxy logs that as an aborted handshake.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import socket; s = socket.create_connection(('127.0.0.1', 3307), 3); s.settimeout(3); h = s.recv(5); s.close(); raise SystemExit(0 if len(h) == 5 and h[3] == 0 and h[4] == 10 else 1)"]

# Exec form: the proxy is PID 1 and gets SIGTERM (drain) and SIGHUP (reload,
# `docker kill -s HUP mysql-pool-proxy`) itself.
CMD ["mysql-pool-proxy", "run", "-c", "/etc/mysql-pool-proxy/config.yaml"]
