"""The relay's per-query classes keep at most 29 instance attributes.

CPython 3.11 keeps an instance's attributes in a compact table shared by the class, found by a
cached index, only while that table holds fewer than 30 names. From the 30th name on, every
attribute access on the class falls back to a dictionary lookup: about 17 more instructions per
access (`valgrind --tool=callgrind` on a loop reading four attributes, 29 against 30 names).
ClientConnection had 33 until the login state moved to proxy/login.py; with 27, the relay's
Python cost 3% less per query (bench/hot_path.py: 78,400 -> 76,000 instructions).

A structural check, not a timing: it reads the source and counts the names each class assigns.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

import pytest

from proxy.backend import BackendLink
from proxy.frontend import ClientConnection
from proxy.mysql.packets import PacketReader, PacketScanner
from proxy.mysql.responses import ResponseTracker
from proxy.pool import Pool
from proxy.session import LinkState, Session

SHARED_KEYS_LIMIT = 30  # names in CPython 3.11's shared key table before it stops sharing


def assigned_attributes(cls: type) -> set[str]:
    """Every ``self.<name> = ...`` in the class's methods, plus its dataclass fields."""
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(cls)))):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            for t in ast.walk(target):
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    names.add(t.attr)
    return names


def test_the_count_sees_every_assignment() -> None:
    """The counter itself: it must find attributes set outside __init__ and in tuple targets."""

    class Sample:
        def __init__(self) -> None:
            self.a = 1
            self.b: int = 2

        def later(self) -> None:
            self.c, self.d = 3, 4
            self.a += 1

    assert assigned_attributes(Sample) == {"a", "b", "c", "d"}


@pytest.mark.parametrize("cls", [ClientConnection, BackendLink, Pool, ResponseTracker, PacketScanner,
                                 PacketReader, Session, LinkState])
def test_hot_class_stays_under_the_shared_keys_limit(cls: type) -> None:
    names = assigned_attributes(cls)
    assert len(names) < SHARED_KEYS_LIMIT, (
        f"{cls.__name__} assigns {len(names)} attributes; from {SHARED_KEYS_LIMIT} on, CPython looks each "
        f"one up in a dict on every access (see this file's docstring): {sorted(names)}"
    )
