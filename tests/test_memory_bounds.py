"""What a long-running server keeps per event stays bounded (bench/memory.py measures the process; these pin the
structures): the arrays cache notes each edit of texts alone, and must forget the notes it no longer needs."""

from __future__ import annotations

from pathlib import Path

from skillorchestra.handbook.example import example_document
from skillorchestra.handbook.service import Handbook, RouteRequest
from skillorchestra.handbook.store import HandbookStore


def test_the_arrays_cache_forgets_its_notes_of_text_edits_once_read(tmp_path: Path) -> None:
    """Each edit of texts alone noted its generation in a set that nothing emptied: a server whose host re-words
    skills kept one entry per edit for its whole life. The notes up to the arrays' generation are dropped at each
    read, and the arrays still outlive every such edit (no re-derivation)."""
    document = example_document()
    store = HandbookStore(tmp_path / "h.db")
    store.create_version(document, source="test")
    book = Handbook(store)
    skill = document.skills[0].id
    cached = book.arrays()
    for i in range(300):
        book.edit_skill(skill, {"description": f"re-worded {i}"})
        if i % 3 == 0:
            assert book.arrays() is cached  # texts alone: the same arrays, not derived again
        book.route(RouteRequest(text=f"step {i}"))
    book.edit_skill(skill, {"description": "the last wording"})
    noted = book._arrays_cache._texts_only
    assert len(noted) == 1  # the edit not yet read past; 300 without the fix
    assert book.arrays() is cached and not noted
    store.close()
