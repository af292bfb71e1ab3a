"""Job callbacks of the HTTP front door: when a job submitted with a ``callback_url``
ends, its document is POSTed there, signed.

The receiver checks ``X-Sandbox-Signature: sha256=<hex>``, an HMAC-SHA256 of the exact
body under the shared secret (the worker's token, or ``--callback-secret-file``), so a
forged result is refused without a second round trip. Delivery is at least once: a
network error or a 5xx is retried with exponential backoff up to ``attempts`` times; a
2xx ends it (delivered), any other answer too (refused: retrying would not change it).

A callback is a request the worker makes on a client's word, so the target is checked
at submit: a host that resolves to a loopback, private, link-local or otherwise
non-global address is refused (server-side request forgery into the worker's network)
unless the operator allows private callbacks. Redirects are not followed: a redirect
would lead past that check.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import urllib.parse
from collections.abc import Callable

import httpx
import trio

from worker.logs import log
from worker.protocol import ProtocolError

SIGNATURE_HEADER = "X-Sandbox-Signature"
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_URL_LEN = 2048


def signature(secret: bytes, body: bytes) -> str:
    """The value of the signature header for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff_s(attempt: int) -> float:
    """The pause before attempt ``attempt`` (1 is the first retry): 0.5 s, doubling."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (attempt - 1))


def _refused(message: str) -> ProtocolError:
    return ProtocolError("invalid_job", message, field="callback_url")


class Callbacks:
    """Checks callback targets and delivers to them, counting each outcome."""

    def __init__(
        self, secret: bytes | None, attempts: int, timeout_s: float, allow_private: bool,
        count: Callable[[str, int], None],
    ) -> None:
        self.secret = secret
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.count = count  # (outcome, attempts made): the metrics

    async def check(self, url: str) -> None:
        """Refuse (invalid_job, field callback_url) a URL the worker will not call."""
        if self.secret is None:
            raise _refused("this worker has no secret to sign callbacks with (--token-file or --callback-secret-file)")
        if len(url) > MAX_URL_LEN:
            raise _refused(f"longer than {MAX_URL_LEN} characters")
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            httpx.URL(url)  # what delivery will parse it with
        except (ValueError, httpx.InvalidURL) as exc:
            raise _refused(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refused("must be an http:// or https:// URL with a host")
        try:
            parts.hostname.encode("idna")
        except UnicodeError as exc:
            raise _refused(f"not a host name: {exc}") from None
        if self.allow_private:
            return
        try:
            found = await trio.socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise _refused(f"cannot resolve {parts.hostname}: {exc}") from None
        for *_, address in found:
            if not is_global(str(address[0])):
                raise _refused(f"{parts.hostname} resolves to {address[0]}, not a global address "
                               "(sandbox serve --allow-private-callbacks allows it)")

    async def deliver(self, url: str, body: bytes, job_id: str) -> None:
        """POST ``body`` until it is taken, refused, or the attempts are spent."""
        assert self.secret is not None  # (check refused the URL otherwise)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(self.secret, body)}
        outcome, attempt = "failed", 0
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
            while attempt < self.attempts:
                if attempt:
                    await trio.sleep(backoff_s(attempt))
                attempt += 1
                try:
                    response = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError:
                    continue  # a network error or a timeout: try again
                if response.status_code < 300:
                    outcome = "delivered"
                    break
                if response.status_code < 500:
                    outcome = "refused"
                    break
        self.count(outcome, attempt)
        log("callback", id=job_id, outcome=outcome, attempts=attempt)


def is_global(address: str) -> bool:
    """An address a callback may go to: globally routable (an IPv4-mapped IPv6 address
    is judged as its IPv4 address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
