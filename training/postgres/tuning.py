"""Distributed tuning on the shared PostgreSQL: Optuna's RDBStorage plus `tuning_claims`.

Each claim is decided in one transaction under the study's transaction-scoped advisory lock,
so two processes proposing the same candidate, or the last slot of the budget, at the same
moment get one claim between them. Times are the server's clock (every host agrees on it).

A claiming process also holds, on a session of its own, an advisory lock named after the
study and its owner: when the process dies the server ends that session and frees the lock,
so its unfinished claims are known to be abandoned (within about 30 s for a vanished host,
`KEEPALIVES`): a cycle does not wait for them, and a full budget takes them back.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import optuna
from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError

from champion.training.postgres.database import KEEPALIVES, Database, DatabaseError, lock_key
from champion.training.postgres.schema import tuning_claims
from champion.training.shared_tuning import Claim, Claims, Outcome, Pending

log = logging.getLogger(__name__)

STUDY_ROW = ""  # the candidate of the study's own row: open while its finished_at is NULL
_NOW = func.extract("epoch", func.clock_timestamp())
_T = tuning_claims.c


class PgClaims:
    """`Claims` of one study in the `tuning_claims` table."""

    def __init__(self, database: Database, study: str, *, budget: int, deadline: float) -> None:
        self.database = database
        self.study = study
        self.budget = budget
        self.deadline = deadline
        self._key = lock_key(f"tuning:{study}")
        self._alive: dict[str, Any] = {}  # owner -> the session holding its liveness lock
        self._alive_lock = threading.Lock()

    def _owner_key(self, owner: str) -> int:
        return lock_key(f"tuning:{self.study}:owner:{owner}")

    def _attend(self, owner: str) -> None:
        """Hold `owner`'s liveness lock for as long as this process lives (or `leave`s)."""
        with self._alive_lock:
            if owner in self._alive:
                return
            session = self.database.session(application_name=f"champion tuning {owner}")
            try:
                session.execute("SELECT pg_advisory_lock(%s)", (self._owner_key(owner),))
            except Exception as exc:
                session.close()
                raise DatabaseError(f"tuning claims of {self.study}: {exc}") from exc
            self._alive[owner] = session

    def leave(self) -> None:
        with self._alive_lock:
            sessions, self._alive = list(self._alive.values()), {}
        for session in sessions:
            try:
                session.close()  # frees the liveness lock with the session
            except Exception:
                log.debug("closing a tuning liveness session failed", exc_info=True)

    def _gone(self, conn: Connection, owners: set[str]) -> set[str]:
        """The owners whose liveness lock nobody holds (asked within this transaction)."""
        return {
            o
            for o in sorted(owners)
            if conn.execute(select(func.pg_try_advisory_xact_lock(self._owner_key(o)))).scalar()
        }

    def _reclaim(self, conn: Connection) -> int:
        """Delete the unfinished claims of owners that are gone; how many there were."""
        rows = conn.execute(
            select(_T.candidate, _T.owner).where(
                _T.study == self.study, _T.candidate != STUDY_ROW, _T.finished_at.is_(None)
            )
        ).all()
        gone = self._gone(conn, {o for _, o in rows})
        dead = [c for c, o in rows if o in gone]
        if dead:
            conn.execute(
                delete(tuning_claims).where(
                    _T.study == self.study, _T.candidate.in_(dead), _T.finished_at.is_(None)
                )
            )
            log.warning(
                "took back claims of tuning processes that are gone",
                extra={"study": self.study, "owners": sorted(gone), "claims": len(dead)},
            )
        return len(dead)

    def _locked(self, conn: Connection) -> float:
        """Take the study's lock for this transaction; the server's time."""
        conn.execute(select(func.pg_advisory_xact_lock(self._key)))
        return float(conn.execute(select(_NOW)).scalar_one())

    def _run(self, what: str, body: Any) -> Any:
        try:
            with self.database.engine.begin() as conn:
                return body(conn)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"tuning claims of {self.study} ({what}): {exc}") from exc

    def open(self, owner: str) -> None:
        def body(conn: Connection) -> None:
            now = self._locked(conn)
            row = {"study": self.study, "candidate": STUDY_ROW, "owner": owner, "claimed_at": now}
            conn.execute(insert(tuning_claims).values(row).on_conflict_do_nothing())

        self._run("open", body)

    def claim(self, candidate: str, owner: str, trial: int | None) -> Claim:
        if candidate == STUDY_ROW:
            raise ValueError("an empty candidate cannot be claimed")
        self._attend(owner)

        def body(conn: Connection) -> Claim:
            now = self._locked(conn)
            rows = conn.execute(
                select(_T.candidate, _T.finished_at).where(
                    _T.study == self.study, _T.candidate.in_([STUDY_ROW, candidate])
                )
            ).all()
            found = {c: finished for c, finished in rows}
            if STUDY_ROW not in found or found[STUDY_ROW] is not None:
                return Claim(Outcome.CLOSED)
            if candidate in found:
                return Claim(Outcome.TAKEN)
            count = self._count(conn)
            if count >= self.budget and self._reclaim(conn):
                count = self._count(conn)
            if count >= self.budget:
                return Claim(Outcome.SPENT)
            if now >= self.deadline:
                return Claim(Outcome.LATE)
            seq = conn.execute(
                insert(tuning_claims)
                .values(
                    study=self.study, candidate=candidate, owner=owner, trial=trial, claimed_at=now
                )
                .returning(_T.seq)
            ).scalar_one()
            return Claim(Outcome.CLAIMED, int(seq))

        result: Claim = self._run("claim", body)
        return result

    def _count(self, conn: Connection) -> int:
        return int(
            conn.execute(
                select(func.count())
                .select_from(tuning_claims)
                .where(_T.study == self.study, _T.candidate != STUDY_ROW)
            ).scalar_one()
        )

    def finish(self, candidate: str) -> None:
        self._run(
            "finish",
            lambda conn: conn.execute(
                update(tuning_claims)
                .where(_T.study == self.study, _T.candidate == candidate)
                .values(finished_at=_NOW)
            ),
        )

    def release(self, candidate: str) -> None:
        self._run(
            "release",
            lambda conn: conn.execute(
                delete(tuning_claims).where(
                    _T.study == self.study,
                    _T.candidate == candidate,
                    _T.candidate != STUDY_ROW,
                    _T.finished_at.is_(None),
                )
            ),
        )

    def close(self) -> None:
        def body(conn: Connection) -> None:
            now = self._locked(conn)
            conn.execute(
                update(tuning_claims)
                .where(
                    _T.study == self.study,
                    _T.candidate == STUDY_ROW,
                    _T.finished_at.is_(None),
                )
                .values(finished_at=now)
            )

        self._run("close", body)

    def pending(self) -> list[Pending]:
        def body(conn: Connection) -> list[Pending]:
            rows = conn.execute(
                select(_T.candidate, _T.owner, _T.trial)
                .where(
                    _T.study == self.study,
                    _T.candidate != STUDY_ROW,
                    _T.finished_at.is_(None),
                )
                .order_by(_T.seq)
            ).all()
            gone = self._gone(conn, {o for _, o, _ in rows})
            return [Pending(c, o, t, alive=o not in gone) for c, o, t in rows]

        result: list[Pending] = self._run("pending", body)
        return result


