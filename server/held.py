"""Connections whose next request waits unread after a 503 for a full queue, oldest first.

A client refused for a full queue that sends again at once (one that ignores Retry-After, as load
generators and naive retry loops do) is not read again straight away: `server.protocols` pauses reading
its connection for `refused_read_pause_ms`, so that a few hundred such clients cannot turn every round of
the event loop into a round of refusals. The pause ends early when the batcher is about to start a batch
it could not fill (it asks for the missing rows here, `release`, and waits up to
`DynamicBatcher.refill_rounds` rounds of the loop for them) or goes idle (a batch's worth). Without that,
past saturation the queue refilled only from connections that were not held while the held requests waited
out the pause: half-empty batches and 67-70% of the capacity accepted at 4x it in `benchmarks/overload.py`,
against 84-91% with the release (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Protocol


class HeldConnection(Protocol):
    def resume_after_refusal(self) -> bool:
        """Read again now; False when the pause already ended or the connection is gone."""
        ...


class HeldConnections:
    """Insertion-ordered: a dict rather than a deque, so a connection whose pause ends on its own (or that
    closes) leaves at once and the set never outgrows the connections that are paused now."""

    def __init__(self) -> None:
        self._held: dict[HeldConnection, None] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, connection: HeldConnection) -> None:
        self._held[connection] = None

    def forget(self, connection: HeldConnection) -> None:
        self._held.pop(connection, None)

    def release(self, rows: int) -> int:
        """Read up to `rows` held connections again, oldest first (one row each: a held request is
        typically a single observation); how many were released."""
        released = 0
        held = self._held
        while released < rows and held:
            connection = next(iter(held))
            del held[connection]
            released += connection.resume_after_refusal()
        return released
