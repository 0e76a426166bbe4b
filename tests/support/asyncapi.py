"""Hold WebSocket frames and Kafka records to the gateway's AsyncAPI document.

`Contract` finds the message a frame or record must be (by its direction, method or channel, or
topic) and validates it with draft-07, the dialect of AsyncAPI's Schema Object, against that
message's payload in the document, resolving its `$ref`s in the document itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
from jsonschema import Draft7Validator

# The official AsyncAPI 3.0.0 JSON Schema: `schemas/3.0.0-without-$id.json` of the npm package
# @asyncapi/specs 6.11.1 (Apache-2.0, the AsyncAPI Initiative), fetched from npm's registry on
# first use into the virtualenv (not kept in git) and pinned by its checksum.
SPECS_TARBALL = "https://registry.npmjs.org/@asyncapi/specs/-/specs-6.11.1.tgz"
SPECS_MEMBER = "package/schemas/3.0.0-without-$id.json"
OFFICIAL_SCHEMA = Path(sys.prefix) / "share/gx/asyncapi-3.0.0.schema.json"
OFFICIAL_SCHEMA_SHA256 = "abe96881dbfaad495ccbb6bd8d3fb43ca18a13b9d7564849ccb66f39d5e5b20f"
FETCH_TIMEOUT_S = 60.0
TOPIC_CHANNELS = {"commands", "events", "marketdata", "provisioning"}


def _fetch_official_schema() -> bytes:
    with urllib.request.urlopen(SPECS_TARBALL, timeout=FETCH_TIMEOUT_S) as answer:
        tarball = answer.read()
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile(SPECS_MEMBER)
        assert member is not None, f"{SPECS_TARBALL}: no {SPECS_MEMBER}"
        return member.read()


def official_schema() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 JSON Schema; refuses a copy that is not the package's."""
    if OFFICIAL_SCHEMA.exists():
        raw = OFFICIAL_SCHEMA.read_bytes()
    else:
        raw = _fetch_official_schema()
    found = hashlib.sha256(raw).hexdigest()
    assert found == OFFICIAL_SCHEMA_SHA256, (
        f"{OFFICIAL_SCHEMA}: expected sha256 {OFFICIAL_SCHEMA_SHA256}, found {found} "
        f"(from {SPECS_TARBALL}); delete it to fetch it again"
    )
    if not OFFICIAL_SCHEMA.exists():
        OFFICIAL_SCHEMA.parent.mkdir(parents=True, exist_ok=True)
        OFFICIAL_SCHEMA.write_bytes(raw)
    return dict(json.loads(raw))


class ContractError(AssertionError):
    """A frame or record that none of its candidate messages accepts."""


class Contract:
    """The document's messages as validators, and counts of what each check validated."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._validators: dict[str, Draft7Validator] = {}
        self.counts: dict[str, int] = {}

    def errors(self, message: str, instance: Any) -> list[str]:
        """Why `instance` is not the payload of `message` (empty: it is)."""
        validator = self._validators.get(message)
        if validator is None:
            payload = self.document["components"]["messages"][message]["payload"]
            # draft-07 ignores a $ref's siblings: the root is the payload, refs resolve in it
            root = {**payload, "components": self.document["components"]}
            validator = self._validators[message] = Draft7Validator(root)
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}"
            for e in validator.iter_errors(instance)
        ]

    def _one_of(self, kind: str, messages: list[str], instance: Any) -> str:
        """The single message of `messages` that accepts `instance`; raise naming why not."""
        fits = {name: self.errors(name, instance) for name in messages}
        accepted = [name for name, errors in fits.items() if not errors]
        if len(accepted) != 1:
            raise ContractError(
                f"{kind}: expected exactly one of {messages} to accept {instance!r:.300}, "
                f"found {accepted or fits}"
            )
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return accepted[0]

    def _channel_messages(self, channel: str) -> list[str]:
        refs = self.document["channels"][channel]["messages"].values()
        return [ref["$ref"].rsplit("/", 1)[1] for ref in refs]

    def _operation_messages(self, operation: str, reply: bool) -> list[str]:
        op = self.document["operations"][operation]
        refs = op["reply"]["messages"] if reply else op["messages"]
        return [ref["$ref"].rsplit("/", 1)[1] for ref in refs]

    def request(self, frame: dict[str, Any]) -> str:
        """Validate a frame a client sent: the request message of its method."""
        operation = f"ws.{frame.get('method')}"
        if operation not in self.document["operations"]:
            raise ContractError(f"request: method {frame.get('method')!r} is not in the document")
        return self._one_of("sent", self._operation_messages(operation, reply=False), frame)

    def received(self, frame: dict[str, Any], method: str | None) -> str:
        """Validate a frame the gateway sent: a push of its channel, or the answer to `method`."""
        if "channel" in frame:
            channel = f"ws.{frame['channel']}"
            if channel not in self.document["channels"]:
                raise ContractError(f"push: channel {frame['channel']!r} is not in the document")
            return self._one_of("received", self._channel_messages(channel), frame)
        if method is None or f"ws.{method}" not in self.document["operations"]:
            return self._one_of("received", ["ErrorAnswer"], frame)  # no method: refused
        return self._one_of("received", self._operation_messages(f"ws.{method}", True), frame)

    def record(self, role: str, key: bytes | None, value: bytes, headers: Any = ()) -> str:
        """Validate one Kafka record of the topic `role`: its value, key and headers."""
        channel = f"kafka.{role}"
        (name,) = self._channel_messages(channel)
        message = self.document["components"]["messages"][name]
        if message["contentType"] == "application/msgpack":
            instance = msgspec.msgpack.decode(value)
        else:
            instance = msgspec.json.decode(value)
        key_schema = message["bindings"]["kafka"]["key"]
        key_errors = list(Draft7Validator(key_schema).iter_errors((key or b"").decode()))
        if key_errors:
            raise ContractError(f"{role} key {key!r}: {key_errors[0].message}")
        header_schema = message.get("headers", {"type": "object", "maxProperties": 0})
        found = {name: raw.decode() for name, raw in headers or ()}
        header_errors = list(Draft7Validator(header_schema).iter_errors(found))
        if header_errors:
            raise ContractError(f"{role} headers {found}: {header_errors[0].message}")
        return self._one_of(role, [name], instance)
