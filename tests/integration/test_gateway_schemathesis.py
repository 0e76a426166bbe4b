"""Schemathesis against the gateway's served OpenAPI document: what the document says is true.

The whole exchange runs in-process (`running_exchange`, on a thread of its own) and Schemathesis'
engine runs every phase it has (examples, coverage, fuzzing, stateful) with every check, each
request signed with a real key. The requirement: no 5xx, and no answer the document does not
describe (status, content type, headers, body), for valid and invalid requests alike. A fixed
seed and named bounds keep the run repeatable and short; the test prints the cases it ran per
operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.engine import Status, from_schema
from schemathesis.engine import events as st_events

from exchange.gateway.ratelimit import RateLimits
from exchange.wire import (
    HEADER_KEY,
    HEADER_NONCE,
    HEADER_SIGN_VERSION,
    HEADER_SIGNATURE,
    HEADER_TS,
    SIGN_VERSION,
    signature,
)
from tests.support.gateway_harness import Exchange, Keys, running_exchange

SEED = 20_261_203
# The run is bounded by counts, not by time (a time bound makes the engine repeat its fuzzing
# and stateful phases until it runs out, so the cases would depend on the machine's speed).
examples_per_operation_max = 50  # per operation and phase
stateful_steps_max = 10  # requests per stateful scenario
response_time_max_s = 10.0  # the max_response_time check
exchange_start_wait_s = 240.0  # the first engine of a fresh checkout compiles its kernels
test_time_max_s = 300  # start and run together; a hung run fails here instead of blocking CI
PHASES = ("examples", "coverage", "fuzzing", "stateful")
UI_PATHS = ("/api/v1/schema/swagger", "/api/v1/schema/redoc", "/api/v1/schema/rapidoc")

pytestmark = [
    pytest.mark.timeout(test_time_max_s),
    # Raised inside schemathesis' own strategies, not by anything here.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]
SCHEMA_PATH = "/api/v1/schema/openapi.json"
# Enough that the fuzzer is not refused for its pace (429 is documented and checked apart).
LIMITS = RateLimits(
    rest_per_account_per_s=10_000,
    rest_per_account_burst=10_000,
    rest_per_ip_per_s=10_000,
    rest_per_ip_burst=10_000,
    orders_per_account_per_s=10_000,
    orders_per_account_burst=10_000,
)


class SignedRequest(requests.auth.AuthBase):
    """Sign each request as it is sent: its final path with the query, and its raw body."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        raw = body.encode() if isinstance(body, str) else bytes(body)
        ts_ms = int(time.time() * 1000)
        nonce = secrets.token_hex(12)
        method = r.method or "GET"
        r.headers[HEADER_KEY] = self.keys.key_id
        r.headers[HEADER_TS] = str(ts_ms)
        r.headers[HEADER_NONCE] = nonce
        r.headers[HEADER_SIGN_VERSION] = str(SIGN_VERSION)
        r.headers[HEADER_SIGNATURE] = signature(
            self.keys.secret, self.keys.key_id, ts_ms, nonce, method, r.path_url, raw
        )
        return r


