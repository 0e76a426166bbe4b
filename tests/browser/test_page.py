"""The market page in headless Chromium, against the whole exchange running in-process.

The test trades from the side (a provider and a maker over raw WebSockets) and from the page's
own ticket, and checks that the page's book ladder, trades tape, charts, order list and provider
panel follow; it also breaks the page's book and its connection on purpose and checks that the
page repairs both (a checksum mismatch resyncs; a reconnect resumes with `resume_from_seq`).

A second scenario runs a delivery for the page's account from trade to settlement (gate closure,
the provider's confirmation with access, the page's Dispute, an operator's refund) and checks the
Deliveries panel and the provider panel at each step.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from exchange import wire
from exchange.sandbox.demo import demo_keys_route
from schemas import commands as c
from schemas.symbols import parse_symbol
from streams.marketdata.state import book_checksum
from tests.integration.conftest import run
from tests.support.gateway_harness import (
    PROVIDER,
    TRADER,
    Exchange,
    Socket,
    rest,
    running_exchange,
    socket,
)

from .conftest import CHROMIUM_ARGS

pytestmark = pytest.mark.timeout(240)

scenario_s_max = 200  # a fresh checkout compiles the engine kernels first (about 25 s)
expect_ms = 10_000  # how long each expectation waits for the page


async def place(ws: Socket, symbol: str, side: str, price: str, qty: str) -> dict[str, Any]:
    params = {"symbol": symbol, "side": side, "type": "limit", "price": price, "qty": qty}
    answer = await ws.request("order.place", params)
    assert answer["status"] == 200, answer
    return answer["result"]


CHECKSUM_BOOK = {  # 12 levels a side: the checksum covers only the top 10
    "asks": [[f"{2 + i / 100:.3f}", str(i + 1)] for i in range(12)],
    "bids": [[f"{1.99 - i / 100:.3f}", str(12 - i)] for i in range(12)],
}


async def check_checksums(page: Any) -> None:
    """The page's CRC32 and book checksum equal zlib's and `book_checksum`."""
    texts = ["", "a", "2.500:3|2.300:6", "ünïcode ✓", "x" * 1000]
    found = await page.evaluate(
        """async ([texts, book]) => {
            const { crc32 } = await import("/crc32.js");
            const { bookChecksum } = await import("/book.js");
            return { crcs: texts.map(crc32), book: bookChecksum(book.asks, book.bids) };
        }""",
        [texts, CHECKSUM_BOOK],
    )
    assert found["crcs"] == [zlib.crc32(t.encode()) for t in texts], found
    assert found["book"] == book_checksum(CHECKSUM_BOOK["asks"], CHECKSUM_BOOK["bids"]), found


async def prices(ladder: Any) -> list[str]:
    """The prices of a ladder side's rows, top to bottom."""
    rows = ladder.locator("tr[data-price]")
    return list(await rows.evaluate_all("rows => rows.map(row => row.dataset.price)"))


def demo_keys(ex: Exchange) -> dict[str, dict[str, Any]]:
    """The body of /sandbox/demo.json for the harness's trader and provider keys."""
    return {
        name: {"key": k.key_id, "secret": k.secret, "account": k.account}
        for name, k in ex.keys.items()
        if name in ("trader", "provider")
    }


