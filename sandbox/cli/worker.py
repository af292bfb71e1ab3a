"""``sandbox serve`` and ``sandbox submit``: the worker, and one job through it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sandbox.cli import collector_on
from sandbox.cli.job_flags import add_job_arguments, collect_target, job_from_args, language_form, language_inputs
from sandbox.cli.output import LiveOutput, report, worker_error
from sandbox.errors import JobError, SandboxError

if TYPE_CHECKING:
    from sandbox.models import Job, WarmSpec
    from worker.client import Client

# The worker socket that serve and submit use when given no --socket (nor --tcp).
SOCKET_VARIABLE = "SANDBOX_SOCKET"


def add_commands(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the worker: a pool serving jobs over a socket")
    serve.add_argument("--socket", help=f"unix socket path (created 0600; default ${SOCKET_VARIABLE} without --tcp)")
    serve.add_argument("--socket-group", metavar="GROUP",
                       help="let this group's members connect too (socket 0660, owned by GROUP)")
    serve.add_argument("--tcp", metavar="HOST:PORT", help="also listen on TCP (requires --token-file)")
    serve.add_argument("--token-file", help="file holding the token TCP and HTTP clients must present")
    serve.add_argument("--http", metavar="HOST:PORT",
                       help="also serve HTTP+JSON (docs/http.md); off loopback it requires --token-file")
    serve.add_argument("--callback-secret-file", metavar="FILE",
                       help="key of the HMAC signature of job callbacks (default: the token)")
    serve.add_argument("--callback-attempts", type=int, default=5, metavar="N",
                       help="POSTs of a job callback at most, retries included (default 5)")
    serve.add_argument("--callback-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="how long one callback POST may take (default 10)")
    serve.add_argument("--allow-private-callbacks", action="store_true",
                       help="let callbacks go to loopback, private and link-local addresses")
    serve.add_argument("--allow-bind", action="append", default=[], metavar="DIR",
                       help="let jobs bind host directories at or below DIR (absolute; repeatable; default: none - "
                            "a job naming another host path gets bind_not_allowed)")
    serve.add_argument("--slots", type=int, default=os.cpu_count() or 1, help="jobs run at once (default: CPUs)")
    serve.add_argument("--launchers", type=int, metavar="N",
                       help="processes that supervise the running jobs, many each (default: one per CPU, more if "
                            "their open files would not last; never more than --slots)")
    serve.add_argument("--queue", type=int, default=1024, help="jobs waiting at most; more get 'busy'")
    serve.add_argument("--warm", type=int, default=0,
                       help="sandboxes kept prepared ahead of jobs in the default profile on the host image "
                            "(default 0)")
    serve.add_argument("--warm-for", action="append", default=[], type=_warm_spec,
                       metavar="count=N[,profile=P][,image=I]",
                       help="also keep N sandboxes prepared for jobs in profile P and/or on stored image I "
                            "(repeatable)")
    serve.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics")
    serve.add_argument("--retention", type=float, default=300.0, metavar="SECONDS",
                       help="keep finished jobs' results this long for resubmitted ids (default 300)")
    serve.add_argument("--retention-size", type=_size_flag, default="1G", metavar="SIZE",
                       help="bytes of those results kept at most, the oldest forgotten first (default 1G)")
    serve.add_argument("--max-frame", type=_size_flag, default="16M", metavar="SIZE",
                       help="largest request taken (a job with its stdin and files), e.g. 64M (default 16M)")
    serve.add_argument("--file-cache-size", type=_size_flag, default="1G", metavar="SIZE",
                       help="bytes of files put once and used by id by many jobs, at most (default 1G)")
    serve.add_argument("--file-cache-dir", metavar="DIR",
                       help="the file cache's directory, emptied at start (default: SOCKET.files beside the "
                            "socket, else under $XDG_CACHE_HOME/sandbox)")
    queue = serve.add_argument_group("queue", "also take jobs from a Redis stream, as one of many workers "
                                              "(docs/queue.md)")
    queue.add_argument("--redis", metavar="URL", help="the Redis server, e.g. redis://127.0.0.1:6379/0, "
                       "redis+sentinel://HOST:PORT[,...]/SERVICE or redis+cluster://HOST:PORT[,...]")
    queue.add_argument("--stream", action="append", metavar="NAME[=WEIGHT]",
                       help="a stream of jobs (default 'sandbox'); give several, one per tenant or contest, to "
                            "share the slots among those with jobs waiting in proportion to their weights "
                            "(default 1)")
    queue.add_argument("--claim-idle", type=float, default=60.0, metavar="SECONDS",
                       help="take over a job whose worker went silent this long ago (default 60)")
    queue.add_argument("--max-deliveries", type=int, default=3, metavar="N",
                       help="dead-letter a job after N deliveries without a result (default 3)")
    queue.add_argument("--max-queue", type=int, default=1024, metavar="N",
                       help="jobs the stream may hold, waiting or running; producers get queue_full beyond "
                            "(default 1024)")
    queue.add_argument("--result-ttl", type=int, default=86_400, metavar="SECONDS",
                       help="keep each result (and each file put for the jobs) in Redis this long (default 86400)")
    queue.add_argument("--http-forward", action="store_true",
                       help="with --http: jobs, judges and files given over HTTP go to the (first) stream, for "
                            "whichever worker takes them, not to this worker's pool (docs/http.md)")
    queue.add_argument("--max-blob", type=_size_flag, default="64M", metavar="SIZE",
                       help="the largest file producers may put for the jobs (default 64M)")
    serve.set_defaults(handler=_cmd_serve)

    submit = commands.add_parser("submit", help="run one command through a worker (same flags as run)")
    submit.add_argument("--socket", help=f"the worker's unix socket (default ${SOCKET_VARIABLE})")
    submit.add_argument("--tcp", metavar="HOST:PORT", help="the worker's TCP address")
    submit.add_argument("--token-file", help="token for TCP")
    submit.add_argument("--redis", metavar="URL", help="queue the job on a Redis stream instead (with --stream)")
    submit.add_argument("--stream", default="sandbox", help="the stream of jobs, with --redis (default 'sandbox')")
    submit.add_argument("--id", help="the job's id on the queue (default: a new one); an id already queued, "
                                     "or with a result kept, is not run again")
    add_job_arguments(submit, languages=True)
    submit.set_defaults(handler=_cmd_submit)


def _cmd_serve(args: argparse.Namespace) -> int:
    from worker.queue_schema import QueueConfig, parse_share
    from worker.server import ServerConfig, serve_forever

    socket_path = args.socket or (None if args.tcp or args.http else os.environ.get(SOCKET_VARIABLE))
    if not socket_path and not args.tcp and not args.http and not args.redis:
        raise JobError("nothing to listen on: give --socket PATH, --tcp HOST:PORT, --http HOST:PORT and/or "
                       f"--redis URL (or set {SOCKET_VARIABLE})", field="socket")
    if args.launchers is not None and args.launchers < 1:
        raise JobError("--launchers must be at least 1", field="launchers")
    queue = None
    if args.redis:
        if args.claim_idle <= 0 or args.max_deliveries < 1 or args.max_queue < 1 or args.result_ttl < 1:
            raise JobError("--claim-idle, --max-deliveries, --max-queue and --result-ttl must be positive",
                           field="redis")
        from worker.redis_connect import check_streams

        try:
            shares = tuple(parse_share(text) for text in args.stream or ["sandbox"])
            check_streams(args.redis, [share.stream for share in shares])
        except ValueError as exc:
            raise JobError(str(exc), field="stream") from None
        if len({share.stream for share in shares}) != len(shares):
            raise JobError("--stream: each stream once", field="stream")
        queue = QueueConfig(args.redis, shares, claim_idle_s=args.claim_idle,
                            max_deliveries=args.max_deliveries, max_queue=args.max_queue,
                            result_ttl_s=args.result_ttl, max_blob=args.max_blob)
    config = ServerConfig(
        socket_path=socket_path,
        socket_group=args.socket_group,
        tcp=_host_port(args.tcp) if args.tcp else None,
        token=_read_token(args.token_file),
        slots=args.slots,
        launchers=args.launchers,
        max_queue=args.queue,
        warm=args.warm,
        warm_for=args.warm_for,
        retention_s=args.retention,
        retention_bytes=args.retention_size,
        metrics=_host_port(args.metrics, "metrics") if args.metrics else None,
        max_frame=args.max_frame,
        file_cache_dir=args.file_cache_dir,
        file_cache_size=args.file_cache_size,
        http=_host_port(args.http, "http") if args.http else None,
        callback_secret=_read_token(args.callback_secret_file),
        callback_attempts=args.callback_attempts,
        callback_timeout_s=args.callback_timeout,
        allow_private_callbacks=args.allow_private_callbacks,
        queue=queue,
        http_forward=args.http_forward,
        allow_bind=[_bind_root(root) for root in args.allow_bind],
    )
    try:
        serve_forever(config)
    except ValueError as exc:
        raise SandboxError(str(exc)) from exc
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from sandbox.models import is_profile_file
    from worker.client import WorkerError

    if is_profile_file(args.profile):
        from sandbox.profile_names import unknown_profile

        raise unknown_profile(args.profile, files_allowed=False)
    # The flags are checked before connecting.
    job = None if language_form(args) else job_from_args(args)
    collector_on()
    collect_to = collect_target(args)
    if args.redis:
        if job is None:
            raise JobError("--lang through a queue is not supported yet: use --socket or --tcp", field="lang")
        return _submit_to_queue(args, job, collect_to)
    inputs = language_inputs(args) if job is None else {}
    live = None if args.json or job is None else LiveOutput()
    with connect(args) as client:
        try:
            if job is None:
                from sandbox.cli.languages import WorkerStages, run_language

                return run_language(WorkerStages(client), **inputs)
            result = client.run(job, on_output=live)
        except WorkerError as exc:
            raise worker_error(exc) from exc
        except OSError as exc:
            raise SandboxError(f"worker: {exc}") from exc
    return report(result, as_json=args.json, written=live.written if live else None, collect_to=collect_to)


def _submit_to_queue(args: argparse.Namespace, job: Job, collect_to: int | None) -> int:
    """Queue the job on the stream, wait for its outcome and print it (and write what it
    collected) as run does."""
    from sandbox.cli.queued import queue_errors
    from worker.queue_client import QueueClient

    with queue_errors(args.redis, args.stream):
        result = QueueClient(args.redis, args.stream).run(job, job_id=args.id)
    return report(result, as_json=args.json, collect_to=collect_to)


def connect(args: argparse.Namespace) -> Client:
    """A client of the worker the flags (or $SANDBOX_SOCKET) name; failing to reach it
    names where it was looked for."""
    from worker.client import Client, WorkerError

    tcp = _host_port(args.tcp) if args.tcp else None
    token = _read_token(args.token_file)
    path = args.socket or (None if tcp else os.environ.get(SOCKET_VARIABLE))
    if not path and not tcp:
        raise JobError(f"give --socket PATH or --tcp HOST:PORT (or set {SOCKET_VARIABLE})", field="socket")
    where = f"{tcp[0]}:{tcp[1]}" if tcp else path
    try:
        return Client(path, tcp=tcp, token=token)
    except OSError as exc:
        raise SandboxError(f"cannot reach a worker at {where}: {exc.strerror or exc}") from exc
    except WorkerError as exc:
        raise SandboxError(f"the worker at {where} refused the connection: {exc}") from exc


@contextmanager
def worker_calls(args: argparse.Namespace) -> Iterator[Client]:
    """A client of the worker the flags name, whose refusals and lost connections are
    the command's errors (exit 125)."""
    from worker.client import WorkerError

    client = connect(args)
    try:
        yield client
    except WorkerError as exc:
        raise worker_error(exc) from exc
    except OSError as exc:
        raise SandboxError(f"worker: {exc}") from exc
    finally:
        client.close()


def _size_flag(text: str) -> int:
    """``--max-frame``, ``--file-cache-size``: a size as limits are written ("64M")."""
    from sandbox.units import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host_port(text: str, option: str = "tcp") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise JobError(f"expected HOST:PORT, got {text!r}", field=option)
    return host, int(port)


def _read_token(path: str | None) -> str | None:
    if path is None:
        return None
    try:  # (a token or a callback secret)
        with open(path) as handle:
            return handle.read().strip()
    except OSError as exc:
        raise SandboxError(f"cannot read token file {path}: {exc.strerror}") from exc


def _warm_spec(text: str) -> WarmSpec:
    from sandbox.models import WarmSpec

    try:
        return WarmSpec.parse(text)
    except JobError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _bind_root(path: str) -> str:
    """An ``--allow-bind`` directory: absolute and normal, as the binds it is compared with."""
    from sandbox.models import check_bind_source

    return check_bind_source(path, "allow_bind")
