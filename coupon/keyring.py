"""Key-encryption keys for the terminals' HMAC secrets. The database holds each secret only
encrypted (AES-256-GCM, bound to its terminal's id); the keys live in a file outside it, one a
line, `<id> <base64 key>`, the first line's encrypting, every line's decrypting. Rotation
without downtime: `coupon keys rotate` puts a new key first (every process reads the file again
when it meets a key id it does not know), `coupon keys rewrap` re-encrypts every secret under
it, and then the old line can go."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coupon.config import Settings

_VERSION = b"\x01"


class UnknownKey(Exception):
    """A secret is encrypted under a key the key file no longer (or not yet) holds."""


def create_private(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only, whole or not at all: several processes
    may start at once; the first one's file stands, and no one reads a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(temporary, path)  # atomic, and refuses to replace an existing file
    except FileExistsError:
        pass  # another process made it a moment ago: theirs stands
    finally:
        temporary.unlink()


def _aad(terminal_id: int) -> bytes:
    # a secret's box opens only as its own terminal's: boxes cannot be swapped between rows
    return b"coupon terminal secret %d" % terminal_id


def _new_line() -> str:
    return (
        f"{secrets.token_hex(4)} {base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"
    )


class Keyring:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, bytes] = {}
        self.current = ""
        self.reload()

    @classmethod
    def from_settings(cls, settings: Settings, create: bool = True) -> Keyring:
        path = settings.kek_path
        if create and not path.exists():
            create_private(path, (_new_line() + "\n").encode())
        return cls(path)

    def reload(self) -> None:
        keys: dict[str, bytes] = {}
        current = ""
        for line in self.path.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            key_id, encoded = line.split()
            keys[key_id] = base64.b64decode(encoded)
            current = current or key_id
        if not current:
            raise ValueError(f"{self.path} holds no key")
        self._keys, self.current = keys, current

    def rotate(self) -> str:
        """Put a new key first: it encrypts from now on (each process, once it reads the file);
        the old ones still decrypt. Returns the new key's id."""
        line = _new_line()
        self.path.write_text(line + "\n" + self.path.read_text())
        self.reload()
        return self.current

    def seal(self, terminal_id: int, secret: str) -> bytes:
        key_id = self.current.encode()
        nonce = os.urandom(12)
        sealed = AESGCM(self._keys[self.current]).encrypt(nonce, secret.encode(), _aad(terminal_id))
        return _VERSION + bytes([len(key_id)]) + key_id + nonce + sealed

    def key_of(self, box: bytes) -> str:
        return box[2 : 2 + box[1]].decode()

    def open(self, terminal_id: int, box: bytes) -> str:
        key_id = self.key_of(box)
        if key_id not in self._keys:
            self.reload()  # rotated by another process since this one read the file
            if key_id not in self._keys:
                raise UnknownKey(f"no key {key_id!r} in {self.path}")
        rest = box[2 + box[1] :]
        plain = AESGCM(self._keys[key_id]).decrypt(rest[:12], rest[12:], _aad(terminal_id))
        return plain.decode()
