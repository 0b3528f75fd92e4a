"""The client commands of ``domed``: each one call of the Python client (``domed``) and
how its answer is printed."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import Progress as RichProgress
from rich.progress import TaskID
from rich.table import Table

import domed
from contracts import subjects
from contracts.events import Log, Progress, Retry, Started, Terminal
from domed import Client, DomedError, Unreachable
from domed.errors import NotPermitted
from services.cli.params import ParamError, parse_params
from services.runtime.settings import redact_url, resolve_nats_creds, resolve_nats_url
from services.runtime.tls import TlsRefused, client_context, resolve_tls

EXIT_NOT_PERMITTED = 77  # services.cli.main.EXIT_CODES documents it

EXIT_FOR_STATE = {"succeeded": 0, "timed_out": 124, "canceled": 130, "lost": 75}

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def exit_code_for(terminal: Terminal) -> int:
    if terminal.state == "failed":
        return terminal.exit_code if terminal.exit_code and 0 < terminal.exit_code < 256 else 1
    return EXIT_FOR_STATE.get(terminal.state, 1)


def tools_validate(args: argparse.Namespace) -> int:
    from services.catalogue.loader import CatalogueError, load_catalogue

    try:
        tools = load_catalogue(args.ssot)
    except CatalogueError as exc:
        if args.json:
            _print_json({"ok": False, "problems": [p.__dict__ for p in exc.problems]})
        else:
            for p in exc.problems:
                err.print(f"[red]error[/red] {p}")
            err.print(f"{len(exc.problems)} problem(s) in {args.ssot}")
        return 1
    if args.json:
        _print_json({"ok": True, "tools": sorted(tools)})
    else:
        out.print(f"ok: {len(tools)} tool(s) in {args.ssot}: {', '.join(sorted(tools))}")
    return 0


async def run_command(args: argparse.Namespace) -> int:
    url = resolve_nats_url(args.nats_url)
    tls_files = resolve_tls(args.tls_ca, args.tls_cert, args.tls_key)
    try:
        client = await domed.connect(
            url,
            resolve_nats_creds(args.nats_creds),
            name="domed-cli",
            reconnect=False,
            tls=client_context(tls_files),
        )
    except Unreachable:
        err.print(
            f"domed: cannot reach NATS at {redact_url(url)}. Start the embedded one with `domed up`, "
            "or pass --nats-url / set DOMED_NATS_URL."
        )
        return 3
    except TlsRefused as exc:
        err.print(f"domed: refusing NATS at {redact_url(url)}: {exc}", markup=False)
        return 3
    try:
        handler = COMMANDS[_command_key(args)]
        return await handler(client, args)
    except NotPermitted as exc:
        message = _refusal(args, exc.subject)
        if getattr(args, "json", False):
            _print_json({"error": {"code": "not_permitted", "message": message}})
        else:
            err.print(f"[red]{message}[/red]", markup=True)
        return EXIT_NOT_PERMITTED
    except DomedError as exc:
        if getattr(args, "json", False):
            _print_json(
                {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
            )
        else:
            err.print(f"[red]{exc.code}[/red]: {exc.message}")
            if exc.code == "invalid_params" and isinstance(exc.details, list):
                for d in exc.details:
                    err.print(f"  {d.get('path')}: {d.get('message')}")
        return 2 if exc.code in ("invalid_params", "invalid_request") else 1
    except ParamError as exc:
        err.print(f"[red]invalid_params[/red]: {exc}")
        return 2
    finally:
        await client.close()


def _refusal(args: argparse.Namespace, subject: str) -> str:
    """What to tell a user whom NATS refused: in domed's terms where there are some."""
    tool = subjects.tool_of_submit_subject(subject)
    if tool is not None:
        return f"not permitted to submit {tool}: NATS refused to let this user publish on {subject}"
    if subject == subjects.CANCEL:
        return f"not permitted to cancel jobs: NATS refused to let this user publish on {subject}"
    return f"not permitted: NATS refused to let this user publish on {subject}"


def _command_key(args: argparse.Namespace) -> str:
    sub = (
        getattr(args, "jobs_command", None)
        or getattr(args, "tools_command", None)
        or getattr(args, "artifacts_command", None)
    )
    return f"{args.command} {sub}" if sub else args.command


