"""Rate limits and daily quotas kept in SQLite, so they survive a restart and are exact
across the gateway's worker processes on one host.

One table of counters, one row per (who, period, window start):

    who      "key:NAME" (an API key's name) or "ip:ADDR" (a client IP)
    period   "minute" (fixed windows starting at whole UTC minutes) or "day" (UTC days)
    start    the window's start, Unix seconds
    requests all requests admitted; media: those with non-text content parts (images,
             audio, files); tokens: prompt + completion tokens charged when requests end

Limits (QuotaLimits, 0 = none): requests and tokens per minute, text requests (requests
without media), media requests and tokens per day. A request is admitted when, for every
identity it comes with (its key and its IP), the current windows are below every limit;
admission and the increments happen in one `BEGIN IMMEDIATE` transaction (SQLite's write
lock), so two processes cannot both take the last unit. Tokens are charged when a request
finishes, so a request is refused only once a budget is already spent (one request may
overshoot it, as before).

The database is in WAL mode (readers do not block the writer; see sqlite.org/wal.html)
with synchronous=NORMAL (a commit is durable once the WAL is checkpointed; a power cut may
lose the last commits, never corrupt the file), busy_timeout 5 s. Minute rows older than
an hour and day rows older than keep_days are deleted now and then.

Calls block for a transaction (tens of microseconds on a local disk); the gateway makes
them on its event loop. Not for network file systems (SQLite's locking needs a local one).
"""
from __future__ import annotations

import datetime as _dt
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    who      TEXT    NOT NULL,
    period   TEXT    NOT NULL,
    start    INTEGER NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    media    INTEGER NOT NULL DEFAULT 0,
    tokens   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (who, period, start)
) WITHOUT ROWID;
"""

_UPSERT = ("INSERT INTO counters (who, period, start, requests, media, tokens) "
           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (who, period, start) DO UPDATE SET "
           "requests = requests + excluded.requests, media = media + excluded.media, "
           "tokens = tokens + excluded.tokens")


@dataclass(frozen=True)
class QuotaLimits:
    """Limits of one identity; 0 = no limit."""
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    requests_per_day: int = 0          # text requests (without media parts)
    media_requests_per_day: int = 0
    tokens_per_day: int = 0


@dataclass
class Exceeded:
    """Why a request was refused: which identity, which limit, and when it resets."""
    who: str
    what: str            # e.g. "requests per minute", "media requests per day"
    limit: int
    reset_at: float      # Unix seconds when the window ends
    now: float

    @property
    def retry_after(self) -> float:
        return max(1.0, self.reset_at - self.now)


def _day_start(t: float) -> int:
    return int(t // 86400 * 86400)


def _minute_start(t: float) -> int:
    return int(t // 60 * 60)


class QuotaStore:
    """The counters in SQLite at `path` (":memory:" for a private, non-persistent store).

    wall: Unix time in seconds (injectable for tests). keep_days: day rows kept for
    `usage()`. Raises sqlite3.Error if the file cannot be opened or created.
    """

    def __init__(self, path: str | os.PathLike = ":memory:", *,
                 wall: Callable[[], float] = time.time, keep_days: int = 90):
        self.path, self.wall, self.keep_days = str(path), wall, keep_days
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # autocommit mode (isolation_level=None): transactions are the explicit BEGINs below
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=5.0)
        self._lock = threading.Lock()        # one connection, callers from any thread
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        self._writes = 0

    def close(self):
        with self._lock:
            self._db.close()

    # -- admission and charging
    def admit(self, idents: Iterable[tuple[str, QuotaLimits]], *, media: bool = False
              ) -> Exceeded | None:
        """Count one request for every (who, limits) unless a limit is reached.

        Returns None when admitted (counted), else the first limit exceeded (nothing
        counted). Atomic across processes.
        """
        now = self.wall()
        m0, d0 = _minute_start(now), _day_start(now)
        idents = list(idents)
        # minute rows only for identities with a per-minute limit (day rows are the usage)
        keys = [(who, "day", d0) for who, _ in idents]
        keys += [(who, "minute", m0) for who, lim in idents
                 if lim.requests_per_minute or lim.tokens_per_minute]
        q = ("SELECT who, period, requests, media, tokens FROM counters WHERE "
             + " OR ".join(["(who = ? AND period = ? AND start = ?)"] * len(keys)))
        args = [x for k in keys for x in k]
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = {(w, p): (r, m, t) for w, p, r, m, t in db.execute(q, args)}
                for who, lim in idents:
                    mr, _, mt = rows.get((who, "minute"), (0, 0, 0))
                    dr, dm, dt = rows.get((who, "day"), (0, 0, 0))
                    for used, limit, what, reset in (
                            (mr, lim.requests_per_minute, "requests per minute", m0 + 60),
                            (mt, lim.tokens_per_minute, "tokens per minute", m0 + 60),
                            (dt, lim.tokens_per_day, "tokens per day", d0 + 86400),
                            (dm if media else dr - dm,
                             lim.media_requests_per_day if media else lim.requests_per_day,
                             "media requests per day" if media else "requests per day",
                             d0 + 86400)):
                        if limit and used >= limit:
                            db.execute("ROLLBACK")
                            return Exceeded(who, what, limit, reset, now)
                db.executemany(_UPSERT, [(w, p, st, 1, int(media), 0) for w, p, st in keys])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return None

    def charge(self, whos: Iterable[str], tokens: int):
        """Add a finished request's tokens to the current minute and day of each `who`."""
        if tokens <= 0:
            return
        now = self.wall()
        rows = [(who, p, s, 0, 0, tokens) for who in whos
                for p, s in (("minute", _minute_start(now)), ("day", _day_start(now)))]
        # (a minute row nobody limits is harmless; charge() does not know the limits)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_UPSERT, rows)
                self._writes += 1
                if self._writes % 1000 == 1:          # now and then: drop old windows
                    db.execute("DELETE FROM counters WHERE period = 'minute' AND start < ?",
                               (_minute_start(now) - 3600,))
                    db.execute("DELETE FROM counters WHERE period = 'day' AND start < ?",
                               (_day_start(now) - 86400 * self.keep_days,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # -- reports
    def usage(self, *, days: int = 7, who: str | None = None) -> list[dict]:
        """Per identity and UTC day, newest day first: {"who", "day" (YYYY-MM-DD),
        "requests", "text_requests", "media_requests", "tokens"} for the last `days` days."""
        since = _day_start(self.wall()) - 86400 * (max(1, days) - 1)
        q = ("SELECT who, start, requests, media, tokens FROM counters WHERE period = 'day' "
             "AND start >= ?")
        args: list = [since]
        if who is not None:
            q += " AND who = ?"
            args.append(who)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY start DESC, who", args).fetchall()
        return [{"who": w, "day": _dt.datetime.fromtimestamp(s, _dt.timezone.utc)
                 .strftime("%Y-%m-%d"), "requests": r, "text_requests": r - m,
                 "media_requests": m, "tokens": t} for w, s, r, m, t in rows]


def iso(t: float) -> str:
    """Unix seconds as an ISO 8601 UTC time, e.g. 2026-12-07T00:00:00Z."""
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
