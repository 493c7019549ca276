"""Where the CLI finds its embedded database: the nearest .coupon/ up from the working
directory, as git finds .git."""

from __future__ import annotations

from pathlib import Path

import pytest

from coupon import cli
from coupon.config import Settings


def test_the_nearest_data_dir_up_the_tree(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert cli.find_data_dir(deep) is None
    (tmp_path / ".coupon").mkdir()
    assert cli.find_data_dir(deep) == tmp_path / ".coupon"
    (tmp_path / "a" / ".coupon").mkdir()
    assert cli.find_data_dir(deep) == tmp_path / "a" / ".coupon"
    (tmp_path / "a" / "b" / "c" / ".coupon").write_text("a file is not a data directory")
    assert cli.find_data_dir(deep) == tmp_path / "a" / ".coupon"


def test_commands_use_an_existing_cluster_and_only_some_create_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("COUPON_DATA_DIR", raising=False)
    work = tmp_path / "repo" / "sub"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.raises(cli.CliError, match=r"no \.coupon/ directory"):
        cli.locate_database(Settings(), "existing")
    created = cli.locate_database(Settings(), "create")
    assert created.data_dir == work / ".coupon"
    assert not created.data_dir.exists()  # nothing is made until the command starts it
    data = tmp_path / "repo" / ".coupon"
    (data / "pgdata").mkdir(parents=True)
    with pytest.raises(cli.CliError, match="holds no database yet"):
        cli.locate_database(Settings(), "existing")
    (data / "pgdata" / "PG_VERSION").write_text("18\n")
    assert cli.locate_database(Settings(), "existing").data_dir == data
    assert cli.locate_database(Settings(), "create").data_dir == data
    assert "embedded PostgreSQL in" in cli.describe(cli.locate_database(Settings(), "create"))
    monkeypatch.setenv("COUPON_DATA_DIR", str(tmp_path / "other"))
    assert cli.locate_database(Settings(), "create").data_dir == tmp_path / "other"
    monkeypatch.setenv("DATABASE_URL", "postgresql://coupon_writer:pw@db:5432/coupon")
    located = cli.locate_database(Settings(), "existing")
    assert cli.describe(located) == "DATABASE_URL postgresql://coupon_writer@db:5432/coupon"