async def _typed_params(
    client: Client, tool: str, pairs: list[str], params_json: str | None
) -> dict[str, Any]:
    if not pairs:
        return parse_params([], params_json, {})
    manifest = await client.tool(tool)
    return parse_params(pairs, params_json, manifest.get("parameters", {}))


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        if "=" not in pair:
            raise ParamError(f"-l {pair}: expected key=value")
        k, v = pair.split("=", 1)
        labels[k] = v
    return labels


async def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    params = await _typed_params(client, args.tool, args.param, args.params_json)
    job = await client.submit(
        args.tool,
        params,
        labels=_labels(args.label),
        idempotency_key=args.idempotency_key or None,
        timeout_s=args.timeout,
        queue_timeout_s=args.queue_timeout,
    )
    if not args.follow:
        if args.json:
            _print_json({"job_id": job.id, "state": "queued", "duplicate": job.duplicate})
        else:
            out.print(f"{job.id} queued" + (" (duplicate)" if job.duplicate else ""))
        return 0
    if not args.json:
        err.print(f"[dim]{job.id} queued[/dim]")
    return await _follow(client, job.id, args, cancel_on_interrupt=args.cancel_on_interrupt)


async def _follow(
    client: Client, job_id: str, args: argparse.Namespace, cancel_on_interrupt: bool = False
) -> int:
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    terminal: Terminal | None = None
    events: list[Any] = []
    bar = _ProgressBar(enabled=err.is_terminal and not args.json)

    async def consume() -> None:
        nonlocal terminal
        async for event in client.events(job_id):
            if args.json:
                events.append(msgspec.to_builtins(event))
            if isinstance(event, Log) and not args.json:
                for line in event.lines:
                    if event.stream == "stdout":
                        sys.stdout.write(line + "\n")
                    else:
                        err.print(f"[yellow]{line}[/yellow]")
                sys.stdout.flush()
            elif isinstance(event, Progress) and not args.json:
                bar.update(event)
            elif isinstance(event, Started) and not args.json:
                err.print(
                    f"[dim]started on {event.executor} (pid {event.pid}, attempt {event.attempt})[/dim]"
                )
            elif isinstance(event, Retry) and not args.json:
                bar.close()
                err.print(f"[yellow]{_retry_line(event)}[/yellow]", markup=True)
            elif isinstance(event, Terminal):
                terminal = event
                bar.close()

    task = asyncio.create_task(consume())
    stopper = asyncio.create_task(interrupted.wait())
    try:
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done and not task.done():
            bar.close()
            if cancel_on_interrupt or (sys.stdin.isatty() and _ask("cancel the job? [y/N] ")):
                await client.cancel(job_id, "interrupted from the CLI")
                interrupted.clear()
                await task
            else:
                task.cancel()
                err.print(f"detached; the job goes on: domed logs {job_id} -f")
                return 130
        await task
    finally:
        bar.close()
        loop.remove_signal_handler(signal.SIGINT)
        stopper.cancel()
    assert terminal is not None
    if args.json:
        _print_json(
            {
                "job_id": job_id,
                "events": events,
                "terminal": msgspec.to_builtins(terminal),
                "result": msgspec.to_builtins(terminal.result),
            }
        )
    else:
        dur = f" in {terminal.duration_s:.2f}s" if terminal.duration_s is not None else ""
        code = f", exit {terminal.exit_code}" if terminal.exit_code is not None else ""
        sig = f", signal {terminal.signal}" if terminal.signal else ""
        why = f" ({terminal.error.code}: {terminal.error.message})" if terminal.error else ""
        tries = f", attempt {terminal.attempt}" if terminal.attempt > 1 else ""
        color = "green" if terminal.state == "succeeded" else "red"
        err.print(f"[{color}]{terminal.state}[/{color}]{dur}{code}{sig}{tries}{why}")
        if terminal.result is not None:
            err.print(f"result: {json.dumps(terminal.result)}", markup=False)
        for artifact in terminal.artifacts or []:
            err.print(
                f"artifact: {artifact.name} ({artifact.size} bytes): "
                f"domed artifacts get {job_id} {artifact.name}",
                markup=False,
            )
    return exit_code_for(terminal)


