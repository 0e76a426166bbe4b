"""The AsyncAPI document: valid AsyncAPI 3.0.0, complete, generated from the Structs, and strict.

The live check (every frame of a running gateway and every topic record against it) is
tests/integration/test_asyncapi_live.py.
"""

from __future__ import annotations

import copy

import msgspec
import pytest
from jsonschema import Draft7Validator

from exchange.gateway import messages
from exchange.gateway.asyncapi import _asyncapi_schema, asyncapi_document
from exchange.gateway.orders import PlaceParams
from exchange.gateway.ws import METHODS, PRIVATE_CHANNELS, PUBLIC_CHANNELS
from schemas.commands import COMMAND_TYPES
from schemas.events import EVENT_TYPES
from schemas.marketdata import MARKETDATA_TYPES
from streams.settings import Settings
from streams.topics import topics
from tests.support.asyncapi import Contract, ContractError, official_schema


@pytest.fixture(scope="module")
def document() -> dict:
    return asyncapi_document()


@pytest.fixture(scope="module")
def official() -> Draft7Validator:
    schema = official_schema()
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def test_document_is_valid_against_the_official_asyncapi_3_schema(document, official):
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in official.iter_errors(document)]
    assert errors == []
    assert msgspec.json.decode(msgspec.json.encode(document)) == document  # plain JSON


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["operations"]["ws.ping"].update(action="publish"),  # AsyncAPI 2's verb
        lambda d: d.pop("info"),
        lambda d: d["channels"]["ws"].update(address=7),
        lambda d: d["components"]["schemas"]["Order"].update(discriminator={"propertyName": "x"}),
        lambda d: d["components"]["schemas"]["Order"]["properties"].update(qty={"type": "text"}),
        lambda d: d["channels"]["kafka.events"]["bindings"]["kafka"].update(partitions=0),
    ],
)
def test_official_schema_notices_a_broken_document(document, official, break_it):
    broken = copy.deepcopy(document)
    break_it(broken)
    assert list(official.iter_errors(broken))


def test_every_payload_schema_is_a_draft_07_schema(document):
    for name, schema in document["components"]["schemas"].items():
        Draft7Validator.check_schema(schema)
        assert "prefixItems" not in str(schema), name  # rewritten for draft-07


def test_every_method_has_a_request_an_answer_and_an_error(document):
    assert set(messages.RESULTS) == set(METHODS)
    for method in METHODS:
        operation = document["operations"][f"ws.{method}"]
        assert operation["action"] == "receive"
        replies = [ref["$ref"].rsplit("/", 1)[1] for ref in operation["reply"]["messages"]]
        assert len(replies) == 2 and replies[1] == "ErrorAnswer", (method, replies)


def test_every_subscription_channel_and_topic_has_a_channel(document):
    assert set(messages.PUSHES) == PUBLIC_CHANNELS | set(PRIVATE_CHANNELS)
    for channel in [*messages.PUSHES, "heartbeat"]:
        assert document["channels"][f"ws.{channel}"]["address"] == "/ws"
        assert document["operations"][f"ws.{channel}.push"]["action"] == "send"
    for role, topic in topics(Settings()).items():
        channel = document["channels"][f"kafka.{role}"]
        assert channel["address"] == topic.name
        assert channel["bindings"]["kafka"]["partitions"] == topic.partitions


def test_topic_prefix_follows_the_settings():
    document = asyncapi_document(Settings(topic_prefix="test."))
    assert document["channels"]["kafka.events"]["address"] == "test.events"


def test_payloads_are_msgspecs_schemas_of_the_structs(document):
    (_,), components = msgspec.json.schema_components(
        [PlaceParams], ref_template="#/components/schemas/{name}"
    )
    assert document["components"]["schemas"]["PlaceParams"] == _asyncapi_schema(
        components["PlaceParams"]
    )
    schemas = document["components"]["schemas"]
    for kind in (*COMMAND_TYPES, *EVENT_TYPES, *MARKETDATA_TYPES):
        assert schemas[kind.__name__]["title"] == kind.__name__
    record = schemas["CommandsRecord"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in record["anyOf"]} == {
        kind.__name__ for kind in COMMAND_TYPES
    }
    assert record["discriminator"] == "type"


def test_tuples_become_draft_07_item_arrays():
    schema = {"type": "array", "prefixItems": [{"type": "integer"}] * 2, "items": False}
    assert _asyncapi_schema(schema) == {
        "type": "array",
        "items": [{"type": "integer"}] * 2,
        "additionalItems": False,
    }


ORDER = {
    "order_id": 7, "client_order_id": "c1", "symbol": "H100-SXM.us-east.1h.2026-11-27T10",
    "side": "buy", "type": "limit", "tif": "gtc", "price": "2.400", "qty": "5", "cum_qty": "2",
    "leaves_qty": "3", "status": "partially_filled", "post_only": False, "stp": "cancel_taker",
    "expire_ns": "0", "ts_ns": "1",
}  # fmt: skip


def test_validator_accepts_a_good_frame_and_rejects_a_wrong_field_type(document):
    contract = Contract(document)
    answer = {"id": 1, "status": 200, "result": {"order": ORDER}}
    assert contract.received(answer, "order.cancel") == "OrderCancelAnswer"
    bad = copy.deepcopy(answer)
    bad["result"]["order"]["qty"] = 5  # a number where the wire has a decimal string
    with pytest.raises(ContractError, match="qty"):
        contract.received(bad, "order.cancel")
    extra = copy.deepcopy(answer)
    extra["result"]["order"]["colour"] = "red"  # a field the document does not name
    with pytest.raises(ContractError):
        contract.received(extra, "order.cancel")
    with pytest.raises(ContractError):
        contract.request({"id": 1, "method": "order.place", "params": {"symbol": "X", "qty": 5}})
    with pytest.raises(ContractError, match="not in the document"):
        contract.received({"channel": "weather", "conn_seq": 1}, None)
