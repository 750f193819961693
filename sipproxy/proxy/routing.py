"""Routing decisions of a proxy as pure functions (RFC 3261 §16.3 step 4, §16.4, §16.6).

Nothing here sends or stores: each function takes a request (and what it needs to
know about us) and returns a new request or a value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request, first_address, parse_via, via_field
from sipproxy.sip.uri import AbsoluteURI, NameAddress, SipURI
from sipproxy.sip.via import Via

BRANCH_COOKIE = "z9hG4bK"

#: A URI that names this proxy (host and port are ours).
IsOurs = Callable[[SipURI], bool]


def _route_uri(value: str) -> SipURI | AbsoluteURI:
    return NameAddress.parse(value).uri


def preprocess_routes(request: Request, is_ours: IsOurs) -> Request:
    """Route information preprocessing (RFC 3261 §16.4).

    "If the Request-URI contains a value this proxy previously placed into a
    Record-Route header field [...], the proxy MUST replace the Request-URI in the
    request with the last value from the Route header field, and remove that value
    from the Route header field." (the previous hop was a strict router)

    "If the first value in the Route header field indicates this proxy or
    recipient, the proxy MUST remove that value from the request." Our two
    Record-Route entries, written when a request changes transport, both name us,
    so every leading Route entry that names us goes.
    """
    headers = request.headers
    uri_text = request.uri
    target = request.request_uri
    if isinstance(target, SipURI) and is_ours(target) and target.has_param("lr"):
        routes = headers.get_all("route")
        if routes:
            last = routes[-1]
            uri_text = str(_route_uri(last))
            headers = _remove_last_value(headers, "route")
    while (first := first_address(headers, "route")) is not None:
        uri = first.uri
        if not (isinstance(uri, SipURI) and is_ours(uri)):
            break
        _, headers = headers.pop_first_value("route")
    if headers is request.headers and uri_text == request.uri:
        return request
    return copy_with(request, uri_text, headers)


def copy_with(request: Request, uri: str, headers: Headers) -> Request:
    """``request`` with Request-URI ``uri`` and ``headers``, the rest kept.

    Every forwarded request is copied a few times on its way; a plain
    construction costs a fraction of ``dataclasses.replace``, and an unchanged
    Request-URI keeps the parse it had.
    """
    if uri == request.uri:
        return request.with_headers(headers)
    return Request(request.method, uri, headers, request.body, request.version)


def _remove_last_value(headers: Headers, name: str) -> Headers:
    values = headers.get_all(name)
    kept = headers.remove(name)
    for value in values[:-1]:
        kept = kept.append("Route", value)
    return kept


def loop_key(request: Request) -> str:
    """What a loop leaves unchanged (RFC 3261 §16.6 step 8, §16.3 step 4).

    A hash over "the To tag, From tag, Call-ID header field, the Request-URI
    received (before translation), the topmost Via header, and the sequence number
    from the CSeq header field, in addition to any Proxy-Require and
    Proxy-Authorization header fields" — all as they stand in the request we
    received, before we touch it.
    """
    headers = request.headers
    parts = (
        request.uri,
        request.to_addr.tag or "",
        request.from_addr.tag or "",
        headers.get("call-id") or "",
        str(request.cseq.number),
        ",".join(headers.get_all("proxy-require")),
        "\n".join(f.value for f in headers if f.key == "proxy-authorization"),
        ",".join(headers.get_all("route")),
    )
    # surrogateescape: a Call-ID that is not UTF-8 hashes as its bytes instead of
    # raising, so such a request is checked for loops like any other.
    data = "\x00".join(parts).encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def make_branch(key: str, unique: str) -> str:
    """A branch that starts with the magic cookie and carries the loop key.

    "the branch parameter [...] MUST be unique" per forwarded request (§8.1.1.7),
    so a counter or random part follows the loop key.
    """
    return f"{BRANCH_COOKIE}{key}.{unique}"


def is_loop(request: Request, key: str, is_our_via: Callable[[Via], bool]) -> bool:
    """§16.3 step 4: one of our own Vias carries the same loop key -> 482.

    A Via of ours with a different key is a spiral (the request came back with a
    changed Request-URI, e.g. after a forwarding rule), which is legal.
    """
    values = request.headers.get_all("via")
    if len(values) < 2:
        # Only the sender's own Via: the request has not passed through us.
        return False
    for value in values:
        via = parse_via(value)
        if not is_our_via(via):
            continue
        branch = via.branch or ""
        if (
            branch.startswith(BRANCH_COOKIE)
            and branch[len(BRANCH_COOKIE) :].split(".")[0] == key
        ):
            return True
    return False


def prepare_forward(
    request: Request,
    *,
    request_uri: str | None,
    via: Via,
    record_route: Sequence[str] = (),
    routes: Sequence[str] = (),
) -> Request:
    """The copy that goes to one target (RFC 3261 §16.6 steps 1-8).

    :param request_uri: the target's URI (step 2), or None to keep it (a request
        following a Route set keeps its Request-URI).
    :param record_route: our Record-Route values, topmost first (step 4).
    :param routes: Route values to put in front, e.g. a registration's Path
        (RFC 3327 §5.3), first hop first (step 5 / step 6).
    """
    headers = request.headers
    # Step 3: "If the copy contains a Max-Forwards header field, the proxy MUST
    # decrement its value by one (1). If the copy does not contain a Max-Forwards
    # header field, the proxy MUST add one with a field value, which SHOULD be 70."
    max_forwards = request.max_forwards
    headers = headers.replace(
        "Max-Forwards", str(70 if max_forwards is None else max_forwards - 1)
    )
    for value in reversed(record_route):
        headers = headers.prepend("Record-Route", value)
    for value in reversed(routes):
        headers = headers.prepend("Route", value)
    # The client transaction reads the top Via of what it sends (its key) and of
    # every response: written with its view, it is not parsed back.
    headers = headers.prepend_field(via_field(via))
    uri = request.uri if request_uri is None else request_uri
    return copy_with(request, uri, headers)


def next_hop(request: Request) -> tuple[Request, SipURI | AbsoluteURI]:
    """Where a prepared request goes first (RFC 3261 §16.6 steps 6-7, §16.12).

    With a loose-routing top Route, there; with a strict-routing one (no ``lr``),
    the Request-URI moves to the end of the Route set and the top Route becomes
    the Request-URI ("the proxy MUST place the Request-URI into the Route header
    field as the last value [...] then place the first Route header field value
    into the Request-URI and remove that value from the Route header field").
    Without Route, the Request-URI itself.
    """
    routes = request.headers.get_all("route")
    if not routes:
        return request, request.request_uri
    top = _route_uri(routes[0])
    if isinstance(top, SipURI) and not top.has_param("lr"):
        _, headers = request.headers.pop_first_value("route")
        headers = headers.append("Route", f"<{request.uri}>")
        return copy_with(request, str(top), headers), top
    return request, top
