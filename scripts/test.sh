#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian/Ubuntu machine or a prepared one.
#
#   bash scripts/test.sh [pytest args...]
#   MYSQL_TEST_SERVER=mysql-9.7 bash scripts/test.sh     # the same suite on MySQL 9.7 (or mariadb-11.8)
#
# 1. Installs MariaDB server + client (and sysbench for bench/) with apt-get, only when the
#    binaries are missing: the suite starts its own private server and needs them. Likewise
#    Debian's WordPress and PHP 8.2 with mysqli (tests/test_wordpress.py), no service started.
# 2. Creates (or reuses) a virtualenv in .venv and installs the project with its test extras;
#    the install is skipped while pyproject.toml is unchanged, so a prepared machine needs no network.
#    Before pip runs, the build needs of mysqlclient (libmariadb-dev, pkg-config, a C compiler,
#    Python headers) are installed with apt-get when missing.
# 3. Fetches the test server MYSQL_TEST_SERVER names when it is not the system's MariaDB.
# 4. Runs pytest and exits with its status. "No tests collected" (pytest's 5) counts as a failure:
#    a run that tested nothing must not look green.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)
VENV="$REPO_ROOT/.venv"

say() { printf '[test.sh] %s\n' "$*" >&2; }

# The server lives in /usr/sbin on Debian, which is not on every PATH.
have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "need root for: $*"
        exit 1
    fi
}

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        say "apt-get not found; install these by hand: $*"
        exit 1
    fi
    say "installing with apt-get: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

if ! { have mariadbd || have mysqld; } || ! { have mariadb || have mysql; } || ! have mariadb-install-db; then
    apt_install mariadb-server mariadb-client sysbench
else
    say "MariaDB binaries present; no system packages to install"
fi

# tests/test_wordpress.py runs Debian's WordPress (theme twentytwentyone) on PHP's built-in server
# with mysqli. The wordpress package pulls in apache2: a policy-rc.d that refuses every start
# (exit 101) keeps it and any other service of these packages from starting, and is removed after.
wordpress_missing() {
    [ -f /usr/share/wordpress/wp-settings.php ] && [ -d /usr/share/wordpress/wp-content/themes/twentytwentyone ] &&
        command -v php8.2 >/dev/null 2>&1 && php8.2 -m 2>/dev/null | grep -x mysqli >/dev/null && return 1
    return 0
}
if wordpress_missing; then
    if [ -e /usr/sbin/policy-rc.d ]; then
        apt_install wordpress wordpress-theme-twentytwentyone php8.2-cli php8.2-mysql
    else
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
        apt_install wordpress wordpress-theme-twentytwentyone php8.2-cli php8.2-mysql
        as_root rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
else
    say "WordPress and PHP present"
fi

# tests/test_clients_*.py run real PHP, node and Go clients (tests/clients/): PHP's mysqli and
# PDO_mysql, Go with Debian's go-sql-driver/mysql (built offline, GOPATH mode), node with mysql2
# from npm in tests/clients/node/node_modules (npm ci: the version package-lock.json pins).
clients_missing() {
    command -v php8.2 >/dev/null 2>&1 && php8.2 -m 2>/dev/null | grep -x pdo_mysql >/dev/null || echo php8.2-cli php8.2-mysql
    command -v go >/dev/null 2>&1 || echo golang-go
    [ -f /usr/share/gocode/src/github.com/go-sql-driver/mysql/driver.go ] || echo golang-github-go-sql-driver-mysql-dev
    command -v node >/dev/null 2>&1 || echo nodejs
    command -v npm >/dev/null 2>&1 || echo npm
}
read -r -a CLIENTS <<<"$(clients_missing | tr '\n' ' ')"
if [ "${#CLIENTS[@]}" -gt 0 ]; then
    apt_install "${CLIENTS[@]}"
else
    say "PHP, Go and node clients present"
