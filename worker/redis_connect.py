"""A queue's Redis URL turned into a coredis client: one Redis server, a Sentinel-managed
primary, or a Redis Cluster. The worker's consumer, the producers' clients and the CLI
all connect through here, so every door accepts the same URLs (docs/queue.md):

    redis://[user:password@]host:port/db         rediss:// for TLS, unix:///path?db=N
    redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db]
    redis+cluster://[user:password@]host:port[,host:port...]

(``rediss+sentinel://``, ``rediss+cluster://`` for TLS.) The ``+sentinel`` / ``+cluster``
suffix on the scheme is the convention of Celery/Kombu (``sentinel://``) and of the
clients that take several seed hosts in one URL: the scheme says what the host list is.
A sentinel's own credentials, when it has any, are the query's ``sentinel_username`` and
``sentinel_password``; the URL's user and password are the Redis servers'.

On a cluster every key one Redis Function call (or one multi-key XREAD) touches must be in
one hash slot. Every key of a queue starts with the stream's name, so a stream name that
carries a hash tag (``{judge}``) puts all of them in the tag's slot; a name without one
is refused here, before anything is written, rather than failing later with CROSSSLOT.

A failover or a node going away surfaces as exceptions coredis does not retry away
(``OUTAGES``): the consumer waits those out as it waits out an unreachable server.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import anyio
import coredis
import trio
from coredis.client import Client
from coredis.connection import TCPLocation
from coredis.exceptions import (
    ConnectionError,
    ReadOnlyError,
    RedisClusterError,
    SentinelError,
    UnblockedError,
)

QueueRedis = Client[bytes]  # coredis.Redis or coredis.RedisCluster: the same commands

SENTINEL_PORT = 26379
REDIS_PORT = 6379
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
RESUBSCRIBE_S = 1.0  # how soon to subscribe again to a Sentinel that went away
SWITCH_MASTER = "+switch-master"  # a Sentinel's announcement: "SERVICE OLD-IP OLD-PORT NEW-IP NEW-PORT"

# What a Redis that is (for now) unreachable or changing hands raises: a server down or
# restarting (ConnectionError, OSError, TimeoutError); a Sentinel that knows no primary
# yet, or names one that has just been demoted (SentinelError); a write or a blocked read
# that reached the old primary as it became a replica (READONLY, UNBLOCKED); a cluster
# node down, its slots moving, or no node reachable (RedisClusterError: CLUSTERDOWN,
# TRYAGAIN, redirections exhausted; CROSSSLOT is one too, which the hash-tag rule rules
# out). Each is waited out; none is the caller's fault.
OUTAGES: tuple[type[BaseException], ...] = (
    ConnectionError, TimeoutError, OSError, SentinelError, ReadOnlyError, UnblockedError, RedisClusterError,
)


@dataclass(frozen=True)
class RedisTarget:
    """What a queue URL names, parsed and checked before any connection."""

    kind: str  # "plain", "sentinel" or "cluster"
    url: str
    hosts: tuple[tuple[str, int], ...] = ()  # the sentinels, or the cluster's seed nodes
    service: str = ""  # the Sentinel's name of the primary
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_auth: dict[str, str] = field(default_factory=dict)


def parse_url(url: str) -> RedisTarget:
    """The target of a queue URL; ValueError naming what is wrong with it."""
    scheme = url.partition("://")[0].lower()
    if scheme in PLAIN_SCHEMES:
        return RedisTarget("plain", url)
    if scheme not in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
        raise ValueError(f"{_redacted(url)}: expected a redis://, rediss://, unix://, redis+sentinel:// or "
                         "redis+cluster:// URL (docs/queue.md)")
    # Split by hand: urllib takes one host per URL, and refuses a list with an IPv6 one.
    rest, _, query_text = url.partition("://")[2].partition("?")
    netloc, _, path_text = rest.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinel = scheme in SENTINEL_SCHEMES
    hosts = tuple(_host_port(item, SENTINEL_PORT if sentinel else REDIS_PORT, url) for item in hostlist.split(","))
    path = [segment for segment in path_text.split("/") if segment]
    query = {name: values[-1] for name, values in parse_qs(query_text).items()}
    common: dict[str, Any] = {"hosts": hosts, "username": unquote(username) or None,
                              "password": unquote(password) or None, "tls": scheme.startswith("rediss")}
    if sentinel:
        if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError(f"{_redacted(url)}: a Sentinel URL names the primary's service after the hosts: "
                             "redis+sentinel://host:port[,host:port...]/SERVICE[/DB]")
        auth = {name.removeprefix("sentinel_"): value for name, value in query.items()
                if name in ("sentinel_username", "sentinel_password")}
        return RedisTarget("sentinel", url, service=unquote(path[0]), db=int(path[1]) if len(path) == 2 else 0,
                           sentinel_auth=auth, **common)
    if path not in ([], ["0"]):
        raise ValueError(f"{_redacted(url)}: a Redis Cluster has only database 0: "
                         "redis+cluster://host:port[,host:port...]")
    return RedisTarget("cluster", url, **common)


def hash_tag(stream: str) -> str | None:
    """The hash tag a key starting with ``stream`` is placed by on a cluster (the text
    between the first ``{`` and the next ``}``, if not empty), or None: then each key of
    the stream hashes on its whole name, and a job's keys land in different slots."""
    start = stream.find("{")
    end = stream.find("}", start + 1) if start >= 0 else -1
    return stream[start + 1:end] if end > start + 1 else None


