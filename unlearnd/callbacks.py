"""Callbacks: POST a request's final record to its `callback_url`, signed, from a queue of their own.

A request that ends gets its callback *queued* (`notify_terminal`) on the callbacks queue
(`<UNLEARND_QUEUE_NAME>-callbacks`), which the workers serve after the forget queue; each RQ job is one
delivery attempt under a total deadline (`UNLEARND_CALLBACK_TIMEOUT_S`). A failed attempt schedules the next
one itself (RQ's scheduler, which the workers run) after `UNLEARND_CALLBACK_RETRY_DELAYS_S`, or after the
receiver's `Retry-After` (429, 503), up to `UNLEARND_CALLBACK_ATTEMPTS`; 410 Gone ends them. So no delivery
runs inside a forget job, a slow endpoint holds a worker for at most one deadline at a time, and no worker
waits between attempts. The request's `callback` record is pending from its ending (the ledger marks it so
in the same statement) until the message is delivered or given up; it names the message, the attempts made
and when the next is due, which is what the janitor needs to queue whatever Redis never got or lost.

Where a callback may go (checked at intake and again before every attempt):
- http or https only, no user info; the host is resolved and *every* address it resolves to must be
  global: loopback, private, link-local (cloud metadata such as 169.254.169.254), shared (100.64/10),
  multicast, reserved and unspecified addresses are refused, also when written as numbers
  (``0x7f000001``, ``2130706433``, ``0177.1``), as IPv6, or embedded in IPv6 (IPv4-mapped, 6to4, Teredo,
  NAT64). `UNLEARND_CALLBACK_ALLOW` lists CIDRs, addresses or host names that are allowed anyway.
- the connection goes to the address that was checked (no second lookup: no DNS rebinding); https still
  verifies the certificate against the host name (SNI).
- redirects are never followed: a 3xx answer counts as a failed attempt.

Signature: the Standard Webhooks scheme (https://www.standardwebhooks.com), with a key of its own
(`UNLEARND_WEBHOOK_SECRET`, or `<data_dir>/webhook_secret`), not the receipt key. Headers `webhook-id`
(the same on every attempt of one message), `webhook-timestamp` (unix seconds of the attempt) and
`webhook-signature: v1,<base64 HMAC-SHA256 over "<id>.<timestamp>.<body>">`, so receivers can reject
replays and old messages.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import email.utils
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from models_store import Ledger, open_ledger
from models_store.store import now_iso
from service.metrics import CALLBACK_ATTEMPTS
from unlearnd.security.secret_files import read_or_create_secret_file
from unlearnd.settings import Settings

log = logging.getLogger(__name__)

JOB_FUNCTION = "unlearnd.callbacks.deliver_callback"
PUBLIC_FIELDS = ("id", "model", "classes", "samples", "method", "reason", "status", "progress", "created_at",
                 "started_at", "finished_at", "error", "result", "attempts")
INTAKE_RESOLVE_TIMEOUT_S = 2.0
"""At intake, a host name that does not resolve within this many seconds is accepted (checked again before
each delivery attempt); one that resolves to a refused address is refused."""
JOB_GRACE_S = 30
"""An attempt's RQ job timeout is its deadline (UNLEARND_CALLBACK_TIMEOUT_S) plus this, seconds."""
CRASH_RETRY_DELAYS_S = (60, 300)
"""An attempt whose job crashed (an exception, its worker killed) runs again after these delays, seconds: a failed
delivery never raises, so RQ's retries only ever cover a crash, which would otherwise lose the message."""
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class CallbackRefused(ValueError):
    """The callback URL may not be called: what is wrong with it."""


