"""The gateway's provisioning projection: each provider's outstanding provisioning requests.

`Provisioning.apply(message)` takes every gx.provisioning message in log order and returns the
private pushes it causes as `(provider, "provisioning", body)`: a request is pushed to its
provider's connections and stays outstanding until the provider confirms or fails it, or the
engine settles the delivery (`DeliverySettled` on gx.events). A provider subscribing to the
`provisioning` channel gets its outstanding requests first (`snapshot`), and may only confirm or
fail a request that is outstanding.

No I/O, no asyncio, no clock: the same messages give the same pushes.
"""

from __future__ import annotations

import orjson

from schemas.provisioning import (
    ProvisionConfirmed,
    ProvisionFailed,
    ProvisionMessage,
    ProvisionRequested,
)

__all__ = ["Provisioning", "provision_push"]


class Provisioning:
    """Outstanding provisioning requests by provider, and the pushes that announce them."""

    def __init__(self) -> None:
        # provider -> obligation id -> its outstanding request
        self.outstanding: dict[int, dict[int, ProvisionRequested]] = {}

    def apply(self, message: ProvisionMessage) -> list[tuple[int, str, bytes]]:
        """Take the next gx.provisioning message; return its pushes as (provider, channel, body)."""
        if isinstance(message, ProvisionRequested):
            self.outstanding.setdefault(message.provider, {})[message.obligation_id] = message
            return [(message.provider, "provisioning", provision_push(message))]
        if isinstance(message, ProvisionConfirmed | ProvisionFailed):
            self.settled(message.provider, message.obligation_id)
        return []

    def settled(self, provider: int, obligation_id: int) -> None:
        """Forget a request that is answered or whose delivery the engine settled."""
        self.outstanding.get(provider, {}).pop(obligation_id, None)

    def is_outstanding(self, provider: int, obligation_id: int) -> bool:
        """Whether the provider has an outstanding request for the obligation."""
        return obligation_id in self.outstanding.get(provider, {})

    def snapshot(self, provider: int) -> list[bytes]:
        """The push bodies of the provider's outstanding requests, by obligation id."""
        requests = self.outstanding.get(provider, {})
        return [provision_push(requests[i]) for i in sorted(requests)]


def provision_push(message: ProvisionRequested) -> bytes:
    """The `provisioning` push body of a request (ids as integers, times as strings)."""
    return orjson.dumps(
        {
            "channel": "provisioning",
            "type": "request",
            "obligation_id": message.obligation_id,
            "symbol": message.symbol,
            "provider": message.provider,
            "holder": message.holder,
            "gpus": message.gpus,
            "start_ns": str(message.start_ns),
            "end_ns": str(message.end_ns),
            "deadline_ns": str(message.deadline_ns),
            "stage": message.stage,
        }
    )
