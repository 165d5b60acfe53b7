"""`gitlab-es-pipeline search` and `status`: the index and the fleet, from a shell.

Configuration comes from the same environment variables as the pipeline (GITLAB_*,
ELASTICSEARCH_*, DAGSTER_HOME / DAGSTER_PG_*). Exit status as grep's: 0 found, 1 nothing
found, 2 trouble (a service unreachable, a setting missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from dagster import DagsterInstance
from requests import RequestException

from gitlab_es_pipeline.cli.dev import LOCAL_HOME, dev, dev_help, home_folder
from gitlab_es_pipeline.cli.services import Trouble, from_env, unreachable
from gitlab_es_pipeline.cli.status import (
    RepositoryStatus,
    active_runs,
    repository_status,
    selected_repositories,
)
from gitlab_es_pipeline.clients.engines import EngineError, EngineUnreachable, SearchEngine
from gitlab_es_pipeline.clients.gitlab import GitLabError
from gitlab_es_pipeline.core.search import (
    SearchError,
    SearchOptions,
    grep_line,
    search_body,
    verify,
)
from gitlab_es_pipeline.defs.resources import ElasticsearchResource, GitLabResource
from gitlab_es_pipeline.webhooks.heard import last_deliveries

FOUND, NOT_FOUND, TROUBLE = 0, 1, 2


def search(args: argparse.Namespace, out: TextIO) -> int:
    options = SearchOptions(
        text=" ".join(args.text),
        exact=args.fixed_strings,
        ignore_case=args.ignore_case,
        repositories=tuple(args.repository or ()),
        path=args.path,
        extensions=tuple(args.ext or ()),
        language=args.language,
        visibilities=tuple(v.strip() for v in (args.visibility or "").split(",") if v.strip()),
        limit=args.max_count,
    )
    try:
        body = search_body(options)
    except SearchError as exc:
        raise Trouble(str(exc)) from None
    resource: ElasticsearchResource = from_env("elasticsearch")
    try:
        engine = resource.search_engine()
        check = verify(options)
        if check is None:
            hits, total = _hits(engine, resource.index, body, options.limit)
        else:
            hits, total = _checked_hits(engine, resource.index, body, check, options.limit)
    except (EngineError, EngineUnreachable) as exc:
        raise unreachable("Elasticsearch", resource.url, exc) from None
    if args.json:
        json.dump({"total": total, "matches": hits}, out, indent=2)
        out.write("\n")
    else:
        for source in hits:
            out.write(grep_line(source) + "\n")
            if source.get("web_url"):
                out.write(f"    {source['web_url']}\n")
        if total > len(hits):
            print(f"({total - len(hits)} more; raise -n to see them)", file=sys.stderr)
    return FOUND if hits else NOT_FOUND


PAGE = 1000  # lines a search asks for at a time: well inside the result window (10,000)


def _hits(
    engine: SearchEngine, index: str, body: dict[str, Any], limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The first `limit` lines in grep order, a page at a time after the last one's sort
    values (search_after): `-n` is not bounded by the engine's result window
    (`index.max_result_window`, 10,000: a larger `size` is refused). And how many there are."""
    first = engine.search(index, {**body, "size": min(limit, PAGE)})
    total = first["hits"]["total"]["value"]
    page = first["hits"]["hits"]
    hits = [hit["_source"] for hit in page]
    while len(hits) < limit and len(page) == PAGE:
        later = {
            **body,
            "size": min(limit - len(hits), PAGE),
            "track_total_hits": False,
            "search_after": page[-1]["sort"],
        }
        page = engine.search(index, later)["hits"]["hits"]
        hits += [hit["_source"] for hit in page]
    return hits, total


def _checked_hits(
    engine: SearchEngine,
    index: str,
    body: dict[str, Any],
    check: Callable[[str], bool],
    limit: int,
) -> tuple[list[dict[str, Any]], int]:
    """Every line the engine returns, page by page in grep order, kept when `check` holds:
    the first `limit` of them, and how many there are."""
    hits: list[dict[str, Any]] = []
    total = 0
    page_body = {**body, "size": PAGE, "track_total_hits": False}
    while True:
        page = engine.search(index, page_body)["hits"]["hits"]
        for hit in page:
            if check(hit["_source"]["line_content"]):
                total += 1
                if len(hits) < limit:
                    hits.append(hit["_source"])
        if len(page) < page_body["size"]:
            return hits, total
        page_body["search_after"] = page[-1]["sort"]


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "-"


