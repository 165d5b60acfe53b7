"""Progress reports of long steps (core.progress), on a clock the test moves."""

from gitlab_es_pipeline.core.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reports_at_most_every_interval_and_once_at_the_end() -> None:
    clock = Clock()
    said: list[str] = []
    progress = Progress("acme/api: read", "files", said.append, every=10, clock=clock)
    for done in range(1, 6):
        clock.now += 4
        progress.update(done, None, lines=done * 1000)
    # 4, 8 (silent), 12 (report), 16 (silent), 20 (silent: 8 s since the last)
    assert said == ["acme/api: read: 3 files, 3,000 lines in 12 s (250 lines/s)"]
    progress.finish()
    assert said[-1] == "acme/api: read: done, 5 files, 5,000 lines in 20 s (250 lines/s)"


def test_a_known_total_is_shown_and_without_lines_the_rate_is_in_units() -> None:
    clock = Clock()
    said: list[str] = []
    progress = Progress("acme/api: write", "documents", said.append, every=0, clock=clock)
    clock.now += 2
    progress.update(500, 2000)
    assert said == ["acme/api: write: 500 of 2,000 documents in 2 s (250 documents/s)"]
