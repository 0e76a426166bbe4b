"""The AsyncAPI 3.0.0 document of the WebSocket API and the Kafka topics, from the real Structs.

Every payload schema is msgspec's JSON Schema (`msgspec.json.schema_components`) of the Struct
that decodes or describes the message: the request params of `ws.METHODS`, the answers and pushes
of exchange/gateway/messages.py, and on Kafka the commands, events, market-data and provisioning
messages of `schemas/`. msgspec writes JSON Schema 2020-12 with OpenAPI's discriminator object;
AsyncAPI's Schema Object is a superset of draft-07, so `_asyncapi_schema` rewrites the two
keywords that differ (`prefixItems` becomes draft-07's `items` array, the discriminator its
property name) and leaves everything else as msgspec wrote it.

Served beside the OpenAPI document at `PATH`; exchange/API.md says how to read it.
"""

from __future__ import annotations

import re
from typing import Any, Literal, cast

import msgspec

from exchange.gateway import messages as m
from exchange.gateway.ws import METHODS, PRIVATE_CHANNELS, PUBLIC_CHANNELS
from exchange.wire import WS_LOGON_PATH
from schemas.commands import Command
from schemas.events import Event
from schemas.marketdata import MarketDataMessage
from schemas.provisioning import ProvisionMessage
from streams.event_records import PARTIAL_HEADER
from streams.settings import Settings
from streams.topics import topics

__all__ = ["ASYNCAPI_VERSION", "PATH", "asyncapi_document", "message_name", "request_name"]

ASYNCAPI_VERSION = "3.0.0"
PATH = "/api/v1/schema/asyncapi.json"  # beside the OpenAPI document's /api/v1/schema/openapi.json
_REF = "#/components/schemas/{name}"

# Kafka record values: what each topic's records hold, the content type and the key.
_TOPICS: dict[str, tuple[Any, str, str, str]] = {
    "commands": (
        Command,
        "application/msgpack",
        "the shard (partition = shard), as decimal digits",
        "A command for the engine (schemas/commands.py), msgpack, one per record. Sent by the "
        "gateways, the clock, the operator tools and the provisioning process.",
    ),
    "events": (
        list[Event],
        "application/msgpack",
        "the shard (partition = shard), as decimal digits",
        "The events of one or more whole commands of one shard, in sequence order: a msgpack "
        "array of events (streams/event_records.py). Sent by the engine runner; read by the "
        "gateways, market data, settlement, provisioning and the audit.",
    ),
    "marketdata": (
        MarketDataMessage,
        "application/msgpack",
        "the message's `symbol` (an instrument, a GPU model or a curve name)",
        "One market-data message (schemas/marketdata.py), msgpack. Sent by the market-data "
        "process; read by the gateways.",
    ),
    "provisioning": (
        ProvisionMessage,
        "application/json",
        "the provider's account, as decimal digits",
        "One provisioning message (schemas/provisioning.py), tagged JSON: requests from the "
        "provisioning process to providers, confirmations and failures from the gateways.",
    ),
}


def request_name(method: str) -> str:
    """The component name of a method's request (`order.place` -> `OrderPlaceRequest`)."""
    return "".join(part.capitalize() for part in re.split(r"[._]", method)) + "Request"


def message_name(kind: type[Any]) -> str:
    """The component name of a message whose payload is the Struct `kind`."""
    return kind.__name__


def _request_struct(method: str, params: type[msgspec.Struct]) -> type[msgspec.Struct]:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("id", m.RequestId),
        ("method", cast(Any, Literal)[method]),
        ("params", params | msgspec.UnsetType, msgspec.UNSET),
    ]
    return msgspec.defstruct(
        request_name(method), fields, kw_only=True, forbid_unknown_fields=True, frozen=True
    )


def _answer_struct(method: str, result: type[msgspec.Struct]) -> type[msgspec.Struct]:
    fields: list[tuple[str, Any]] = [
        ("id", m.RequestId),
        ("status", Literal[200]),
        ("result", result),
    ]
    name = request_name(method).removesuffix("Request") + "Answer"
    return msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=True, frozen=True)


def _asyncapi_schema(node: Any) -> Any:
    """msgspec's JSON Schema as an AsyncAPI Schema Object (draft-07 with a string discriminator)."""
    if isinstance(node, list | tuple):  # a tuple default (`bids: tuple = ()`) is a JSON array
        return [_asyncapi_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: _asyncapi_schema(sub) for name, sub in value.items()}
        elif key == "prefixItems":
            out["items"] = _asyncapi_schema(value)
            if node.get("items") is False:
                out["additionalItems"] = False
        elif key == "items" and "prefixItems" in node:
            continue
        elif key == "discriminator" and isinstance(value, dict):
            out[key] = value["propertyName"]
        else:
            out[key] = _asyncapi_schema(value)
    return out


def _message(name: str, payload: dict[str, Any], content_type: str, summary: str) -> dict[str, Any]:
    return {"name": name, "contentType": content_type, "summary": summary, "payload": payload}


def _refs(names: list[str], prefix: str) -> dict[str, Any]:
    return {name: {"$ref": f"{prefix}/{name}"} for name in names}


def asyncapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of `/ws` and the topics that `settings` name."""
    settings = settings or Settings()
    requests = {method: _request_struct(method, params) for method, (_, params) in METHODS.items()}
    answers = {method: _answer_struct(method, m.RESULTS[method]) for method in METHODS}
    pushes: dict[str, list[Any]] = {channel: list(kinds) for channel, kinds in m.PUSHES.items()}
    ws_types: list[Any] = [*requests.values(), *answers.values(), m.ErrorAnswer, m.HEARTBEAT]
    ws_types += [kind for kinds in pushes.values() for kind in kinds]
    ws_types = list(dict.fromkeys(ws_types))
    topic_types = [value for value, *_ in _TOPICS.values()]
    roots, components = msgspec.json.schema_components([*ws_types, *topic_types], ref_template=_REF)
    record_names = {role: f"{role.capitalize()}Record" for role in _TOPICS}
    for role, root in zip(_TOPICS, roots[len(ws_types) :], strict=True):
        components[record_names[role]] = root
    schemas = {name: _asyncapi_schema(schema) for name, schema in sorted(components.items())}

    messages: dict[str, Any] = {}
    for kind in ws_types:
        name = message_name(kind)
        summary = (kind.__doc__ or name).strip().splitlines()[0]
        payload = {"$ref": _REF.format(name=name)}
        messages[name] = _message(name, payload, "application/json", summary)
    channels: dict[str, Any] = {
        "ws": {
            "address": WS_LOGON_PATH,
            "title": "WebSocket requests and answers",
            "description": "One JSON object per text frame: requests `{id, method, params}`, "
            "answers `{id, status: 200, result}` or `{id, status, error}` (exchange/wire.py).",
            "servers": [{"$ref": "#/servers/gateway"}],
            "messages": _refs(
                [message_name(k) for k in [*requests.values(), *answers.values()]]
                + [message_name(m.ErrorAnswer)],
                "#/components/messages",
            ),
            "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
        }
    }
    operations: dict[str, Any] = {}
    for method, (scope, _) in METHODS.items():
        operations[f"ws.{method}"] = {
            "action": "receive",
            "channel": {"$ref": "#/channels/ws"},
            "title": method,
            "summary": f"`{method}`" + (f" (scope `{scope}`)" if scope else ""),
            "messages": [{"$ref": f"#/channels/ws/messages/{message_name(requests[method])}"}],
            "reply": {
                "channel": {"$ref": "#/channels/ws"},
                "messages": [
                    {"$ref": f"#/channels/ws/messages/{message_name(answers[method])}"},
                    {"$ref": "#/channels/ws/messages/ErrorAnswer"},
                ],
            },
        }
    push_channels: list[tuple[str, list[Any]]] = [*pushes.items(), ("heartbeat", [m.HEARTBEAT])]
    for channel, kinds in push_channels:
        access = "public" if channel in PUBLIC_CHANNELS else "private"
        if channel in PRIVATE_CHANNELS:
            access += f", scope `{PRIVATE_CHANNELS[channel]}`"
        elif channel == "heartbeat":
            access = "every connection, every second"
        channel_id = f"ws.{channel}"
        names = [message_name(kind) for kind in kinds]
        channels[channel_id] = {
            "address": WS_LOGON_PATH,
            "title": f"`{channel}` pushes",
            "description": f'Pushes with `"channel": "{channel}"` on `/ws` ({access}).',
            "servers": [{"$ref": "#/servers/gateway"}],
            "messages": _refs(names, "#/components/messages"),
        }
        operations[f"{channel_id}.push"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{n}"} for n in names],
        }

    for role, topic in topics(settings).items():
        _, content_type, key, summary = _TOPICS[role]
        name = record_names[role]
        message = _message(name, {"$ref": _REF.format(name=name)}, content_type, summary)
        message["bindings"] = {
            "kafka": {
                "key": {"type": "string", "pattern": "^.+$", "description": key},
                "bindingVersion": "0.5.0",
            }
        }
        if role == "events":
            message["headers"] = {
                "type": "object",
                "properties": {
                    PARTIAL_HEADER: {
                        "type": "string",
                        "enum": ["1"],
                        "description": "the record's last command continues in the next record",
                    }
                },
            }
        messages[name] = message
        channel_id = f"kafka.{role}"
        channels[channel_id] = {
            "address": topic.name,
            "title": topic.name,
            "servers": [{"$ref": "#/servers/kafka"}],
            "messages": _refs([name], "#/components/messages"),
            "bindings": {
                "kafka": {
                    "topic": topic.name,
                    "partitions": topic.partitions,
                    "topicConfiguration": {"retention.ms": topic.retention_ms},
                    "bindingVersion": "0.5.0",
                }
            },
        }
        for action in ("send", "receive"):
            operations[f"{channel_id}.{action}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "messages": [{"$ref": f"#/channels/{channel_id}/messages/{name}"}],
            }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "gpu-exchange gateway and topics",
            "version": "1",
            "description": "The WebSocket API (`/ws`) and the Kafka topics, their payloads "
            "generated from the msgspec Structs that encode and decode them. Operations on `/ws` "
            "are the gateway's (it receives requests and sends answers and pushes); each topic "
            "has a send and a receive operation for the stages that produce and consume it.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "gateway": {
                "host": f"{settings.gateway_host}:{settings.gateway_port}",
                "protocol": "ws",
                "description": "a gateway (`gx gateway`)",
            },
            "kafka": {
                "host": settings.kafka_bootstrap or "localhost:9092",
                "protocol": "kafka",
                "description": "GX_KAFKA_BOOTSTRAP; the sandbox runs an embedded mock cluster",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }
