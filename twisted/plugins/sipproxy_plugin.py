"""The twistd plugin: ``twistd -n sipproxy`` imports sipproxy.tap only when asked."""

from twisted.application.service import ServiceMaker

sipproxy = ServiceMaker(
    "sipproxy",
    "sipproxy.tap",
    "SIP proxy, registrar and call router (RFC 3261).",
    "sipproxy",
)
