"""The leaderboard index: an SQLite file (WAL mode) of runs and their metric rows.

Run folders are the source of truth; this file indexes them and can be rebuilt from them. Writes
are single transactions with a busy timeout and retries, so parallel sweep jobs can record at once.
A file that is not a genbench leaderboard is refused and never modified (an empty SQLite file, one
with no table and no application id, is a leaderboard not yet created).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from genbench.errors import UserError
from genbench.eval.metric import Metric

SCHEMA_VERSION = 1
APP_ID = 0x67656E62  # "genb"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, created TEXT, model TEXT, family TEXT, likelihood TEXT,
    dataset TEXT, params INTEGER, steps INTEGER, images_seen INTEGER, train_seconds REAL,
    device TEXT, status TEXT, run_dir TEXT, config_hash TEXT, config TEXT, versions TEXT);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, name TEXT NOT NULL,
    value REAL, kind TEXT, split TEXT NOT NULL, n INTEGER, unit TEXT, protocol TEXT NOT NULL,
    PRIMARY KEY (run_id, name, split, protocol));
CREATE INDEX IF NOT EXISTS runs_hash ON runs(config_hash, status);
"""


class StoreError(UserError):
    """The leaderboard file is corrupt, foreign or not writable."""


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
                if f.name in ("config", "versions"):
                    continue
                raise ValueError(f"the run record has no {f.name!r}")
            out[f.name] = _typed(f.name, d[f.name], _FIELD_TYPES[f.type])
        return cls(**out)


_FIELD_TYPES = {"str": str, "int": int, "float": float, "dict[str, Any]": dict,
                "dict[str, str]": dict}


def _typed(name: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (JSON numbers as int/float; no bools, no silent str coercion)."""
    ok = (isinstance(value, kind) and not isinstance(value, bool)) or \
        (kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ValueError(f"the run record's {name!r} is {value!r}, not a {kind.__name__}")
    return float(value) if kind is float else value


class Store:
    """The SQLite leaderboard at ``path`` (created on first write)."""

    def __init__(self, path: Path | str, retries: int = 20) -> None:
        self.path, self.retries = Path(path), retries

    @contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        if not write and not self.path.exists():
            raise StoreError(f"no leaderboard at {str(self.path)!r} yet: train a model first")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot open the leaderboard {str(self.path)!r}: {err}") from None
        try:
            self._check(con, write)
            yield con
        except sqlite3.DatabaseError as err:
            if "locked" in str(err) or "busy" in str(err):
                raise
            raise StoreError(f"{str(self.path)!r} is not a readable genbench leaderboard "
                             f"({err}); it was left untouched") from None
        finally:
            con.close()

    def _check(self, con: sqlite3.Connection, write: bool) -> None:
        con.execute("BEGIN")  # one snapshot for both reads: a schema commit cannot fall between
        try:
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.execute("COMMIT")
        if app_id == 0 and not tables:
            # an empty SQLite file: new, or a writer is creating the schema right now (readers
            # too, so one that opens the file in that window reads an empty leaderboard instead
            # of calling it foreign). One IMMEDIATE transaction with IF NOT EXISTS statements:
            # creators queue behind each other and never see a half-built schema.
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(f"BEGIN IMMEDIATE; PRAGMA application_id={APP_ID}; "
                              f"PRAGMA user_version={SCHEMA_VERSION}; {_SCHEMA} COMMIT;")
        elif app_id != APP_ID:
            raise StoreError(f"{str(self.path)!r} is an SQLite file but not a genbench "
                             "leaderboard; it was left untouched (choose another paths.outputs)")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA busy_timeout=30000")

    def _retry(self, fn: Any) -> Any:
        for attempt in range(self.retries):
            try:
                with self._connect(write=True) as con:
                    return fn(con)
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err):
                    raise StoreError(f"leaderboard {str(self.path)!r}: {err}") from None
                time.sleep(0.05 * (attempt + 1))
        raise StoreError(f"leaderboard {str(self.path)!r} stayed locked; try again")

    def record(self, run: RunRecord, metrics: Iterable[Metric]) -> None:
        """Insert or replace ``run`` and all its metric rows in one transaction."""
        row = asdict(run)
        row["config"] = json.dumps(run.config, sort_keys=True, default=str)
        row["versions"] = json.dumps(run.versions, sort_keys=True)
        rows = [(run.run_id, m.name, m.value, m.kind, m.split, m.n, m.unit, m.protocol_key)
                for m in metrics]

        def write(con: sqlite3.Connection) -> None:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("DELETE FROM metrics WHERE run_id = ?", (run.run_id,))
                cols = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                con.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})",
                            tuple(row.values()))
                con.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                rows)
                con.execute("COMMIT")
            except BaseException:
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
                gone = [(r, d) for r, d in con.execute("SELECT run_id, run_dir FROM runs")
                        if r not in keep]
                con.executemany("DELETE FROM metrics WHERE run_id = ?", [(r,) for r, _ in gone])
                con.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r, _ in gone])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return gone

        return self._retry(prune)

    def finished_run(self, config_hash: str) -> str | None:
        """``run_dir`` of a finished run with this config hash, if one exists."""
        if not self.path.exists():
            return None
        with self._connect(write=False) as con:
            r = con.execute("SELECT run_dir FROM runs WHERE config_hash = ? AND status = "
                            "'finished' ORDER BY created DESC LIMIT 1", (config_hash,)).fetchone()
        return r[0] if r else None

    def runs(self) -> list[dict[str, Any]]:
        """Every run with its metrics: dicts of run columns plus ``metrics`` (list of dicts)."""
        with self._connect(write=False) as con:
            con.row_factory = sqlite3.Row
            con.execute("BEGIN")  # one consistent snapshot of runs and metrics
            runs = [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY created")]
            by_id = {r["run_id"]: r for r in runs}
            for r in runs:
                r["config"] = json.loads(r["config"] or "{}")
                r["versions"] = json.loads(r["versions"] or "{}")
                r["metrics"] = []
            for m in con.execute("SELECT * FROM metrics"):
                m = dict(m)
                m["protocol"] = json.loads(m["protocol"])
                by_id[m["run_id"]]["metrics"].append(m)
            con.execute("COMMIT")
        return runs
