"""The queue's Redis URLs: what each form names, and the hash-tag rule on a cluster."""

from __future__ import annotations

import re

import pytest

from worker.redis_connect import check_streams, hash_tag, parse_url, queue_target


def test_plain_urls_are_coredis_own():
    for url in ("redis://127.0.0.1:6379/0", "rediss://u:p@host/1", "unix:///run/redis.sock?db=2"):
        assert parse_url(url).kind == "plain" and parse_url(url).url == url


def test_a_sentinel_url_names_its_sentinels_the_service_and_the_db():
    target = parse_url("redis+sentinel://me:s%40cret@10.0.0.1,10.0.0.2:26380,[::1]:5000/mymaster/3"
                       "?sentinel_password=watch")
    assert (target.kind, target.service, target.db, target.username, target.password, target.tls) == (
        "sentinel", "mymaster", 3, "me", "s@cret", False)
    assert target.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 5000))
    assert target.sentinel_auth == {"password": "watch"}
    assert parse_url("rediss+sentinel://h/svc").tls and parse_url("rediss+sentinel://h/svc").db == 0


def test_a_cluster_url_names_its_seed_nodes():
    target = parse_url("redis+cluster://:pw@a:7000,b")
    assert (target.kind, target.hosts, target.password, target.username) == (
        "cluster", (("a", 7000), ("b", 6379)), "pw", None)


@pytest.mark.parametrize("url, complaint", [
    ("http://h/", "expected a redis://"),
    ("redis+sentinel://h:1", "names the primary's service"),
    ("redis+sentinel://h:1/svc/x", "names the primary's service"),
    ("redis+cluster://h:1/2", "only database 0"),
    ("redis+cluster://user:hidden@h:x", "is not a host:port"),
])
def test_a_malformed_url_is_refused_saying_why(url: str, complaint: str):
    with pytest.raises(ValueError, match=complaint) as caught:
        parse_url(url)
    assert "hidden" not in str(caught.value)  # a password is never repeated in a message


def test_the_hash_tag_is_what_the_cluster_hashes():
    assert [hash_tag(name) for name in ("{judge}", "q{a}b{c}", "judge", "{}judge", "x{y", "x}{y}")] == [
        "judge", "a", None, None, None, "y"]


def test_a_cluster_refuses_a_stream_without_a_hash_tag_and_nothing_else_does():
    with pytest.raises(ValueError, match=re.escape("needs a hash tag, e.g. '{judge}'")):
        queue_target("redis+cluster://h:1", "judge")
    assert queue_target("redis+cluster://h:1", "{judge}").kind == "cluster"
    assert queue_target("redis+sentinel://h:1/svc", "judge").kind == "sentinel"
    assert queue_target("redis://h:1/0", "judge").kind == "plain"


def test_the_streams_of_one_worker_share_one_hash_tag_on_a_cluster():
    cluster = "redis+cluster://127.0.0.1:7000"
    check_streams(cluster, ["{judge}-a", "{judge}-b"])
    check_streams("redis://127.0.0.1:6379/0", ["a", "b"])  # one server: any names
    with pytest.raises(ValueError, match="share one hash tag"):
        check_streams(cluster, ["{a}", "{b}"])
