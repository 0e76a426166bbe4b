"""The gateway's OpenAPI document (`/api/v1/schema/openapi.json`), true to what the gateway answers.

- Every error answer is the wire's `{"error": {"code", "msg", "retryable"}}` (component
  `WireError`), documented under each status a route can answer; each status lists the codes it
  carries, read from `exchange.wire.ERROR_STATUS`, the table the answers themselves use.
- 400 means the request breaks the document (a pattern, range, enum or required field); a
  request that fits the document is answered 2xx, or refused by state or rule with 401, 403, 404,
  409, 422 (the engine, an SSH key that does not load), 429, 503 or 504.
- Signed routes name the four signing headers (exchange/wire.py) as one security requirement.
- Constraints that depend on the catalog (the price grammar follows the tick) are filled in when
  the document is served for a gateway (`GatewayDocument`).
- Served as JSON only: no documentation page that would load scripts from a CDN into the
  gateway's origin.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus
from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.openapi import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme

from exchange import wire
from exchange.wire import ERROR_STATUS

__all__ = [
    "ErrorBody",
    "GatewayDocument",
    "PRICE_UNIT",
    "SECURITY_SCHEMES",
    "SIGNED",
    "closed",
    "components",
    "documented",
    "errors",
    "price_field",
]

# A placeholder `format` marks the schema of a price string, whose pattern the catalog's tick
# sets (Litestar accepts only Schema fields as extras); the served document has the pattern.
UNIT_KEY = "format"
PRICE_UNIT = "x-gx-price"
_SIGNING_HEADERS = (
    wire.HEADER_KEY,
    wire.HEADER_TS,
    wire.HEADER_NONCE,
    wire.HEADER_SIGN_VERSION,
    wire.HEADER_SIGNATURE,
)
SECURITY_SCHEMES = {
    name: SecurityScheme(
        type="apiKey",
        name=name,
        security_scheme_in="header",
        description=(
            "One of the signing headers (GX-SIGN-VERSION: 2); see exchange/wire.py for how to "
            "sign. Without GX-SIGN-VERSION a request is read as version 1 until that is retired."
        ),
    )
    for name in _SIGNING_HEADERS
}
# All the headers together: one requirement object.
SIGNED: list[SecurityRequirement] = [{name: [] for name in _SIGNING_HEADERS}]
# Answers the gateway gives without a wire code of its own (the engine's refusals are named by
# `schemas.codes.Reject`, under REJECTED's status).
_STATUS_NOTES = {422: "the engine's refusals, named by their schemas.codes.Reject name"}


class ErrorDetail(msgspec.Struct, kw_only=True):
    """The `error` object; refusals by the engine add `engine_code` and `reason`."""

    code: Annotated[str, msgspec.Meta(description="a stable code (exchange.wire.ErrorCode)")]
    msg: Annotated[str, msgspec.Meta(description="what was expected and what was found")]
    retryable: bool
    retry_after_ms: Annotated[int, msgspec.Meta(ge=1)] | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error answer of the REST API."""

    error: ErrorDetail


def _description(status: int) -> str:
    codes = sorted(code for code, code_status in ERROR_STATUS.items() if code_status == status)
    text = f"{HTTPStatus(status).phrase}; the wire's codes of this status (some only on the WebSocket): "
    text += ", ".join(codes) or "none"
    note = _STATUS_NOTES.get(status)
    return f"{text}; {note}" if note else text


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """The `responses=` of a route: the wire error body under each status it can answer."""
    return {
        status: ResponseSpec(
            data_container=ErrorBody, description=_description(status), generate_examples=False
        )
        for status in sorted(set(statuses))
    }


def components() -> Components:
    """The components the routes refer to beyond their own bodies: the signing headers."""
    return Components(security_schemes=dict(SECURITY_SCHEMES))


def documented(description: str | None = None, **schema: Any) -> Any:
    """A `msgspec.Meta` that documents what the gateway checks itself, with its own codes
    (a pattern, a minimum): msgspec does not enforce it, so the code the check answers stays."""
    extra: dict[str, Any] = {"extra": schema}
    if description is not None:
        extra["description"] = description
    return msgspec.Meta(extra_json_schema=extra)


def price_field(description: str) -> Any:
    """The `msgspec.Meta` of a price string: its pattern is the catalog's (`GatewayDocument`)."""
    return msgspec.Meta(
        extra_json_schema={"description": description, "extra": {UNIT_KEY: PRICE_UNIT}}
    )


def closed(*bodies: type[msgspec.Struct]) -> dict[str, dict[str, Any]]:
    """`GatewayDocument` rules: the bodies that refuse unknown fields say so in the document."""
    return {
        body.__name__: {"additionalProperties": False}
        for body in bodies
        if body.__struct_config__.forbid_unknown_fields
    }


def _merge(schema: dict[str, Any], rule: dict[str, Any]) -> None:
    """Add a rule's keywords to a schema; objects (`properties`, a field's schema) merge."""
    for key, value in rule.items():
        if isinstance(value, dict) and isinstance(schema.get(key), dict):
            _merge(schema[key], value)
        else:
            schema[key] = value


def _filled(node: Any, patterns: dict[str, str]) -> Any:
    """Copy a document tree, setting the pattern of every node marked with a unit."""
    if isinstance(node, list):
        return [_filled(item, patterns) for item in node]
    if not isinstance(node, dict):
        return node
    filled = {key: _filled(value, patterns) for key, value in node.items()}
    if filled.get(UNIT_KEY) in patterns:
        filled["pattern"] = patterns[filled.pop(UNIT_KEY)]
    return filled


class GatewayDocument(JsonRenderPlugin):
    """The JSON document with this gateway's catalog-dependent patterns filled in."""

    def __init__(
        self,
        price_pattern: str,
        rules: dict[str, dict[str, Any]] | None = None,
        paths: Iterable[str] = ("/openapi.json",),
    ) -> None:
        """`rules`: JSON Schema keywords a body component takes as a whole (an `anyOf` tying
        fields together), by component name."""
        super().__init__(path=list(paths))
        self._patterns = {PRICE_UNIT: price_pattern}
        self._rules = rules or {}
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The document as JSON, built once."""
        if self._rendered is None:
            document = _filled(openapi_schema, self._patterns)
            schemas = document.get("components", {}).get("schemas", {})
            for name, rule in self._rules.items():  # a component exists once a route uses it
                if name in schemas:
                    _merge(schemas[name], rule)
            self._rendered = json.dumps(document).encode()
        return self._rendered
