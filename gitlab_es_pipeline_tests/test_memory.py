"""Process-wide memory choices made when the package is imported (gitlab_es_pipeline/memory.py).

Each case runs in a fresh interpreter: this test process has long since loaded pyarrow and
pandas, so only a new process shows what importing the package does.
"""

import json
import subprocess
import sys

_PROBE = """
import json, sys
import gitlab_es_pipeline.definitions  # as a code location or a step process loads it
import pyarrow as pa
from gitlab_es_pipeline.core.bulk import json_string_contents

escaped = json_string_contents(pa.array(['say "hi"', "tab\\there"], pa.string()))
seen = {
    "escaped": escaped.to_pylist(),
    "pandas_after_pipeline_work": "pandas" in sys.modules,
    "arrow_pool": pa.default_memory_pool().backend_name,
}
frame = pa.table({"a": [1, 2]}).to_pandas()  # pandas output still works when asked for
seen["to_pandas"] = type(frame).__module__.split(".")[0]
print(json.dumps(seen))
"""


def _probe(extra_env: dict[str, str] | None = None) -> dict[str, object]:
    env = {"PATH": "/usr/bin:/bin", "DAGSTER_DISABLE_TELEMETRY": "yes", **(extra_env or {})}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True, env=env
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_pyarrow_conversions_do_not_load_pandas_yet_pandas_output_still_works() -> None:
    seen = _probe()
    assert seen["escaped"] == ['say \\"hi\\"', "tab\\there"]
    assert seen["pandas_after_pipeline_work"] is False
    assert seen["to_pandas"] == "pandas"


def test_arrow_uses_jemalloc_unless_the_environment_chooses() -> None:
    assert _probe()["arrow_pool"] == "jemalloc"
    assert _probe({"ARROW_DEFAULT_MEMORY_POOL": "system"})["arrow_pool"] == "system"
