"""The ledger's signing key: an Ed25519 key in a file outside the database signs every sealed
block's head, so that whoever can write the database -- a superuser, restoring seals and blocks
of a rewritten history -- cannot make it verify. Verification trusts only the public keys it is
given: the current key's, and retired keys' public halves (after a rotation)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coupon.config import Settings
from coupon.keyring import create_private

_CONTEXT = b"coupon ledger head\n"  # a signature of a head means nothing anywhere else


def head_message(block_no: int, last_seq: int, block_hash: bytes) -> bytes:
    return _CONTEXT + struct.pack(">qq", block_no, last_seq) + block_hash


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The private key in path (PEM, PKCS#8); a new one, readable by its owner only, when the
    file does not exist (several processes may race: one creates it, all read it)."""
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        create_private(path, pem)
    return load_private(path)


def load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public(spec: str) -> bytes:
    """A public key as 64 hex digits, or the path of a PEM file (public or private key)."""
    text = spec.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    data = Path(text).read_bytes()
    if b"PRIVATE KEY" in data:
        return raw_public(load_private(Path(text)).public_key())
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{text} is not an Ed25519 public key")
    return raw_public(key)


def public_pem(raw: bytes) -> str:
    key = Ed25519PublicKey.from_public_bytes(raw)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class SealKeys:
    """The key that signs new heads (None: this process only verifies) and every public key
    a head's signature may be checked against."""

    def __init__(self, private: Ed25519PrivateKey | None, trusted: Iterable[bytes] = ()) -> None:
        self._private = private
        self.signer = raw_public(private.public_key()) if private else None
        self.trusted = tuple(dict.fromkeys([*([self.signer] if self.signer else []), *trusted]))

    @classmethod
    def from_settings(cls, settings: Settings, create: bool = True) -> SealKeys:
        """The key in the key file (made when missing, if create), and the retired public
        keys the settings list."""
        path = settings.seal_key_path
        if create:
            private: Ed25519PrivateKey | None = load_or_create(path)
        else:
            private = load_private(path) if path.exists() else None
        listed = settings.seal_trusted_keys.split(",")
        return cls(private, [load_public(p) for p in listed if p.strip()])

    def sign(self, block_no: int, last_seq: int, block_hash: bytes) -> tuple[bytes, bytes]:
        """(signer, signature) of a head."""
        if self._private is None or self.signer is None:
            raise RuntimeError("no signing key: this process cannot seal")
        return self.signer, self._private.sign(head_message(block_no, last_seq, block_hash))

    def check(
        self,
        block_no: int,
        last_seq: int,
        block_hash: bytes,
        signer: bytes | None,
        signature: bytes | None,
    ) -> bool:
        """Whether a trusted key signed this head."""
        if signer is None or signature is None or signer not in self.trusted:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(signer).verify(
                signature, head_message(block_no, last_seq, block_hash)
            )
        except InvalidSignature:
            return False
        return True
