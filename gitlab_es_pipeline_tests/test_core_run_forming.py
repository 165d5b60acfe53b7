"""How requests become runs (pure core)."""

from gitlab_es_pipeline.core.run_forming import Request, form_runs
from gitlab_es_pipeline.core.sensor_cursor import SensorCursor, Want


def _shape(runs: list[list[Request]]) -> list[list[str]]:
    return [[r.key for r in run] for run in runs]


def test_small_repositories_share_runs_and_large_ones_keep_their_own() -> None:
    requests = [
        Request("s1", "c", 3),
        Request("big", "c", 5000),
        Request("s2", "c", 1000),  # at the limit: still small
        Request("unknown", "c", None),
        Request("s3", "c", 0),
        Request("retry", "c", 2, alone=True),
        Request("s4", "c", 7),
    ]
    assert _shape(form_runs(requests, batch_size=3, max_files=1000)) == [
        ["s1", "s2", "s3"],
        ["big"],
        ["unknown"],
        ["retry"],
        ["s4"],
    ]


def test_a_batch_size_of_one_gives_every_repository_its_own_run() -> None:
    requests = [Request(f"r{i}", "c", 1) for i in range(3)]
    assert _shape(form_runs(requests, batch_size=1, max_files=1000)) == [["r0"], ["r1"], ["r2"]]


def test_a_cursor_written_before_sizes_were_kept_still_reads() -> None:
    old = '{"pending": [["g/a", "abc"]], "checked": {}, "requested": {}, "retries": {}}'
    cursor = SensorCursor.from_json(old)
    assert cursor.pending == [("g/a", "abc", None)]
    assert SensorCursor.from_json(cursor.to_json()).pending == cursor.pending


def test_a_cursor_keeps_its_wants_and_reads_those_of_an_older_version() -> None:
    old = '{"requested": {"g/a": ["abc", "r7"]}, "checked": {}, "pending": [], "retries": {}}'
    cursor = SensorCursor.from_json(old)
    # Before wants were kept, only never-indexed partitions were remembered, without a run
    # key: such a want is looked at again at once.
    assert cursor.requested == {"g/a": Want("abc", "r7", "", 0.0, 0)}
    cursor.requested["g/b"] = Want("def", "", "g/b@def~1", 12.5, 40, reasks=1, force=True)
    cursor.listed_at, cursor.unsure, cursor.signals_after = 99.0, ["g/c"], 17
    again = SensorCursor.from_json(cursor.to_json())
    assert again.requested == cursor.requested
    assert (again.listed_at, again.unsure, again.signals_after) == (99.0, ["g/c"], 17)
