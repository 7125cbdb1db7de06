"""The example handbook shipped with the package, so a new server is useful in its first minute."""

from __future__ import annotations

from importlib import resources

from skillorchestra.handbook.models import HandbookDocument
from skillorchestra.handbook.store import HandbookStore

EXAMPLE_NAME = "example_handbook.json"


def example_document() -> HandbookDocument:
    text = resources.files("skillorchestra.handbook").joinpath("data", EXAMPLE_NAME).read_text(encoding="utf-8")
    return HandbookDocument.model_validate_json(text)


def is_pristine(store: HandbookStore) -> bool:
    """True for a database that holds only the empty initial version and no events."""
    return store.current_version() == 1 and store.versions()[0]["source"] == "init" and not store.counts()["events"]


def seed_example_if_new(store: HandbookStore) -> bool:
    """Seed the example into a new database; the check and the seed are one transaction, so servers started at
    once on a new file seed it once (QA: two or three example versions, one replacing the other). Never waits for
    another process's write lock: that process is filling the new file (a learn or an import, or another server
    seeding it), so the server starts without the example instead of failing after the busy timeout (review)."""
    if not is_pristine(store):  # every start but the first: no need to build the example (cold start)
        return False
    document = example_document()
    seeded: list[bool] = []

    def seed() -> None:
        if is_pristine(store):  # another server may have seeded it meanwhile
            store.create_version(document, source="import", summary="example handbook (shipped)")
            seeded.append(True)

    return store.try_write(seed, wait_for_threads=True) and bool(seeded)
