"""SSH keys in PostgreSQL, and through the gateway's REST and WebSocket APIs and the SDK."""

from __future__ import annotations

import asyncpg
import pytest

from exchange.client import GatewayError, NotFoundError
from exchange.gateway.ssh_keys import SSH_KEYS_PER_ACCOUNT_MAX, SshKeyStore
from exchange.wire import ErrorCode, WireError
from streams.ledger.schema import migrate
from tests.support.gateway_harness import running_exchange, socket

from .conftest import run
from .test_sdk import client
from .test_sdk import new_ssh_key as new_key

pytestmark = pytest.mark.timeout(120)


def test_store_adds_lists_removes_and_caps_per_account(dsn):
    async def main() -> None:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            store = SshKeyStore(pool)
            first = await store.add(11, new_key("one"))
            assert await store.add(11, first.public_key + " other") == first  # same key: no-op
            for i in range(SSH_KEYS_PER_ACCOUNT_MAX - 1):
                await store.add(11, new_key(f"k{i}"))
            with pytest.raises(WireError) as full:
                await store.add(11, new_key())
            assert full.value.code == ErrorCode.SSH_KEYS_FULL
            keys = await store.list(11)
            assert len(keys) == SSH_KEYS_PER_ACCOUNT_MAX and keys[0].comment == "one"
            assert await store.list(12) == []  # another account sees none of them
            assert not await store.remove(12, first.fingerprint)
            assert await store.remove(11, first.fingerprint)
            assert first.fingerprint not in {k.fingerprint for k in await store.list(11)}
            assert (await store.of_accounts([11, 12]))[12] == []
        finally:
            await pool.close()

    run(main())


def test_rest_websocket_and_sdk_register_list_and_remove_keys(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            async with client(ex, "trader") as sdk, client(ex, "provider") as other:
                added = await sdk.add_ssh_key(new_key("laptop"))
                assert added.fingerprint.startswith("SHA256:") and added.type == "ssh-ed25519"
                assert added.comment == "laptop" and added.bits == 256
                assert [k.fingerprint for k in await sdk.fetch_ssh_keys()] == [added.fingerprint]
                assert await other.fetch_ssh_keys() == []
                with pytest.raises(GatewayError) as bad:
                    await sdk.add_ssh_key("ssh-ed25519 AAAAnotakey")
                assert bad.value.code == "BAD_SSH_KEY"
                with pytest.raises(NotFoundError):
                    await other.remove_ssh_key(added.fingerprint)  # not its key
                # Over the socket, after logon.
                async with socket(ex) as ws:
                    assert (await ws.logon(ex.keys["trader"]))["status"] == 200
                    answer = await ws.request("ssh_key.add", {"public_key": new_key("ws")})
                    assert answer["status"] == 200 and answer["result"]["comment"] == "ws"
                    listed = (await ws.request("ssh_key.list"))["result"]["ssh_keys"]
                    assert [k["comment"] for k in listed] == ["laptop", "ws"]
                    wrong = await ws.request("ssh_key.add", {"public_key": 7})
                    assert wrong["error"]["code"] == "BAD_REQUEST"
                    unknown = await ws.request("ssh_key.remove", {"fingerprint": "SHA256:x"})
                    assert unknown["error"]["code"] == "NOT_FOUND"
                await sdk.remove_ssh_key(added.fingerprint)
                assert [k.comment for k in await sdk.fetch_ssh_keys()] == ["ws"]

    run(scenario(), timeout_s=90)
