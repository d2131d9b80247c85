"""The composition root's tokens (``storeops_cli/access.py``, ``storeops token``): durations, the
token ``up`` keeps in the data directory, the list that never shows a token, and the command's
output, on a signing key and a token list of the test's own (a SQLite file)."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import jwt
import pytest

from storeops.auth import Role
from storeops.settings import AuthSettings, Settings
from storeops_cli import access, cli


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, auth=AuthSettings(key_file=tmp_path / "auth.key",
                                                        tokens_database_url=f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"))


@pytest.fixture
def own_list(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    """The environment the ``storeops`` command reads points at the test's own key and list."""
    monkeypatch.setenv("STOREOPS_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("STOREOPS_AUTH__KEY_FILE", str(settings.auth_key_file()))
    monkeypatch.setenv("STOREOPS_AUTH__TOKENS_DATABASE_URL", settings.tokens_database_url())
    return settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("text, expected", [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
                                            ("90m", timedelta(minutes=90)), ("2w", timedelta(weeks=2)),
                                            (" 45s ", timedelta(seconds=45))])
def test_durations(text: str, expected: timedelta) -> None:
    assert access.duration(text) == expected


@pytest.mark.parametrize("text", ["0d", "30", "3y", "", "-1d", "1.5h", "d"])
def test_durations_that_are_not(text: str) -> None:
    with pytest.raises(ValueError, match="positive number"):
        access.duration(text)


def test_kept_token_is_made_once_for_its_owner_only_and_replaced_when_revoked(settings: Settings) -> None:
    token, path, new = access.kept_token(settings)
    assert (path, new) == (settings.data_dir / "admin.token", True)
    assert path.read_text() == token + "\n" and _mode(path) == 0o600
    assert _mode(settings.auth_key_file()) == 0o600
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["role"]) == ("admin", "admin")

    assert access.kept_token(settings) == (token, path, False)  # a second start keeps it

    [revoked] = access.revoke(settings, claims["jti"])
    assert revoked.name == "admin"
    again, _, new = access.kept_token(settings)
    assert new and again != token and path.read_text() == again + "\n" and _mode(path) == 0o600

    path.write_text("not a token\n")
    replaced, _, new = access.kept_token(settings)
    assert new and replaced not in (token, again)


def test_each_name_keeps_its_own_token(settings: Settings) -> None:
    admin = access.kept_token(settings)[0]
    demo, path, _ = access.kept_token(settings, "demo", Role.admin, "storeops up --demo")
    assert path == settings.data_dir / "demo.token" and demo != admin
    # made in the same second, so listed in either order
    assert sorted((t.name, t.created_by) for t in access.listed(settings)) == [("admin", "storeops up"),
                                                                               ("demo", "storeops up --demo")]


def test_the_table_says_each_state_and_never_shows_a_token(settings: Settings) -> None:
    kept = access.create(settings, "dana", Role.operator, "tests")[0]
    gone = access.create(settings, "bo", Role.viewer, "tests", timedelta(days=1))[0]
    access.revoke(settings, "bo")
    rows = access.listed(settings)
    table = access.table(rows)
    assert kept not in table and gone not in table and "eyJ" not in table
    states = {line.split()[1]: line.split()[-1] for line in table.splitlines()[2:]}
    assert states == {"dana": "active", "bo": "revoked"}, table


def test_bearer() -> None:
    assert access.bearer("t0k") == {"Authorization": "Bearer t0k"}


def test_token_create_prints_the_token_alone_on_stdout(own_list: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "create", "--name", "dana", "--role", "operator", "--expires", "30d", "--by", "tests"]) == 0
    out, err = capsys.readouterr()
    token = out.removesuffix("\n")
    assert out == token + "\n" and "\n" not in token, out
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["role"]) == ("dana", "operator") and "exp" in claims
    assert f"token {claims['jti']} for dana (operator)" in err and token not in err

    assert cli.main(["token", "list"]) == 0
    listing, _ = capsys.readouterr()
    assert claims["jti"] in listing and token not in listing

    assert cli.main(["token", "revoke", "dana"]) == 0
    said, _ = capsys.readouterr()
    assert said.startswith(f"revoked {claims['jti']} (dana, operator)") and token not in said
    assert cli.main(["token", "revoke", "dana"]) == 1
    assert "no active token" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--expires", "0d"], ["--name", "not a name"]])
def test_token_create_refuses_with_nothing_on_stdout(own_list: Settings, capsys: pytest.CaptureFixture[str],
                                                     args: list[str]) -> None:
    base = {"--name": "dana", "--role": "operator"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    assert cli.main(["token", "create", *[w for pair in base.items() for w in pair]]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("storeops token create: ")
    assert access.listed(own_list) == []


def test_token_create_knows_only_the_four_roles(own_list: Settings) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["token", "create", "--name", "dana", "--role", "root"])
    assert exit_.value.code == 2
