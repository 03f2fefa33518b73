import pytest

from unlearnd.security.api_keys import load_or_create_api_keys, parse_api_keys
from unlearnd.security.secret_files import key_id
from unlearnd.settings import Settings


def test_parse_api_keys():
    assert parse_api_keys("admin:a1, governance:g1,inference:i1") == {"a1": "admin", "g1": "governance",
                                                                      "i1": "inference"}


@pytest.mark.parametrize("text", ["root:x", "admin", "admin:", ",", "governance:g,wizard:w"])
def test_bad_api_keys_are_refused(text):
    with pytest.raises(ValueError):
        parse_api_keys(text)


def test_generated_keys_are_kept_and_private(tmp_path):
    settings = Settings(data_dir=tmp_path)
    first = load_or_create_api_keys(settings)
    assert sorted(first.values()) == ["admin", "governance", "inference"]
    assert load_or_create_api_keys(settings) == first
    assert (tmp_path / "api_keys.json").stat().st_mode & 0o077 == 0


def test_key_id_does_not_reveal_the_key():
    assert key_id("secret") != "secret" and len(key_id("secret")) == 12


def test_api_keys_and_the_receipt_key_share_one_key_id():
    assert key_id("secret") == key_id(b"secret")