# ---- where a callback may go -------------------------------------------------------------------------
@dataclass(frozen=True)
class AllowList:
    """`UNLEARND_CALLBACK_ALLOW`: networks and host names a callback may reach although they are not global."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str | None) -> AllowList:
        networks, hosts = [], set()
        for entry in filter(None, (e.strip() for e in (text or "").split(","))):
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if not all(part and (part.isalnum() or "-" in part or "_" in part)
                           for part in entry.rstrip(".").split(".")):
                    raise ValueError(f"UNLEARND_CALLBACK_ALLOW entry {entry!r} is neither a CIDR, an address "
                                     "nor a host name") from None
                hosts.add(entry.rstrip(".").lower())
        return cls(tuple(networks), frozenset(hosts))

    def allows(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (IPv4-mapped, 6to4, Teredo, NAT64): each must pass too."""
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64 or address in _NAT64_LOCAL:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def address_refusal(address: IPAddress, allow: AllowList = AllowList()) -> str | None:  # noqa: B008
    """Why a callback may not connect to `address`, or None when it may: only global unicast addresses,
    unless `allow` lists the address's network."""
    if allow.allows(address):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return f"{address} is a scoped (link-local) address"
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d
            reason = address_refusal(address.ipv4_mapped, allow)
            return None if reason is None else f"{address} is {address.ipv4_mapped}: {reason}"
        for inner in _embedded_ipv4(address):
            reason = address_refusal(inner, allow)
            if reason is not None:
                return f"{address} embeds {inner}: {reason}"
    for attribute, what in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                            ("is_link_local", "link-local (cloud metadata lives here)"),
                            ("is_multicast", "multicast"), ("is_private", "private"),
                            ("is_reserved", "reserved")):
        if getattr(address, attribute):
            return f"{address} is a {what} address"
    if not address.is_global:
        return f"{address} is not a global address"
    return None


def parse_callback_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a callback URL, or CallbackRefused. The host is what is resolved, checked and sent
    (Host, SNI): lower-case, without brackets or a trailing dot, a name in its ASCII form (IDNA 2008, as httpx
    encodes it: `bücher.test` is `xn--bcher-kva.test`)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"callback_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise CallbackRefused("callback_url must be an http or https URL")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("callback_url must not carry user info")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise CallbackRefused("callback_url has no host")
    if any(ch.isspace() or ch in "%\\" for ch in host):
        raise CallbackRefused("callback_url has an invalid host")
    return parts.scheme, _ascii_host(url, host), port or (443 if parts.scheme == "https" else 80)


def _ascii_host(url: str, host: str) -> str:
    """`host` (of `url`) as it is resolved and sent: an address written as a number as that address, a name as
    httpx encodes it (IDNA 2008); CallbackRefused for a name it cannot (e.g. '\x91', an empty or 64+ label)."""
    import httpx

    literal = literal_address(host)
    if literal is not None:
        return str(literal)
    try:
        host = httpx.URL(url).raw_host.decode("ascii").rstrip(".")
        host.encode("idna")  # what the resolver does with it: UnicodeError for an empty or 64+ label
    except (httpx.InvalidURL, UnicodeError):
        raise CallbackRefused("callback_url has an invalid host name") from None
    return host


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as a number means, in any form the C resolver accepts (dotted quad,
    ``0x7f000001``, ``2130706433``, octal ``0177.0.0.1``, short ``127.1``, IPv6), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


Resolver = Any
"""A function (host, port) -> list of address strings; `resolve` by default."""


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver, TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def check_addresses(host: str, addresses: list[str], allow: AllowList) -> IPAddress:
    """The address to connect to: the first of `addresses`, provided every one of them is allowed."""
    if not addresses:
        raise CallbackRefused(f"callback host {host!r} resolves to no address")
    if host.lower() in allow.hosts:
        return ipaddress.ip_address(addresses[0].split("%")[0])
    checked = []
    for text in addresses:
        address = ipaddress.ip_address(text)
        reason = address_refusal(address, allow)
        if reason is not None:
            shown = host if str(address) == host else f"{host!r} ({address})"
            raise CallbackRefused(f"callback host {shown} is refused: {reason}; "
                                  "UNLEARND_CALLBACK_ALLOW can allow it")
        checked.append(address)
    return checked[0]


