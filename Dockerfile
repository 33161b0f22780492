# mysql-pool-proxy container image.
#
#   docker build -t mysql-pool-proxy .
#   docker run -d --name mysql-pool-proxy -p 127.0.0.1:3307:3307 \
#       -v /srv/mysql-pool-proxy:/etc/mysql-pool-proxy:ro \
#       --stop-timeout 40 --cpu-shares 3072 mysql-pool-proxy
#
# The config is mounted, not baked in: it holds the server address and (unless given by
# password_file or ${ENV}) a password. It must be readable by uid 10001, e.g.
# chown 10001 config.yaml && chmod 600 config.yaml.
# Mount the directory that holds config.yaml, not the file: editors and `sed -i` replace
# the file, and a file mount keeps showing the container the old one, so a reload
# (`docker kill -s HUP`) would read the old config.
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

# A fixed uid so a mounted config can be chowned to it from the host. Not named "proxy":
# Debian's base-passwd already has a system user of that name (uid 13, for web proxies).
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mysql-pool-proxy

COPY . /tmp/src
# uvloop ships manylinux wheels, so no compiler is needed; the source goes once installed.
RUN pip install --no-cache-dir '/tmp/src[speed]' && rm -rf /tmp/src

USER mysql-pool-proxy
# 3307: clients. 9187: Prometheus metrics, when the config sets metrics.port (and metrics.host
# 0.0.0.0, since inside a container loopback is the container's own).
EXPOSE 3307 9187

# Healthy while the proxy answers with a MySQL greeting on the address its config names
# (`mysql-pool-proxy health` reads listen.port from the same file, so a changed port is
# probed too). A full proxy (max_client_connections) greets with ERR 1040 and stays healthy:
# busy is not broken, and a restart would drop every client.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["mysql-pool-proxy", "health", "-c", "/etc/mysql-pool-proxy/config.yaml"]

# Exec form: the proxy is PID 1 and gets SIGTERM (drain) and SIGHUP (reload,
# `docker kill -s HUP mysql-pool-proxy`) itself.
CMD ["mysql-pool-proxy", "run", "-c", "/etc/mysql-pool-proxy/config.yaml"]
