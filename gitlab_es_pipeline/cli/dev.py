"""`gitlab-es-pipeline dev`: the Dagster UI and daemon on a prepared instance, in one command.

`dagster dev` started from the project folder with DAGSTER_HOME elsewhere warns that the
folder's dagster.yaml "will not be used", which reads like a mistake in the set-up; and each
run's processes print a BetaWarning about the yaml-defined JSON log handler. `dev`
prepares DAGSTER_HOME (default `./.dagster_home`, with the project's dagster.yaml copied in
once, never overwritten), starts `dagster dev` from inside it, so the dagster.yaml Dagster sees
there is the one it uses, and silences the few warnings that ask nothing of the user (QUIET,
each with its reason). Other warnings still show.

Before all that it looks at GitLab and the cluster (cli/services.py) and says in a line each
what it found: a newcomer learns of a wrong token or a missing client now, not from the first
run's failure minutes later; and a problem that no waiting mends stops the start, so that no
run fails on it and waits out its retry delay after the fix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]  # the checkout: gitlab_es_pipeline/cli/dev.py
LOCAL_HOME = ".dagster_home"  # where the README's commands keep the instance
# PYTHONWARNINGS entries (a message's start, any category) for warnings that ask nothing of
# the user of this project:
QUIET = (
    # Every run process: the JSON log handler of dagster.yaml is a beta feature. The JSON lines
    # are what log shippers read; nothing to change.
    "ignore:Handling yaml-defined logging configuration",
    # The code server: Dagster 1.13 warns about the beta `owners` parameter whenever
    # Definitions attaches resources to a sensor of several jobs, owners or not.
    "ignore:Parameter `owners` of initializer `SensorDefinition",
    # `dagster dev` itself: "superseded, use 'dg dev'". dg dev needs the dagster-dg-cli
    # package and dg's project layout; dagster dev starts the same webserver and daemon.
    "ignore:Function `dev_command` is superseded",
)


def home_folder() -> Path:
    """DAGSTER_HOME if set, else the current folder's `.dagster_home`."""
    return Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / LOCAL_HOME).resolve()


def prepare_home(home: Path) -> bool:
    """The folder, with a dagster.yaml; True when the project's was copied in now."""
    instance_file = PROJECT / "dagster.yaml"
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if target.exists():
        return False
    if not instance_file.is_file():
        raise FileNotFoundError(
            f"{target} does not exist and there is no {instance_file} to copy: put a "
            "dagster.yaml there (the project's own is in its repository)"
        )
    shutil.copy(instance_file, target)
    return True


def dev_command(home: Path, extra: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """`dagster dev` on the project's definitions, and its environment."""
    dagster = str(Path(sys.executable).parent / "dagster")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), *QUIET]))
    return [dagster, "dev", "-m", "gitlab_es_pipeline.definitions", *extra], env


def dev_help() -> int:
    """`dagster dev --help`, without preparing anything."""
    dagster = str(Path(sys.executable).parent / "dagster")
    return subprocess.run([dagster, "dev", "--help"]).returncode


def look_at_services() -> bool:
    """GitLab and the cluster, a line each; False when a problem stops the start."""
    from gitlab_es_pipeline.cli.services import look_at_cluster, look_at_gitlab

    findings = []
    for look in (look_at_gitlab, look_at_cluster):  # each said as soon as it is known
        finding = look()
        then = ""
        if not finding.ok and not finding.blocking:
            then = " (starting anyway: runs retry until it answers)"
        print(f"gitlab-es-pipeline dev: {finding.line}{then}", file=sys.stderr, flush=True)
        findings.append(finding)
    if any(f.blocking for f in findings):
        print(
            "gitlab-es-pipeline dev: not started: mend the above (docs/operations.md), or start "
            "anyway with --skip-checks",
            file=sys.stderr,
            flush=True,
        )
        return False
    return True


def dev(extra: Sequence[str], check: bool = True) -> int:
    """Replaces this process with `dagster dev`, run from inside DAGSTER_HOME; first, unless
    told not to, looks at GitLab and the cluster (2: a problem no waiting mends)."""
    if check and not look_at_services():
        return 2
    home = home_folder()
    copied = prepare_home(home)
    said = " (the project's dagster.yaml copied in)" if copied else ""
    print(f"gitlab-es-pipeline dev: Dagster instance in {home}{said}", file=sys.stderr, flush=True)
    command, env = dev_command(home, extra)
    os.chdir(home)
    port = env.get("HOOK_RECEIVER_PORT", "8765")
    if port != "0":
        # Beside the UI, on loopback (no secret needed there); it ends with `dagster dev`.
        receiver = [sys.executable, "-m", "gitlab_es_pipeline.cli.main", "receiver"]
        options = ["--host", "127.0.0.1", "--port", port, "--exit-with-parent"]
        subprocess.Popen([*receiver, *options], env=env)
        print(
            f"gitlab-es-pipeline dev: hook receiver on http://127.0.0.1:{port}/hooks",
            file=sys.stderr,
            flush=True,
        )
    os.execve(command[0], command, env)
    return 0  # not reached