class PgTuning:
    """`TuningStore` on the shared database: Optuna's tables live beside champion's (Optuna
    keeps its schema revision in `alembic_version`, champion in its own table)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._storage: optuna.storages.RDBStorage | None = None
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return self.database.safe_url

    @property
    def storage(self) -> optuna.storages.RDBStorage:
        """Optuna's storage, its tables created by whichever process gets there first."""
        with self._lock:
            if self._storage is None:
                url = self.database.url.render_as_string(hide_password=False)
                try:
                    # Optuna creates its tables without a lock of its own: two processes
                    # starting at once would race; the first creates, the rest find them.
                    with self.database.engine.begin() as conn:
                        conn.execute(select(func.pg_advisory_xact_lock(lock_key("optuna"))))
                        self._storage = optuna.storages.RDBStorage(
                            url,
                            engine_kwargs={
                                "pool_pre_ping": True,
                                "connect_args": dict(KEEPALIVES),
                            },
                        )
                except SQLAlchemyError as exc:
                    raise DatabaseError(
                        f"the Optuna storage in {self.where} cannot be used: {exc}"
                    ) from exc
            return self._storage

    def claims(self, study: str, *, budget: int, deadline: float) -> Claims:
        return PgClaims(self.database, study, budget=budget, deadline=deadline)

    def forget(self, study: str) -> None:
        with self.database.engine.begin() as conn:
            conn.execute(tuning_claims.delete().where(tuning_claims.c.study == study))

    def now(self) -> float:
        with self.database.engine.connect() as conn:
            return float(conn.execute(select(_NOW)).scalar_one())
