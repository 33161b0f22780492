"""What the SQL lexer costs: milliseconds of event-loop time per MB of statement, by shape.

Every COM_QUERY is classified (proxy/sql.py) before it is sent, on the event loop: while one
statement is read, no other client is served. The lexer is linear by construction; this shows
the constant, for 1 KB, 64 KB and 16 MB statements of the shapes that cost most (a bulk INSERT
of literals, one calling NOW() on each row, a huge literal, many comments, the ';/*' literal that
took regexes seconds), and the hot path's plain statement. Best of ``--repeat`` runs.

    .venv/bin/python bench/classify.py            # about 30 s
    .venv/bin/python bench/classify.py --sizes 1024 65536

No server is needed. Numbers are comparable only between runs on the same machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.sql import classify  # noqa: E402


def _repeat(head: bytes, unit: bytes, tail: bytes, size: int) -> bytes:
    return head + unit * max(1, (size - len(head) - len(tail)) // len(unit)) + tail


SHAPES: dict[str, Callable[[int], bytes]] = {
    "point select (hot path)": lambda n: b"SELECT c FROM sbtest1 WHERE id=5012",
    "bulk INSERT of literals": lambda n: _repeat(b"INSERT INTO t VALUES ", b"(1,'abc','def',3.5,'2020-01-01'),",
                                                  b"(2,'x','y',1,'z')", n),
    "bulk INSERT calling NOW()": lambda n: _repeat(b"INSERT INTO t VALUES ", b"(1,'abc',NOW()),", b"(1,'x',NOW())", n),
    "bulk INSERT of numbers": lambda n: _repeat(b"INSERT INTO t VALUES ", b"(1,2,3),", b"(1,2,3)", n),
    "one huge literal": lambda n: _repeat(b"INSERT INTO t VALUES ('", b"x", b"')", n),
    "';/*' literal then @v": lambda n: _repeat(b"SELECT LENGTH('", b";/*", b"'), @v", n),
    "many comments": lambda n: _repeat(b"SELECT 1 ", b"/* c */ ", b"", n),
    "GET_LOCK after a huge literal": lambda n: _repeat(b"SELECT '", b"x", b"', GET_LOCK('l', 0)", n),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 65536, 16 * 1024 * 1024])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'shape':32} {'size':>10} {'ms':>10} {'ms per MB':>10}")
    for name, make in SHAPES.items():
        for size in args.sizes:
            sql = make(size)
            best = float("inf")
            for _ in range(args.repeat if len(sql) > 1 << 20 else max(args.repeat, 200)):
                t0 = time.perf_counter()
                classify(sql)
                best = min(best, time.perf_counter() - t0)
            print(f"{name:32} {len(sql):>10} {best * 1000:>10.3f} {best * 1000 / (len(sql) / 2**20):>10.1f}")
            if len(sql) < 100:
                break  # the plain statement has one size


if __name__ == "__main__":
    main()