@contextlib.asynccontextmanager
async def market_page(chromium: Path, screenshot_path: Path) -> AsyncIterator[Any]:
    """A Chromium page; on leaving, a screenshot, and a failure if the page had an error."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1440, "height": 1000})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None,
        )
        try:
            yield page
            assert not problems, problems
        finally:
            await page.screenshot(path=str(screenshot_path), full_page=True)
            print(f"\nscreenshot of the market page: {screenshot_path}")
            await browser.close()


def test_page_follows_the_market_and_trades_from_its_ticket(
    broker: Any, dsn: str, chromium: Path, screenshot_path: Path
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=expect_ms)

    async def scenario() -> None:
        served: dict[str, dict[str, Any]] = {}  # filled once the keys exist; served by reference
        async with running_exchange(broker, dsn, extra_handlers=[demo_keys_route(served)]) as ex:
            served.update(demo_keys(ex))
            key = parse_symbol(ex.symbol)
            async with socket(ex) as provider, socket(ex) as maker:
                await provider.logon(ex.keys["provider"])
                await maker.logon(ex.keys["maker"])
                async with market_page(chromium, screenshot_path) as page:
                    await check_page(ex, page, expect, provider, maker, key)

    run(scenario(), timeout_s=scenario_s_max)


async def check_page(
    ex: Exchange, page: Any, expect: Any, provider: Socket, maker: Socket, key: Any
) -> None:
    """Drive the page through the scenario; `expect` is Playwright's, imported by the test."""
    symbol = ex.symbol
    await page.goto(ex.url + "/")
    status = page.locator("#status")
    await expect(status).to_have_attribute("data-state", "live")
    await expect(status).to_contain_text("logged on")

    # Pick another product first, so that choosing the harness's instrument is a real change.
    await page.select_option("#pick-gpu", key.gpu)
    await page.select_option("#pick-region", key.region)
    await page.select_option("#pick-product", "1d")
    await expect(page.locator("#symbol")).to_contain_text(".1d.")
    await page.select_option("#pick-product", key.product)
    await page.select_option("#pick-delivery", symbol)
    await expect(page.locator("#symbol")).to_have_text(symbol)
    await expect(page.locator("#book-meta")).to_have_attribute("data-synced", "true")
    await check_checksums(page)

    # The provider quotes and the maker lifts part of the best ask: ladder and tape follow.
    asks = page.locator("#book-asks")
    bids = page.locator("#book-bids")
    await place(provider, symbol, "sell", "2.500", "3")
    await place(provider, symbol, "sell", "2.600", "2")
    await place(maker, symbol, "buy", "2.300", "6")
    await place(maker, symbol, "buy", "2.350", "3")
    await expect(asks.locator('tr[data-price="2.500"]')).to_have_attribute("data-qty", "3")
    await expect(asks.locator('tr[data-price="2.600"]')).to_have_attribute("data-qty", "2")
    await expect(bids.locator('tr[data-price="2.300"]')).to_have_attribute("data-qty", "6")
    await expect(bids.locator('tr[data-price="2.350"]')).to_have_attribute("data-qty", "3")
    # Asks read downwards to the best (lowest) next to the spread, bids from the best down.
    assert await prices(asks) == ["2.600", "2.500"]
    assert await prices(bids) == ["2.350", "2.300"]
    await place(maker, symbol, "buy", "2.500", "1")
    await expect(asks.locator('tr[data-price="2.500"]')).to_have_attribute("data-qty", "2")
    trade = page.locator('#trades tr[data-price="2.500"]')
    await expect(trade).to_have_count(1)
    await expect(trade).to_have_attribute("data-qty", "1")
    await expect(page.locator("#stat-last")).to_have_text("2.500")
    await expect(page.locator("#candles rect.candle")).to_have_count(1)
    await expect(page.locator("#index-price")).not_to_have_text("–")
    await expect(page.locator("#curve circle.curve-point").first).to_be_visible()
    await expect(page.locator(f'#capacity tr[data-gpu="{key.gpu}"]')).to_have_count(1)

    # An order from the ticket rests in the book and is listed with its status.
    await page.fill("#ticket-price", "2.400")
    await page.fill("#ticket-qty", "2")
    await page.click('label[for="side-buy"]')
    await page.select_option("#ticket-tif", "gtc")
    await page.click("#ticket-submit")
    await expect(page.locator("#ticket-result")).to_have_attribute("data-status", "new")
    await expect(bids.locator('tr[data-price="2.400"]')).to_have_attribute("data-qty", "2")
    row = page.locator('#executions tr[data-status="new"]')
    await expect(row).to_have_count(1)
    order_id = int(await row.get_attribute("data-order-id"))
    answer = await rest(ex, "GET", f"/api/v1/orders/{order_id}", ex.keys["trader"])
    assert answer.json()["status"] == "new" and answer.json()["price"] == "2.400", answer.json()

    # An IOC buy through the ask fills at once: the answer, the tape and the list say so.
    await page.fill("#ticket-price", "2.600")
    await page.fill("#ticket-qty", "1")
    await page.select_option("#ticket-tif", "ioc")
    await page.click("#ticket-submit")
    await expect(page.locator("#ticket-result")).to_have_attribute("data-status", "filled")
    await expect(page.locator('#trades tr[data-price="2.500"]')).to_have_count(2)
    await expect(page.locator('#executions tr[data-status="filled"]')).to_have_count(1)

    # Cancel from the list: the order is cancelled and leaves the ladder.
    await page.click(f'#executions tr[data-order-id="{order_id}"] button.cancel')
    await expect(page.locator(f'#executions tr[data-order-id="{order_id}"]')).to_have_attribute(
        "data-status", "canceled"
    )
    await expect(bids.locator('tr[data-price="2.400"]')).to_have_count(0)

    # An operator's halt shows on the page (ticker channel) and disables its ticket; the engine
    # refuses new orders meanwhile. Resuming hides it again.
    halt = page.locator("#halt")
    await expect(halt).to_be_hidden()
    await ex.send(c.HaltInstrument(symbol=symbol, reason="test"))
    await expect(halt).to_be_visible()
    await expect(halt).to_have_text("halted by the operator")
    await expect(page.locator("#ticket-submit")).to_be_disabled()
    params = {"symbol": symbol, "side": "buy", "type": "limit", "price": "2.300", "qty": "1"}
    refused = await maker.request("order.place", params)
    assert refused["error"]["reason"] == "INSTRUMENT_HALTED", refused
    await ex.send(c.ResumeInstrument(symbol=symbol))
    await expect(halt).to_be_hidden()
    await expect(page.locator("#ticket-submit")).to_be_enabled()

    stats = await page.evaluate("() => ({...window.gx.state.stats})")
    assert stats["checksumFailures"] == 0 and stats["resyncs"] == 0, stats
    assert stats["updates"] >= 5, stats

    # A corrupted local book fails the next checksum: the page resubscribes for a snapshot.
    await page.evaluate("() => window.gx.state.book.asks.set('9.999', '1')")
    await place(provider, symbol, "sell", "2.700", "5")
    await expect(asks.locator('tr[data-price="2.700"]')).to_have_attribute("data-qty", "5")
    await expect(asks.locator('tr[data-price="9.999"]')).to_have_count(0)
    stats = await page.evaluate("() => ({...window.gx.state.stats})")
    assert stats["checksumFailures"] == 1 and stats["resyncs"] == 1, stats

    # A lost connection: the page reconnects, logs on again and resumes the book from its seq,
    # receiving the update it missed while away instead of a new snapshot.
    snapshots = stats["snapshots"]
    await page.evaluate("() => window.gx.feed.drop('dropped by the test')")
    await place(provider, symbol, "sell", "2.550", "4")
    await expect(status).to_have_attribute("data-state", "live")
    await expect(asks.locator('tr[data-price="2.550"]')).to_have_attribute("data-qty", "4")
    stats = await page.evaluate("() => ({...window.gx.state.stats})")
    assert stats["bookResumes"] == 1 and stats["snapshots"] == snapshots, stats
    assert stats["checksumFailures"] == 1, stats
    await expect(page.locator('#executions tr[data-status="canceled"]')).to_have_count(1)
    await check_signing(ex, page)
    await page.wait_for_timeout(300)  # let the last frame paint before the screenshot