def queue_target(url: str, stream: str) -> RedisTarget:
    """The target of a queue's URL, refused (ValueError) when the URL is malformed or
    names a cluster that would scatter the stream's keys over slots."""
    target = parse_url(url)
    if target.kind == "cluster" and hash_tag(stream) is None:
        raise ValueError(f"stream {stream!r}: on a Redis Cluster the stream's name needs a hash tag, e.g. "
                         f"'{{{stream}}}', so that all of its keys are in one hash slot (docs/queue.md)")
    return target


def check_streams(url: str, streams: list[str]) -> None:
    """``queue_target`` for each stream one worker serves; on a cluster they must share
    one hash tag too, since ``sandbox_take`` reads them all in one call (ValueError)."""
    targets = [queue_target(url, stream) for stream in streams]
    if targets and targets[0].kind == "cluster" and len({hash_tag(stream) for stream in streams}) > 1:
        raise ValueError(f"streams {', '.join(streams)}: on a Redis Cluster the streams one worker serves share "
                         "one hash tag (e.g. '{judge}-a', '{judge}-b'), so that one call can read them all")


def connect(url: str, stream: str, **options: Any) -> AbstractAsyncContextManager[QueueRedis]:
    """A client of the Redis that ``url`` names for the queue ``stream``, to use as
    ``async with connect(url, stream, stream_timeout=...) as redis``. The URL and the
    stream's name are checked now (ValueError), the connections made when entered.
    ``options`` are coredis' connection options (``connect_timeout``, ``stream_timeout``)."""
    return _connected(queue_target(url, stream), options)


@asynccontextmanager
async def _connected(target: RedisTarget, options: dict[str, Any]) -> AsyncIterator[QueueRedis]:
    # TLS as ``rediss://`` gives it, but verified: the system's CAs, the host's name.
    credentials: dict[str, Any] = {"username": target.username, "password": target.password,
                                   "ssl_context": ssl.create_default_context() if target.tls else None}
    if target.kind == "plain":
        async with coredis.Redis.from_url(target.url, **options) as plain:
            yield plain
    elif target.kind == "cluster":
        startup = [TCPLocation(host, port) for host, port in target.hosts]
        cluster: coredis.RedisCluster[bytes] = coredis.RedisCluster(startup_nodes=startup, decode_responses=False,
                                                                   **credentials, **options)
        async with cluster:
            yield cluster
    else:
        # The primary is asked of the sentinels at every new connection, and a connection
        # that finds a replica where the primary was (a failover) refuses it: after a
        # failover, reconnecting reaches the new primary; _follow_failovers makes that
        # happen as soon as a Sentinel announces it.
        sentinel_options: dict[str, Any] = {"connect_timeout": options.get("connect_timeout"),
                                            "ssl_context": credentials["ssl_context"], **target.sentinel_auth}
        sentinels = coredis.Sentinel([TCPLocation(host, port) for host, port in target.hosts],
                                     sentinel_kwargs=sentinel_options, db=target.db, **credentials, **options)
        async with sentinels, sentinels.primary_for(target.service) as primary, trio.open_nursery() as nursery:
            for sentinel in sentinels.sentinels:
                nursery.start_soon(_follow_failovers, sentinel, primary, target.service)
            try:
                yield primary
            finally:
                nursery.cancel_scope.cancel()


async def _follow_failovers(sentinel: coredis.Redis[bytes], primary: QueueRedis, service: str) -> None:
    """Drop the connections to the primary as soon as a Sentinel announces another.

    The old primary takes writes until the Sentinel demotes it, seconds after promoting
    the new one, and what it takes then is lost when it starts to replicate the new one.
    The next call after this reconnects, which asks the Sentinel, which names the new
    primary: the window is the announcement's latency. (Without it, as when every
    Sentinel is unreachable, the demotion's dropping of its clients does the same later.)
    A Sentinel that cannot be reached is subscribed to again a second later (its peers'
    announcements serve meanwhile)."""
    while True:
        try:
            async with sentinel.pubsub(channels=[SWITCH_MASTER]) as announcements:
                async for message in announcements:
                    data = message["data"]
                    if message["type"] == "message" and isinstance(data, bytes) and data.split()[:1] == [
                            service.encode()]:
                        primary.connection_pool.disconnect()
        except* OUTAGES:
            pass
        except* anyio.ClosedResourceError:
            # The subscription's teardown unsubscribing on a connection already closed (a
            # Sentinel gone, or the worker stopping): with an outage's, such errors come
            # from the subscription's own tasks, grouped; a cancel among them goes on.
            pass
        await trio.sleep(RESUBSCRIBE_S)


def _host_port(item: str, default_port: int, url: str) -> tuple[str, int]:
    host, colon, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
    if not colon:
        host, port = item, str(default_port)
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit():
        raise ValueError(f"{_redacted(url)}: {item!r} is not a host:port")
    return host, int(port)


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hosts}" if at and ":" in userinfo else url
