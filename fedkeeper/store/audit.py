"""A consistency check of the whole store: nothing orphaned, nothing dangling.

Used after ``runs delete`` and ``runs prune`` (and by the tests) to prove that removing runs leaves the store as if
they had never been: no GridFS file that no document names, no GridFS chunk without its file, no document naming
a blob that is gone, and no document of a run the ``runs`` collection does not hold. Meant for a quiet store: a
writer between its upload and its insert would show as an orphan file for that instant.

Chunks are listed through ``fs.chunks``; nx-27017 0.8.1 answers an unfiltered find there with nothing (its chunks
live in a table whose rows reference their file, so it cannot hold an orphan chunk to begin with).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fedkeeper.runtime.blobstore import BUCKET
from fedkeeper.store.runs import run_collections

if TYPE_CHECKING:
    from fedkeeper.store.repository import Store

RUNS, LOCKS = "runs", "locks"

#: kinds of finding
ORPHAN_FILE = "orphan_file"        # a GridFS file no live document names
ORPHAN_CHUNK = "orphan_chunk"      # a GridFS chunk whose file is gone
MISSING_BLOB = "missing_blob"      # a document naming a GridFS file that is gone
DANGLING_RUN = "dangling_run"      # a document of a run that has no runs document


@dataclass(frozen=True)
class Finding:
    kind: str
    collection: str
    id: str
    detail: str


@dataclass
class AuditReport:
    """What the audit looked at and what it found; ``clean`` when it found nothing."""

    documents: int = 0
    files: int = 0
    chunks: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "documents": self.documents, "files": self.files, "chunks": self.chunks,
                "findings": [asdict(f) for f in self.findings]}


def audit(store: Store, *, now: float | None = None) -> AuditReport:
    """Check every collection and the GridFS bucket; see the module docstring for what counts as a finding.

    A lock without a run is reported only once its lease lapsed: an orchestrator takes the lock of a new run
    just before it writes the run's document.
    """
    now = time.time() if now is None else now
    report = AuditReport()
    files = store._call(lambda: list(store.db[f"{BUCKET}.files"].find({}, {"_id": 1, "metadata": 1})))
    chunks = store._call(lambda: list(store.db[f"{BUCKET}.chunks"].find({}, {"_id": 1, "files_id": 1})))
    file_ids = {f["_id"] for f in files}
    run_ids = {d["_id"] for d in store._call(lambda: list(store.db[RUNS].find({}, {"_id": 1})))}
    report.files, report.chunks = len(files), len(chunks)

    named: set[Any] = set()
    for name in run_collections(store):
        docs = store._call(lambda n=name: list(store.db[n].find({}, {"blob": 0})))
        report.documents += len(docs)
        for doc in docs:
            doc_id = str(doc["_id"])
            file_id = doc.get("file_id")
            if file_id is not None and not doc.get("pruned"):
                named.add(file_id)
                if file_id not in file_ids:
                    report.findings.append(Finding(MISSING_BLOB, name, doc_id, f"GridFS file {file_id} is gone"))
            if name == RUNS:
                continue
            run_id = doc["_id"] if name == LOCKS else doc.get("run_id")
            if run_id is None or run_id in run_ids:
                continue
            if name == LOCKS and isinstance(doc.get("expires"), (int, float)) and doc["expires"] > now:
                continue  # a run being created
            report.findings.append(Finding(DANGLING_RUN, name, doc_id, f"run {run_id} does not exist"))
    for f in files:
        if f["_id"] not in named:
            key = (f.get("metadata") or {}).get("key")
            report.findings.append(Finding(ORPHAN_FILE, f"{BUCKET}.files", str(f["_id"]),
                                           f"no document names it (key {key})"))
    for chunk in chunks:
        if chunk.get("files_id") not in file_ids:
            report.findings.append(Finding(ORPHAN_CHUNK, f"{BUCKET}.chunks", str(chunk["_id"]),
                                           f"its file {chunk.get('files_id')} is gone"))
    return report
