"""Cost of parsing hostile Via and URI hosts, as sizes double (issue 13 item 5).

Each line is one input shape at n and 2n characters; a linear parser takes about
twice as long for 2n, a quadratic one four times::

    python -m bench.hostile_hosts
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

from sipproxy.sip.errors import ParseError
from sipproxy.sip.uri import parse_uri
from sipproxy.sip.via import Via

SHAPES: dict[str, Callable[[int], str]] = {
    "via [:::…": lambda n: "SIP/2.0/UDP [" + ":" * n,
    "via [:::…x]": lambda n: "SIP/2.0/UDP [" + ":" * n + "x]",
    "via [1:1:…]": lambda n: "SIP/2.0/UDP [" + "1:" * (n // 2) + "]",
    "via long name": lambda n: "SIP/2.0/UDP " + "a" * n,
    "uri [:::…": lambda n: "sip:[" + ":" * n,
    "uri [:::…]": lambda n: "sip:a@[" + ":" * n + "]",
    "uri long name": lambda n: "sip:a@" + "h" * n + ";lr",
}


def _cost(parse: Callable[[str], object], text: str, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        with contextlib.suppress(ParseError):
            parse(text)
    return (time.perf_counter() - started) / rounds


def main() -> None:
    """Print microseconds per parse at n and 2n for every shape."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    for name, shape in SHAPES.items():
        parse: Callable[[str], object] = (
            Via.parse if name.startswith("via") else parse_uri
        )
        small = _cost(parse, shape(args.size), args.rounds)
        large = _cost(parse, shape(2 * args.size), args.rounds)
        print(
            f"{name:16} n={args.size}: {small * 1e6:8.1f} us  "
            f"2n: {large * 1e6:8.1f} us  ratio {large / small:4.1f}"
        )


if __name__ == "__main__":
    main()
