"""Deletion-request intake with group commit: one thread per API process records every forget request.

A route parses and authorizes its request, then awaits `Intake.submit`. The intake thread takes every submission
waiting (at most `max_group`), checks each against the store (`service.domain.check_forget_request`), inserts the
ones that pass in one ledger transaction (`Ledger.accept`: one durable commit for the whole group instead of
three per request; a refused request does not undo the others), enqueues their jobs in one Redis pipeline and
answers each caller through its event loop. While one group commits, the next gathers: the busier the intake,
the larger the groups. A 202 still means the request's row is committed; a failed enqueue (whatever raised it)
still answers 202 and is left to the janitor, which sees the row's job missing from Redis.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Any

from fastapi import Response
from redis.exceptions import RedisError
from rq import Queue

from models_store import Ledger, Store
from models_store.ledger import IdempotencyClaim, KeyInUse, NewRequest, StoredAnswer
from service.domain import check_forget_request
from service.errors import Problem
from service.handoff import answer_callers
from service.idempotency import STALE_CLAIM_S, Answer, answer_key_in_use, earlier_answer
from service.metrics import FORGET_REQUESTS_ACCEPTED
from service.schemas import ForgetRequestCreate
from unlearnd.logs import current_request_id
from unlearnd.queue import JobToEnqueue, enqueue_jobs, new_job_id
from unlearnd.settings import Settings

log = logging.getLogger(__name__)

MAX_GROUP = 128
"""Most requests one transaction records (a bound on how long the first of them waits for the others)."""


@dataclass(eq=False)
class _Submission:
    model: str
    body: ForgetRequestCreate
    claim: IdempotencyClaim | None
    actor: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    accepted_by: str | None = field(default_factory=current_request_id)
    request_id: str = field(default_factory=lambda: f"fr_{uuid.uuid4().hex}")
    job_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.job_id = new_job_id(self.request_id)

    def new_request(self) -> NewRequest:
        body = self.body
        record = {"id": self.request_id, "model": self.model, "classes": body.classes, "samples": body.samples,
                  "method": body.method, "reason": body.reason, "key_id": self.actor,
                  "callback_url": body.callback_url, "accepted_by": self.accepted_by}
        return NewRequest(record, job_id=self.job_id, claim=self.claim)


class Intake:
    """The intake thread (started by the first submission) and what it writes to."""

    def __init__(self, *, store: Store, ledger: Ledger, queue: Queue, settings: Settings,
                 max_group: int = MAX_GROUP):
        self.store, self.ledger, self.queue, self.settings, self.max_group = store, ledger, queue, settings, max_group
        self._waiting: SimpleQueue[_Submission | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def submit(self, model: str, body: ForgetRequestCreate, claim: IdempotencyClaim | None,
                     actor: str) -> Response:
        """Record and enqueue one forget request: its 202 (or the replay of its Idempotency-Key's first answer).
        Raises what refused it (`Problem`, NotFoundError, a database error)."""
        loop = asyncio.get_running_loop()
        submission = _Submission(model, body, claim, actor, loop, loop.create_future())
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="intake", daemon=True)
                self._thread.start()
            self._waiting.put(submission)
        return await submission.future

    def close(self, timeout_s: float = 30.0) -> None:
        """Answer what was submitted, then stop the thread (a later submission starts a new one)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._waiting.put(None)
        if thread is not None:
            thread.join(timeout_s)

    def _serve(self) -> None:
        while True:
            first = self._waiting.get()
            if first is None:
                return
            group, stop = [first], False
            while len(group) < self.max_group:
                try:
                    submission = self._waiting.get_nowait()
                except Empty:
                    break
                if submission is None:
                    stop = True
                    break
                group.append(submission)
            try:
                answers = self._record(group)
            except Exception as exc:  # e.g. the database is unreachable: every caller of the group gets it
                answers = [(submission, exc) for submission in group]
            answer_callers((submission.loop, submission.future, outcome) for submission, outcome in answers)
            if stop:
                return

    def _record(self, group: list[_Submission]) -> list[tuple[_Submission, Any]]:
        """Check, record and enqueue a group: what each of its callers gets (an exception refuses it)."""
        settled: list[tuple[_Submission, Any]] = []
        checked: list[_Submission] = []
        reads: dict[tuple[str, str], Any] = {}  # what the group's checks read from the store, read once
        for submission in group:
            try:
                check_forget_request(model=submission.model, body=submission.body, store=self.store,
                                     settings=self.settings, reads=reads)
            except Exception as exc:
                settled.append((submission, self._refused(submission, exc)))
            else:
                checked.append(submission)
        if not checked:
            return settled
        answers: dict[str, Answer] = {}  # the 202 stored with a key, answered as is

        def stored_answer(record: dict[str, Any]) -> StoredAnswer:
            answers[record["id"]] = Answer.accepted_record(record)
            return answers[record["id"]].stored()

        outcomes = self.ledger.accept([submission.new_request() for submission in checked], answer=stored_answer,
                                      stale_claim_s=STALE_CLAIM_S, key_ttl_s=self.settings.idempotency_key_ttl_s)
        jobs = [JobToEnqueue(submission.request_id, submission.job_id, submission.accepted_by)
                for submission, outcome in zip(checked, outcomes, strict=True) if isinstance(outcome, dict)]
        if jobs:
            try:
                enqueue_jobs(self.queue, jobs, self.settings)
            except Exception as exc:  # the rows are durable: their 202 stands, and the janitor enqueues them
                log.warning("could not enqueue %d accepted requests now, the janitor will: %s", len(jobs), exc,
                            exc_info=not isinstance(exc, RedisError))  # Redis being down needs no traceback
        return settled + [(submission, self._answer(submission, outcome, answers))
                          for submission, outcome in zip(checked, outcomes, strict=True)]

    def _refused(self, submission: _Submission, refusal: Exception) -> Any:
        """What a caller refused by a check gets: its key's earlier answer if it has one, else the refusal."""
        if submission.claim is None:
            return refusal
        try:
            return earlier_answer(self.ledger, submission.claim, self.settings.idempotency_key_ttl_s) or refusal
        except Problem as exc:  # 422 key reused, 409 in progress
            return exc
        except Exception as exc:  # the database failing: the check's refusal stands
            log.warning("could not look up the Idempotency-Key of a refused request: %s", exc)
            return refusal

    def _answer(self, submission: _Submission, outcome: dict[str, Any] | KeyInUse | Exception,
                answers: dict[str, Answer]) -> Any:
        """What the caller gets: its 202, the replay of its key's first answer, or the exception that refused it."""
        if isinstance(outcome, dict):
            FORGET_REQUESTS_ACCEPTED.labels(submission.body.method).inc()
            answer = answers.get(outcome["id"]) or Answer.accepted_record(outcome)
            return answer.response()
        if isinstance(outcome, KeyInUse):
            assert submission.claim is not None
            try:
                return answer_key_in_use(self.ledger, submission.claim, outcome.row)
            except Exception as exc:
                return exc
        return outcome
