import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from unlearnd.settings import Settings

KEYS = {"admin": "key-admin", "governance": "key-gov", "inference": "key-inf"}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


@pytest.fixture
def settings(tmp_path) -> Settings:
    """No Redis behind this URL: these tests cover what the API decides before it needs one."""
    return Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0",
                    api_keys=",".join(f"{role}:{key}" for role, key in KEYS.items()))


@pytest.fixture
def client(settings) -> TestClient:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c
