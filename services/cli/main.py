"""The ``domed`` console script (docs/reference/cli.md, generated from this parser).

Exit codes are ``EXIT_CODES``; ``submit --follow`` exits with the job's result
(``EXIT_FOR_STATE``, and the job's own exit code, 1 if none, for failed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from services.runtime.settings import (
    LIMIT_MODES,
    Settings,
    StreamSettings,
    parse_addr,
    redact_url,
    redact_urls_in,
    resolve_nats_creds,
    resolve_nats_url,
)
from services.runtime.tls import TlsFiles, TlsRefused, resolve_tls

EXIT_FOR_STATE = {"succeeded": 0, "timed_out": 124, "canceled": 130, "lost": 75}

EXIT_CONFIG = 2
EXIT_NOT_PERMITTED = 77  # EX_NOPERM of sysexits.h; services.cli.commands returns it
EXIT_CODES = {
    0: "success",
    1: "a request failed (the error code is printed), or `tools validate` found problems",
    EXIT_CONFIG: "bad usage or invalid parameters; for a service and `domed up`: its "
    "configuration is wrong (a catalogue with problems, a stream it may not change); "
    "starting it again will not help",
    3: "NATS unreachable (a service: also JetStream not provisioned yet), or its TLS "
    "certificate does not verify (the reason is printed); worth retrying once fixed",
    EXIT_NOT_PERMITTED: "NATS refused the request: this user may not publish on its subject "
    '(e.g. "not permitted to submit TOOL", or cancel without the right to '
    "`domed.jobs.cancel`); nothing was sent to domed",
    130: "interrupted (Ctrl-C)",
}

EXAMPLES = """examples:
  domed up                                   # embedded NATS + router, executor, projector
  domed submit demo.echo -p text=hello --follow
  domed jobs ls --state running
  domed logs 01J... -f
  domed tools explain demo.countdown -p n=3
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nats-url",
        default=None,
        help="NATS URL (default: $DOMED_NATS_URL, $NATS_URL, nats://127.0.0.1:4222)",
    )
    p.add_argument(
        "--nats-creds", default=None, help="NATS credentials file (default: $NATS_CREDS)"
    )
    p.add_argument(
        "--tls-ca",
        default=None,
        metavar="FILE",
        help="CA certificate(s) to verify the NATS server's certificate with (default: $NATS_CA; "
        "with any --tls option, only a TLS server whose certificate verifies is accepted)",
    )
    p.add_argument(
        "--tls-cert",
        default=None,
        metavar="FILE",
        help="client certificate for a server that asks for one (default: $NATS_CERT)",
    )
    p.add_argument(
        "--tls-key", default=None, metavar="FILE", help="its private key (default: $NATS_KEY)"
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ssot", type=Path, default=Path("ssot"), help="manifest directory (default ./ssot)"
    )
    p.add_argument(
        "--data-dir", type=Path, default=Path(".domed"), help="state directory (default ./.domed)"
    )
    p.add_argument("--name", default="", help="connection / executor name")
    p.add_argument(
        "--ack-wait",
        type=float,
        default=30.0,
        help="seconds before an unacknowledged job is redelivered",
    )
    p.add_argument(
        "--replicas", type=int, default=1, help="stream and KV replicas (3 on a cluster)"
    )
    p.add_argument(
        "--max-age", type=float, default=0.0, help="stream retention in seconds (0 = forever)"
    )
    p.add_argument(
        "--max-bytes", type=int, default=-1, help="stream size limit in bytes (-1 = none)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="domed",
        description="NATS-native job execution daemon",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up",
        help="run NATS (embedded) and all three services",
        epilog="example: domed up --data-dir /var/lib/domed",
    )
    _common(up)
    _service_args(up)
    up.add_argument("--nats-port", type=int, default=4222, help="port of the embedded nats-server")
    up.add_argument("--slots", type=int, default=8, help="executor job slots")
    up.add_argument(
        "--job-user",
        default="",
        metavar="USER[:GROUP]",
        help="the executor runs every job as this user (see `domed executor --help`)",
    )
    _limits_arg(up)
    up.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        metavar="P",
        help="serve Prometheus metrics on 127.0.0.1: the router on P, the executor on P+1, "
        "the projector on P+2 (default: none)",
    )
    _retain_arg(up)

    for name, text in (
        ("router", "validate and queue jobs"),
        ("executor", "run queued jobs"),
        ("projector", "serve job state"),
    ):
        sp = sub.add_parser(
            name,
            help=f"run the {name} service ({text}) in the foreground",
            epilog=f"example: domed {name} --nats-url nats://127.0.0.1:4222 --ssot ./ssot --data-dir ./.domed",
        )
        _common(sp)
        _service_args(sp)
        sp.add_argument(
            "--metrics-addr",
            type=_metrics_addr,
            default=None,
            metavar="HOST:PORT",
            help="serve Prometheus metrics at http://HOST:PORT/metrics (default: none)",
        )
        if name == "executor":
            sp.add_argument(
                "--slots", type=int, default=8, help="jobs run at once by this executor"
            )
            sp.add_argument(
                "--secrets-key",
                type=Path,
                default=None,
                metavar="FILE",
                help="the private key that opens jobs' secret parameters "
                "(default: DATA_DIR/secrets.key, created if missing; deploy/secrets.md)",
            )
            sp.add_argument(
                "--job-user",
                default="",
                metavar="USER[:GROUP]",
                help="run every job as this user, with only this group (or the user's own); "
                "needs root or CAP_SETUID, CAP_SETGID, CAP_KILL, CAP_CHOWN and CAP_SYS_PTRACE",
            )
            _limits_arg(sp)
            sp.add_argument(
                "--drain-timeout",
                type=float,
                default=10.0,
                help="seconds to let running jobs finish on SIGTERM before canceling them",
            )
        if name == "router":
            sp.add_argument(
                "--secrets-public-key",
                type=Path,
                default=None,
                metavar="FILE",
                help="the executors' public key that secret parameters are sealed with "
                "(default: DATA_DIR/secrets.pub, else DATA_DIR/secrets.key; deploy/secrets.md)",
            )
        if name == "projector":
            sp.add_argument(
                "--rebuild", action="store_true", help="discard the store and replay from seq 1"
            )
            _retain_arg(sp)

    submit = sub.add_parser(
        "submit", help="submit a job", epilog="example: domed submit demo.countdown -p n=5 --follow"
    )
    _common(submit)
    submit.add_argument("tool")
    submit.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--params-json", default=None)
    submit.add_argument("--timeout", type=float, default=None, help="job timeout in seconds")
    submit.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--idempotency-key", default=None)
    submit.add_argument(
        "--queue-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="end the job timed_out if it has not started by then (at most the tool's)",
    )
    submit.add_argument(
        "-f", "--follow", action="store_true", help="stream output until the job ends"
    )
    submit.add_argument(
        "--cancel-on-interrupt", action="store_true", help="Ctrl-C while following cancels the job"
    )

    jobs = sub.add_parser("jobs", help="query jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    ls = jsub.add_parser(
        "ls", help="list jobs, newest first", epilog="example: domed jobs ls --state failed"
    )
    _common(ls)
    ls.add_argument("--state")
    ls.add_argument("--tool")
    ls.add_argument("--label")
    ls.add_argument("--submitted-by", metavar="USER", help="only jobs this NATS user submitted")
    ls.add_argument("--limit", type=int, default=50)
    show = jsub.add_parser(
        "show", help="one job's state", epilog="example: domed jobs show 01J... --json"
    )
    _common(show)
    show.add_argument("job_id")

    logs = sub.add_parser(
        "logs", help="a job's output from the stream", epilog="example: domed logs 01J... -f"
    )
    _common(logs)
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true")

    cancel = sub.add_parser(
        "cancel",
        help="cancel a queued or running job",
        epilog="example: domed cancel 01J... --reason 'wrong input'",
    )
    _common(cancel)
    cancel.add_argument("job_id")
    cancel.add_argument("--reason", default=None)

    artifacts = sub.add_parser("artifacts", help="a job's artifacts (domed-artifacts)")
    asub = artifacts.add_subparsers(dest="artifacts_command", required=True)
    als = asub.add_parser(
        "ls",
        help="the artifacts a job's terminal lists",
        epilog="example: domed artifacts ls 01J...",
    )
    _common(als)
    als.add_argument("job_id")
    aget = asub.add_parser(
        "get",
        help="fetch one, its size and SHA-256 checked",
        epilog="example: domed artifacts get 01J... junit.xml -o report.xml",
    )
    _common(aget)
    aget.add_argument("job_id")
    aget.add_argument("name")
    aget.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="PATH",
        help="where to write it (default: NAME's base name; - for stdout)",
    )

    tools = sub.add_parser("tools", help="the tool catalogue")
    tsub = tools.add_subparsers(dest="tools_command", required=True)
    tls = tsub.add_parser("ls", help="list tools", epilog="example: domed tools ls --json")
    _common(tls)
    tval = tsub.add_parser(
        "validate",
        help="check manifests; print every problem",
        epilog="example: domed tools validate ./ssot",
    )
    tval.add_argument("ssot", nargs="?", type=Path, default=Path("ssot"))
    tval.add_argument("--json", action="store_true")
    texp = tsub.add_parser(
        "explain",
        help="what would run, without running it",
        epilog="example: domed tools explain demo.echo -p text=hi",
    )
    _common(texp)
    texp.add_argument("tool")
    texp.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    texp.add_argument("--params-json", default=None)

    status = sub.add_parser(
        "status",
        help="services, stream, the executors' queue and the projector's lag",
        epilog="example: domed status --json",
    )
    _common(status)
    return parser