def check_callback_target(url: str, allow: AllowList, resolver: Resolver | None = None) -> tuple[IPAddress, str, int]:
    """(address to connect to, host, port) for a callback URL, or CallbackRefused with the reason. `resolver`:
    `resolve` (looked up when called) unless given."""
    _, host, port = parse_callback_url(url)
    literal = literal_address(host)
    if literal is not None:
        return check_addresses(host, [str(literal)], allow), host, port
    try:
        addresses = (resolver or resolve)(host, port)
    except OSError as exc:
        raise CallbackRefused(f"callback host {host!r} does not resolve: {exc}") from None
    return check_addresses(host, addresses, allow), host, port


_resolver_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="callback-dns")
"""Runs lookups that a caller may stop waiting for (a stuck resolver never holds up an answer or a job)."""


def check_callback_url_at_intake(url: str, settings: Settings, resolver: Resolver | None = None) -> None:
    """Refuse (CallbackRefused) a callback URL whose host is refused. A name that does not resolve in
    INTAKE_RESOLVE_TIMEOUT_S is accepted: every delivery attempt checks again. `resolver`: `resolve` (looked up
    when called) unless given."""
    _, host, port = parse_callback_url(url)
    allow = AllowList.parse(settings.callback_allow)
    literal = literal_address(host)
    if literal is not None:
        check_addresses(host, [str(literal)], allow)
        return
    if host.lower() in allow.hosts:
        return
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        raise CallbackRefused(f"callback host {host!r} is refused: it names this machine (loopback); "
                              "UNLEARND_CALLBACK_ALLOW can allow it")
    future = _resolver_pool.submit(resolver or resolve, host, port)
    try:
        addresses = future.result(timeout=INTAKE_RESOLVE_TIMEOUT_S)
    except (OSError, concurrent.futures.TimeoutError):
        return
    check_addresses(host, addresses, allow)