def _failure_cell(status: RepositoryStatus) -> str:
    """The failure that is the state now, in full words; one mended since, as history."""
    run, failure = status.active_run, status.last_failure
    if run is not None and run.status == "waiting to retry":
        return f"{run.reason or 'failed'} (retry at {run.retry_at})"
    if failure is None:
        return "-"
    if failure.mended:
        return f"(failed {failure.at}, indexed since)"
    return _cut(f"{failure.at} {failure.message}", 160)


def _cut(text: str, width: int) -> str:
    """At most `width` characters, cut between words."""
    if len(text) <= width:
        return text
    return text[: width - 1].rsplit(" ", 1)[0] + " …"


def _table(statuses: list[RepositoryStatus], out: TextIO) -> None:
    header = ("repository", "state", "indexed", "at", "head", "documents", "lines", "failure")
    rows = [header]
    for s in statuses:
        failure = _failure_cell(s)
        rows.append(
            (
                s.repository,
                s.state,
                _short(s.indexed_commit),
                s.indexed_at or "-",
                _short(s.head),
                "-" if s.documents is None else str(s.documents),
                "-" if s.lines is None else str(s.lines),
                failure,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def _dagster_home() -> None:
    """Without DAGSTER_HOME, the README's `.dagster_home` of the current folder, if it has one:
    `status` then works from the project folder in a new shell, as the README writes it."""
    local = home_folder()  # dev's choice: DAGSTER_HOME, else ./.dagster_home
    if not os.environ.get("DAGSTER_HOME") and (local / "dagster.yaml").is_file():
        os.environ["DAGSTER_HOME"] = str(local)


def status(args: argparse.Namespace, out: TextIO) -> int:
    """What Dagster's storage says is always shown; a service that does not answer leaves its
    columns empty (`-`), is named on stderr, and makes the exit status 2."""
    problems: list[str] = []
    unanswered: dict[str, str] = {}  # service -> the one line that says so
    _dagster_home()
    if not os.environ.get("DAGSTER_HOME"):
        raise Trouble(
            f"no Dagster instance here: DAGSTER_HOME is not set and {Path.cwd()} has no "
            f"{LOCAL_HOME} (run it from the project folder, where `dev` made one, or export "
            "DAGSTER_HOME)"
        )
    try:
        instance = DagsterInstance.get()
    except Exception as exc:
        raise Trouble(f"cannot open the Dagster instance: {str(exc).splitlines()[0]}") from None
    with instance:
        repositories = selected_repositories(instance, args.repositories)
        head_of = None
        if not args.no_heads and repositories:
            gitlab: GitLabResource = from_env("gitlab")
            source = gitlab.source()
            # Someone is waiting at a terminal: two quick retries, not the pipeline's ten
            # (python-gitlab backs off up to about 100 s in all, connection errors included).
            source.max_retries = 2

            def head_of(repository: str) -> str | None:
                if "GitLab" in unanswered:
                    return None
                try:
                    return source.default_branch_head(repository)
                except RequestException as exc:  # no answer at all: stop asking
                    unanswered["GitLab"] = str(unreachable("GitLab", gitlab.url, exc))
                except GitLabError as exc:  # an answer about this repository
                    problems.append(f"{repository}: {exc}")
                return None

        documents_of = None
        if repositories:
            resource: ElasticsearchResource = from_env("elasticsearch")
            index = None
            try:
                index = resource.line_index()
            except (EngineError, EngineUnreachable) as exc:
                unanswered["Elasticsearch"] = str(unreachable("Elasticsearch", resource.url, exc))

            def documents_of(repository: str, project_id: int | None) -> int | None:
                if index is None or "Elasticsearch" in unanswered:
                    return None
                try:
                    return index.count(project_id, repository)
                except EngineError as exc:
                    if exc.error == "index_not_found_exception":  # no run has written yet
                        return 0
                    said = unreachable("Elasticsearch", resource.url, exc)
                except EngineUnreachable as exc:
                    said = unreachable("Elasticsearch", resource.url, exc)
                unanswered["Elasticsearch"] = str(said)
                return None

        active = active_runs(instance)
        statuses = [
            repository_status(instance, repository, head_of, documents_of, active.get(repository))
            for repository in repositories
        ]
        deliveries = last_deliveries(instance)
    if args.json:
        json.dump([s.as_dict() for s in statuses], out, indent=2)
        out.write("\n")
    elif statuses:
        _table(statuses, out)
    else:
        print("no repository matches (see `repositories` for the fleet)", file=sys.stderr)
    if not args.json and not args.repositories:  # the fleet's view: its hooks too
        _hooks_table(deliveries, time.time(), out)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    for said in unanswered.values():
        print(f"gitlab-es-pipeline status: {said} (its columns show -)", file=sys.stderr)
    if unanswered:
        return TROUBLE
    return FOUND if statuses else NOT_FOUND


def _hooks_table(deliveries: dict[str, float], now: float, out: TextIO) -> None:
    """When each hook last delivered something the pipeline recorded."""
    if not deliveries:
        print(
            "\nhooks: none heard from (the sensor's poll alone keeps the index in step)", file=out
        )
        return
    print(f"\n{'hook':<52}last delivery", file=out)
    for hook, at in sorted(deliveries.items(), key=lambda item: -item[1]):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
        print(f"{hook:<52}{stamp} UTC ({_ago(now - at)} ago)", file=out)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="gitlab-es-pipeline", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    find = commands.add_parser(
        "search",
        help="search the indexed lines",
        description="Words match identifiers and their parts (camelCase, snake_case); "
        "-F finds the text exactly as typed. Prints repository:path:line: content and the "
        "link to the line in GitLab, in repository, path and line order.",
    )
    find.add_argument("text", nargs="+", help="words to find (all of them), or with -F a substring")
    find.add_argument("-F", "--fixed-strings", action="store_true", help="exact substring")
    find.add_argument("-i", "--ignore-case", action="store_true", help="with -F: ignore case")
    find.add_argument(
        "-r",
        "--repository",
        action="append",
        help="repository (path_with_namespace or a wildcard like 'acme/*'); repeat for several",
    )
    find.add_argument("-p", "--path", help="file path wildcard, e.g. 'src/*.go' (* crosses /)")
    find.add_argument("-e", "--ext", action="append", help="file extension; repeat for several")
    find.add_argument("-l", "--language", help="a language's extensions, e.g. python, go")
    find.add_argument(
        "--visibility",
        help="only projects of these visibilities, e.g. 'public,internal' (what a reader "
        "without access to private projects may see)",
    )
    find.add_argument("-n", "--max-count", type=int, default=20, help="matches shown (20)")
    find.add_argument("--json", action="store_true", help="the matches as JSON documents")
    find.set_defaults(run=search)

    state = commands.add_parser(
        "status",
        help="where each repository stands",
        description="For each repository: the last indexed commit and when, HEAD now, "
        "documents in Elasticsearch against the manifest's lines, the last failure.",
    )
    state.add_argument("repositories", nargs="*", help="repositories or wildcards (default: all)")
    state.add_argument(
        "--no-heads", action="store_true", help="do not ask GitLab for HEAD (one request each)"
    )
    state.add_argument("--json", action="store_true", help="one JSON object per repository")
    state.set_defaults(run=status)

    start = commands.add_parser(  # no -h of its own: `dagster dev` has -h (host)
        "dev",
        add_help=False,
        help="the Dagster UI and daemon on ./.dagster_home (or DAGSTER_HOME)",
        description="Looks at GitLab and the cluster (one line each; a problem that no "
        "waiting mends, such as a missing setting, a refused token or a missing client, "
        "stops it here), prepares DAGSTER_HOME (default ./.dagster_home, the project's "
        "dagster.yaml copied in once) and starts `dagster dev` on the pipeline's "
        "definitions from there, with the hook receiver beside it. Further arguments go to "
        "`dagster dev`, e.g. -p 3001 or -h 0.0.0.0 (--dagster-help lists them).",
    )
    start.add_argument("--help", action="store_true", help="this help")
    start.add_argument(
        "--skip-checks", action="store_true", help="start without looking at GitLab and the cluster"
    )
    start.add_argument(
        "--dagster-help", action="store_true", help="the options of `dagster dev` itself"
    )
    start.set_defaults(run=_dev, dev_help_text=start.format_help)

    receive = commands.add_parser(
        "receiver",
        help="the hook receiver GitLab posts to (docs/operations.md, Hooks)",
        description="Listens for GitLab's webhooks and system hooks and records what they say "
        "in Dagster's storage (DAGSTER_HOME) for the HEAD-commit sensor. GITLAB_HOOK_SECRET "
        "is required unless it listens on loopback only.",
    )
    receive.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    receive.add_argument("--port", type=int, default=8765, help="port (8765)")
    receive.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    receive.set_defaults(run=_receiver)

    hooks = commands.add_parser("hooks", help="connect GitLab to the receiver")
    hook_commands = hooks.add_subparsers(dest="hooks_command", required=True)
    install = hook_commands.add_parser(
        "install",
        help="register the receiver's URL as a hook",
        description="Adds (or updates) a hook to --url with the push and repository-update "
        "events and the secret of GITLAB_HOOK_SECRET: a system hook (--system, self-managed "
        "GitLab, an admin token; also brings project events), or webhooks of groups or "
        "projects (push events only).",
    )
    install.add_argument("--url", required=True, help="the receiver's URL, ending in /hooks")
    install.add_argument("--system", action="store_true", help="a system hook (admin token)")
    install.add_argument("--group", action="append", help="a group's webhook; repeat for several")
    install.add_argument("--project", action="append", help="a project's webhook; repeat")
    install.set_defaults(run=install_hooks)
    return top


def _receiver(args: argparse.Namespace, out: TextIO) -> int:
    from gitlab_es_pipeline.webhooks.receiver import serve

    _dagster_home()
    serve(args.host, args.port, exit_with_parent=args.exit_with_parent)
    return FOUND


_HOOK_EVENTS = {"push_events": True, "repository_update_events": True, "tag_push_events": False}


def install_hooks(args: argparse.Namespace, out: TextIO) -> int:
    """Registers the receiver's URL with GitLab, once per owner (a hook with the same URL is
    updated, not doubled), with the secret of GITLAB_HOOK_SECRET."""
    secret = os.environ.get("GITLAB_HOOK_SECRET")
    if not secret:
        raise Trouble("GITLAB_HOOK_SECRET not set: the receiver refuses hooks without it")
    gl = from_env("gitlab").source().gl
    attrs = {"url": args.url, "token": secret, "enable_ssl_verification": True, **_HOOK_EVENTS}
    owners: list[tuple[str, Any]] = []
    try:
        if args.system:
            owners.append(("system", gl.hooks))
        for group in args.group or []:
            owners.append((f"group {group}", gl.groups.get(group, lazy=True).hooks))
        for project in args.project or []:
            owners.append((f"project {project}", gl.projects.get(project, lazy=True).hooks))
        if not owners:
            raise Trouble("say where: --system, --group G or --project P")
        for name, hooks in owners:
            existing = [h for h in hooks.list(get_all=True) if h.url == args.url]
            if existing:
                for hook in existing:
                    if hasattr(hooks, "update"):
                        hooks.update(hook.id, attrs)
                    else:  # python-gitlab's system hooks cannot be updated: made again
                        hooks.delete(hook.id)
                        hooks.create(attrs)
                print(f"{name}: hook to {args.url} updated", file=out)
            else:
                hooks.create(attrs)
                print(f"{name}: hook to {args.url} added", file=out)
    except GitLabError as exc:
        raise Trouble(str(exc)) from None
    except Exception as exc:  # python-gitlab's errors: status and message, never the token
        code = getattr(exc, "response_code", None)
        if code is None:
            raise
        raise Trouble(f"GitLab refused: HTTP {code} {getattr(exc, 'error_message', '')}") from None
    return FOUND


def _dev(args: argparse.Namespace, out: TextIO) -> int:
    if args.help:  # nothing prepared, nothing started
        out.write(args.dev_help_text())
        return FOUND
    if args.dagster_help:
        return dev_help()
    try:
        return dev(args.passed_on, check=not args.skip_checks)
    except FileNotFoundError as exc:  # no dagster.yaml to put in DAGSTER_HOME
        raise Trouble(str(exc)) from None


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    commands = parser()
    args, rest = commands.parse_known_args(argv)
    if rest and args.command != "dev":  # only `dev` passes arguments on (to `dagster dev`)
        commands.error(f"unrecognized arguments: {' '.join(rest)}")
    args.passed_on = rest
    try:
        return args.run(args, out or sys.stdout)
    except Trouble as exc:
        print(f"gitlab-es-pipeline {args.command}: {exc}", file=sys.stderr)
        return TROUBLE


if __name__ == "__main__":
    sys.exit(main())