def _retry_line(event: Retry) -> str:
    """``attempt 1 failed (exit 3); attempt 2 in 0.2s``."""
    ended = event.outcome
    how = [f"exit {ended.exit_code}"] if ended.exit_code is not None else []
    how += [f"signal {ended.signal}"] if ended.signal else []
    how += [ended.error.code] if ended.error else []
    detail = f" ({', '.join(how)})" if how else ""
    return (
        f"attempt {event.attempt} {ended.state}{detail}; "
        f"attempt {event.next_attempt} in {event.delay_s:g}s"
    )


class _ProgressBar:
    """A live bar on a terminal; plain ``progress`` lines on stderr otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: RichProgress | None = None
        self.task: TaskID | None = None

    def update(self, event: Progress) -> None:
        if not self.enabled:
            pct = f"{event.percent:.0f}%" if event.percent is not None else ""
            err.print(f"[cyan]progress {pct} {event.message or ''}[/cyan]".rstrip())
            return
        if self.bar is None:
            self.bar = RichProgress(console=err, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("progress", total=None)
        assert self.task is not None
        total = event.total if event.total else (100.0 if event.percent is not None else None)
        done = event.current if event.current is not None else event.percent
        self.bar.update(
            self.task, total=total, completed=done or 0, description=event.message or "progress"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _ask(prompt: str) -> bool:
    try:
        return input(prompt).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _age(ts: str | None) -> str:
    if not ts:
        return ""
    t = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    s = (datetime.now(UTC) - t).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


async def cmd_jobs_ls(client: Client, args: argparse.Namespace) -> int:
    reply = msgspec.to_builtins(
        await client.list(
            state=args.state,
            tool=args.tool,
            label=args.label,
            submitted_by=args.submitted_by,
            limit=args.limit,
        )
    )
    if args.json:
        _print_json(reply)
        return 0
    table = Table(box=None)
    table.add_column("ID", no_wrap=True, min_width=26)  # a whole ULID, whatever the width
    for col in ("TOOL", "STATE", "AGE", "DURATION", "EXIT"):
        table.add_column(col)
    table.add_column("BY", overflow="fold")
    for job in reply["jobs"]:
        dur = f"{job['duration_s']:.2f}s" if job.get("duration_s") is not None else ""
        exit_code = str(job.get("exit_code", job.get("signal", "")))
        table.add_row(
            job["job_id"],
            job["tool"],
            job["state"],
            _age(job.get("submitted_at")),
            dur,
            exit_code,
            _submitter_user(job.get("submitted_by")),
        )
    out.print(table)
    return 0


def _submitter_user(by: dict[str, Any] | None) -> str:
    """The NATS user of a job's ``submitted_by`` (the account when there is none)."""
    if not by:
        return ""
    return str(by.get("user") or by["account"])


def _submitter(by: dict[str, Any] | None) -> str:
    """``user@ACCOUNT`` (or the account alone), from a job's ``submitted_by``."""
    if not by:
        return ""
    return f"{by['user']}@{by['account']}" if by.get("user") else str(by["account"])


async def cmd_jobs_show(client: Client, args: argparse.Namespace) -> int:
    job = msgspec.to_builtins(await client.get(args.job_id))
    if args.json:
        _print_json(job)
        return 0
    for key in (
        "job_id",
        "tool",
        "state",
        "submitted_at",
        "started_at",
        "finished_at",
        "duration_s",
        "exit_code",
        "signal",
        "executor",
        "attempt",
        "truncated",
    ):
        if job.get(key) is not None:
            out.print(f"{key:>13}: {job[key]}")
    out.print(f"{'params':>13}: {json.dumps(job.get('params', {}))}")
    if job.get("labels"):
        out.print(f"{'labels':>13}: {json.dumps(job['labels'])}")
    by = job.get("submitted_by")
    if by:
        seen = ", ".join(f"{k} {by[k]}" for k in ("name", "host") if by.get(k))
        who = _submitter(by) + (f" ({seen})" if seen else "")
        out.print(f"{'submitted_by':>13}: {who}", markup=False)
    lines = job.get("lines", {})
    out.print(f"{'lines':>13}: stdout {lines.get('stdout', 0)}, stderr {lines.get('stderr', 0)}")
    if job.get("error"):
        out.print(f"{'error':>13}: {job['error']['code']}: {job['error']['message']}")
    if "result" in job:
        out.print(f"{'result':>13}: {json.dumps(job['result'])}", markup=False)
    for artifact in job.get("artifacts") or []:
        line = f"{artifact['name']} ({artifact['size']} bytes, sha256 {artifact['sha256']})"
        out.print(f"{'artifact':>13}: {line}", markup=False)
    return 0