# ---- signing: Standard Webhooks ------------------------------------------------------------------------
def _generate_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_secret_bytes(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret 'whsec_<base64>'."""
    text = secret.strip().removeprefix("whsec_")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret must be 'whsec_' followed by base64") from None
    if len(key) < 16:
        raise ValueError("the webhook secret must hold at least 16 bytes")
    return key


def load_or_create_webhook_secret(settings: Settings) -> str:
    """UNLEARND_WEBHOOK_SECRET, else <data_dir>/webhook_secret, generated (mode 600) on first use."""
    if settings.webhook_secret:
        return settings.webhook_secret.strip()
    return read_or_create_secret_file(Path(settings.data_dir) / "webhook_secret",
                                      _generate_webhook_secret).strip()


def webhook_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: 'v1,<base64 HMAC-SHA256 of "id.timestamp.body">'."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(webhook_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_headers(secret: str, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": webhook_signature(secret, message_id, timestamp, body)}


# ---- delivery ------------------------------------------------------------------------------------------
def callback_queue_name(settings: Settings) -> str:
    return f"{settings.queue_name}-callbacks"


def callback_queue(connection: Any, settings: Settings) -> Any:
    from rq import Queue
    from rq.serializers import JSONSerializer

    return Queue(callback_queue_name(settings), connection=connection, serializer=JSONSerializer)


def _payload(record: dict[str, Any]) -> str:
    return json.dumps({k: record.get(k) for k in PUBLIC_FIELDS}, sort_keys=True)


def pending(message_id: str, attempts: int, status: int | None = None, error: str | None = None,
            next_attempt_at: str | None = None) -> dict[str, Any]:
    """The ledger's callback record while attempts of `message_id` are still to come (`attempts` made so far)."""
    return {"delivered": False, "pending": True, "status": status, "attempts": attempts, "message_id": message_id,
            "error": error, "next_attempt_at": next_attempt_at, "at": now_iso()}


def notify_terminal(ledger: Ledger, request_id: str, settings: Settings, connection: Any = None) -> str | None:
    """Queue the callback of a request that ended (if it has a callback_url); returns the message id.

    The body is the record as it ended, fixed now; delivery happens on the callbacks queue. The message is
    recorded (`Ledger.claim_callback`: once per ending, so that two processes notifying the same ending make one
    message) before it is queued; None when there is nothing to send. Never raises for a queue that cannot be
    reached: the message stays pending, and the janitor queues it (`workers.janitor.reconcile_callbacks`)."""
    from unlearnd.queue import redis_connection

    message_id = f"msg_{uuid.uuid4().hex}"
    record = ledger.claim_callback(request_id, message_id, now_iso())
    if record is None:  # no callback_url, or another process made this ending's message
        return None
    try:
        queue = callback_queue(connection if connection is not None else redis_connection(settings), settings)
        enqueue_attempt(queue, settings, request_id, message_id, _payload(record), attempt=1)
    except Exception as exc:  # Redis down: say so on the request rather than fail whoever ended it
        log.warning("could not queue the callback of %s now, the janitor will: %s", request_id, exc)
        ledger.set_callback(request_id, pending(message_id, 0, error=f"not queued yet: {exc}"[:300]))
    return message_id


def payload_of(ledger: Ledger, request_id: str) -> str:
    """The body of a request's callback: its public fields as they are now."""
    return _payload(ledger.get(request_id))


def attempt_job_id(message_id: str, attempt: int) -> str:
    """The RQ job id of attempt `attempt` (1-based) of a message."""
    return f"cb-{message_id}-{attempt}"


def enqueue_attempt(queue: Any, settings: Settings, request_id: str, message_id: str, payload: str, attempt: int,
                    delay_s: float | None = None) -> None:
    """Queue attempt `attempt` of a message as its own RQ job, now or (RQ's scheduler) at least `delay_s` from
    now: RQ keeps whole seconds, so the time is rounded up to the next one."""
    from rq import Retry

    options: dict[str, Any] = {
        "job_id": attempt_job_id(message_id, attempt), "job_timeout": int(settings.callback_timeout_s) + JOB_GRACE_S,
        "retry": Retry(max=len(CRASH_RETRY_DELAYS_S), interval=list(CRASH_RETRY_DELAYS_S)),
        "result_ttl": 24 * 3600, "failure_ttl": 7 * 24 * 3600,
        "description": f"callback of {request_id} (attempt {attempt})"}
    args = (JOB_FUNCTION, request_id, message_id, payload, attempt)
    if delay_s is None:
        queue.enqueue(*args, **options)
    else:
        due = datetime.fromtimestamp(math.ceil(time.time() + delay_s), timezone.utc)
        queue.enqueue_at(due, *args, **options)


def record_failed_attempt(ledger: Ledger, record: dict[str, Any], message_id: str, attempt: int,
                          outcome: Attempt, settings: Settings) -> float | None:
    """Record that attempt `attempt` of a message failed: final (`fail_message`) or pending until the next attempt,
    whose delay it returns (None: there is none, or the ledger refused the record: the message was superseded
    meanwhile)."""
    delay = next_delay_s(settings, attempt, outcome)
    if delay is None:
        recorded = fail_message(ledger, record, message_id, attempt, outcome.status, outcome.error or "failed")
    else:
        due = datetime.fromtimestamp(time.time() + delay, timezone.utc).isoformat(timespec="milliseconds")
        recorded = ledger.set_callback(record["id"], pending(message_id, attempt, outcome.status, outcome.error, due))
    if not recorded:
        log.info("callback of %s: attempt %d of %s failed and is superseded", record["id"], attempt, message_id)
        return None
    CALLBACK_ATTEMPTS.labels("failed" if delay is None else "retried").inc()
    log.warning("callback of %s failed (attempt %d of %d): %s", record["id"], attempt, settings.callback_attempts,
                outcome.error)
    return delay


def fail_message(ledger: Ledger, record: dict[str, Any], message_id: str, attempts: int, status: int | None,
                 error: str) -> bool:
    """Record (and audit) that a message will not be delivered; False when the ledger refused it (a newer message
    replaced it)."""
    error = error[:300]
    if not ledger.set_callback(record["id"], {"delivered": False, "pending": False, "status": status,
                                              "attempts": attempts, "message_id": message_id, "error": error,
                                              "at": now_iso()}):
        return False
    log.warning("callback of %s: %s", record["id"], error)
    ledger.audit("callback.failed", "system", record["id"], record["model"], {"error": error})
    return True


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    """What the receiver's Retry-After asked for (429, 503), seconds."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` value (delta-seconds or an HTTP-date) asks to wait; None when it means nothing."""
    value = (value or "").strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, zone unknown
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def host_header(url: str) -> str:
    """The `Host` value of a callback URL: its ASCII host (`parse_callback_url`), brackets around IPv6, the port
    unless the scheme's default."""
    scheme, host, port = parse_callback_url(url)
    if ":" in host:
        host = f"[{host}]"
    return host if port == (443 if scheme == "https" else 80) else f"{host}:{port}"


async def _post(url: str, body: bytes, headers: dict[str, str], allow: AllowList, resolver: Resolver) -> Attempt:
    import httpx

    scheme, host, port = parse_callback_url(url)
    literal = literal_address(host)
    if literal is not None:
        address = check_addresses(host, [str(literal)], allow)
    else:
        try:
            addresses = await asyncio.wrap_future(_resolver_pool.submit(resolver, host, port))
        except OSError as exc:
            raise CallbackRefused(f"callback host {host!r} does not resolve: {exc}") from None
        address = check_addresses(host, addresses, allow)
    # Connect to the checked address; Host and (https) SNI and certificate checks use the name (its ASCII form).
    pinned = httpx.URL(url).copy_with(host=str(address), port=port)
    extensions = {"sni_hostname": host} if scheme == "https" and literal is None else {}
    headers = {**headers, "Host": host_header(url)}
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=None) as client:
        request = client.build_request("POST", pinned, content=body, headers=headers, extensions=extensions)
        response = await client.send(request, stream=True)  # the status is all we need: never read the body
        await response.aclose()
    status = response.status_code
    if response.is_redirect or 300 <= status < 400:
        return Attempt(False, status, f"answered {status} (redirects are not followed)")
    if status == 410:
        return Attempt(False, status, "answered 410 Gone (not retried)")
    if not response.is_success:
        retry_after = parse_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
        return Attempt(False, status, f"answered {status}", retry_after)
    return Attempt(True, status)


