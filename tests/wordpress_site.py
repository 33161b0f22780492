"""A real WordPress site for the tests and the benchmark: Debian's ``wordpress`` package on PHP's built-in server.

One implementation for tests/test_wordpress.py and bench/wordpress.py (as tests/mariadb_server.py
is for the server), without pytest: failures raise ``SiteError``.

``WordPressSite.create`` copies /usr/share/wordpress (Debian's package) into a temp dir, adds the
wp-config.php and the must-use plugin from tests/wordpress/ and writes site.json beside the
document root: the database, and the accounts ("targets") the site may use, each a DB_HOST, user
and password. One PHP server serves every target; a request picks one with its ``X-WP-DB`` header,
so the tests can fetch the same page through the proxy and directly. ``start`` runs
``php -S`` with ``PHP_CLI_SERVER_WORKERS`` workers, ``install`` runs WordPress's own installer
over HTTP, ``add_posts`` runs tests/wordpress/add_posts.php (``wp_insert_post``) with php-cli, and
``run_load`` sends page views and comments from several client threads.

WordPress logs every database error and PHP warning to one file per target (``debug_log``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mariadb_server import die_with_parent, find_binary, free_port, stop_process

WORDPRESS_DIR = Path("/usr/share/wordpress")
THEME = "twentytwentyone"
PACKAGES = ("wordpress", f"wordpress-theme-{THEME}", "php8.2-cli", "php8.2-mysql")
INSTALL_HINT = (
    "the WordPress tests run Debian's WordPress on PHP's built-in server; install it with: "
    f"apt-get install -y --no-install-recommends {' '.join(PACKAGES)} (or run scripts/test.sh, which does it)"
)
FILES = Path(__file__).resolve().parent / "wordpress"
ADMIN_USER, ADMIN_EMAIL = "admin", "admin@example.com"

# What WordPress shows when it cannot connect (dead_db(), HTTP 500), e.g. on error 1226.
DB_CONNECT_ERROR = "Error establishing a database connection"
# Lines of WordPress's debug log that are about the database: wpdb's own reports and the warnings
# mysqli raises (a mangled packet, "Commands out of sync", 1226 at connect, a lost link).
DB_LOG_LINE = re.compile(
    r"WordPress database error|mysqli|mysqlnd|Commands out of sync|gone away|Lost connection"
    r"|Error reading result|max_user_connections|Error establishing",
    re.I,
)


class SiteError(RuntimeError):
    """The site could not be set up or did not answer as WordPress does (the message says why)."""


def require_php() -> str:
    """The php binary, with Debian's WordPress, its theme and mysqli in place; else SiteError with what to install."""
    php = find_binary("php8.2", "php")
    missing = [str(p) for p in (WORDPRESS_DIR / "wp-settings.php", WORDPRESS_DIR / "wp-content/themes" / THEME)
               if not p.exists()]
    if php is None:
        missing.insert(0, "php")
    elif "mysqli" not in subprocess.run([php, "-m"], capture_output=True, text=True).stdout.split():
        missing.append("php's mysqli extension")
    if missing:
        raise SiteError(f"missing {', '.join(missing)}; {INSTALL_HINT}")
    assert php is not None
    return php


@dataclass(slots=True)
class Target:
    """A database account the site can use: WordPress's DB_HOST ("host:port"), DB_USER and DB_PASSWORD."""

    host: str
    user: str
    password: str


@dataclass(slots=True)
class Response:
    path: str
    status: int
    location: str
    body: str
    seconds: float