fi
if [ ! -f tests/clients/node/node_modules/mysql2/package.json ]; then
    say "installing mysql2 with npm into tests/clients/node/node_modules"
    (cd tests/clients/node && npm ci --no-audit --no-fund --loglevel=error)
fi

# An interpreter new enough for the project (requires-python >= 3.11). The distribution's own
# comes first: Debian and Ubuntu build CPython with profile-guided and link-time optimization,
# while a pyenv or source build without --enable-optimizations --with-lto runs the proxy's hot
# path about 15% slower (bench/README.md). $PYTHON overrides the choice.
pick_python() {
    local py
    for py in "${PYTHON:-}" /usr/bin/python3 python3 python3.13 python3.12 python3.11; do
        [ -n "$py" ] || continue
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

# A venv whose interpreter vanished (e.g. a removed pyenv version) is rebuilt, not trusted.
if [ -d "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "removing broken virtualenv $VENV"
    rm -rf "$VENV"
fi
if [ ! -d "$VENV" ]; then
    if ! PY=$(pick_python); then
        apt_install python3 python3-venv
        PY=$(pick_python) || { say "no Python >= 3.11 available"; exit 1; }
    fi
    say "creating virtualenv $VENV with $PY"
    if ! "$PY" -m venv "$VENV"; then
        # Debian splits ensurepip into python3-venv.
        rm -rf "$VENV"
        apt_install python3-venv
        "$PY" -m venv "$VENV"
    fi
fi

# mysqlclient (a test dependency, also Django's MySQL driver) has no Linux wheels: pip compiles it
# against the MariaDB client library, found through pkg-config. Checked by file, so a prepared
# machine needs no network; only asked for when pip is about to run.
build_deps_missing() {
    local missing=()
    if ! command -v pkg-config >/dev/null 2>&1; then
        missing+=(pkg-config libmariadb-dev)
    elif ! pkg-config --exists mariadb && ! pkg-config --exists mysqlclient; then
        missing+=(libmariadb-dev)
    fi
    command -v cc >/dev/null 2>&1 || missing+=(gcc)
    if ! "$VENV/bin/python" -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' 2>/dev/null; then
        missing+=(python3-dev)
    fi
    printf '%s\n' "${missing[@]}"
}

# Reinstall only when the dependency list changed; the editable install tracks code changes itself.
STAMP="$VENV/.mysql-pool-proxy-installed"
WANT=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ] ||
    ! "$VENV/bin/python" -c 'import pytest, pytest_asyncio, pymysql, yaml, hypothesis, MySQLdb, mysql.connector, sqlalchemy, django' >/dev/null 2>&1; then
    mapfile -t NEED < <(build_deps_missing)
    if [ "${#NEED[@]}" -gt 0 ] && [ -n "${NEED[0]}" ]; then
        apt_install "${NEED[@]}"
    fi
    say "installing the project and its test dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,speed]'
    echo "$WANT" >"$STAMP"
else
    say "virtualenv up to date"
fi

# tests/test_upstream_suites.py runs slices of PyMySQL's and Django's own test suites: their sdists
# and a virtualenv for each, from PyPI, into ~/.cache/mysql-pool-proxy/upstream (once).
"$VENV/bin/python" scripts/upstream_suites.py --install-only pymysql django

# The test server (tests/mariadb_server.py): MYSQL_TEST_SERVER=mariadb-10.11 (default, the
# system package installed above), mariadb-11.8 or mysql-9.7, fetched from Debian's archive into a
# private cache (scripts/get_server.py; nothing is installed on the system) on first use.
export MYSQL_TEST_SERVER=${MYSQL_TEST_SERVER:-mariadb-10.11}
if [ "$MYSQL_TEST_SERVER" != mariadb-10.11 ]; then
    "$VENV/bin/python" scripts/get_server.py "$MYSQL_TEST_SERVER" >/dev/null
fi

say "running on $MYSQL_TEST_SERVER: pytest -q $*"
set +e
"$VENV/bin/python" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    say "pytest collected no tests: failing, a run that tests nothing is not a pass"
    exit 1
fi
exit "$rc"
