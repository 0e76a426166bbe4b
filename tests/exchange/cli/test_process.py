"""Every `gx` process command shares one path: the same broker option, message and supervision."""

from __future__ import annotations

import pytest

from exchange.cli.gx import build_parser, main
from streams.settings import NO_BROKER

PROCESSES = (
    ["engine", "--shard", "0"],
    ["clock"],
    ["topics", "create"],
    ["settle"],
    ["marketdata"],
    ["provision"],
    ["audit"],
    ["gateway"],
)


@pytest.mark.parametrize("argv", PROCESSES, ids=lambda argv: " ".join(argv))
def test_a_process_without_a_broker_says_the_one_message_and_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GX_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("GX_GATEWAY_MASTER_KEY", "test-master-key-0123456789abcdefghijklmnop")
    assert main(argv) == 2
    assert (
        capsys.readouterr().err
        == f"gx {' '.join(argv[:2] if argv[0] == 'topics' else argv[:1])}: {NO_BROKER}\n"
    )


@pytest.mark.parametrize("argv", PROCESSES, ids=lambda argv: " ".join(argv))
def test_every_process_takes_bootstrap_the_same_way(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "--bootstrap", "broker:9092"])
    assert args.bootstrap == "broker:9092"


@pytest.mark.parametrize("spelling", ["--dsn", "--database-url"])
@pytest.mark.parametrize(
    "command", [["engine", "--shard", "0"], ["settle"], ["gateway"], ["audit"]]
)
def test_the_database_option_has_one_name_in_every_process(
    command: list[str], spelling: str
) -> None:
    args = build_parser().parse_args([*command, spelling, "postgresql://db/gx"])
    assert args.dsn == "postgresql://db/gx"
