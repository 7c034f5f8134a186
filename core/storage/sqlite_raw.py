"""The hottest statements of the write path, run on SQLite's DB-API cursor with values prepared once.

SQLAlchemy Core compiles a statement once (cached), but every execution still builds an
execution context and runs a bind processor per column per row: a timestamp goes through three
Python calls and a ``%``-format, a JSON column through ``json.dumps`` behind two wrappers. For a
group commit of a few dozen messages that per-row work was most of the transaction's CPU.

:class:`RawStatement` keeps SQLAlchemy as the one place where the SQL is written (compiled here
once for SQLite) and runs it with ``sqlite3``'s ``execute``/``executemany`` (prepared statements
from the connection's statement cache), with values already in the form SQLAlchemy would have
stored (:func:`sqlite_time`, :func:`sqlite_json`), so rows written either way are identical.
PostgreSQL keeps SQLAlchemy Core throughout (:func:`raw_cursor` is ``None`` there).
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["RawCursor", "RawStatement", "raw_cursor", "sqlite_json", "sqlite_time", "sqlite_time_value"]

_DIALECT = sqlite.dialect()  # pysqlite: qmark parameters, the ones sqlite3 and aiosqlite take


class RawCursor:
    """A DB-API cursor inside a SQLAlchemy transaction; driver errors come out as SQLAlchemy's.

    A failed statement raises the :class:`sqlalchemy.exc.DBAPIError` subclass SQLAlchemy itself
    would (``IntegrityError``, ``OperationalError``…, the driver's exception as ``.orig``), so the
    storage layer reports it exactly as before (a ``StorageError``, a 503 to Meta).
    """

    def __init__(self, cursor: Any, dbapi: Any) -> None:
        self.cursor = cursor
        self._error: type[Exception] = dbapi.Error

    def execute(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run once; the rows it returns."""
        try:
            self.cursor.execute(sql, params)
            return list(self.cursor.fetchall())
        except self._error as exc:
            raise sa.exc.DBAPIError.instance(sql, params, exc, self._error) from exc

    def executemany(self, sql: str, params: list[Sequence[Any]]) -> None:
        """Run once per parameter tuple."""
        try:
            self.cursor.executemany(sql, params)
        except self._error as exc:
            raise sa.exc.DBAPIError.instance(sql, params, exc, self._error, ismulti=True) from exc


def raw_cursor(conn: sa.Connection) -> RawCursor | None:
    """A cursor inside ``conn``'s transaction on SQLite; ``None`` on other databases."""
    if conn.dialect.name != "sqlite":
        return None
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None  # a connection in a transaction is checked out
    return RawCursor(dbapi_conn.cursor(), conn.dialect.loaded_dbapi)


def sqlite_time(value: datetime | None) -> str | None:
    """A datetime as :class:`core.storage.schema.UTCDateTime` stores it on SQLite (naive UTC text)."""
    if value is None:
        return None
    if value.tzinfo is not None and value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return _sqlite_time_utc(value)


# Both time conversions are memoised: a group commit converts the same few values again and
# again (Meta's second-resolution timestamps, each conversation's own, the transaction's time),
# and a hit costs a tenth of a conversion. Only UTC or naive (taken as UTC) datetimes are keys:
# equal ones are the same instant (not so in a zone with a repeated hour, where datetimes with
# the same tzinfo compare by wall time and ignore ``fold``); text is text.
@functools.lru_cache(maxsize=4096)
def _sqlite_time_utc(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME format: microseconds always written, so text order is time order.
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


@functools.lru_cache(maxsize=4096)
def sqlite_time_value(text: str | None) -> datetime | None:
    """What :func:`sqlite_time` stored, read back as :class:`~core.storage.schema.UTCDateTime` does."""
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def _json_encoder() -> Callable[[Any], str]:
    """``json.dumps`` with its default arguments, byte for byte, in half the time.

    ``json.dumps`` builds the C encoder's arguments and checks them on every call; the encoder
    with those same arguments (no indent, ``", "`` and ``": "``, ASCII escapes, NaN allowed,
    no key sorting) is built once here. Without the C accelerator, ``json.dumps`` itself. It
    skips ``json.dumps``' circular-reference check: a self-containing value (which decoded JSON
    never is) fails with ``RecursionError`` instead of ``ValueError``.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.dumps
    default = json.JSONEncoder().default  # raises TypeError for what JSON cannot hold
    # markers, default, encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan
    encode = make(None, default, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    # The C encoder also takes a bare str, int, float, bool or None; it returns a tuple of parts.
    return lambda value: "".join(encode(value, 0))


_dumps = _json_encoder()


def sqlite_json(value: Any) -> str:
    """A value as SQLAlchemy's ``JSON`` stores it on SQLite (``None`` is the JSON text ``null``)."""
    return _dumps(value)


class RawStatement:
    """A SQLAlchemy statement compiled once for SQLite, executed on a raw cursor.

    Args:
        statement: the statement; rows passed to it are mappings from parameter names to values.
        columns: for an INSERT, the columns it sets (each a parameter of the same name).
    """

    def __init__(self, statement: sa.ClauseElement, columns: list[str] | None = None) -> None:
        compiled = statement.compile(dialect=_DIALECT, column_keys=columns)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        order = compiled.positiontup or []
        # Values written into the statement itself (``id == 1``): numbers or text, stored as they are.
        # An INSERT's own columns come from each row (SQLAlchemy marks them REQUIRED here).
        given = set(columns or ())
        fixed = {k: v for k, v in compiled.params.items() if v is not None and k not in given}
        get: Callable[[Mapping[str, Any]], Any] = (
            operator.itemgetter(*order) if len(order) > 1 else (lambda row: (row[order[0]],))
        )
        if fixed:
            self._params: Callable[[Mapping[str, Any]], Any] = lambda row: get({**fixed, **row})
        else:
            self._params = get

    def execute(self, cursor: RawCursor, row: Mapping[str, Any]) -> list[Any]:
        """Run once with ``row``'s values; the rows it returns (a SELECT's, ``RETURNING``'s) as tuples.

        Timestamps in them are the stored text (:func:`sqlite_time_value` reads one).
        """
        return cursor.execute(self.sql, self._params(row))

    def executemany(self, cursor: RawCursor, rows: Iterable[Mapping[str, Any]]) -> None:
        """Run once per row, as one prepared statement."""
        cursor.executemany(self.sql, [self._params(row) for row in rows])
