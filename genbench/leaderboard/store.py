"""The leaderboard index: an SQLite file (WAL mode) of runs and their metric rows.

Run folders are the source of truth; this file indexes them and can be rebuilt from them. Writes
are single transactions with a busy timeout and retries, so parallel sweep jobs can record at once.
A file that is not a genbench leaderboard, or one of another schema version (``PRAGMA
user_version``), is refused and never modified (an empty SQLite file, one with no table and no
application id, is a leaderboard not yet created).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from genbench.errors import UserError
from genbench.eval.metric import CurvePoint, Metric

SCHEMA_VERSION = 2
APP_ID = 0x67656E62  # "genb"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, created TEXT, model TEXT, family TEXT, likelihood TEXT,
    dataset TEXT, params INTEGER, steps INTEGER, images_seen INTEGER, train_seconds REAL,
    device TEXT, status TEXT, run_dir TEXT, config_hash TEXT, config TEXT, versions TEXT,
    budget TEXT DEFAULT '', train_flops REAL DEFAULT 0, tuning TEXT DEFAULT '{}');
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, name TEXT NOT NULL,
    value REAL, kind TEXT, split TEXT NOT NULL, n INTEGER, unit TEXT, protocol TEXT NOT NULL,
    lo REAL, hi REAL,
    PRIMARY KEY (run_id, name, split, protocol));
CREATE TABLE IF NOT EXISTS curve (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, fraction REAL NOT NULL,
    step INTEGER, images INTEGER, seconds REAL, flops REAL, name TEXT NOT NULL, value REAL,
    kind TEXT, split TEXT, n INTEGER, unit TEXT, protocol TEXT NOT NULL, lo REAL, hi REAL,
    PRIMARY KEY (run_id, fraction, name, protocol));
CREATE INDEX IF NOT EXISTS runs_hash ON runs(config_hash, status);
"""
#: version 1 -> 2: budgets, intervals and anytime curves (columns added, nothing rewritten)
_MIGRATE_1 = """
ALTER TABLE runs ADD COLUMN budget TEXT DEFAULT '';
ALTER TABLE runs ADD COLUMN train_flops REAL DEFAULT 0;
ALTER TABLE runs ADD COLUMN tuning TEXT DEFAULT '{}';
ALTER TABLE metrics ADD COLUMN lo REAL;
ALTER TABLE metrics ADD COLUMN hi REAL;
"""


class StoreError(UserError):
    """The leaderboard file is corrupt, foreign, of another schema version or not writable."""


#: errno values meaning "this file system has no hard links" (then the schema is made in place)
_NO_LINK = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS)


def _version_message(path: Path, version: int) -> str:
    if version > SCHEMA_VERSION:
        return (
            f"{str(path)!r} was written by a newer genbench (leaderboard schema version "
            f"{version}; this genbench reads version {SCHEMA_VERSION}): upgrade genbench to "
            "use it; it was left untouched"
        )
    return (
        f"{str(path)!r} has an unknown leaderboard schema version {version} (this genbench "
        f"reads version {SCHEMA_VERSION}); it was left untouched"
    )


def _failure(path: Path, err: sqlite3.Error, write: bool) -> StoreError:
    """One sentence for an SQLite error: full disk, read-only, or an unreadable file."""
    text = str(err)
    if "full" in text or (write and "I/O error" in text):
        return StoreError(
            f"cannot write the leaderboard {str(path)!r}: the disk is full or "
            f"failing ({text}); its previous content is kept"
        )
    if "readonly" in text or "read-only" in text:
        return StoreError(
            f"cannot write the leaderboard {str(path)!r}: it is read-only (viewing it still works)"
        )
    if write and "unable to open" in text:
        return StoreError(f"cannot write the leaderboard {str(path)!r} ({text})")
    return StoreError(
        f"{str(path)!r} is not a readable genbench leaderboard ({text}); it was left untouched"
    )