async def check_signing(ex: Exchange, page: Any) -> None:
    """The page signs version 2 (sign.js), byte for byte as exchange/wire.py does, and every
    signature the gateway took (the page's logons and requests, the harness's) was version 2."""
    parts = ("gx" + "0a" * 12, 1_790_000_000_000, "nonce-0001", "post", "/api/v1/orders?a=1")
    body = '{"note":"é\\n"}'
    signed = await page.evaluate(
        "async ([parts, body]) => (await import('./sign.js')).sign('secret-1', ...parts, body)",
        [list(parts), body],
    )
    assert signed == wire.signature("secret-1", *parts, body.encode())
    assert set(ex.gateway.signature_versions) == {2}, ex.gateway.signature_versions


MINUTE_NS = 60_000_000_000
# Markup in the instructions must show as text: the provider writes them, the holder's page shows.
ACCESS = {
    "host": "gpu-7.example.com",
    "port": 2222,
    "user": "gx",
    "instructions": "<b>run</b> nvidia-smi && <img src=x onerror=alert(1)>",
}


def usd(amount: str) -> str:
    """A wire amount as the page shows it (format.js `usd`)."""
    return f"${float(amount):,.2f}"


def test_deliveries_panel_shows_the_access_and_the_dispute_then_the_refund(
    broker: Any, dsn: str, chromium: Path, screenshot_path: Path
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=expect_ms)

    async def scenario() -> None:
        served: dict[str, dict[str, Any]] = {}
        async with running_exchange(
            broker, dsn, provisioning=True, extra_handlers=[demo_keys_route(served)]
        ) as ex:
            served.update(demo_keys(ex))
            async with socket(ex) as provider, socket(ex) as holder:
                await provider.logon(ex.keys["provider"])
                await holder.logon(ex.keys["trader"])  # the page's account
                answer = await provider.request("subscribe", {"channel": "provisioning"})
                assert answer["status"] == 200, answer
                async with market_page(chromium, screenshot_path) as page:
                    await check_deliveries(ex, page, expect, provider, holder)

    run(scenario(), timeout_s=scenario_s_max)