def attempt_delivery(url: str, body: bytes, headers: dict[str, str], settings: Settings,
                     resolver: Resolver | None = None) -> Attempt:
    """One POST of `body` to `url` under a total deadline of `settings.callback_timeout_s` (resolving,
    connecting, sending and reading the answer, however slowly the other side drips it). `resolver`: `resolve`
    (looked up when called) unless given."""
    allow = AllowList.parse(settings.callback_allow)
    lookup = resolver or resolve

    async def bounded() -> Attempt:
        return await asyncio.wait_for(_post(url, body, headers, allow, lookup), settings.callback_timeout_s)

    try:
        return asyncio.run(bounded())
    except CallbackRefused as exc:
        return Attempt(False, None, str(exc))
    except (asyncio.TimeoutError, TimeoutError):
        return Attempt(False, None, f"no complete answer within {settings.callback_timeout_s:g} s")
    except Exception as exc:  # connection refused, TLS, protocol errors
        return Attempt(False, None, f"{type(exc).__name__}: {exc}"[:300])


def next_delay_s(settings: Settings, attempt: int, outcome: Attempt) -> float | None:
    """Seconds to wait before the attempt after `attempt`, or None when there is none: delivered, 410 Gone, or
    the last attempt. The schedule's delay (its last one repeats), or the receiver's Retry-After when longer,
    capped at the schedule's longest delay."""
    if outcome.delivered or outcome.status == 410 or attempt >= settings.callback_attempts:
        return None
    delays = settings.callback_retry_delays
    delay = delays[min(attempt - 1, len(delays) - 1)]
    if outcome.retry_after_s is not None:
        delay = max(delay, min(outcome.retry_after_s, max(delays)))
    return delay