def _metrics_addr(text: str) -> str:
    try:
        parse_addr(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _retain_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retain-s",
        type=float,
        default=None,
        metavar="N",
        help="seconds a finished job stays in the projector's store and the domed-jobs "
        "bucket after it ended; queued and running jobs always stay (default: the stream's "
        "--max-age; 0 keeps every job)",
    )


def _limits_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limits",
        choices=LIMIT_MODES,
        default="auto",
        help="how jobs' resource limits are enforced: a cgroup of the executor's "
        "(cgroup2 where delegated, else cgroup1), or per-process rlimits only; auto picks "
        "the best this host allows (docs/executor.md)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    stream = StreamSettings(
        replicas=getattr(args, "replicas", 1),
        max_age_s=getattr(args, "max_age", 0.0),
        max_bytes=getattr(args, "max_bytes", -1),
        ack_wait_s=getattr(args, "ack_wait", 30.0),
    )
    return Settings(
        nats_url=resolve_nats_url(args.nats_url),
        nats_creds=resolve_nats_creds(args.nats_creds),
        tls=tls_files(args),
        service=args.command if args.command in ("router", "executor", "projector") else "",
        ssot=getattr(args, "ssot", Path("ssot")),
        data_dir=getattr(args, "data_dir", Path(".domed")),
        name=getattr(args, "name", ""),
        stream=stream,
        slots=getattr(args, "slots", 8),
        drain_timeout_s=getattr(args, "drain_timeout", 10.0),
        rebuild=getattr(args, "rebuild", False),
        retain_s=getattr(args, "retain_s", None),
        metrics_addr=getattr(args, "metrics_addr", None) or "",
        metrics_port=getattr(args, "metrics_port", 0),
        secrets_key=getattr(args, "secrets_key", None),
        secrets_public_key=getattr(args, "secrets_public_key", None),
        limits=getattr(args, "limits", "auto"),
    )


