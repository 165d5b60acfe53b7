"""How the sensor's requests become runs: small repositories share a run, large ones do not.

A run costs seconds before it indexes anything (docs/benchmark.md, "What a run costs"), a
small repository hundredths: batching many of them pays that cost once. A large repository,
one of unknown size, and a retry of one that failed keep a run of their own, so that neither
delays a batch nor is delayed by one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    key: str  # the repository's partition
    commit: str  # its HEAD when asked for
    files: int | None  # entries known from its last manifest or its tree; None: unknown
    alone: bool = False  # a retry, or asked for alone for another reason


def is_small(request: Request, max_files: int) -> bool:
    return not request.alone and request.files is not None and request.files <= max_files


def form_runs(requests: list[Request], batch_size: int, max_files: int) -> list[list[Request]]:
    """Runs in the order asked: each large request alone, the small ones in batches of at
    most batch_size (a batch of one is a run of its own)."""
    runs: list[list[Request]] = []
    batch: list[Request] = []
    for request in requests:
        if batch_size > 1 and is_small(request, max_files):
            if not batch:
                runs.append(batch)  # its place in the order: where its first member was
            batch.append(request)
            if len(batch) >= batch_size:
                batch = []
        else:
            runs.append([request])
    return [run for run in runs if run]
