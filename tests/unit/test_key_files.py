"""Key files made by several processes starting at once: one file stands, whole, 0600."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from coupon import signing
from coupon.config import Settings
from coupon.keyring import Keyring


def test_processes_starting_at_once_share_one_whole_key_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with ThreadPoolExecutor(8) as pool:
        rings = list(pool.map(lambda _: Keyring.from_settings(settings), range(32)))
        seals = list(pool.map(lambda _: signing.SealKeys.from_settings(settings), range(32)))
    assert len({r.current for r in rings}) == 1
    assert len({s.signer for s in seals}) == 1
    for path in (settings.kek_path, settings.seal_key_path):
        assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "ledger-seal.key",
        "terminal-secrets.keys",
    ]  # no temporary file left behind
    box = rings[0].seal(7, "s" * 64)
    assert rings[5].open(7, box) == "s" * 64
