"""Delivery counting and the dead-letter list, in Redis.

Redis has no delivery counter: a message whose task kills its worker (an out-of-memory picture,
a crashing runtime) is requeued by ``task_reject_on_worker_lost`` and would kill the next worker
forever. Each task delivery increments a counter keyed by (task id, retry number) before the task
body runs; a delivery past ``max_deliveries`` is not run but parked in the dead-letter hash,
where ``shelftally tasks failed`` lists it and ``shelftally tasks retry ID`` sends it again.
Tasks that fail for good (retries exhausted, an unexpected error) are parked there too, so that
nothing is pending forever and nothing is lost silently.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shelftally.errors import ShelfTallyError

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["DeadLetter", "DeadLetterError", "DeadLetters"]

#: Delivery counters expire after this many seconds (longer than any visibility timeout in use).
COUNTER_TTL_S = 7 * 24 * 3600


class DeadLetterError(ShelfTallyError):
    """A dead letter cannot be found (reason ``dead_letter_not_found``) or read (``dead_letter_corrupt``)."""

    reason = "dead_letter_error"


@dataclass(frozen=True)
class DeadLetter:
    """A task message that will not be run again unless someone retries it.

    Attributes:
        id: the task id (the dead letter's key).
        task: the task name (``shelftally.vision``).
        args, kwargs: the task's arguments as sent (JSON).
        queue: the queue it came from.
        reason: ``max_deliveries_exceeded``, ``retries_exhausted`` or the failing error's reason.
        error: the last error, for people.
        deliveries: deliveries counted for the message.
        failed_at: when it was parked (ISO 8601, UTC).
    """

    id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None
    reason: str
    error: str
    deliveries: int
    failed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


class DeadLetters:
    """Delivery counters and the dead-letter hash of one fleet (all keys under ``prefix``).

    Args:
        client: a Redis client (decoded responses not required).
        prefix: the fleet's key prefix (``FleetSettings.key_prefix``).
    """

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.key = f"{prefix}dead-letters"

    def count_delivery(self, task_id: str, retries: int) -> int:
        """Count one delivery of (task id, retry number) and return the count so far (>= 1)."""
        key = f"{self.prefix}deliveries:{task_id}:{retries}"
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.expire(key, COUNTER_TTL_S)
        count, _ = pipe.execute()
        return int(count)

    def add(self, letter: DeadLetter) -> None:
        """Park a message (replacing an earlier letter of the same task id)."""
        self.client.hset(self.key, letter.id, json.dumps(asdict(letter)))

    def list(self) -> list[DeadLetter]:
        """Every parked message, oldest first.

        Raises:
            DeadLetterError: an entry is not a dead letter (reason ``dead_letter_corrupt``).
        """
        raw: dict[Any, Any] = self.client.hgetall(self.key)
        letters = [self._parse(value) for value in raw.values()]
        return sorted(letters, key=lambda letter: (letter.failed_at, letter.id))

    def take(self, letter_id: str) -> DeadLetter:
        """Remove and return one parked message.

        Raises:
            DeadLetterError: no such letter (reason ``dead_letter_not_found``).
        """
        value = self.client.hget(self.key, letter_id)
        if value is None:
            raise DeadLetterError(f"no dead letter {letter_id!r} (see shelftally tasks failed)",
                                  reason="dead_letter_not_found")
        letter = self._parse(value)
        self.client.hdel(self.key, letter_id)
        return letter

    def __len__(self) -> int:
        return int(self.client.hlen(self.key))

    @staticmethod
    def _parse(value: Any) -> DeadLetter:
        try:
            data = json.loads(value)
            return DeadLetter(**data)
        except (TypeError, ValueError) as error:
            raise DeadLetterError(f"unreadable dead letter: {error}", reason="dead_letter_corrupt") from error
