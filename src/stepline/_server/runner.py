"""Run response loops as tasks of this process, and keep their leases.

Every running response holds a lease (owner, expiry) in the store from the
moment it is created. The runner renews the leases of the loops it runs; a
loop whose lease another process has taken (or whose response was finished
elsewhere, e.g. cancelled) is stopped here. Periodically, and at start, it
claims responses whose lease expired — a process died — and resumes their
loops from the stored chain. One process or many, crash recovery and
scale-out are this one mechanism.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from typing import Any

from stepline._config import Settings
from stepline._engine.event_log import EventLog, EventWriter
from stepline._engine.history import Conversation
from stepline._engine.loop import Engine, LoopDrained
from stepline._protocol.request import ResponseRequest
from stepline._run.prepare import Prepared
from stepline._run.response import run_response, stored_response
from stepline.errors import LeaseLost, StoreError
from stepline.store._base import TERMINAL_STATUSES, ResponseRecord

__all__ = ["Runner"]

logger = logging.getLogger(__name__)

#: the longest a response taken over by another process goes unchecked here
_TAKEOVER_POLL_SECONDS = 1.0


class Runner:
    """The loops of this process, their event logs and their leases."""

    def __init__(self, engine: Engine, settings: Settings, *, owner: str | None = None) -> None:
        self.engine = engine
        #: the config the routes check requests against (the engine takes only its limits)
        self.settings = settings
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease_seconds = settings.limits.lease_seconds
        self.writer = EventWriter(engine.store, owner=self.owner)
        self.logs: dict[str, EventLog] = {}
        self.tasks: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._cancelling: set[str] = set()
        #: responses whose loop the renewal stopped: another process has them now
        self._lost: set[str] = set()
        self.accepting = True

    def lease_expiry(self) -> float:
        return self.engine.clock() + self.lease_seconds

    async def start(self) -> None:
        await self.claim_expired()
        self._keeper = asyncio.get_running_loop().create_task(
            self._keep_leases(), name="stepline-lease-keeper"
        )

    def launch(
        self,
        record: ResponseRecord,
        *,
        resume_from: int | None = None,
        request: ResponseRequest | None = None,
        stored: bool = True,
        prepared: Prepared | None = None,
        conversation: Conversation | None = None,
    ) -> asyncio.Task[dict[str, Any]]:
        """Run a stored response's loop in this process (its lease is already ours).

        ``resume_from`` is the next event sequence of a response resumed here;
        None means the response was just created, and ``request`` is its body
        as the route parsed it, ``prepared`` and ``conversation`` what the route
        worked out of it (see :func:`~stepline._run.response.run_response`).
        ``stored=False``: the record is not stored yet (no client knows of it):
        the run stores it with its first step and events, and its log holds them
        until then (:mod:`stepline._engine.creation`).
        """
        # a plain request's client reads only the end: its events go with its steps' ends
        plain = request is not None and not (request.stream or request.background)
        if not stored and (resume_from is not None or record.background):
            raise ValueError("only a new response no client knows of is stored by its run")
        log = EventLog(
            record.id,
            self.writer,
            first_seq=resume_from or 0,
            held=plain,
            unstored=not stored,
        )
        self.logs[record.id] = log
        task = asyncio.get_running_loop().create_task(
            self._run(
                record,
                log,
                fresh=resume_from is None,
                create=not stored,
                request=request,
                prepared=prepared,
                conversation=conversation,
            ),
            name=f"stepline-response-{record.id}",
        )
        self.tasks[record.id] = task
        return task

    async def _run(
        self,
        record: ResponseRecord,
        log: EventLog,
        *,
        fresh: bool,
        create: bool,
        request: ResponseRequest | None,
        prepared: Prepared | None,
        conversation: Conversation | None,
    ) -> dict[str, Any]:
        store = self.engine.store
        try:
            return await run_response(
                self.engine,
                record,
                log,
                fresh=fresh,
                create=create,
                request=request,
                prepared=prepared,
                conversation=conversation,
            )
        except LeaseLost:
            # another process took the response over (this one was too slow to renew):
            # it goes on there; whoever waits here gets what it finishes with
            return await self._taken_over(record, log)
        except StoreError as exc:
            if log.unstored:
                # never stored: its readers stop with this error (a stream not yet
                # answered answers 503), and nothing is left to resume
                log.fail(exc)
            raise
        except LoopDrained:
            # stopped between steps: the next process to claim it goes on from here
            await store.release_lease(record.id, self.owner)
            current = await store.get_response(record.id)
            return await stored_response(store, current or record)
        except asyncio.CancelledError:
            if record.id in self._lost:
                # stopped by the renewal that found the lease gone: as above
                self._lost.discard(record.id)
                this = asyncio.current_task()
                if this is not None:
                    this.uncancel()
                return await self._taken_over(record, log)
            # stopped here (shutdown): never leave our lease behind; a cancelled
            # response keeps it until its cancellation is stored, so no other
            # claimer picks it up in between
            if record.id not in self._cancelling:
                await asyncio.shield(store.release_lease(record.id, self.owner))
            raise
        finally:
            log.close()
            self._forget(record.id, log)

    def _forget(self, response_id: str, log: EventLog) -> None:
        """Drop a loop's entries, unless a later run of the response (claimed back
        here meanwhile) has replaced them."""
        if self.logs.get(response_id) is log:
            del self.logs[response_id]
            self.tasks.pop(response_id, None)

    async def _taken_over(self, record: ResponseRecord, log: EventLog) -> dict[str, Any]:
        """The result of a response another process runs now, once it has one."""
        self._forget(record.id, log)
        store = self.engine.store
        with store.watch_events(record.id) as watch:
            while True:
                current = await store.get_response(record.id)
                if current is None or current.status in TERMINAL_STATUSES:
                    return await stored_response(store, current or record)
                await watch.wait(_TAKEOVER_POLL_SECONDS)

    async def claim_expired(self) -> list[str]:
        """Take over responses whose owner stopped renewing, and resume them here."""
        if not self.accepting:
            return []
        store = self.engine.store
        claimed = await store.claim_expired(
            self.owner, now=self.engine.clock(), expires_at=self.lease_expiry(), limit=100
        )
        for response_id in claimed:
            if response_id in self.tasks:
                continue
            record = await store.get_response(response_id)
            if record is None or record.status in TERMINAL_STATUSES:
                # finished (say, cancelled) between the claim and this read
                continue
            logger.info("resuming response %s", response_id)
            self.launch(record, resume_from=await store.last_event_seq(response_id) + 1)
        return claimed

    async def _keep_leases(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
                await self.claim_expired()
            except Exception:
                logger.exception("lease upkeep failed; retrying in %.1fs", interval)

    async def renew(self) -> None:
        running = list(self.tasks)
        if not running:
            return
        store = self.engine.store
        held = await store.renew_leases(self.owner, running, expires_at=self.lease_expiry())
        for response_id in running:
            task = self.tasks.get(response_id)
            if response_id in held or task is None:
                continue
            # not renewed: lost, unless it is not stored yet (its run stores it with its
            # first step), or was stored as ours just after the renewal read
            current = await store.get_response(response_id)
            if current is None or current.owner == self.owner:
                continue
            if self.tasks.get(response_id) is task:  # still running, after the read
                logger.warning("lease of %s lost; stopping its loop here", response_id)
                self._lost.add(response_id)
                task.cancel()

    async def stop_loop(self, response_id: str) -> None:
        """Stop the loop of a response being cancelled or deleted, keeping its lease.

        The caller stores the cancellation (which clears the lease) or deletes
        the response next, so it is never claimable while half done.
        """
        task = self.tasks.get(response_id)
        if task is None:
            return
        self._cancelling.add(response_id)
        try:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            self._cancelling.discard(response_id)

    async def cancel(self, record: ResponseRecord) -> dict[str, Any] | None:
        """Cancel a live response: its loop stops (here, or elsewhere at its next
        renewal, which finds it cancelled), its live steps are cancelled, and its
        result is stored as ``cancelled``; that result, or None if it ended first."""
        store = self.engine.store
        # a loop running here stops without releasing its lease, so nobody claims
        # the response between the stop and the cancellation
        await self.stop_loop(record.id)
        # the result shows its live steps cancelled; storing it cancels them, atomically
        result = await stored_response(store, record, status="cancelled")
        if not await store.finish_response(
            record.id, status="cancelled", result=result, completed_at=None
        ):
            return None
        return result

    def begin_drain(self, grace: float) -> None:
        """Stop taking work: running steps finish, no new step starts, and loops still
        running after ``grace`` seconds are cancelled (their leases released)."""
        if self.engine.draining:
            return
        self.accepting = False
        self.engine.draining = True
        asyncio.get_running_loop().call_later(grace, self._cancel_all)

    def _cancel_all(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop accepting, let running loops finish within ``grace``, release the rest."""
        self.accepting = False
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        running = list(self.tasks.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()  # its lease is released as it stops
            await asyncio.gather(*pending, return_exceptions=True)
        await self.writer.aclose()
