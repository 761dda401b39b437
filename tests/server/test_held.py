"""Held connections (server.held): released oldest first, each once, and never after they left."""

from __future__ import annotations

from server.held import HeldConnections


class Connection:
    def __init__(self, name: str, paused: bool = True) -> None:
        self.name, self.paused = name, paused

    def resume_after_refusal(self) -> bool:
        was_paused, self.paused = self.paused, False
        return was_paused


def test_release_reads_the_oldest_held_connections_again_and_counts_only_those_still_paused():
    held = HeldConnections()
    a, b, c, d = Connection("a"), Connection("b"), Connection("c"), Connection("d")
    for connection in (a, b, c, d):
        held.hold(connection)
    b.paused = False  # its pause ended on its own (or it closed) but it did not say so
    held.forget(c)  # this one did
    assert held.release(2) == 2  # a, then b (not paused: not counted), then d
    assert not a.paused and not d.paused and c.paused
    assert len(held) == 0 and held.release(5) == 0


def test_holding_again_keeps_one_entry():
    held, a = HeldConnections(), Connection("a")
    held.hold(a)
    held.hold(a)
    assert len(held) == 1