@dataclass
class RunRecord:
    """One run as indexed in the leaderboard."""

    run_id: str
    created: str
    model: str
    family: str
    likelihood: str
    dataset: str
    params: int
    steps: int
    images_seen: int
    train_seconds: float
    device: str
    status: str
    run_dir: str
    config_hash: str
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    budget: str = ""  # the budget the run was given, ``<unit>:<amount>`` (``flops:5e12``)
    train_flops: float = 0.0  # training FLOPs spent (forward and backward)
    tuning: dict[str, Any] = field(default_factory=dict)  # trials, sweeper, search-space hash

    @classmethod
    def from_dict(cls, d: Any, **override: Any) -> RunRecord:
        """A record from JSON read back from a run folder (``record.json``), checked field by
        field; ``override`` replaces fields (rebuild sets ``run_id`` and ``run_dir`` from where
        the folder is now). Raises ``ValueError`` naming the first bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"a run record is a JSON object, not {type(d).__name__}")
        d = {**d, **override}
        out: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                if f.name in _OPTIONAL:  # written by an older genbench
                    continue
                raise ValueError(f"the run record has no {f.name!r}")
            out[f.name] = _typed(f.name, d[f.name], _FIELD_TYPES[f.type])
        return cls(**out)


_OPTIONAL = ("config", "versions", "budget", "train_flops", "tuning")
_FIELD_TYPES = {
    "str": str,
    "int": int,
    "float": float,
    "dict[str, Any]": dict,
    "dict[str, str]": dict,
}


def _typed(name: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (JSON numbers as int/float; no bools, no silent str coercion)."""
    ok = (isinstance(value, kind) and not isinstance(value, bool)) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool)
    )
    if not ok:
        raise ValueError(f"the run record's {name!r} is {value!r}, not a {kind.__name__}")
    return float(value) if kind is float else value