def _signs(case: schemathesis.Case) -> bool:
    """Sign unless the case is a negative one on its headers: a request meant to arrive without
    (or with broken) signing headers is sent as generated."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return True
    headers = meta.components.get(ParameterLocation.HEADER)
    return headers is None or not headers.mode.is_negative


def _register_signing(schema: Any, keys: Keys) -> None:
    """Sign each generated request with `keys` (schemathesis' per-schema auth)."""
    signed = SignedRequest(keys)

    @schema.auth(refresh_interval=None)  # decided per case: no caching
    class Signing:
        def get(self, case: schemathesis.Case, ctx: Any) -> SignedRequest | None:
            return signed if _signs(case) else None

        def set(self, case: schemathesis.Case, data: SignedRequest, ctx: Any) -> None:
            # What schemathesis' own `set_from_requests` does: the transport applies it last,
            # to the prepared request, so the signature covers the exact path and body sent.
            case._auth = data


@contextlib.contextmanager
def exchange_on_thread(broker: Any, dsn: str) -> Iterator[Exchange]:
    """`running_exchange` on an event loop of its own thread, for a synchronous client."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="exchange", daemon=True)
    thread.start()
    started: asyncio.Future[Exchange] = loop.create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with running_exchange(broker, dsn, limits=LIMITS) as ex:
            loop.call_soon(started.set_result, ex)
            await stop.wait()

    served = asyncio.run_coroutine_threadsafe(serve(), loop)
    try:
        deadline = time.monotonic() + exchange_start_wait_s
        while not started.done():
            if served.done():
                served.result()  # raises why the exchange did not start
            if time.monotonic() > deadline:
                raise AssertionError("the exchange did not start")
            time.sleep(0.05)
        yield started.result()
    finally:
        loop.call_soon_threadsafe(stop.set)
        with contextlib.suppress(Exception):
            served.result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def _describe(check: str, failure: Any, case: schemathesis.Case) -> str:
    """One failure on two lines: the check and what it saw, then the request as curl."""
    status = getattr(failure, "status_code", None) or getattr(failure, "status", "")
    head = f"{check}: {failure.operation} [{status}] {failure.title}: {failure.message[:300]!r}"
    return head + "\n      " + case.as_curl_command()[:500]


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "continue-on-failure": True,
            "generation": {"max-examples": examples_per_operation_max, "mode": "all"},
            "checks": {
                "enabled": True,
                "max_response_time": response_time_max_s,
                # 422 is how the gateway refuses a request that fits the document: the engine
                # (cash, band, size), an SSH key that does not load. 400 stays a failure.
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]
                },
            },
            "phases": {"enabled": True, "stateful": {"max-steps": stateful_steps_max}},
        }
    )


def _print_coverage(cases: Counter[tuple[str, str]], failures: dict[Any, str]) -> None:
    print(f"\nschemathesis {schemathesis.__version__}, seed {SEED}: cases per operation")
    print("  " + " ".join(f"{phase:>8s}" for phase in PHASES) + "  operation")
    for label in sorted({label for label, _ in cases}):
        counts = " ".join(f"{cases[(label, phase)]:8d}" for phase in PHASES)
        print(f"  {counts}  {label}")
    print(f"  {sum(cases.values())} cases, {len(failures)} unique failures")
    for line in sorted(failures.values()):
        print("  FAIL", line)


def test_schemathesis_finds_the_gateway_true_to_its_openapi_document(broker, dsn, capsys):
    with exchange_on_thread(broker, dsn) as ex:
        # The document is JSON only: no page that loads a CDN's scripts into this origin.
        for path in UI_PATHS:
            assert requests.get(ex.url + path, timeout=10).status_code == 404, path
        schema = schemathesis.openapi.from_url(ex.url + SCHEMA_PATH, config=_config())
        _register_signing(schema, ex.keys["trader"])
        cases: Counter[tuple[str, str]] = Counter()
        failures: dict[Any, str] = {}
        errors: list[str] = []
        for event in from_schema(schema).execute():
            if isinstance(event, st_events.ScenarioFinished):
                for case_id, node in event.recorder.cases.items():
                    cases[(node.value.operation.label, event.phase.value)] += 1
                    for check in event.recorder.checks.get(case_id, []):
                        if check.status == Status.FAILURE and check.failure_info is not None:
                            failure = check.failure_info.failure
                            if failure not in failures:
                                failures[failure] = _describe(check.name, failure, node.value)
            elif isinstance(event, st_events.NonFatalError):
                errors.append(f"{event.label}: {event.info.format()}")
            elif isinstance(event, st_events.FatalError):
                raise event.exception
    with capsys.disabled():
        _print_coverage(cases, failures)
    assert not errors, errors
    assert not failures, f"{len(failures)} unique failures (printed above)"
    assert {phase for _, phase in cases} >= {"coverage", "fuzzing", "stateful"}
