"""Soak: the randomized interleavings of test_interleavings.py for many steps, on SQLite and on
PostgreSQL.

    .venv/bin/python bench/soak.py                          # 1,000 steps on each storage
    .venv/bin/python bench/soak.py --steps 5000 --storage postgres
    .venv/bin/python bench/soak.py --steps 300 --storage sqlite --seed 7 --no-shrink

The same Hypothesis state machine as the test (GitLab changes, sensor ticks with their runs,
discoveries, backfill ranges, es_index alone, runs killed with SIGKILL, the daemon away, GitLab
5xx bursts, Elasticsearch down), against the stand-ins over HTTP and a Dagster instance of the
project's dagster.yaml: on SQLite, or on a real PostgreSQL server started here (a database of
its own for each example, through DAGSTER_PG_URL, as bench/fleet.py does). Each example ends by
quiescing the fleet and comparing the index and Dagster's records with what git and the
stand-in say. Examples run in rounds of `--examples-per-round` (a seed each, from `--seed`)
until `--steps` steps have run; a round that finds a violation stops there, shrinks it to a
minimal sequence (unless `--no-shrink`; Hypothesis shrinks for at most 5 minutes), prints it,
and the next round goes on.

Prints, per storage: steps, examples, wall time, and the invariant violations found (0
expected); exits 1 if any. The pipeline's own output (Dagster's logs, the stand-ins') goes to
`--log` (default: soak.log in the work folder, kept).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("LEASE_SECONDS", "10")  # a killed run's repositories free after 10 s


def _redirect_output(log: Path) -> TextIO:
    """This process's stdout and stderr (Dagster's logs, tracebacks the stand-ins print) to
    the log file; the returned stream is the terminal, for the soak's own report."""
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return terminal


def soak(
    storage: str,
    steps: int,
    steps_per_example: int,
    per_round: int,
    seed: int,
    shrink: bool,
    work: Path,
    out: TextIO,
) -> dict[str, Any]:
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.stateful import run_state_machine_as_test

    from gitlab_es_pipeline_tests.test_interleavings import machine, rule_counts

    postgres = None
    if storage == "postgres":
        from gitlab_es_pipeline_tests.postgres import TempPostgres

        postgres = TempPostgres(work / "postgres").start()
    root = work / f"worlds-{storage}"
    root.mkdir()
    machine_class = machine(root, postgres)
    phases = [Phase.generate, *([Phase.shrink] if shrink else [])]
    violations: list[str] = []
    started = time.monotonic()
    round_ = 0
    try:
        while machine_class.stats.get("steps", 0) < steps:
            round_seed = seed + round_
            round_ += 1
            examples_before = machine_class.stats.get("examples", 0)
            try:
                run_state_machine_as_test(
                    hypothesis_seed(round_seed)(machine_class),
                    settings=settings(
                        max_examples=per_round,
                        stateful_step_count=steps_per_example,
                        deadline=None,
                        database=None,
                        phases=phases,
                        suppress_health_check=list(HealthCheck),
                        print_blob=True,
                    ),
                )
            except Exception as exc:  # a violation: Hypothesis's minimal sequence in its notes
                notes = "\n".join(getattr(exc, "__notes__", []))
                report = (
                    f"violation in round {round_} (seed {round_seed}, {storage}):\n"
                    f"{''.join(traceback.format_exception_only(exc)).strip()}\n{notes}"
                )
                violations.append(report)
                print(report, file=out)
            stats = machine_class.stats
            print(
                f"[{storage}] round {round_} (seed {round_seed}): "
                f"{stats.get('examples', 0) - examples_before} examples; "
                f"{stats.get('steps', 0)} steps, {stats.get('examples', 0)} examples, "
                f"{time.monotonic() - started:.0f} s so far, {len(violations)} violations",
                file=out,
            )
    finally:
        if postgres is not None:
            postgres.stop()
    print(
        f"[{storage}] {machine_class.stats.get('runs killed', 0)} runs killed, "
        f"{machine_class.stats.get('force-pushes', 0)} force-pushes; steps by rule: "
        f"{rule_counts(machine_class.stats)}",
        file=out,
    )
    return {
        "storage": storage,
        "steps": machine_class.stats.get("steps", 0),
        "examples": machine_class.stats.get("examples", 0),
        "seconds": time.monotonic() - started,
        "violations": violations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000, help="steps on each storage")
    parser.add_argument("--storage", action="append", choices=["sqlite", "postgres"], default=None)
    parser.add_argument("--steps-per-example", type=int, default=20)
    parser.add_argument("--examples-per-round", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="of the first round (then +1)")
    parser.add_argument("--no-shrink", action="store_true", help="report violations unshrunk")
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    # Stopped (SIGTERM), it still stops its PostgreSQL server and removes its folders.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    storages = args.storage or ["sqlite", "postgres"]
    work = Path(tempfile.mkdtemp(prefix="gitlab-es-soak-"))
    work.chmod(0o755)  # mkdtemp's 0700 keeps out the `postgres` user that runs it as root
    log = args.log or work / "soak.log"
    out = _redirect_output(log)
    print(
        f"soak: {args.steps} steps on {', '.join(storages)}; output of the runs in {log}", file=out
    )
    results = []
    try:
        for storage in storages:
            results.append(
                soak(
                    storage,
                    args.steps,
                    args.steps_per_example,
                    args.examples_per_round,
                    args.seed,
                    not args.no_shrink,
                    work,
                    out,
                )
            )
    finally:
        for entry in work.iterdir():
            if entry != log:
                shutil.rmtree(entry, ignore_errors=True)
    print(
        f"\n{'storage':<10} {'steps':>7} {'examples':>9} {'seconds':>8} {'violations':>11}",
        file=out,
    )
    for r in results:
        print(
            f"{r['storage']:<10} {r['steps']:>7} {r['examples']:>9} {r['seconds']:>8.0f} "
            f"{len(r['violations']):>11}",
            file=out,
        )
    sys.exit(1 if any(r["violations"] for r in results) else 0)


if __name__ == "__main__":
    main()
