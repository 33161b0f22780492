"""A real WordPress on a hosting account capped at 2 connections: broken direct, whole through the proxy.

Debian's ``wordpress`` package (theme twentytwentyone) on PHP 8.2's mysqli/mysqlnd, served by
``php -S`` with 8 workers (tests/wordpress_site.py), on a private account created
``MAX_USER_CONNECTIONS 2``, with the server's ``wait_timeout`` at 2 s. Through the proxy
(``max_connections: 2``), WordPress is installed by its own installer over HTTP, posts are added by
``wp_insert_post``, and then 8 visitors load pages (home, posts, category, search, feed) and post
comments, in two bursts with an idle gap longer than ``wait_timeout`` between them, so the
second burst starts on links the server has closed. Then the same visitors go to the site
directly on the same account, and get "Error establishing a database connection" (1226).

What the proxy must give, all checked: no error page and no database error in WordPress's log,
every comment stored exactly once and answered with WordPress's redirect to it, the same pages
as a direct (uncapped) connection gives, and never more than 2 connections of the account on
the server (sampled from PROCESSLIST during the load).
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import wordpress_site as ws
from conftest import SERVER, MariaDB, ProxyFactory, ProxyProcess, count_backend_connections

DB = "wordpress_test"
CAPPED, CAPPED_PASSWORD = "wp_capped", "wp-capped-secret"
FREE, FREE_PASSWORD = "wp_free", "wp-free-secret"
WAIT_TIMEOUT = 2  # seconds; the idle gap is longer
CLIENTS = 8  # as many as PHP's workers: up to 8 requests hold a database connection at once
REQUESTS = 24  # per client and burst; every 4th is a comment
COMMENT_EVERY = 4


@pytest.fixture
def site(mariadb: MariaDB, tmp_path: Path) -> Iterator[ws.WordPressSite]:
    """The WordPress files in a temp dir and the accounts; the test names the targets and starts PHP."""
    try:
        ws.require_php()
    except ws.SiteError as e:  # not installed: fail with what to install, never skip
        pytest.fail(str(e), pytrace=False)
    mariadb.sql(f"DROP DATABASE IF EXISTS {DB}")
    mariadb.sql(f"CREATE DATABASE {DB}")
    mariadb.create_user(CAPPED, CAPPED_PASSWORD, DB, max_user_connections=2)
    mariadb.create_user(FREE, FREE_PASSWORD, DB)
    mariadb.set_global("wait_timeout", WAIT_TIMEOUT)  # restored after the test (conftest)
    site = ws.WordPressSite.create(tmp_path / "site", DB, {}, default="proxy")
    yield site
    site.stop()


def _stored_comments(mariadb: MariaDB, prefix: str) -> dict[str, list[tuple[int, str]]]:
    """comment text -> [(comment_ID, comment_approved)] of the comments whose text starts with ``prefix``."""
    rows = mariadb.sql(
        f"SELECT comment_content, comment_ID, comment_approved FROM {DB}.wp_comments WHERE comment_content LIKE %s",
        (prefix + "%",),
    )
    out: dict[str, list[tuple[int, str]]] = {}
    for text, cid, approved in rows:
        out.setdefault(text, []).append((int(cid), str(approved)))
    return out


def _describe(pages: list[ws.Response], limit: int = 5) -> str:
    return "\n".join(f"  {r.path}: HTTP {r.status} {ws.strip_tags(r.body)[-300:]!r}" for r in pages[:limit])


# On MySQL this also checks that the proxy sends no COM_CHANGE_USER to clear a link's database for
# PHP's first statements (SET NAMES, SELECT @@sql_mode, SET sql_mode before it selects a database):
# MySQL counts COM_CHANGE_USER against max_user_connections, and at the cap it failed with 1226.
def test_wordpress_on_a_capped_account(
    mariadb: MariaDB, site: ws.WordPressSite, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(
        {
            "backend": {"user": CAPPED, "password": CAPPED_PASSWORD},
            "pool": {"max_connections": 2, "queue_timeout": 30},
        },
        log_level="info",
    )
    server = f"{mariadb.host}:{mariadb.port}"
    site.targets = {
        "proxy": ws.Target(f"{proxy.host}:{proxy.port}", CAPPED, CAPPED_PASSWORD),
        "direct": ws.Target(server, CAPPED, CAPPED_PASSWORD),
        "direct-uncapped": ws.Target(server, FREE, FREE_PASSWORD),
    }
    site.write_config()
    site.start(workers=CLIENTS)
    content = _install_and_load_through_the_proxy(mariadb, site, proxy)

    # The problem, on the same site and account: directly, 8 requests at once meet the cap.
    proxy.stop()
    deadline = time.monotonic() + 10
    while count_backend_connections(mariadb, CAPPED) and time.monotonic() < deadline:
        time.sleep(0.05)
    direct = ws.run_load(site, "direct", ws.site_pages(content), content.post_ids, clients=CLIENTS,
                         requests=REQUESTS // 2, comment_every=COMMENT_EVERY, tag="direct")
    print("directly on the capped account:", direct.summary())
    assert direct.connect_error_pages > 0, (
        "directly on the account capped at 2, 8 concurrent requests should meet error 1226 "
        f"('{ws.DB_CONNECT_ERROR}'); {direct.summary()}"
    )
    assert any("1226" in ln for ln in site.db_log_lines("direct")), site.debug_log("direct")[-3000:]
    assert "Fatal error" not in site.server_log(), site.server_log()[-5000:]


def _install_and_load_through_the_proxy(mariadb: MariaDB, site: ws.WordPressSite, proxy: ProxyProcess) -> ws.Content:
    """Install, add posts, two bursts of visitors with an idle gap, compare pages; returns the posts."""
    site.install("proxy", title="Pooled Blog")
    problems = site.db_log_lines("proxy")
    assert not problems, "the installer met database errors through the proxy:\n" + "\n".join(problems[:20])
    tables = mariadb.sql("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (DB,))[0][0]
    assert tables == 12, f"the installer made {tables} tables, WordPress 6.1 has 12"
    # The installer INSERTs the default options and then UPDATEs them (update_option): both must have run.
    assert mariadb.sql(f"SELECT option_value FROM {DB}.wp_options WHERE option_name = 'blogname'") == (("Pooled Blog",),)
    assert mariadb.sql(f"SELECT COUNT(*) FROM {DB}.wp_users WHERE user_login = %s", (ws.ADMIN_USER,))[0][0] == 1

    content = site.add_posts("proxy", 5)
    pages = ws.site_pages(content)

    def root() -> pymysql.connections.Connection:
        return mariadb.root_conn()

    with ws.ConnectionSampler(root, CAPPED) as sampler:
        first = ws.run_load(site, "proxy", pages, content.post_ids, clients=CLIENTS, requests=REQUESTS,
                            comment_every=COMMENT_EVERY, tag="proxy-1")
        # Idle longer than wait_timeout: the server closes the pool's links, and the next burst
        # must not see a "gone away".
        time.sleep(WAIT_TIMEOUT + 1.5)
        proxy.wait_log("was closed by the server")
        second = ws.run_load(site, "proxy", pages, content.post_ids, clients=CLIENTS, requests=REQUESTS,
                             comment_every=COMMENT_EVERY, tag="proxy-2")
    print("through the proxy:", first.summary(), "/", second.summary(), f"/ peak {sampler.peak} connections")

    for load in (first, second):
        assert not load.bad_pages, f"error pages through the proxy ({load.summary()}):\n{_describe(load.bad_pages)}"
        bad = load.bad_comments()
        assert not bad, f"comments not answered with a redirect ({load.summary()}):\n" + _describe(list(bad.values()))
    problems = site.db_log_lines("proxy")
    assert not problems, "database errors in WordPress's log through the proxy:\n" + "\n".join(problems[:20])

    # Every comment stored once, approved, and the redirect names the stored comment.
    answers = first.comments | second.comments
    stored = _stored_comments(mariadb, "Comment proxy-")
    assert len(answers) == 2 * CLIENTS * (REQUESTS // COMMENT_EVERY)
    assert sorted(stored) == sorted(f"Comment {t}" for t in answers)
    for text, r in answers.items():
        rows = stored[f"Comment {text}"]
        assert len(rows) == 1, f"comment {text!r} stored {len(rows)} times: {rows}"
        cid, approved = rows[0]
        assert approved == "1" and r.location.endswith(f"#comment-{cid}"), (text, rows, r.location)

    assert sampler.samples > 10, "the connection sampler hardly ran"
    assert 1 <= sampler.peak <= 2, f"the server saw {sampler.peak} connections of {CAPPED} (the cap is 2)"

    # The same pages as direct: each page through the proxy and then directly on an uncapped account.
    for page in pages:
        via = site.request("proxy", page.path)
        direct = site.request("direct-uncapped", page.path)
        assert (via.status, direct.status) == (200, 200), (page, via.status, direct.status)
        a, b = ws.normalize(via.body), ws.normalize(direct.body)
        assert a == b, f"{page.path} differs through the proxy:\n" + "\n".join(
            list(difflib.unified_diff(b.splitlines(), a.splitlines(), "direct", "proxy", lineterm=""))[:40]
        )
    assert not site.db_log_lines("direct-uncapped"), site.debug_log("direct-uncapped")[-3000:]
    errors = [ln for ln in proxy.log().splitlines() if " ERROR " in ln]
    assert not errors, "\n".join(errors[:20])
    return content
