"""Notes on errors: `add_note` works on every supported Python (3.10 has no add_note)."""

from __future__ import annotations

import traceback

import pytest

from nnsight_graph.ir.errors import add_note, append_note


@pytest.mark.parametrize("note", [add_note, append_note])
def test_notes_are_appended_in_order_and_keep_the_error_type(note) -> None:
    error = IndexError("index 7 is out of bounds")
    note(error, "  at demo.py:14")
    note(error, "  graph node: %3 = getitem(%2, 7)")
    assert type(error) is IndexError
    assert error.__notes__ == ["  at demo.py:14", "  graph node: %3 = getitem(%2, 7)"]


def test_the_fallback_keeps_notes_added_before_and_prints_them() -> None:
    error = ValueError("bad")
    error.add_note("first")
    append_note(error, "second")
    assert error.__notes__ == ["first", "second"]
    assert "".join(traceback.format_exception(error)).endswith("bad\nfirst\nsecond\n")
