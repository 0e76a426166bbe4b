"""SSH public keys: parsed by the pyca library, refused with BAD_SSH_KEY when unfit."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from exchange.gateway.ssh_keys import (
    SSH_KEY_CHARS_MAX,
    SSH_KEY_COMMENT_CHARS_MAX,
    SSH_RSA_BITS_MIN,
    parse_ssh_key,
)
from exchange.wire import ErrorCode, WireError


def openssh_line(private: object, comment: str = "") -> str:
    public = private.public_key()  # type: ignore[attr-defined]
    line = public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return f"{line} {comment}".rstrip()


@pytest.fixture(scope="module")
def ed25519_line() -> str:
    return openssh_line(ed25519.Ed25519PrivateKey.generate(), "alice@laptop")


def refused(text: object) -> str:
    with pytest.raises(WireError) as caught:
        parse_ssh_key(text)
    assert caught.value.code == ErrorCode.BAD_SSH_KEY
    return str(caught.value)


def test_ed25519_key_parses_with_the_fingerprint_ssh_keygen_prints(ed25519_line):
    key = parse_ssh_key(ed25519_line)
    kind, blob, comment = ed25519_line.split(" ")
    expected = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).rstrip(b"=")
    assert key.fingerprint == "SHA256:" + expected.decode()
    assert (key.kind, key.bits, key.comment) == ("ssh-ed25519", 256, "alice@laptop")
    assert key.public_key == f"{kind} {blob}"


@pytest.mark.parametrize(
    ("curve", "kind", "bits"),
    [
        (ec.SECP256R1(), "ecdsa-sha2-nistp256", 256),
        (ec.SECP384R1(), "ecdsa-sha2-nistp384", 384),
        (ec.SECP521R1(), "ecdsa-sha2-nistp521", 521),
    ],
)
def test_ecdsa_keys_parse(curve, kind, bits):
    key = parse_ssh_key(openssh_line(ec.generate_private_key(curve)))
    assert (key.kind, key.bits, key.comment) == (kind, bits, "")


def test_rsa_needs_3072_bits():
    strong = rsa.generate_private_key(public_exponent=65537, key_size=SSH_RSA_BITS_MIN)
    assert parse_ssh_key(openssh_line(strong)).bits == SSH_RSA_BITS_MIN
    weak = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "at least 3072 bits, found 2048" in refused(openssh_line(weak))


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_dsa_is_not_accepted():
    line = openssh_line(dsa.generate_private_key(key_size=1024))
    assert "not accepted" in refused(line)


def test_surrounding_whitespace_is_forgiven_but_nothing_else(ed25519_line):
    assert parse_ssh_key(f"  {ed25519_line}\n").comment == "alice@laptop"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda line: line.split(" ")[0],  # no key data
        lambda line: line.replace("ssh-ed25519 AAAA", "ssh-ed25519 AAAB", 1),  # altered blob
        lambda line: line[: len(line) // 2],  # truncated
        lambda line: "ssh-rsa " + line.split(" ")[1],  # type that does not match the blob
        lambda line: "not a key at all",
        lambda line: "",
        lambda line: "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n",
    ],
)
def test_malformed_keys_are_refused(ed25519_line, mangle):
    refused(mangle(ed25519_line))


def test_limits_and_types_are_enforced(ed25519_line):
    assert "expected an OpenSSH public key line" in refused(None)
    assert "expected an OpenSSH public key line" in refused(["ssh-ed25519"])
    assert f"at most {SSH_KEY_CHARS_MAX}" in refused(ed25519_line + " " + "x" * SSH_KEY_CHARS_MAX)
    long_comment = "c" * (SSH_KEY_COMMENT_CHARS_MAX + 1)
    assert "comment" in refused(ed25519_line.rsplit(" ", 1)[0] + " " + long_comment)
    assert "comment" in refused(ed25519_line + "\x1b[31m")  # no terminal escapes shown back
