"""Messages on `gx.provisioning` between the provisioning process and the providers' agents.

One topic carries both directions, keyed by provider (`str(provider)`), so every message about
one provider's deliveries lands in one partition, in order:

- `ProvisionRequested` (provisioning -> provider): provision an obligation. Sent twice per
  obligation: `stage="assigned"` when the engine assigns it at gate closure (a heads-up), and
  `stage="start"` once engine time reaches the delivery start. `deadline_ns` is when the engine
  fails the delivery unless confirmed.
- `ProvisionConfirmed` (provider -> provisioning): the machines are up; `access` says how to reach
  them (opaque to the exchange, e.g. an SSH endpoint). Becomes `DeliveryConfirmed`.
- `ProvisionFailed` (provider -> provisioning): the provider cannot deliver, or was interrupted
  after `hours_delivered` hours. Becomes `DeliveryFailed`.

A provider agent reads the partition of its key and ignores messages that are not requests to it.
Messages are msgspec JSON tagged by `"type"`; integer times are UNIX nanoseconds.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "ProvisionConfirmed",
    "ProvisionFailed",
    "ProvisionMessage",
    "ProvisionRequested",
    "decode_provision",
    "encode_provision",
    "provider_key",
]

Stage = Literal["assigned", "start"]


class ProvisionRequested(msgspec.Struct, frozen=True, kw_only=True, tag=True, tag_field="type"):
    """Provision `gpus` GPUs of `symbol` for `holder` from `start_ns` to `end_ns`."""

    obligation_id: int
    provider: int
    holder: int
    symbol: str
    gpus: int
    start_ns: int
    end_ns: int
    deadline_ns: int  # confirm before this engine time or the delivery fails
    stage: Stage = "assigned"


class ProvisionConfirmed(msgspec.Struct, frozen=True, kw_only=True, tag=True, tag_field="type"):
    """The provider has provisioned the obligation; `access` tells the holder how to use it."""

    obligation_id: int
    provider: int
    access: str = ""


class ProvisionFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True, tag_field="type"):
    """The provider cannot deliver the obligation (after `hours_delivered` hours)."""

    obligation_id: int
    provider: int
    hours_delivered: int = 0
    reason: str = ""


ProvisionMessage = ProvisionRequested | ProvisionConfirmed | ProvisionFailed

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ProvisionMessage)


def encode_provision(message: ProvisionMessage) -> bytes:
    """Encode one provisioning message as tagged JSON."""
    return _encoder.encode(message)


def decode_provision(data: bytes) -> ProvisionMessage:
    """Decode one provisioning message; raise `msgspec.DecodeError` on anything else."""
    return _decoder.decode(data)


def provider_key(provider: int) -> bytes:
    """The message key of every provisioning message about `provider`'s deliveries."""
    return str(provider).encode()