def deliver(ledger: Ledger, request_id: str, message_id: str, payload: str, settings: Settings, attempt: int,
            resolver: Resolver | None = None) -> tuple[Attempt, float | None]:
    """Attempt `attempt` (1-based) of one message; records the outcome on the request: final (delivered, 410
    Gone, or the last attempt failed) or pending until the next attempt. Returns what happened and the seconds
    until the next attempt (None: there is none). Nothing is sent when the ledger says the attempt is not due: the
    request ended again since (reverted: a newer message supersedes this one), the message is settled, or this
    attempt was made and recorded already (RQ running a crashed job again)."""
    record = ledger.get(request_id)
    not_due = _not_due(record.get("callback"), message_id, attempt)
    if not_due is not None:
        log.info("callback of %s: attempt %d of %s not sent: %s", request_id, attempt, message_id, not_due)
        return Attempt(False, None, not_due), None
    body = payload.encode()
    try:
        signature = webhook_headers(load_or_create_webhook_secret(settings), message_id, body)
    except ValueError as exc:  # a malformed UNLEARND_WEBHOOK_SECRET: nothing is sent unsigned
        outcome = Attempt(False, None, f"cannot sign the callback: {exc}")
    else:
        headers = {"Content-Type": "application/json", "User-Agent": "unlearnd-callbacks",
                   "X-Unlearnd-Request-Id": request_id, **signature}
        outcome = attempt_delivery(record["callback_url"], body, headers, settings, resolver)
    if outcome.delivered:
        CALLBACK_ATTEMPTS.labels("delivered").inc()
        ledger.set_callback(request_id, {"delivered": True, "pending": False, "status": outcome.status,
                                         "attempts": attempt, "message_id": message_id, "at": now_iso()})
        return outcome, None
    return outcome, record_failed_attempt(ledger, record, message_id, attempt, outcome, settings)


def _not_due(marker: dict[str, Any] | None, message_id: str, attempt: int) -> str | None:
    """Why attempt `attempt` of `message_id` must not be made, given the request's callback record; None when it
    may (also when the request has no record: it ended before callbacks were tracked)."""
    if marker is None:
        return None
    if marker.get("message_id") != message_id:
        return f"superseded by a newer ending of the request ({marker.get('message_id') or 'its message not made yet'})"
    if not marker.get("pending"):
        return "the message is settled already"
    if marker.get("attempts", 0) >= attempt:
        return f"attempt {attempt} was made already"
    return None


def deliver_callback(request_id: str, message_id: str, payload: str, attempt: int = 1) -> dict[str, Any]:
    """The RQ job of one delivery attempt. When it fails and attempts remain, it schedules the next one (RQ's
    scheduler enqueues it when due) and returns: no worker waits in between."""
    from rq import get_current_job

    from unlearnd.queue import redis_connection
    from unlearnd.settings import get_settings

    settings = get_settings()
    ledger = open_ledger(settings)
    outcome, delay = deliver(ledger, request_id, message_id, payload, settings, attempt)
    if delay is not None:
        job = get_current_job()
        connection = job.connection if job is not None else redis_connection(settings)
        try:
            enqueue_attempt(callback_queue(connection, settings), settings, request_id, message_id, payload,
                            attempt + 1, delay)
        except Exception as exc:  # Redis down: the message stays pending, and the janitor schedules the attempt
            log.warning("could not schedule attempt %d of the callback of %s, the janitor will: %s", attempt + 1,
                        request_id, exc)
    return {"request_id": request_id, "delivered": outcome.delivered, "attempt": attempt, "error": outcome.error,
            "next_attempt_in_s": delay}
