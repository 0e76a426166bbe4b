"""Messages on `gx.provisioning` between the provisioning process and the providers' agents.

One topic carries both directions, keyed by provider (`str(provider)`), so every message about
one provider's deliveries lands in one partition, in order:

- `ProvisionRequested` (provisioning -> provider): provision an obligation. Sent twice per
  obligation: `stage="assigned"` when the engine assigns it at gate closure (a heads-up), and
  `stage="start"` once engine time reaches the delivery start. `deadline_ns` is when the engine
  fails the delivery unless confirmed.
- `ProvisionConfirmed` (provider -> provisioning): the machines are up; `access` says how to reach
  them: an SSH endpoint `Access(host, port, user, instructions)`, checked by `access_error`
  before it is sent. Becomes `DeliveryConfirmed`.
- `ProvisionFailed` (provider -> provisioning): the provider cannot deliver, or was interrupted
  after `hours_delivered` hours. Becomes `DeliveryFailed`. Checked by `failure_error` (hours
  within the delivery's, a short printable reason) at the gateway and again by the process.

A provider agent reads the partition of its key and ignores messages that are not requests to it.
Messages are msgspec JSON tagged by `"type"`; integer times are UNIX nanoseconds.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

import msgspec

from schemas.codec import decode_bounded
from schemas.units import NS_PER_HOUR

__all__ = [
    "ACCESS_HOST_CHARS_MAX",
    "ACCESS_INSTRUCTIONS_CHARS_MAX",
    "ACCESS_USER_CHARS_MAX",
    "FAIL_REASON_CHARS_MAX",
    "Access",
    "ProvisionConfirmed",
    "ProvisionFailed",
    "ProvisionMessage",
    "ProvisionRequested",
    "access_error",
    "decode_provision",
    "encode_provision",
    "failure_error",
    "provider_key",
    "window_hours",
]

Stage = Literal["assigned", "start"]

ACCESS_HOST_CHARS_MAX = 253  # the longest DNS name (RFC 1035), and longer than any IP literal
ACCESS_USER_CHARS_MAX = 64
ACCESS_INSTRUCTIONS_CHARS_MAX = 2000
ACCESS_PORT_MAX = 65535
FAIL_REASON_CHARS_MAX = 500

# Always fullmatch: with match, a "$" anchor takes a trailing newline ("gx\n").
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")  # RFC 1123: may start with a digit
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a login name: no spaces, "@" or shell marks


class Access(msgspec.Struct, frozen=True, kw_only=True):
    """How the holder reaches delivered machines: `ssh -p port user@host`, then `instructions`.

    Decoding checks the lengths and the port; `access_error` checks the host and the user too.
    """

    host: Annotated[str, msgspec.Meta(min_length=1, max_length=ACCESS_HOST_CHARS_MAX)]
    port: Annotated[int, msgspec.Meta(ge=1, le=ACCESS_PORT_MAX)]
    user: Annotated[str, msgspec.Meta(min_length=1, max_length=ACCESS_USER_CHARS_MAX)]
    instructions: Annotated[str, msgspec.Meta(max_length=ACCESS_INSTRUCTIONS_CHARS_MAX)] = ""


def _is_host(host: str) -> bool:
    """Whether `host` is a DNS name of RFC 1123 labels, or an IPv4 or IPv6 literal."""
    try:
        ipaddress.ip_address(host)  # bare, as ssh takes it: "10.0.0.7", "2001:db8::7"
        return True
    except ValueError:
        pass
    name = host.removesuffix(".")  # a fully qualified name may end with the root's dot
    labels = name.split(".")
    if not name or len(host) > ACCESS_HOST_CHARS_MAX:
        return False
    if labels[-1].isdigit():
        return False  # all-numeric top label: a malformed IPv4 address, not a name
    return all(_DNS_LABEL.fullmatch(label) for label in labels)


def access_error(access: Access) -> str | None:
    """Why `access` is unfit to hand a holder (naming the field), or None if it is fit.

    Checks what decoding checks too, so an `Access` built in Python is held to the same rules.
    """
    if not isinstance(access.host, str) or not _is_host(access.host):
        return (
            f"access.host: expected a DNS name (RFC 1123 labels, at most "
            f"{ACCESS_HOST_CHARS_MAX} characters) or an IPv4/IPv6 address, found {access.host!r:.80}"
        )
    if isinstance(access.port, bool) or not isinstance(access.port, int):
        return f"access.port: expected an integer 1-{ACCESS_PORT_MAX}, found {access.port!r:.20}"
    if not 1 <= access.port <= ACCESS_PORT_MAX:
        return f"access.port: expected 1-{ACCESS_PORT_MAX}, found {access.port}"
    if not isinstance(access.user, str) or not (
        len(access.user) <= ACCESS_USER_CHARS_MAX and _USER.fullmatch(access.user)
    ):
        return (
            f"access.user: expected 1-{ACCESS_USER_CHARS_MAX} characters of [A-Za-z0-9_.-] "
            f"(not starting with . or -), found {access.user!r:.80}"
        )
    if not isinstance(access.instructions, str):
        return "access.instructions: expected a string"
    if len(access.instructions) > ACCESS_INSTRUCTIONS_CHARS_MAX:
        return (
            f"access.instructions: expected at most {ACCESS_INSTRUCTIONS_CHARS_MAX} characters, "
            f"found {len(access.instructions)}"
        )
    return None


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
    access: Access | None = None  # None only in confirmations older than `Access`


class ProvisionFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True, tag_field="type"):
    """The provider cannot deliver the obligation (after `hours_delivered` hours)."""

    obligation_id: int
    provider: int
    hours_delivered: int = 0
    reason: str = ""


ProvisionMessage = ProvisionRequested | ProvisionConfirmed | ProvisionFailed


def window_hours(start_ns: int, end_ns: int) -> int:
    """The hours of a delivery window: the most `hours_delivered` a failure may claim."""
    return max(0, (end_ns - start_ns) // NS_PER_HOUR)


def failure_error(message: ProvisionFailed, hours: int) -> str | None:
    """Why a failure report is unfit to send the engine (naming the field), or None if fit.

    `hours` is the delivery's (`window_hours`): a provider cannot have delivered more.
    """
    claimed = message.hours_delivered
    if isinstance(claimed, bool) or not isinstance(claimed, int) or not 0 <= claimed <= hours:
        return f"hours_delivered: expected 0-{hours} (the delivery's hours), found {claimed!r:.40}"
    if not isinstance(message.reason, str) or len(message.reason) > FAIL_REASON_CHARS_MAX:
        found = len(message.reason) if isinstance(message.reason, str) else "not a string"
        return f"reason: expected at most {FAIL_REASON_CHARS_MAX} characters, found {found}"
    if not message.reason.isprintable():
        return "reason: control characters are not allowed"
    return None


class _LegacyConfirmed(
    msgspec.Struct, frozen=True, kw_only=True, tag="ProvisionConfirmed", tag_field="type"
):
    """A confirmation written before `Access`: its access was free text."""

    obligation_id: int
    provider: int
    access: str = ""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ProvisionMessage)
_legacy_decoder = msgspec.json.Decoder(_LegacyConfirmed)


def encode_provision(message: ProvisionMessage) -> bytes:
    """Encode one provisioning message as tagged JSON."""
    return _encoder.encode(message)


def decode_provision(data: bytes) -> ProvisionMessage:
    """Decode one provisioning message; raise `msgspec.DecodeError` on anything else.

    A confirmation older than `Access` (its access a string) still decodes, as a confirmation
    with no access: its free text is dropped, not kept as `instructions`, because it was never
    checked and may hold anything (a password, say) that must not reach a holder's screen now.
    The confirmation itself still counts: the provisioning process turns it into
    `DeliveryConfirmed` as before.
    """
    try:
        return decode_bounded(_decoder, data)
    except msgspec.ValidationError as error:
        try:
            legacy = decode_bounded(_legacy_decoder, data)
        except msgspec.DecodeError:
            raise error from None
        return ProvisionConfirmed(obligation_id=legacy.obligation_id, provider=legacy.provider)


def provider_key(provider: int) -> bytes:
    """The message key of every provisioning message about `provider`'s deliveries."""
    return str(provider).encode()
