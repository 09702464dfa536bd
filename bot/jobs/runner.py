"""`JobRunner`: the one owner of every job's life.

It admits, submits, follows, cancels, times out and delivers. Every change of a job is made here, as
a checked transition, and saved here before anyone is told about it. The Discord side (`JobSink`)
shows and posts, and reports back what it posted through a `DeliveryReport`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from bot.fal import (
    Completed,
    FalAuthError,
    FalError,
    FalHTTPError,
    FalRequestFailed,
    FalSubmitUnconfirmed,
    InProgress,
    KontextOutput,
    Queued,
    QueueStatus,
)
from bot.i18n import t, tn, using_locale
from bot.jobs.batching import SAVE_WINDOW_SECONDS, SaveBatcher
from bot.jobs.model import Job, JobState, ResultImage
from bot.jobs.ports import DeliveryFailed, FalQueue, JobObserver, JobSink, JobStore
from bot.log import bind, log_context
from bot.messages import describe_failure
from bot.quota import Denial, Limits, UsageSnapshot, decide

__all__ = ("CancelOutcome", "CancelResult", "JobRunner")

log = logging.getLogger(__name__)

DELIVERY_ATTEMPTS = 4
RETRY_SECONDS = 2.0
MAX_RETRY_SECONDS = 30.0
CRASHES_BEFORE_GIVING_UP = 5
RESULT_ATTEMPTS = 4  # fal finished the job but its result could not be read


class CancelOutcome(StrEnum):
    UNKNOWN = "unknown"  # no such job
    FINISHED = "finished"  # it already ended (or its results are being posted)
    REQUESTED = "requested"  # fal took the cancel; a job that already started may still finish
    TOO_LATE = "too_late"  # fal says the job had already completed
    FAILED = "failed"  # fal could not be asked


@dataclass(frozen=True, slots=True)
class CancelResult:
    outcome: CancelOutcome
    job: Job | None = None
    error: FalError | None = None


Step = Callable[[str], Awaitable[None]]


class JobRunner:
    """Runs each job in a task of its own, owned here; keeps the newest version of every live job."""

    def __init__(
        self,
        fal: FalQueue,
        store: JobStore,
        *,
        job_timeout: float,
        delivery_attempts: int = DELIVERY_ATTEMPTS,
        retry_seconds: float = RETRY_SECONDS,
        observer: JobObserver | None = None,
        save_window: float = SAVE_WINDOW_SECONDS,
    ) -> None:
        self._fal = fal
        self._observer = observer
        self._store = store
        self._job_timeout = job_timeout
        self._delivery_attempts = delivery_attempts
        self._retry_seconds = retry_seconds
        self._jobs: dict[str, Job] = {}
        self._sinks: dict[str, JobSink] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._saves = SaveBatcher(store, window=save_window)
        self._unsaved: dict[str, Job] = {}
        self._result_failures: Counter[str] = Counter()
        self._counted_attempt: set[str] = set()  # jobs whose next delivery attempt is already counted and saved
        self._flusher: asyncio.Task[None] | None = None

    # --- admission and start --------------------------------------------------------------------

    async def admit(self, job: Job, limits: Limits) -> Denial | None:
        """Check `job` against `limits` and store it, in one step no other admission can interleave with."""

        def verdict(usage: UsageSnapshot) -> Denial | None:
            return decide(usage, limits, job.num_images, job.created_at, in_guild=job.guild_id is not None,
                          cost=job.cost_usd)  # fmt: skip

        return await self._store.admit(job, verdict)

    def launch(self, job: Job, sink: JobSink) -> asyncio.Task[None]:
        """Submit an admitted job and follow it to the end, in the background."""
        return self._start(job, sink, self._submit)

    def resume(self, job: Job, sink: JobSink) -> asyncio.Task[None]:
        """Pick a stored job up where it was (after a restart)."""
        return self._start(job, sink, None)

    def _start(self, job: Job, sink: JobSink, first: Step | None) -> asyncio.Task[None]:
        if job.id in self._tasks:
            return self._tasks[job.id]
        self._jobs[job.id], self._sinks[job.id] = job, sink
        if self._observer is not None:
            self._observer.changed(None, job)
        # The task (and every task it starts) logs with the job's ids.
        with log_context(job_id=job.id, request_id=job.request_id, guild_id=job.guild_id, user_id=job.user_id):
            task = asyncio.create_task(self._run(job.id, first), name=f"job:{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda done: self._forget(job.id, done))
        return task

    def live(self, job_id: str) -> Job | None:
        """The newest version of a job this runner follows, if it does."""
        return self._jobs.get(job_id)

    async def lookup(self, job_id: str) -> Job | None:
        """A job from memory when it is live here, else from the store (another process may own it)."""
        return self._jobs.get(job_id) or await self._store.get(job_id)

    @property
    def active(self) -> int:
        return len(self._tasks)

    @property
    def unsaved(self) -> int:
        """Jobs whose newest version failed to save and is being retried."""
        return len(self._unsaved)

    async def wait_idle(self) -> None:
        """Wait until no job is followed (jobs started meanwhile are waited for too)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stop following jobs; they stay stored and resume on the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._saves.flush()  # the newest versions of the stopped jobs, waiting in the save window
        if self._flusher is not None:
            self._flusher.cancel()
        await self._flush_unsaved()

    # --- reports from the Discord side ------------------------------------------------------------

    async def status_moved(self, job_id: str, message_id: int) -> None:
        await self._note(job_id, lambda job: job.update(status_message_id=message_id))

    async def thread_created(self, job_id: str, thread_id: int) -> None:
        # Saved with the next change: a restart finds the thread again (one per message, Discord says 160004).
        await self._note(job_id, lambda job: job.update(thread_id=thread_id), save=False)

    async def result_posted(self, job_id: str, message_id: int) -> None:
        # Saved with the next change (the job's end, or the next attempt's count): a restart before that counts
        # an attempt and finds the message again (`JobSink.deliver` looks before it posts on a later attempt).
        # One transaction less per job.
        change = lambda job: job.update(result_message_ids=(*job.result_message_ids, message_id))  # noqa: E731
        await self._note(job_id, change, save=False)

    async def _note(self, job_id: str, change: Callable[[Job], Job], *, save: bool = True) -> None:
        if job_id in self._jobs:
            await self._change(job_id, change, save=save)

    # --- cancel -------------------------------------------------------------------------------------

    async def request_cancel(self, job_id: str) -> CancelResult:
        """Cancel a job at fal, whichever process follows it. Who may cancel is the caller's business."""
        job = self._jobs.get(job_id) or await self._store.get(job_id)
        if job is None:
            return CancelResult(CancelOutcome.UNKNOWN)
        if job.state not in (JobState.PENDING, JobState.QUEUED, JobState.RUNNING):
            return CancelResult(CancelOutcome.FINISHED, job)
        if job_id in self._jobs:
            job = await self._change(job_id, lambda live: live.update(cancel_requested=True))
        else:
            await self._store.request_cancel(job_id)
        if job.request_id is None:
            return CancelResult(CancelOutcome.REQUESTED, job)  # the submit path cancels once fal answers
        return await self._cancel_at_fal(job)

    async def _cancel_at_fal(self, job: Job) -> CancelResult:
        try:
            accepted = await self._fal.cancel(job.handle)
        except FalError as exc:
            log.warning("cancelling job %s (request %s) failed: %s", job.id, job.request_id, exc)
            return CancelResult(CancelOutcome.FAILED, job, exc)
        return CancelResult(CancelOutcome.REQUESTED if accepted else CancelOutcome.TOO_LATE, job)

    # --- a job's life -------------------------------------------------------------------------------

    async def _run(self, job_id: str, first: Step | None) -> None:
        steps = [first] if first else []
        with using_locale(self._jobs[job_id].locale):
            crashes = 0
            while not self._jobs[job_id].state.finished:
                try:
                    if steps:
                        await steps.pop()(job_id)  # a crash here leaves it PENDING: _drive then ends it
                    await self._drive(job_id)
                except Exception:
                    crashes += 1
                    log.exception("job %s crashed (%d of %d)", job_id, crashes, CRASHES_BEFORE_GIVING_UP)
                    if crashes >= CRASHES_BEFORE_GIVING_UP:
                        await self._abandon(job_id, t("Something went wrong on my side; it has been logged."))
                        return
                    await asyncio.sleep(self._backoff(crashes))

    async def _drive(self, job_id: str) -> None:
        job = self._jobs[job_id]
        if job.state is JobState.PENDING:  # stored, then the process died before fal's answer was saved
            log.error("job %s was being sent to fal when the bot stopped; it is not resent", job_id)
            await self._end(job_id, JobState.UNCONFIRMED, error=describe_failure(FalSubmitUnconfirmed("restart")))
            return
        if job.state in (JobState.QUEUED, JobState.RUNNING):
            await self._follow(job_id)
        if self._jobs[job_id].state is JobState.SUCCEEDED:
            await self._deliver(job_id)

    async def _submit(self, job_id: str) -> None:
        job = self._jobs[job_id]
        try:
            handle = await self._fal.submit(job.endpoint, job.payload())
        except FalSubmitUnconfirmed as exc:
            log.error("job %s: the submit may have reached fal but was not confirmed (%s); not resent", job_id, exc)
            await self._end(job_id, JobState.UNCONFIRMED, error=describe_failure(exc))
            return
        except FalError as exc:
            log.warning("job %s: fal refused the submit: %s", job_id, exc)
            await self._end(job_id, JobState.FAILED, error=describe_failure(exc))
            return
        bind(request_id=handle.request_id)
        log.info("job %s accepted by fal as %s", job_id, handle.request_id)
        job = await self._change(
            job_id,
            lambda j: j.advance(JobState.QUEUED, request_id=handle.request_id, queue_position=handle.queue_position),
            at_once=True,  # fal bills this request: its id must not wait in the save window
        )
        self._show(job)
        if job.cancel_requested:
            await self._cancel_at_fal(job)

    async def _follow(self, job_id: str) -> None:
        try:
            async with asyncio.timeout(self._remaining(self._jobs[job_id])):
                await self._watch(job_id)
        except TimeoutError:
            log.info("job %s ran out of time; cancelling it at fal", job_id)
            await self._abandon(job_id, describe_failure(None, timed_out=True))

    async def _watch(self, job_id: str) -> None:
        """Follow fal's statuses until the job leaves the queue; transient errors are waited out."""
        errors = 0
        while self._jobs[job_id].state in (JobState.QUEUED, JobState.RUNNING):
            try:
                async with aclosing(self._fal.watch(self._jobs[job_id].handle)) as statuses:
                    async for status in statuses:
                        errors = 0
                        if await self._apply(job_id, status):
                            return
            except FalError as exc:
                if _fatal(exc):
                    await self._end(job_id, self._failure_state(job_id, exc), error=describe_failure(exc))
                    return
                errors += 1
                log.warning("following job %s failed (%s); retrying", job_id, exc)
            await asyncio.sleep(self._backoff(errors))

    async def _apply(self, job_id: str, status: QueueStatus) -> bool:
        """Record one status; True once fal is done with the job."""
        job = self._jobs[job_id]
        # Queue moves and the start are shown but not saved on their own: a restart follows the job again
        # anyway, and they are saved with the next change that matters.
        if isinstance(status, Queued):
            if job.state is JobState.QUEUED and job.queue_position != status.position:
                self._show(await self._change(job_id, lambda j: j.update(queue_position=status.position), save=False))
            return False
        if isinstance(status, InProgress):
            if job.state is JobState.QUEUED:
                running = await self._change(
                    job_id, lambda j: j.advance(JobState.RUNNING, queue_position=None), save=False
                )
                self._show(running)
            return False
        await self._completed(job_id, status)
        return True

    async def _completed(self, job_id: str, status: Completed) -> None:
        job = self._jobs[job_id]
        if status.error_type == "client_cancelled" or (status.error and job.cancel_requested):
            await self._end(job_id, JobState.CANCELLED, error=t("Cancelled."))
            return
        try:
            result: KontextOutput = await self._fal.result(job.handle, max_images=job.num_images)
        except FalError as exc:
            self._result_failures[job_id] += 1
            if _fatal(exc) or self._result_failures[job_id] < RESULT_ATTEMPTS:
                raise  # _watch ends the job or tries again
            log.error("job %s: fal finished request %s but its result cannot be read: %s", job_id, job.request_id, exc)
            await self._end(job_id, JobState.UNDELIVERABLE, error=describe_failure(exc))
            return
        # Not shown: the results follow at once, and the status's next edit is the final one. The first
        # delivery attempt is counted in the same save: it starts right away.
        await self._change(job_id, lambda j: j.advance(JobState.SUCCEEDED, result=result, queue_position=None,
                                                       delivery_attempts=j.delivery_attempts + 1))  # fmt: skip
        self._counted_attempt.add(job_id)

    async def _deliver(self, job_id: str) -> None:
        images = await self._download(self._jobs[job_id])
        if all(image.data is None for image in images):
            problem = images[0].problem if images else None
            await self._end(job_id, JobState.UNDELIVERABLE, error=problem or t("The image service returned no images."))
            return
        report = _Report(self, job_id)
        while True:
            job = self._jobs[job_id]
            if job_id in self._counted_attempt:
                self._counted_attempt.discard(job_id)  # counted when the job succeeded
            elif job.delivery_attempts >= self._delivery_attempts:
                reason = tn("The results could not be posted ({count} attempt).",
                            "The results could not be posted ({count} attempts).", job.delivery_attempts)  # fmt: skip
                await self._end(job_id, JobState.UNDELIVERABLE, error=reason)
                return
            else:  # saved before trying: a bot that dies while posting still uses up its attempts
                job = await self._change(job_id, lambda j: j.update(delivery_attempts=j.delivery_attempts + 1))
            try:
                await self._sinks[job_id].deliver(job, images, report)
            except DeliveryFailed as exc:
                log.warning("posting the results of job %s failed (attempt %d): %s", job_id, job.delivery_attempts,
                            exc.reason)  # fmt: skip
                if exc.final:
                    await self._end(job_id, JobState.UNDELIVERABLE, error=exc.reason)
                    return
            except Exception:
                log.exception("posting the results of job %s failed (attempt %d)", job_id, job.delivery_attempts)
            else:
                await self._end(job_id, JobState.DELIVERED)
                return
            await asyncio.sleep(self._backoff(job.delivery_attempts))

    async def _download(self, job: Job) -> list[ResultImage]:
        if job.result is None:
            raise RuntimeError(f"job {job.id} succeeded without a result")
        result = job.result
        return list(await asyncio.gather(*(self._fetch(job, result, index) for index in range(len(result.images)))))

    async def _fetch(self, job: Job, result: KontextOutput, index: int) -> ResultImage:
        image, nsfw = result.images[index], result.is_nsfw(index)
        try:
            download = await self._fal.download(image.url)
        except FalError as exc:
            log.warning("job %s: result image %d could not be downloaded: %s", job.id, index + 1, exc)
            return ResultImage(image.url, image.content_type, nsfw, problem=describe_failure(exc))
        content_type = download.content_type if download.content_type.startswith("image/") else image.content_type
        return ResultImage(image.url, content_type, nsfw, data=download.data)

    async def _abandon(self, job_id: str, reason: str) -> None:
        """Give up on a job that has not ended: cancel it at fal when it may still run there."""
        job = self._jobs[job_id]
        if job.state is JobState.PENDING:
            await self._end(job_id, JobState.UNCONFIRMED, error=reason)
        elif job.state is JobState.SUCCEEDED:
            await self._end(job_id, JobState.UNDELIVERABLE, error=reason)
        elif not job.state.finished:
            await self._cancel_at_fal(job)
            await self._end(job_id, JobState.TIMED_OUT, error=reason)

    async def _end(self, job_id: str, state: JobState, **changes: object) -> None:
        job = await self._change(job_id, lambda j: j.advance(state, **changes))
        log.info("job %s (request %s) ended %s%s", job_id, job.request_id, state, f": {job.error}" if job.error else "")
        sink = self._sinks[job_id]
        sink.show(job)
        await sink.settle()

    def _failure_state(self, job_id: str, exc: FalError) -> JobState:
        cancelled = isinstance(exc, FalHTTPError) and "client_cancelled" in exc.error_types
        return JobState.CANCELLED if cancelled or self._jobs[job_id].cancel_requested else JobState.FAILED

    # --- saving -------------------------------------------------------------------------------------

    async def _change(
        self, job_id: str, change: Callable[[Job], Job], *, save: bool = True, at_once: bool = False
    ) -> Job:
        """Apply `change` to the newest version of the job, remember it and (unless told not to) save it.
        Nothing may await between reading and replacing the job, so concurrent changes are never lost."""
        old = self._jobs[job_id]
        job = change(old)
        self._jobs[job_id] = job
        if self._observer is not None:
            self._observer.changed(old, job)
        if save:
            await self._save(job, at_once=at_once)
        return job

    async def _save(self, job: Job, *, at_once: bool = False) -> None:
        try:
            await self._saves.save(job, at_once=at_once)
        except Exception:
            log.exception("could not save job %s (fal request %s, state %s); kept in memory, retrying",
                          job.id, job.request_id, job.state)  # fmt: skip
            self._unsaved[job.id] = job
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._retry_saves(), name="job-saves")
        else:
            self._unsaved.pop(job.id, None)

    async def _retry_saves(self) -> None:
        attempt = 0
        while self._unsaved:
            attempt += 1
            await asyncio.sleep(self._backoff(attempt))
            await self._flush_unsaved()

    async def _flush_unsaved(self) -> None:
        for job_id, job in list(self._unsaved.items()):
            newest = self._jobs.get(job_id, job)
            try:
                await self._store.save(newest)
            except Exception as exc:
                log.error("still cannot save job %s (fal request %s): %s", job_id, newest.request_id, exc)
                continue
            if self._unsaved.get(job_id) is job:
                del self._unsaved[job_id]

    # --- helpers ------------------------------------------------------------------------------------

    def _show(self, job: Job) -> None:
        self._sinks[job.id].show(job)

    def _remaining(self, job: Job) -> float:
        age = (datetime.now(UTC) - job.created_at).total_seconds()
        return max(self._job_timeout - age, 1.0)

    def _backoff(self, attempt: int) -> float:
        return float(min(self._retry_seconds * 2 ** max(attempt - 1, 0), MAX_RETRY_SECONDS))

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._jobs.pop(job_id, None)
        self._result_failures.pop(job_id, None)
        self._counted_attempt.discard(job_id)
        self._sinks.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s stopped unexpectedly", job_id, exc_info=task.exception())


def _fatal(exc: FalError) -> bool:
    """Errors that waiting cannot fix: the job failed, the key was refused, fal does not know the request."""
    if isinstance(exc, FalRequestFailed | FalAuthError):
        return True
    return isinstance(exc, FalHTTPError) and 400 <= exc.status < 500 and exc.status not in (408, 429)


class _Report:
    """The `DeliveryReport` of one job: every message the sink posts is recorded in the job before it goes on."""

    def __init__(self, runner: JobRunner, job_id: str) -> None:
        self._runner = runner
        self._job_id = job_id

    async def thread_created(self, thread_id: int) -> None:
        await self._runner.thread_created(self._job_id, thread_id)

    async def result_posted(self, message_id: int) -> None:
        await self._runner.result_posted(self._job_id, message_id)
