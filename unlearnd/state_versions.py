"""A counter per model in Redis that moves whenever the model's served state changes.

Whoever publishes a served state (a worker's job, a rollback, a registration) calls `bump` after the state is
written and before the request it answers is marked succeeded. The API's inference runtime reads the counter for
each batch (`ask`, sent when the batch starts and read after its forward pass) and reads the state itself only when
the counter moved, so a prediction that starts after a request reads `succeeded` already sees its state, without a
file or database read per prediction.
"""

from __future__ import annotations

from collections.abc import Callable

from redis import Redis


class StateVersions:
    """`<namespace>:state-version:<model>`: an integer that only goes up (Redis INCR). Every process of one
    installation uses the same namespace, UNLEARND_QUEUE_NAME, so installations sharing a Redis do not mix."""

    def __init__(self, redis: Redis, namespace: str = "unlearnd"):
        self.redis, self.namespace = redis, namespace

    def key(self, model: str) -> str:
        return f"{self.namespace}:state-version:{model}"

    def bump(self, model: str) -> int:
        """Say that `model`'s served state changed; returns the new counter. RedisError when Redis is down."""
        return int(self.redis.incr(self.key(model)))

    def current(self, model: str) -> int | None:
        """The counter, or None when nothing was bumped yet (or Redis lost its data). RedisError when Redis is
        down."""
        value = self.redis.get(self.key(model))
        return None if value is None else int(value)

    def ask(self, model: str) -> Callable[[], int | None]:
        """Send the read of `current` now and return the call that reads its answer, so that the round trip
        overlaps other work. Call it exactly once: until then the read holds a connection of the pool. RedisError
        from either half when Redis is down."""
        pool = self.redis.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_command("GET", self.key(model))
        except BaseException:
            connection.disconnect()
            pool.release(connection)
            raise

        def answer() -> int | None:
            try:
                value = connection.read_response()
            except BaseException:
                connection.disconnect()  # the answer may still be on its way: never reuse the connection
                raise
            finally:
                pool.release(connection)
            return None if value is None else int(value)

        return answer
