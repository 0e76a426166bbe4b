"""The gateway's provisioning projection: each provider's outstanding provisioning requests.

`Provisioning.apply(message)` takes every gx.provisioning message in log order and returns the
private pushes it causes as `(provider, "provisioning", body)`: a request is pushed to its
provider's connections and stays outstanding until the provider confirms or fails it, or the
engine settles the delivery (`DeliverySettled` on gx.events). A provider subscribing to the
`provisioning` channel gets its outstanding requests first (`snapshot`), and may only confirm or
fail a request that is outstanding.

A request carries the holder's SSH public keys (`keys_of(holder)`, exchange/gateway/ssh_keys.py),
so the provider can install them: as they are when the push is made, so a key the holder removed
before then is never installed. They travel only to the provider's connections, never on Kafka.

No I/O, no asyncio, no clock: the same messages and keys give the same pushes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson

from exchange.gateway.ssh_keys import SshKey
from schemas.provisioning import (
    ProvisionConfirmed,
    ProvisionFailed,
    ProvisionMessage,
    ProvisionRequested,
)

__all__ = ["Provisioning", "provision_push"]


class Provisioning:
    """Outstanding provisioning requests by provider, and the pushes that announce them."""

    def __init__(self, keys_of: Callable[[int], Sequence[SshKey]] = lambda holder: ()) -> None:
        # provider -> obligation id -> its outstanding request
        self.outstanding: dict[int, dict[int, ProvisionRequested]] = {}
        self.keys_of = keys_of

    def apply(self, message: ProvisionMessage) -> list[tuple[int, str, bytes]]:
        """Take the next gx.provisioning message; return its pushes as (provider, channel, body)."""
        if isinstance(message, ProvisionRequested):
            self.outstanding.setdefault(message.provider, {})[message.obligation_id] = message
            push = provision_push(message, self.keys_of(message.holder))
            return [(message.provider, "provisioning", push)]
        if isinstance(message, ProvisionConfirmed | ProvisionFailed):
            self.settled(message.provider, message.obligation_id)
        return []

    def settled(self, provider: int, obligation_id: int) -> None:
        """Forget a request that is answered or whose delivery the engine settled."""
        self.outstanding.get(provider, {}).pop(obligation_id, None)

    def is_outstanding(self, provider: int, obligation_id: int) -> bool:
        """Whether the provider has an outstanding request for the obligation."""
        return obligation_id in self.outstanding.get(provider, {})

    def request(self, provider: int, obligation_id: int) -> ProvisionRequested | None:
        """The provider's outstanding request for the obligation, if any."""
        return self.outstanding.get(provider, {}).get(obligation_id)

    def snapshot(self, provider: int) -> list[bytes]:
        """The push bodies of the provider's outstanding requests, by obligation id."""
        requests = self.outstanding.get(provider, {})
        return [
            provision_push(requests[i], self.keys_of(requests[i].holder)) for i in sorted(requests)
        ]


def provision_push(message: ProvisionRequested, ssh_keys: Sequence[SshKey] = ()) -> bytes:
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
            "ssh_keys": [
                {"fingerprint": k.fingerprint, "type": k.kind, "public_key": k.public_key}
                for k in ssh_keys
            ],
        }
    )
