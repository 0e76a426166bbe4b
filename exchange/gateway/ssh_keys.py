"""Accounts' SSH public keys, in PostgreSQL: how a holder reaches the machines it bought.

A provider hands a delivery over by installing the holder's public keys on the machines and
telling the holder where to log in (host, port, user), as SF Compute, Vast.ai and Lambda do; no
password or private key ever crosses the exchange. An account registers at most
`SSH_KEYS_PER_ACCOUNT_MAX` keys; the provisioning request pushed to a provider carries the
holder's keys as they are when the push is made, so a key removed before then is never installed.

A key is parsed, not matched: `cryptography` loads the OpenSSH line, so a truncated or altered
key is refused however plausible it looks. Accepted are ed25519, ECDSA (P-256, P-384, P-521) and
RSA of at least `SSH_RSA_BITS_MIN` bits (the size NIST SP 800-57 requires past 2030). The key is
stored re-serialised by the library (type and base64, nothing else the client sent) with its
comment, and named by its OpenSSH fingerprint (`SHA256:` and unpadded base64 of the blob's
sha256, what `ssh-keygen -l` prints), unique per account.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hashlib
import re
import time
from collections.abc import Callable, Iterable

import asyncpg
import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from exchange.wire import ErrorCode, WireError

__all__ = [
    "SshKey",
    "SshKeyStore",
    "parse_ssh_key",
    "SSH_KEYS_PER_ACCOUNT_MAX",
    "SSH_KEY_CHARS_MAX",
    "FINGERPRINT_PATTERN",
    "FINGERPRINT_RE",
    "SSH_KEY_COMMENT_CHARS_MAX",
    "SSH_RSA_BITS_MIN",
    "SSH_KEY_CACHE_TTL_S",
    "SSH_KEY_CACHE_ACCOUNTS_MAX",
]

SSH_KEYS_PER_ACCOUNT_MAX = 10
SSH_KEY_CHARS_MAX = 4_096  # an RSA-8192 line is about 1,400 characters
SSH_KEY_COMMENT_CHARS_MAX = 100
# "SHA256:" and the unpadded base64 of a 32-byte digest, as `ssh-keygen -l` prints it.
FINGERPRINT_PATTERN = "^SHA256:[A-Za-z0-9+/]{43}$"
FINGERPRINT_RE = re.compile(FINGERPRINT_PATTERN)
SSH_RSA_BITS_MIN = 3_072
# How stale a gateway's copy of an account's keys may be when it pushes a provisioning request
# (another gateway instance may have added or removed one).
SSH_KEY_CACHE_TTL_S = 1.0
SSH_KEY_CACHE_ACCOUNTS_MAX = 10_000  # accounts whose keys one gateway remembers

_COMMENT_RE = re.compile(r"[\x20-\x7e]*")  # printable ASCII: it is shown back and to providers
_CURVES = {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521}
_KINDS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)


class SshKey(msgspec.Struct, frozen=True):
    """One registered public key: the OpenSSH line without its comment, and what names it."""

    fingerprint: str  # "SHA256:..." as `ssh-keygen -l` prints it
    kind: str  # "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", ...
    bits: int
    public_key: str  # "<kind> <base64>"
    comment: str = ""
    created_ns: int = 0

    def view(self) -> dict[str, object]:
        """The key as the API shows it."""
        return {
            "fingerprint": self.fingerprint,
            "type": self.kind,
            "bits": self.bits,
            "public_key": self.public_key,
            "comment": self.comment,
            "created_ns": str(self.created_ns),
        }


def _bad(why: str) -> WireError:
    return WireError(ErrorCode.BAD_SSH_KEY, f"public_key: {why}")


def parse_ssh_key(text: object) -> SshKey:
    """Parse one OpenSSH public key line ("type base64 [comment]"); raise BAD_SSH_KEY if unfit."""
    if not isinstance(text, str):
        raise _bad(f"expected an OpenSSH public key line, found {type(text).__name__}")
    if len(text) > SSH_KEY_CHARS_MAX:
        raise _bad(f"expected at most {SSH_KEY_CHARS_MAX} characters, found {len(text)}")
    parts = text.strip().split(None, 2)
    if len(parts) < 2:
        raise _bad("expected '<type> <base64> [comment]' as in ~/.ssh/id_ed25519.pub")
    comment = parts[2].strip() if len(parts) == 3 else ""
    if len(comment) > SSH_KEY_COMMENT_CHARS_MAX or not _COMMENT_RE.fullmatch(comment):
        raise _bad(f"comment: expected at most {SSH_KEY_COMMENT_CHARS_MAX} printable characters")
    if parts[0] not in _KINDS:
        raise _bad(f"key type {parts[0][:40]!r} is not accepted: expected one of {_KINDS}")
    try:
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except UnsupportedAlgorithm:
        raise _bad(f"key type {parts[0][:40]!r} is not accepted") from None
    except (ValueError, binascii.Error):
        raise _bad("does not parse as an OpenSSH public key") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        bits = 256
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise _bad(f"curve {key.curve.name} is not accepted")
        bits = _CURVES[key.curve.name]
    elif isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < SSH_RSA_BITS_MIN:
            raise _bad(f"RSA keys need at least {SSH_RSA_BITS_MIN} bits, found {bits}")
    else:
        raise _bad(f"key type {parts[0][:40]!r} is not accepted")
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    kind, blob = line.decode().split(" ", 1)
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    fingerprint = "SHA256:" + base64.b64encode(digest).rstrip(b"=").decode()
    return SshKey(fingerprint, kind, bits, f"{kind} {blob}", comment)


class SshKeyStore:
    """The `ssh_keys` table, shared by every gateway instance."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        clock_ns: Callable[[], int] = time.time_ns,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._clock_ns = clock_ns
        self._clock_s = clock_s
        self._cache: dict[int, tuple[float, list[SshKey]]] = {}

    async def add(self, account: int, text: object) -> SshKey:
        """Register a key; BAD_SSH_KEY if it does not parse, SSH_KEYS_FULL past the limit.

        Registering a key the account already has changes nothing and returns it.
        """
        key = parse_ssh_key(text)
        created_ns = self._clock_ns()
        # The count and the insert are one statement; concurrent adds may overshoot slightly.
        row = await self._pool.fetchrow(
            """
            WITH existing AS (
                SELECT created_ns, comment FROM ssh_keys WHERE account = $1 AND fingerprint = $2
            ), inserted AS (
                INSERT INTO ssh_keys (account, fingerprint, kind, bits, public_key, comment,
                                      created_ns)
                SELECT $1, $2, $3, $4, $5, $6, $7
                WHERE NOT EXISTS (SELECT 1 FROM existing)
                  AND (SELECT count(*) FROM ssh_keys WHERE account = $1) < $8
                RETURNING created_ns, comment
            )
            SELECT created_ns, comment FROM inserted UNION ALL SELECT created_ns, comment FROM existing
            """,
            account,
            key.fingerprint,
            key.kind,
            key.bits,
            key.public_key,
            key.comment,
            created_ns,
            SSH_KEYS_PER_ACCOUNT_MAX,
        )
        if row is None:
            raise WireError(
                ErrorCode.SSH_KEYS_FULL,
                f"this account has {SSH_KEYS_PER_ACCOUNT_MAX} SSH keys, the most it may have; "
                "remove one first",
            )
        self._cache.pop(account, None)
        return msgspec.structs.replace(key, created_ns=row["created_ns"], comment=row["comment"])

    async def list(self, account: int) -> list[SshKey]:
        """The account's keys, oldest first."""
        rows = await self._pool.fetch(
            "SELECT fingerprint, kind, bits, public_key, comment, created_ns FROM ssh_keys "
            "WHERE account = $1 ORDER BY created_ns, fingerprint",
            account,
        )
        keys = [SshKey(*row) for row in rows]
        self._cache.pop(account, None)
        if len(self._cache) >= SSH_KEY_CACHE_ACCOUNTS_MAX:
            del self._cache[next(iter(self._cache))]  # the account read longest ago
        self._cache[account] = (self._clock_s(), keys)
        return keys

    async def remove(self, account: int, fingerprint: str) -> bool:
        """Remove one of the account's keys; False when the account has no such key."""
        found = await self._pool.fetchval(
            "DELETE FROM ssh_keys WHERE account = $1 AND fingerprint = $2 RETURNING true",
            account,
            fingerprint,
        )
        self._cache.pop(account, None)
        return bool(found)

    def cached(self, account: int) -> builtins.list[SshKey]:
        """The account's keys as last read here (none if never read): for code that cannot wait."""
        cached = self._cache.get(account)
        return [] if cached is None else cached[1]

    async def of_accounts(self, accounts: Iterable[int]) -> dict[int, builtins.list[SshKey]]:
        """Each account's keys, read at most SSH_KEY_CACHE_TTL_S ago."""
        now = self._clock_s()
        found: dict[int, builtins.list[SshKey]] = {}
        for account in set(accounts):
            cached = self._cache.get(account)
            if cached is not None and now - cached[0] < SSH_KEY_CACHE_TTL_S:
                found[account] = cached[1]
            else:
                found[account] = await self.list(account)
        return found
