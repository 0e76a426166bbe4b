"""The provider agent: stream capacity, answer provisioning requests with the user's handler.

    async def handler(request: ProvisionRequest) -> ProvisionResult | None:
        if request.stage != "start":
            return None  # the "assigned" heads-up: nothing to answer yet
        host = await boot_machines(request.gpus, request.end_ns)
        return ProvisionResult.confirm(host, 22, "gx")

    agent = ProviderAgent(client)
    await agent.update_capacity("H100-SXM", "us-east", start_ns, end_ns, gpus=8)
    await agent.run(handler)

Requests arrive at least once (again after a reconnect, say). The agent calls the handler once
per (obligation_id, stage) and remembers its result: a repeated request is answered again from
memory, and a request still being handled is not handled twice. A handler that raises is logged
and its request forgotten, so the next copy of the request calls the handler again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec

from exchange.client.client import Client
from exchange.client.errors import GatewayError, NetworkError
from exchange.client.models import Access, ProvisionRequest
from schemas.provisioning import Access as _WireAccess
from schemas.provisioning import access_error

__all__ = [
    "ProviderAgent",
    "ProvisionResult",
    "Handler",
    "ANSWERED_MAX",
    "HANDLERS_CONCURRENT_MAX",
    "ANSWER_ATTEMPTS_MAX",
]

log = logging.getLogger("gx.client.provider")

ANSWERED_MAX = 100_000  # (obligation, stage) results remembered for repeated requests
HANDLERS_CONCURRENT_MAX = 64  # handler calls running at once
ANSWER_ATTEMPTS_MAX = 5  # sends of one answer while the connection is lost
ANSWER_BACKOFF_S = 0.5  # first delay between those sends; doubles


class ProvisionResult(msgspec.Struct, frozen=True, kw_only=True):
    """A handler's answer: access details (confirm) or a failure after `hours_delivered` hours."""

    access: Access | None = None
    hours_delivered: int = 0
    reason: str = ""

    @classmethod
    def confirm(cls, host: str, port: int, user: str, instructions: str = "") -> ProvisionResult:
        """Confirm the delivery: the holder reaches it as `ssh -p port user@host`.

        Raise ValueError, naming the field, for what the gateway would refuse (BAD_ACCESS): a
        host that is no DNS name or IP address, a port outside 1-65535, an unfit user name,
        fields longer than their limits (schemas/provisioning.py).
        """
        why = access_error(_WireAccess(host=host, port=port, user=user, instructions=instructions))
        if why is not None:
            raise ValueError(why)
        return cls(access=Access(host=host, port=port, user=user, instructions=instructions))

    @classmethod
    def fail(cls, hours_delivered: int = 0, reason: str = "") -> ProvisionResult:
        """Report the delivery failed, or was interrupted after `hours_delivered` hours."""
        if hours_delivered < 0:
            raise ValueError(f"hours_delivered: expected >= 0, found {hours_delivered}")
        return cls(hours_delivered=hours_delivered, reason=reason)

    @property
    def confirmed(self) -> bool:
        """Return whether this result confirms the delivery."""
        return self.access is not None


Handler = Callable[[ProvisionRequest], Awaitable[ProvisionResult | None]]
_Stage = tuple[int, str]  # obligation_id, stage


class ProviderAgent:
    """Act for one provider over a client's WebSocket session."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._answered: OrderedDict[_Stage, ProvisionResult | None] = OrderedDict()
        self._handling: set[_Stage] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(HANDLERS_CONCURRENT_MAX)

    async def update_capacity(
        self, gpu: str, region: str, start_ns: int, end_ns: int, gpus: int
    ) -> str:
        """Set how many GPUs of a model and region the provider offers over a window."""
        params = {
            "gpu": gpu,
            "region": region,
            "start_ns": str(int(start_ns)),
            "end_ns": str(int(end_ns)),
            "gpus": int(gpus),
        }
        result = await self.client.ws_request("capacity.update", params)
        return str(result.get("status", ""))

    async def run(self, handler: Handler) -> None:
        """Answer provisioning requests with `handler` until cancelled."""
        try:
            async for request in self.client.watch_provisioning():
                self.receive(request, handler)
        finally:
            for task in list(self._tasks):
                task.cancel()

    def receive(self, request: ProvisionRequest, handler: Handler) -> None:
        """Take one request: answer it from memory, or start the handler once per stage."""
        key = (request.obligation_id, request.stage)
        if key in self._handling:
            return  # the first copy is being handled; it will answer
        if key in self._answered:
            result = self._answered[key]
            if result is not None:
                self._spawn(self._send(request, result))
            return
        self._handling.add(key)
        self._spawn(self._handle(request, handler, key))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, request: ProvisionRequest, handler: Handler, key: _Stage) -> None:
        try:
            async with self._slots:
                result = await handler(request)
        except asyncio.CancelledError:
            self._handling.discard(key)
            raise
        except Exception:
            self._handling.discard(key)
            log.exception(
                "provisioning handler failed on obligation %d (%s); a repeated request "
                "calls it again",
                *key,
            )
            return
        self._remember(key, result)
        self._handling.discard(key)
        if result is not None:
            await self._send(request, result)

    def _remember(self, key: _Stage, result: ProvisionResult | None) -> None:
        self._answered[key] = result
        while len(self._answered) > ANSWERED_MAX:
            self._answered.popitem(last=False)

    async def _send(self, request: ProvisionRequest, result: ProvisionResult) -> None:
        """Send the answer, retrying while the connection is lost."""
        if result.confirmed:
            method = "provision.confirm"
            params: dict[str, Any] = {
                "obligation_id": request.obligation_id,
                "access": msgspec.structs.asdict(result.access) if result.access else None,
            }
        else:
            method = "provision.fail"
            params = {
                "obligation_id": request.obligation_id,
                "hours_delivered": result.hours_delivered,
                "reason": result.reason,
            }
        for attempt in range(ANSWER_ATTEMPTS_MAX):
            try:
                await self.client.ws_request(method, params)
                return
            except NetworkError as error:
                if attempt + 1 >= ANSWER_ATTEMPTS_MAX:
                    log.warning(
                        "%s %d not sent: %s; it is sent again when the request repeats",
                        method,
                        request.obligation_id,
                        error,
                    )
                    return
                await asyncio.sleep(ANSWER_BACKOFF_S * 2.0**attempt)
            except GatewayError as error:
                log.warning("%s %d refused: %s", method, request.obligation_id, error)
                return