async def check_deliveries(
    ex: Exchange, page: Any, expect: Any, provider: Socket, holder: Socket
) -> None:
    """Trade, close the gate, confirm, dispute and refund; the panels follow each step."""
    key = parse_symbol(ex.symbol)
    await page.goto(ex.url + "/")
    await expect(page.locator("#status")).to_contain_text("logged on")
    await expect(page.locator("#balances")).to_contain_text("pending $0.00")
    panel = page.locator("#holder-deliveries")
    await expect(panel).to_contain_text("no deliveries")

    # A trade of 2 lots between the provider and the page's account, then gate closure.
    await place(provider, ex.symbol, "sell", "2.000", "2")
    await place(holder, ex.symbol, "buy", "2.000", "2")
    await ex.send(c.ClockTick(ts_ns=key.start_ns - 10 * MINUTE_NS))
    row = panel.locator("tr[data-obligation-id]")
    await expect(row).to_have_count(1)
    await expect(row).to_have_attribute("data-state", "assigned")
    await expect(row).to_contain_text("waiting for the provider")
    await expect(row.locator("button.dispute")).to_have_count(0)  # the engine would refuse it
    obligation_id = int(await row.get_attribute("data-obligation-id"))
    await expect(row).to_have_attribute("data-symbol", ex.symbol)
    await expect(row.locator("td").nth(2)).to_have_text("2")

    # The delivery starts: the provider confirms with access, and the page shows it as text.
    await ex.send(c.ClockTick(ts_ns=key.start_ns))
    await provider.wait_push(
        lambda p: (
            p["channel"] == "provisioning"
            and p["obligation_id"] == obligation_id
            and p["stage"] == "start"
        ),
        timeout_s=30,
    )
    answer = await provider.request(
        "provision.confirm", {"obligation_id": obligation_id, "access": ACCESS}
    )
    assert answer["status"] == 200, answer
    await expect(row).to_have_attribute("data-state", "confirmed", timeout=30_000)
    port, user, host = ACCESS["port"], ACCESS["user"], ACCESS["host"]
    await expect(row.locator("code.ssh")).to_have_text(f"ssh -p {port} {user}@{host}")
    await expect(row.locator(".instructions")).to_have_text(str(ACCESS["instructions"]))
    assert await row.locator(".instructions b, .instructions img").count() == 0

    # The provider panel lists it as the provider's, nothing released or settled yet.
    provided = page.locator(f'#provider-deliveries tbody[data-obligation-id="{obligation_id}"]')
    await expect(provided).to_have_attribute("data-state", "confirmed")
    await expect(provided.locator(".released")).to_have_text("0/1 h")

    # A lost connection: the snapshot on the new subscription brings the delivery back as it was.
    await page.evaluate("() => window.gx.feed.drop('dropped by the test')")
    await expect(page.locator("#status")).to_have_attribute("data-state", "live")
    assert await page.evaluate("() => window.gx.feed.stats.connects") == 2
    await expect(row).to_have_attribute("data-state", "confirmed")
    await expect(row.locator("code.ssh")).to_have_text(f"ssh -p {port} {user}@{host}")

    # In the first hour the holder disputes from the page; an operator refunds the holder.
    await row.locator("button.dispute").click()
    await expect(row).to_have_attribute("data-state", "disputed")
    await expect(row.locator("button.dispute")).to_have_count(0)
    await ex.send(c.ResolveDispute(obligation_id=obligation_id, release=False))
    await expect(row).to_have_attribute("data-state", "settled")
    settled = ex.gateway.deliveries.delivery(TRADER, obligation_id)
    assert settled["outcome"] == "failed" and settled["provider"] == PROVIDER, settled
    assert float(settled["refund"]) > 0 and float(settled["penalty"]) > 0, settled
    await expect(row).to_contain_text("settled · failed")
    await expect(row.locator("td").nth(5)).to_have_text(usd(settled["refund"]))
    await expect(provided).to_have_attribute("data-state", "settled")
    await expect(provided.locator(".refund")).to_have_text(usd(settled["refund"]))
    await expect(provided.locator(".penalty")).to_have_text(usd(settled["penalty"]))
    await page.wait_for_timeout(300)  # let the last frame paint before the screenshot