@dataclass
class WordPressSite:
    """A copy of Debian's WordPress in ``base`` (document root ``base/htdocs``), served on ``port``."""

    base: Path
    php: str
    port: int
    database: str
    targets: dict[str, Target]
    default: str
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, base: Path, database: str, targets: dict[str, Target], default: str) -> WordPressSite:
        """Copy WordPress into ``base`` (which must not exist yet) and write its config; nothing runs yet."""
        php = require_php()
        site = cls(base=base, php=php, port=free_port(), database=database, targets=targets, default=default)
        # A copy, not symlinks: PHP resolves symlinks in __FILE__, and wp-load.php would then find
        # Debian's wp-config.php next to the real files. .htaccess points into /etc; it is not needed.
        shutil.copytree(WORDPRESS_DIR, site.docroot, symlinks=True,
                        ignore=shutil.ignore_patterns("wp-config.php", ".htaccess"))
        shutil.copy(FILES / "wp-config.php", site.docroot / "wp-config.php")
        (site.docroot / "wp-content/mu-plugins").mkdir()
        shutil.copy(FILES / "mu-plugin.php", site.docroot / "wp-content/mu-plugins/test-site.php")
        site.log_dir.mkdir()
        site.write_config()
        return site

    # -- files ---------------------------------------------------------------------

    @property
    def docroot(self) -> Path:
        return self.base / "htdocs"

    @property
    def log_dir(self) -> Path:
        return self.base / "logs"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        """site.json, which wp-config.php reads on every request (so a change applies at once)."""
        config = {
            "database": self.database,
            "targets": {name: {"host": t.host, "user": t.user, "password": t.password} for name, t in self.targets.items()},
            "default": self.default,
            "url": self.url,
            "log_dir": str(self.log_dir),
            "secret": secrets.token_hex(16),
        }
        path = self.base / "site.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=1))
        os.replace(tmp, path)

    def debug_log(self, target: str) -> str:
        """WordPress's debug log of requests that used ``target`` (empty when nothing was logged)."""
        try:
            return (self.log_dir / f"{target}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def db_log_lines(self, target: str) -> list[str]:
        """The debug log's lines about the database (see DB_LOG_LINE)."""
        return [ln for ln in self.debug_log(target).splitlines() if DB_LOG_LINE.search(ln)]

    def server_log(self) -> str:
        try:
            return (self.base / "php-server.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- PHP -----------------------------------------------------------------------

    def _php_settings(self, opcache: bool) -> list[str]:
        # sendmail_path: nothing here delivers mail; the mu-plugin already stops wp_mail.
        settings = ["-d", "sendmail_path=/bin/true", "-d", "memory_limit=256M"]
        if opcache:  # as PHP-FPM runs on a real host: compiled scripts stay in shared memory
            settings += ["-d", "opcache.enable_cli=1", "-d", "opcache.validate_timestamps=0"]
        return settings

    def start(self, workers: int = 8, opcache: bool = True) -> None:
        """``php -S`` on 127.0.0.1:port with ``workers`` worker processes; waits until it answers.

        It runs in a session (and process group) of its own: its workers outlive a SIGTERM to the
        server process, so ``stop`` signals the whole group. (A session of its own is also how a
        web server runs as a service: the benchmark's CPU shares rely on it.)
        """
        env = dict(os.environ, PHP_CLI_SERVER_WORKERS=str(workers))
        cmd = [self.php, *self._php_settings(opcache), "-S", f"127.0.0.1:{self.port}", "-t", str(self.docroot)]
        with open(self.base / "php-server.log", "ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.base, env=env, preexec_fn=die_with_parent(signal.SIGKILL),
                                         start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise SiteError(f"php -S exited with code {self.proc.returncode}:\n{self.server_log()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise SiteError(f"php -S not listening after 15 s:\n{self.server_log()[-3000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to the server and its workers (SIGKILL after 10 s), and wait for the server."""
        if self.proc is None:
            return
        group = self.proc.pid  # the group leader: start_new_session made it so
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            if _group_gone(group, 10):
                break
        stop_process(self.proc, 10)  # reaps it (and kills it, if it somehow left the group)
        self.proc = None

    @property
    def pids(self) -> list[int]:
        """The PHP server and its workers (for CPU accounting)."""
        if self.proc is None:
            return []
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [self.proc.pid, *map(int, kids.read_text().split())]
        except OSError:
            return [self.proc.pid]

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- HTTP ----------------------------------------------------------------------

    def request(self, target: str, path: str, form: dict[str, str] | None = None, timeout: float = 120) -> Response:
        """GET ``path`` (or POST ``form`` to it) with database ``target``; redirects are not followed."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"X-WP-DB": target, "Connection": "close"}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        t0 = time.monotonic()
        try:
            conn.request("POST" if form is not None else "GET", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read().decode("utf-8", errors="replace")
            return Response(path, resp.status, resp.getheader("Location") or "", data, time.monotonic() - t0)
        finally:
            conn.close()

    def install(self, target: str, title: str = "Pooled Blog", password: str | None = None) -> str:
        """Run WordPress's installer (wp-admin/install.php?step=2) over HTTP; returns the admin password."""
        password = password or secrets.token_urlsafe(12)
        form = {
            "weblog_title": title,
            "user_name": ADMIN_USER,
            "admin_password": password,
            "admin_password2": password,
            "admin_email": ADMIN_EMAIL,
            "blog_public": "0",
            "language": "",
        }
        r = self.request(target, "/wp-admin/install.php?step=2", form)
        if r.status != 200 or "<h1>Success!</h1>" not in r.body:
            raise SiteError(f"the installer answered {r.status} without Success!:\n{strip_tags(r.body)[-3000:]}")
        return password

    def add_posts(self, target: str, count: int) -> Content:
        """``count`` posts in a new category, through wp_insert_post in php-cli."""
        env = dict(os.environ, WP_DB=target)
        r = subprocess.run([self.php, *self._php_settings(False), str(FILES / "add_posts.php"), str(self.docroot),
                            str(count)], capture_output=True, text=True, env=env, timeout=300, cwd=self.base)
        if r.returncode != 0:
            raise SiteError(f"add_posts.php failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        out = json.loads(r.stdout.strip().splitlines()[-1])
        return Content(self._path(out["category"]), [(int(i), self._path(url)) for i, url in out["posts"]])

    def _path(self, url: str) -> str:
        """The path and query of one of the site's own addresses."""
        if not url.startswith(self.url + "/"):
            raise SiteError(f"not an address of this site: {url!r}")
        return url[len(self.url):]


@dataclass(frozen=True, slots=True)
class Content:
    """What add_posts made: the category's path and (id, path) of each post, as WordPress links them."""

    category: str
    posts: list[tuple[int, str]]

    @property
    def post_ids(self) -> list[int]:
        return [i for i, _ in self.posts]


def _group_gone(group: int, timeout: float) -> bool:
    """Wait until no process of process group ``group`` is left, apart from an unreaped leader."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _pgrp(p) == group]
        if all(_zombie(p) for p in members):
            return True
        time.sleep(0.05)
    return False


def _pgrp(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def _zombie(proc: Path) -> bool:
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def strip_tags(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# --------------------------------------------------------------------------- pages


@dataclass(frozen=True, slots=True)
class Page:
    """A page a visitor loads, and how to tell a whole one."""

    kind: str
    path: str

    def complete(self, body: str) -> bool:
        """The page rendered to its end (a request that broke mid-render stops early)."""
        end = "</rss>" if self.kind == "feed" else "</html>"
        return body.rstrip().endswith(end) and DB_CONNECT_ERROR not in body


def site_pages(content: Content) -> list[Page]:
    """The pages of the load: home, every post, the category, a search and the feed."""
    return [
        Page("home", "/"),
        *(Page("post", path) for _, path in content.posts),
        Page("category", content.category),
        Page("search", "/?s=pooler"),
        Page("feed", "/?feed=rss2"),
    ]


# Parts of a page that differ between two renders of the same data: nonces, and the "Recent
# Comments" widget. Its query (ORDER BY comment_date_gmt DESC LIMIT 5) has no tie-breaker, and of
# the comments posted in the same second the server returns a different five to different
# sessions (two direct connections disagree as well), so only the widget's size is compared.
_VOLATILE: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str] | str]] = [
    (re.compile(r"(nonce[\"']?\s*[:=]\s*[\"']?)[0-9a-f]{10}", re.I), r"\1NONCE"),
    (re.compile(r"(<ol class=\"wp-block-latest-comments\">)(.*?)(</ol>)", re.S),
     lambda m: f"{m.group(1)}{m.group(2).count('<li')} comments{m.group(3)}"),
]


def normalize(body: str) -> str:
    for pattern, repl in _VOLATILE:
        body = pattern.sub(repl, body)
    return body


# --------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    """What the visitors of one load saw."""

    pages: list[Response] = field(default_factory=list)  # every page view
    bad_pages: list[Response] = field(default_factory=list)  # error status or not rendered to the end
    comments: dict[str, Response] = field(default_factory=dict)  # the comment's unique text -> the answer
    seconds: float = 0.0

    @property
    def good_pages(self) -> int:
        return len(self.pages) - len(self.bad_pages)

    @property
    def connect_error_pages(self) -> int:
        return sum(DB_CONNECT_ERROR in r.body for r in self.bad_pages)

    def bad_comments(self) -> dict[str, Response]:
        """Comments not answered with WordPress's redirect to the stored comment."""
        return {k: r for k, r in self.comments.items() if r.status != 302 or "#comment-" not in r.location}

    def summary(self) -> str:
        return (f"{len(self.pages)} page views ({len(self.bad_pages)} bad, {self.connect_error_pages} "
                f"'{DB_CONNECT_ERROR}'), {len(self.comments)} comments ({len(self.bad_comments())} not redirected) "
                f"in {self.seconds:.1f} s")


def run_load(site: WordPressSite, target: str, pages: Sequence[Page], posts: Sequence[int], *, clients: int,
             requests: int | None = None, seconds: float | None = None, comment_every: int = 0,
             tag: str = "c") -> LoadResult:
    """``clients`` threads, each loading the ``pages`` in turn (from its own offset) and posting a comment
    on a post every ``comment_every``-th request; stops after ``requests`` requests per client or
    after ``seconds``. Comment texts are unique (``tag`` + client + number), so each can be found
    in the database afterwards."""
    if (requests is None) == (seconds is None):
        raise ValueError("give requests or seconds")
    result = LoadResult()
    lock = threading.Lock()
    errors: list[BaseException] = []
    t0 = time.monotonic()
    deadline = t0 + seconds if seconds is not None else None

    def client(n: int) -> None:
        i = 0
        while (requests is None or i < requests) and (deadline is None or time.monotonic() < deadline):
            i += 1
            if comment_every and i % comment_every == 0:
                text = f"{tag}-{n}-{i} {secrets.token_hex(4)}"
                form = {"comment_post_ID": str(posts[(n + i) % len(posts)]), "author": f"Visitor {n}",
                        "email": f"visitor{n}@example.com", "url": "", "comment": f"Comment {text}",
                        "comment_parent": "0"}
                r = site.request(target, "/wp-comments-post.php", form)
                with lock:
                    result.comments[text] = r
                continue
            page = pages[(n * 3 + i) % len(pages)]
            r = site.request(target, page.path)
            with lock:
                result.pages.append(r)
                if r.status != 200 or not page.complete(r.body):
                    result.bad_pages.append(r)

    def guarded(n: int) -> None:
        try:
            client(n)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.monotonic() - t0
    if errors:
        raise SiteError(f"a load client failed: {errors[0]!r}") from errors[0]
    return result


class ConnectionSampler:
    """Counts the server connections of ``user`` every ``interval`` s in a thread; ``peak`` is the most seen.

    ``connect`` opens the connection it asks with (another account's, e.g. root's: its own
    connection must not count).
    """

    def __init__(self, connect: Callable[[], Any], user: str, interval: float = 0.02) -> None:
        self.connect = connect
        self.user = user
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            conn = self.connect()
            try:
                with conn.cursor() as cur:
                    while not self._stop.is_set():
                        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (self.user,))
                        self.peak = max(self.peak, int(cur.fetchone()[0]))
                        self.samples += 1
                        self._stop.wait(self.interval)
            finally:
                conn.close()
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise SiteError(f"the connection sampler failed: {self.error!r}") from self.error
