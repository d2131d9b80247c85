"""Credential encryption and its key (services/notifier/credentials.py): no database, no broker."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr, ValidationError

from services.notifier.credentials import (
    CREDENTIALS_KEY_ENV,
    KEY_FILE_NAME,
    Cipher,
    check_key,
    read_or_create_key_file,
)
from services.notifier.credentials_api import CredentialPut
from services.notifier.errors import CredentialKeyError, CredentialUnreadable, NotifierError
from services.notifier.settings import NotifierSettings

SECRET = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"


def key() -> SecretStr:
    return SecretStr(Fernet.generate_key().decode())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _no_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CREDENTIALS_KEY_ENV, raising=False)


def test_a_value_round_trips_and_its_token_does_not_hold_it(tmp_path: Path) -> None:
    cipher = Cipher(key(), tmp_path / KEY_FILE_NAME)
    token = cipher.encrypt(SECRET)
    assert SECRET not in token and token.isascii()
    assert cipher.decrypt("shop-api", token) == SECRET
    assert cipher.encrypt(SECRET) != token  # a fresh IV each time


def test_a_key_given_in_the_setting_makes_no_key_file(tmp_path: Path) -> None:
    cipher = Cipher(key(), tmp_path / KEY_FILE_NAME)
    cipher.decrypt("x", cipher.encrypt("v"))
    assert cipher.source == CREDENTIALS_KEY_ENV
    assert not (tmp_path / KEY_FILE_NAME).exists()


def test_without_the_setting_a_key_file_is_made_on_first_use_with_mode_0600(tmp_path: Path) -> None:
    key_file = tmp_path / "data" / KEY_FILE_NAME  # the data folder does not exist yet
    cipher = Cipher(None, key_file)
    assert not key_file.exists()  # nothing happens before the first use
    token = cipher.encrypt(SECRET)
    assert mode(key_file) == 0o600
    check_key(key_file.read_bytes(), "file")
    assert cipher.source == str(key_file)
    assert Cipher(None, key_file).decrypt("shop-api", token) == SECRET  # a restart reads the same key
    assert [p.name for p in key_file.parent.iterdir()] == [KEY_FILE_NAME]  # no temporary file left


def test_an_existing_key_file_is_never_replaced(tmp_path: Path) -> None:
    key_file = tmp_path / KEY_FILE_NAME
    first = read_or_create_key_file(key_file)
    assert read_or_create_key_file(key_file) == first


def test_the_settings_read_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    value = key().get_secret_value()
    monkeypatch.setenv(CREDENTIALS_KEY_ENV, value)
    settings = NotifierSettings(data_dir=tmp_path)
    assert settings.notifier.credentials_key.get_secret_value() == value
    assert value not in repr(settings)
    cipher = Cipher.from_settings(settings)
    assert Fernet(value.encode()).decrypt(cipher.encrypt("v").encode()) == b"v"


def test_the_settings_refuse_a_key_that_is_not_a_fernet_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CREDENTIALS_KEY_ENV, "change-me")
    with pytest.raises(ValidationError) as exc_info:
        NotifierSettings()
    message = str(exc_info.value)
    assert CREDENTIALS_KEY_ENV in message and "not a Fernet key" in message
    assert "change-me" not in message  # a mistyped key is still a secret


def test_a_wrong_key_gives_a_clear_error_naming_the_credential_and_the_key_source(tmp_path: Path) -> None:
    token = Cipher(key(), tmp_path / KEY_FILE_NAME).encrypt(SECRET)
    other = Cipher(None, tmp_path / KEY_FILE_NAME)
    with pytest.raises(CredentialUnreadable) as exc_info:
        other.decrypt("shop-api", token)
    message = str(exc_info.value)
    assert "credential 'shop-api' cannot be decrypted" in message
    assert str(tmp_path / KEY_FILE_NAME) in message and "another key" in message
    assert isinstance(exc_info.value, NotifierError)


def test_an_altered_token_is_unreadable(tmp_path: Path) -> None:
    cipher = Cipher(key(), tmp_path / KEY_FILE_NAME)
    token = cipher.encrypt(SECRET)
    altered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    for bad in (altered, "not a token", "é"):
        with pytest.raises(CredentialUnreadable):
            cipher.decrypt("shop-api", bad)


def test_a_key_file_that_holds_no_key_gives_a_clear_error_naming_it(tmp_path: Path) -> None:
    key_file = tmp_path / KEY_FILE_NAME
    key_file.write_text("not a key\n")
    cipher = Cipher(None, key_file)
    with pytest.raises(CredentialKeyError) as exc_info:
        cipher.encrypt(SECRET)
    assert str(key_file) in str(exc_info.value) and "not a Fernet key" in str(exc_info.value)


def test_a_key_file_that_cannot_be_reached_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the data folder should be
    with pytest.raises(CredentialKeyError, match="cannot (read|create) the credentials key file"):
        Cipher(None, blocker / KEY_FILE_NAME).encrypt(SECRET)


def test_a_key_file_others_may_read_is_used_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / KEY_FILE_NAME
    key_file.write_bytes(Fernet.generate_key())
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="services.notifier.credentials"):
        Cipher(None, key_file).encrypt(SECRET)
    assert any("readable by others" in r.getMessage() for r in caplog.records)


def test_a_key_with_surrounding_whitespace_is_accepted(tmp_path: Path) -> None:
    check_key(b"  " + Fernet.generate_key() + b"\n", "test")


def test_the_request_body_keeps_the_value_out_of_its_repr() -> None:
    body = CredentialPut(value=SECRET)
    assert SECRET not in repr(body) and SECRET not in str(body)


def test_the_request_body_cannot_name_who_makes_the_change() -> None:
    """The actor is the admin whose token made the request (updated_by), never a field."""
    with pytest.raises(ValidationError) as exc:
        CredentialPut.model_validate({"value": SECRET, "actor": "alice"})
    [error] = exc.value.errors()
    assert (error["loc"], error["type"]) == (("actor",), "extra_forbidden")
