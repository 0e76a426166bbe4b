"""gx.provisioning messages: the structured access, its checks, and old confirmations."""

from __future__ import annotations

import msgspec
import pytest

from schemas.provisioning import (
    ACCESS_HOST_CHARS_MAX,
    ACCESS_INSTRUCTIONS_CHARS_MAX,
    ACCESS_USER_CHARS_MAX,
    Access,
    ProvisionConfirmed,
    access_error,
    decode_provision,
    encode_provision,
)


def test_confirmation_with_access_round_trips():
    message = ProvisionConfirmed(
        obligation_id=7, provider=20, access=Access(host="gpu-7.example.com", port=2222, user="gx")
    )
    assert decode_provision(encode_provision(message)) == message


def test_old_confirmation_with_text_access_decodes_without_access():
    old = b'{"type":"ProvisionConfirmed","obligation_id":7,"provider":20,"access":"ssh gx@h"}'
    assert decode_provision(old) == ProvisionConfirmed(obligation_id=7, provider=20, access=None)


@pytest.mark.parametrize(
    "host", ["gpu-1.example.com", "10.0.0.7", "2001:db8::7", "localhost", "3com.example.", "a"]
)
def test_dns_names_and_ip_literals_are_hosts(host):
    assert access_error(Access(host=host, port=22, user="gx")) is None


@pytest.mark.parametrize(
    "host",
    [
        "",
        "-a.example",
        "a-.example",
        "a..example",
        "gx@host",
        "host:22",
        "1.2.3.999",
        "x" * 64 + ".example",
        ("a." * 127) + "ab",  # 256 characters
        "[::1]",
        "host name",
    ],
)
def test_other_hosts_are_refused_naming_the_field(host):
    assert (access_error(Access(host=host, port=22, user="gx")) or "").startswith("access.host:")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"port": 0}, "access.port:"),
        ({"port": 65536}, "access.port:"),
        ({"user": ""}, "access.user:"),
        ({"user": "a b"}, "access.user:"),
        ({"user": "-oProxyCommand"}, "access.user:"),
        ({"user": "u" * (ACCESS_USER_CHARS_MAX + 1)}, "access.user:"),
        ({"instructions": "i" * (ACCESS_INSTRUCTIONS_CHARS_MAX + 1)}, "access.instructions:"),
    ],
)
def test_ports_users_and_instructions_out_of_bounds_are_refused(fields, field):
    base = {"host": "gpu.example", "port": 22, "user": "gx", **fields}
    assert (access_error(Access(**base)) or "").startswith(field)


def test_decoding_holds_the_lengths_and_the_port():
    too_long = "h" * (ACCESS_HOST_CHARS_MAX + 1)
    for access in (
        {"host": too_long, "port": 22, "user": "u"},
        {"host": "h", "port": 0, "user": "u"},
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(access, Access)