async def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    if args.follow:
        args.json = getattr(args, "json", False)
        return await _follow(client, args.job_id, args)
    async for event in client.events(args.job_id, follow=False):
        if isinstance(event, Log):
            if args.json:
                sys.stdout.write(json.dumps(msgspec.to_builtins(event)) + "\n")
            else:
                stream = sys.stdout if event.stream == "stdout" else sys.stderr
                stream.write("\n".join(event.lines) + "\n")
    return 0


async def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    reply = await client.cancel(args.job_id, args.reason)
    if args.json:
        _print_json(msgspec.to_builtins(reply))
    else:
        out.print(f"{reply.job_id} {reply.state}")
    return 0


async def cmd_tools_ls(client: Client, args: argparse.Namespace) -> int:
    reply = msgspec.to_builtins(await client.tools())
    if args.json:
        _print_json(reply)
        return 0
    table = Table(box=None)
    for col in ("ID", "VERSION", "DESCRIPTION"):
        table.add_column(col)
    for t in reply["tools"]:
        table.add_row(t["id"], str(t["version"]), t["description"])
    out.print(table)
    return 0


async def cmd_tools_explain(client: Client, args: argparse.Namespace) -> int:
    params = await _typed_params(client, args.tool, args.param, args.params_json)
    reply = msgspec.to_builtins(await client.explain(args.tool, params))
    if args.json:
        _print_json(reply)
        return 0
    out.print(f"argv:        {json.dumps(reply['argv'])}")
    out.print(f"working dir: {reply['working_dir_policy']}")
    out.print(f"env:         {', '.join(reply['env_names'])}")
    out.print(f"timeout:     {reply['timeout_s']}s")
    out.print(f"manifest:    sha256:{reply['manifest_sha256']}")
    return 0


async def cmd_status(client: Client, args: argparse.Namespace) -> int:
    from services.cli.status import gather, render

    report = await gather(client.nc)
    if args.json:
        _print_json(report)
        return 0
    for line in render(report):
        out.print(line, markup=False)
    return 0


async def cmd_artifacts_ls(client: Client, args: argparse.Namespace) -> int:
    listed = await client.artifacts(args.job_id)
    if args.json:
        _print_json([msgspec.to_builtins(a) for a in listed])
        return 0
    table = Table("NAME", "SIZE", "SHA256", box=None)
    for a in listed:
        table.add_row(a.name, str(a.size), a.sha256)
    out.print(table)
    return 0


async def cmd_artifacts_get(client: Client, args: argparse.Namespace) -> int:
    """Fetch one artifact; its size and digest are checked before anything is written."""
    if args.output == "-":
        sys.stdout.buffer.write(await client.artifact(args.job_id, args.name))
        sys.stdout.flush()
        return 0
    path = Path(args.output or Path(args.name).name)
    saved = await client.save_artifact(args.job_id, args.name, path)
    if args.json:
        _print_json({"job_id": args.job_id, "name": args.name, "path": str(saved)})
    else:
        err.print(f"{args.name} -> {saved} (sha256 checked)", markup=False)
    return 0


COMMANDS = {
    "submit": cmd_submit,
    "jobs ls": cmd_jobs_ls,
    "jobs show": cmd_jobs_show,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "tools ls": cmd_tools_ls,
    "tools explain": cmd_tools_explain,
    "status": cmd_status,
    "artifacts ls": cmd_artifacts_ls,
    "artifacts get": cmd_artifacts_get,
}