def tls_files(args: argparse.Namespace) -> TlsFiles:
    return resolve_tls(
        getattr(args, "tls_ca", None),
        getattr(args, "tls_cert", None),
        getattr(args, "tls_key", None),
    )


class _RedactUrls(logging.Filter):
    """Drops the user info (a password, a token) of any URL in a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = redact_urls_in(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True


def run_service(args: argparse.Namespace) -> int:
    import nats.js.errors

    from services.catalogue.problems import CatalogueError
    from services.runtime.heap import keep_heap
    from services.runtime.lifecycle import ConfigurationError, configure_logging, run
    from services.runtime.provisioning import NotProvisionedError, ProvisioningError

    keep_heap()
    settings = settings_from(args)
    configure_logging(f"domed-{args.command}")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RedactUrls())
    options: dict[str, Any] = {}
    if args.command == "router":
        from services.router.app import run_router as runner
    elif args.command == "executor":
        from services.executor.app import run_executor as runner
        from services.executor.jobuser import JobUserError, check_can_switch, parse_job_user

        if args.job_user:
            try:
                options["job_user"] = job_user = parse_job_user(args.job_user)
                check_can_switch(job_user)
            except JobUserError as exc:
                print(f"domed executor: {exc}", file=sys.stderr)
                return EXIT_CONFIG
    else:
        from services.projector.app import run_projector as runner
    try:
        return run(lambda stop, ready: runner(settings, stop, ready, **options))
    except CatalogueError as exc:
        print(
            f"domed {args.command}: the catalogue in {settings.ssot} has problems; refusing to start:",
            file=sys.stderr,
        )
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_CONFIG
    except (ProvisioningError, ConfigurationError) as exc:
        print(f"domed {args.command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except nats.js.errors.ServiceUnavailableError:
        # 3, like an unreachable NATS: JetStream may come (a cluster electing a leader).
        print(
            f"domed {args.command}: JetStream is not available at "
            f"{redact_url(settings.nats_url)} (not enabled on that server, or no leader yet)",
            file=sys.stderr,
        )
        return 3
    except TlsRefused as exc:
        # 3, like an unreachable NATS: it works once the certificates or the server change.
        print(
            f"domed {args.command}: refusing NATS at {redact_url(settings.nats_url)}: {exc}",
            file=sys.stderr,
        )
        return 3
    except NotProvisionedError as exc:
        # 3, like an unreachable NATS: systemd retries, and it heals once the admin provisions.
        print(f"domed {args.command}: {exc}", file=sys.stderr)
        return 3
    except (OSError, TimeoutError) as exc:
        print(
            f"domed {args.command}: cannot reach NATS at {redact_url(settings.nats_url)}: "
            f"{redact_urls_in(str(exc))}",
            file=sys.stderr,
        )
        return 3


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("router", "executor", "projector"):
        return run_service(args)
    if args.command == "up":
        from services.cli.up import up

        return up(args, settings_from(args))
    if args.command == "tools" and args.tools_command == "validate":
        from services.cli.commands import tools_validate

        return tools_validate(args)
    from services.cli.commands import run_command

    return asyncio.run(run_command(args))


def entry() -> Any:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