class Store:
    """The SQLite leaderboard at ``path`` (created on first write).

    Created atomically: the schema is built in a temp file that is then linked into place, so no
    empty or half-built leaderboard ever appears (a full disk leaves nothing behind). A file of
    another schema version is refused. Where the folder or file is read-only, reading still works
    (through a read-only or immutable connection) and writing says that it cannot write.
    """

    def __init__(self, path: Path | str, retries: int = 20) -> None:
        self.path, self.retries = Path(path), retries

    def writable(self) -> bool:
        """Whether this process may write the leaderboard file and its folder."""
        folder = next(
            (p for p in (self.path.parent, *self.path.parent.parents) if p.exists()), Path("/")
        )
        return os.access(folder, os.W_OK | os.X_OK) and (
            not self.path.exists() or os.access(self.path, os.W_OK)
        )

    @contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        if not write and not self.path.exists():
            raise StoreError(f"no leaderboard at {str(self.path)!r} yet: train a model first")
        if write and not self.writable():
            raise StoreError(
                f"cannot write the leaderboard {str(self.path)!r}: its folder or "
                "file is read-only (viewing it still works)"
            )
        if write:
            self._create()
        con = None
        try:
            con, readonly = self._open(write)
            self._check(con, readonly)
            yield con
        except sqlite3.DatabaseError as err:
            if "locked" in str(err) or "busy" in str(err):
                raise
            raise _failure(self.path, err, write) from None
        except OSError as err:
            raise StoreError(f"cannot open the leaderboard {str(self.path)!r}: {err}") from None
        finally:
            if con is not None:
                con.close()

    def _open(self, write: bool) -> tuple[sqlite3.Connection, bool]:
        """(connection, read-only?). A reader that cannot set up WAL reading (a read-only
        folder or file, a full disk) reads through a ``mode=ro``, else ``immutable``, connection
        that writes nothing."""
        if write or self.writable():
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            if write:
                return con, False
            try:
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return con, False
            except sqlite3.OperationalError as err:
                con.close()
                if "locked" in str(err) or "busy" in str(err):
                    raise
        uri = self.path.resolve().as_uri()
        con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30.0, isolation_level=None)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return con, True
        except sqlite3.OperationalError:
            con.close()
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None), True

    def _create(self) -> None:
        """Create the leaderboard if missing: schema in a temp file beside it, then hard-linked
        to ``path`` (atomic; a process that links second keeps the first one's file)."""
        if self.path.exists():
            return
        tmp = str(
            self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(tmp, isolation_level=None)
            try:  # rollback-journal commit (complete in the file itself), then switch to WAL
                con.executescript(
                    f"BEGIN; PRAGMA application_id={APP_ID}; "
                    f"PRAGMA user_version={SCHEMA_VERSION}; {_SCHEMA} COMMIT;"
                )
                mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            finally:
                con.close()
            if mode != "wal":
                raise StoreError(
                    f"cannot create the leaderboard {str(self.path)!r}: SQLite could "
                    "not switch it to WAL mode (is the disk full?); nothing was "
                    "written"
                )
            os.link(tmp, self.path)
        except FileExistsError:
            pass  # another process created it first
        except OSError as err:
            if err.errno not in _NO_LINK or not Path(tmp).exists():
                raise StoreError(
                    f"cannot create the leaderboard {str(self.path)!r}: "
                    f"{err.strerror or err}; nothing was written"
                ) from None
            # no hard links on this file system: the schema is created in place on first open
        except sqlite3.Error as err:
            raise StoreError(
                f"cannot create the leaderboard {str(self.path)!r} ({err}); nothing was written"
            ) from None
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(tmp + suffix).unlink(missing_ok=True)

    def _check(self, con: sqlite3.Connection, readonly: bool) -> None:
        con.execute("BEGIN")  # one snapshot for all reads: a schema commit cannot fall between
        try:
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
            version = con.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            if con.in_transaction:
                con.execute("COMMIT")
        if app_id == 0 and not tables:
            if readonly:
                raise StoreError(f"no leaderboard at {str(self.path)!r} yet (the file is empty)")
            # an empty SQLite file (made by hand, or by a file system without hard links, where
            # a writer may be creating the schema right now): readers too create the schema in
            # one IMMEDIATE transaction with IF NOT EXISTS statements, so creators queue behind
            # each other and never see a half-built schema.
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(
                f"BEGIN IMMEDIATE; PRAGMA application_id={APP_ID}; "
                f"PRAGMA user_version={SCHEMA_VERSION}; {_SCHEMA} COMMIT;"
            )
        elif app_id != APP_ID:
            raise StoreError(
                f"{str(self.path)!r} is an SQLite file but not a genbench "
                "leaderboard; it was left untouched (choose another paths.outputs)"
            )
        elif version == 1 and not readonly:
            self._migrate(con)
        elif version not in (1, SCHEMA_VERSION):
            raise StoreError(_version_message(self.path, version))
        if not readonly:
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA busy_timeout=30000")

    def _migrate(self, con: sqlite3.Connection) -> None:
        """Bring a version-1 leaderboard to this version in one IMMEDIATE transaction (another
        process may have migrated it meanwhile: the version is read again inside it)."""
        con.execute("BEGIN IMMEDIATE")
        try:
            if con.execute("PRAGMA user_version").fetchone()[0] == 1:
                for statement in filter(str.strip, _MIGRATE_1.split(";")):
                    con.execute(statement)
                con.execute(_SCHEMA.split(";")[2])  # the curve table
                con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _retry(self, fn: Any) -> Any:
        for attempt in range(self.retries):
            try:
                with self._connect(write=True) as con:
                    return fn(con)
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err):
                    raise _failure(self.path, err, True) from None
                time.sleep(0.05 * (attempt + 1))
        raise StoreError(f"leaderboard {str(self.path)!r} stayed locked; try again")

    def record(
        self, run: RunRecord, metrics: Iterable[Metric], curve: Iterable[CurvePoint] = ()
    ) -> None:
        """Insert or replace ``run``, all its metric rows and its anytime-curve points in one
        transaction."""
        row = asdict(run)
        for k in ("config", "versions", "tuning"):
            row[k] = json.dumps(row[k], sort_keys=True, default=str)
        rows = [
            (run.run_id, m.name, m.value, m.kind, m.split, m.n, m.unit, m.protocol_key, m.lo, m.hi)
            for m in metrics
        ]
        points = [
            (run.run_id, p.fraction, p.step, p.images, p.seconds, p.flops)
            + (p.metric.name, p.metric.value, p.metric.kind, p.metric.split, p.metric.n)
            + (p.metric.unit, p.metric.protocol_key, p.metric.lo, p.metric.hi)
            for p in curve
        ]

        def write(con: sqlite3.Connection) -> None:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("DELETE FROM metrics WHERE run_id = ?", (run.run_id,))
                con.execute("DELETE FROM curve WHERE run_id = ?", (run.run_id,))
                cols = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                con.execute(
                    f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", tuple(row.values())
                )
                con.executemany(
                    "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
                con.executemany(
                    f"INSERT OR REPLACE INTO curve VALUES ({', '.join('?' * 15)})", points
                )
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:  # SQLite already rolled back after e.g. a full disk
                    con.execute("ROLLBACK")
                raise

        self._retry(write)

    def forget(self, keep: set[str]) -> list[tuple[str, str]]:
        """Delete every run whose ``run_id`` is not in ``keep`` (and its metric rows); returns
        the ``(run_id, run_dir)`` pairs removed."""
        if not self.path.exists():
            return []

        def prune(con: sqlite3.Connection) -> list[tuple[str, str]]:
            con.execute("BEGIN IMMEDIATE")
            try:
                gone = [
                    (r, d)
                    for r, d in con.execute("SELECT run_id, run_dir FROM runs")
                    if r not in keep
                ]
                con.executemany("DELETE FROM metrics WHERE run_id = ?", [(r,) for r, _ in gone])
                con.executemany("DELETE FROM curve WHERE run_id = ?", [(r,) for r, _ in gone])
                con.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r, _ in gone])
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:  # SQLite already rolled back after e.g. a full disk
                    con.execute("ROLLBACK")
                raise
            return gone

        return self._retry(prune)

    def finished_run(self, config_hash: str) -> str | None:
        """``run_dir`` of a finished run with this config hash, if one exists."""
        if not self.path.exists():
            return None
        with self._connect(write=False) as con:
            r = con.execute(
                "SELECT run_dir FROM runs WHERE config_hash = ? AND status = "
                "'finished' ORDER BY created DESC LIMIT 1",
                (config_hash,),
            ).fetchone()
        return r[0] if r else None

    def runs(self) -> list[dict[str, Any]]:
        """Every run with its metrics: dicts of run columns plus ``metrics`` (list of dicts) and
        ``curve`` (anytime-curve points: metric fields plus fraction, step, images, seconds,
        flops). A read-only version-1 file reads with the newer fields at their defaults."""
        with self._connect(write=False) as con:
            con.row_factory = sqlite3.Row
            con.execute("BEGIN")  # one consistent snapshot of runs and metrics
            runs = [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY created")]
            by_id = {r["run_id"]: r for r in runs}
            for r in runs:
                r.setdefault("budget", "")
                r.setdefault("train_flops", 0.0)
                for k in ("config", "versions", "tuning"):
                    r[k] = json.loads(r.get(k) or "{}")
                r["metrics"], r["curve"] = [], []
            tables = {
                t[0] for t in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            for table in ("metrics", "curve") if "curve" in tables else ("metrics",):
                for m in con.execute(f"SELECT * FROM {table}"):  # noqa: S608 (fixed names)
                    m = dict(m)
                    m["protocol"] = json.loads(m["protocol"])
                    m.setdefault("lo", None)
                    m.setdefault("hi", None)
                    by_id[m["run_id"]][table].append(m)
            con.execute("COMMIT")
        return runs
