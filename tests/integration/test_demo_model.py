"""`ensure_demo_model` (what `unlearnd run` and `unlearnd bootstrap` call) on PostgreSQL and S3, as a deployment's
`init` runs it: it trains and registers the demo model once, and a later call, from this host or another, finds
it. (The integration stacks copy a model trained once per session instead: tests/integration/conftest.py.)"""

from __future__ import annotations

from unlearnd.demo import DEMO_MODEL, ensure_demo_model
from unlearnd.security.signing import open_store
from unlearnd.settings import Settings


def test_the_demo_model_is_trained_once_and_found_after(postgres_url, s3_location, tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=postgres_url, store_url=s3_location.store_url,
                        s3_endpoint_url=s3_location.endpoint_url, redis_url="redis://127.0.0.1:1/0")
    said: list[str] = []
    first = ensure_demo_model(open_store(settings), epochs=2, say=said.append)
    assert first["name"] == DEMO_MODEL and first["version"] == 1 and any("trained" in line for line in said)
    said.clear()
    again = ensure_demo_model(open_store(settings), epochs=2, say=said.append)
    assert again == first and said == []  # found, not trained again
    store = open_store(settings)
    assert store.read_state(DEMO_MODEL).state_version == 1 and store.has_dataset(first["train_dataset"])
