"""The type checker CI runs (mypy, as pyproject.toml sets it) catches the mistakes it is there
for: a call of a method the step's logger does not have (a release once called
`step.log.error` on a batch's gathered log that had no `error`), a logger that lacks one of
the methods the per-repository work calls, and a resource's misspelt method. Each snippet is
checked beside the package, with the project's own configuration."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parent.parent


def _check(tmp_path: Path, source: str) -> tuple[int, str]:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent(source))
    out, err, status = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary", str(snippet)]
    )
    return status, out + err


def test_what_the_package_does_passes(tmp_path: Path) -> None:
    """The control: the batch's gathered log is a StepLog, and a step's log says all three."""
    status, said = _check(
        tmp_path,
        """
        from dataclasses import replace

        from gitlab_es_pipeline.runs.many import _GatheredLog
        from gitlab_es_pipeline.indexing.step import Step


        def tell(step: Step, gathered: _GatheredLog) -> None:
            step = replace(step, log=gathered)
            step.log.info("read")
            step.log.warning("slow")
            step.log.error("failed")
        """,
    )
    assert status == 0, said


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            """
            from gitlab_es_pipeline.indexing.step import Step


            def tell(step: Step) -> None:
                step.log.critical("the repository is gone")
            """,
            '"StepLog" has no attribute "critical"',
        ),
        (
            """
            from dataclasses import replace

            from gitlab_es_pipeline.indexing.step import Step


            class InfoOnly:
                def info(self, msg: str) -> None: ...

                def warning(self, msg: str) -> None: ...


            def gather(step: Step) -> Step:
                return replace(step, log=InfoOnly())
            """,
            '"InfoOnly"',
        ),
        (
            """
            from gitlab_es_pipeline.defs.resources import ElasticsearchResource


            def engine(resource: ElasticsearchResource) -> object:
                return resource.search_engines()
            """,
            '"ElasticsearchResource" has no attribute "search_engines"',
        ),
    ],
    ids=["a-method-the-log-lacks", "a-log-without-error", "a-misspelt-resource-method"],
)
def test_the_mistake_fails_the_check(tmp_path: Path, source: str, expected: str) -> None:
    status, said = _check(tmp_path, source)
    assert status == 1, said
    assert expected in said, said
