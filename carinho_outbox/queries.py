"""Loads the named statements of queries.sql once; the store is their only caller."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from psycopg import sql

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split `-- name: x` blocks; the text up to the next name is the statement."""
    names = list(_NAME.finditer(text))
    out: dict[str, str] = {}
    for i, match in enumerate(names):
        end = names[i + 1].start() if i + 1 < len(names) else len(text)
        body = text[match.end() : end].strip().rstrip(";").strip()
        if match.group(1) in out:
            raise ValueError(f"duplicate query name {match.group(1)!r}")
        out[match.group(1)] = body
    return out


@cache
def queries() -> dict[str, sql.SQL]:
    text = (Path(__file__).with_name("queries.sql")).read_text(encoding="utf-8")
    return {name: sql.SQL(body) for name, body in parse_queries(text).items()}  # type: ignore[arg-type]


def q(name: str) -> sql.SQL:
    return queries()[name]
