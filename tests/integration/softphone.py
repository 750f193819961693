"""Real softphones in tests: Debian's baresip, driven over its ``ctrl_tcp`` module.

Each :class:`Baresip` gets a config directory of its own, runs as
``baresip -f DIR`` in its own process group with its output in
``DIR/baresip.log``, and is driven through one TCP connection to ``ctrl_tcp``:
JSON objects framed as netstrings (``LEN:JSON,``) both ways.

Baresip starts with no account; the driver adds it with the ``uanew`` command
once connected. An account from the ``accounts`` file would register at once,
and its REGISTER_OK would go out before anyone listens on the control port.

Commands go out as ``{"command": ..., "params": ..., "token": ...}`` and come back
as ``{"response": true, "ok": ..., "data": ..., "token": ...}``; in between,
baresip pushes events such as ``{"event": true, "type": "CALL_INCOMING", ...}``.
Events are kept in arrival order until a test waits for their type, so one that
arrives before the test asks for it is not lost. Each carries ``accountaor``,
``direction``, ``peeruri``, ``param`` and, for calls, ``id`` (the Call-ID).
The types the tests use: REGISTERING, REGISTER_OK, REGISTER_FAIL,
CALL_INCOMING, CALL_RINGING, CALL_ESTABLISHED, CALL_CLOSED (``param`` says why).

Written for baresip 1.0.0 (Debian 12). Everything stays on 127.0.0.1: the SIP
and RTP sockets are bound there (``net_interface``), no STUN, TURN, ICE or
DTLS module is loaded, and the DNS server is a dead loopback port, so a lookup
(none is expected: every address given is numeric) fails at once instead of
leaving the machine. No audio driver is loaded either: calls set up with G.711
and simply carry no samples. Every wait is bounded, and ``-t`` makes each
baresip quit on its own after ``lifetime`` seconds should a test leak one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from tests.integration.conftest import free_port, stop

Message = dict[str, Any]

# Modules and settings common to every instance. The ``menu`` module provides
# the uanew/dial/accept/hangup commands.
_CONFIG = """\
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:{sip_port}
net_interface\t\t127.0.0.1
dns_server\t\t127.0.0.1:{dns_port}
call_local_timeout\t{call_timeout}
call_max_calls\t\t4
rtp_stats\t\tno
rtcp_mux\t\tno
module_path\t\t{module_path}
module\t\t\tg711.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}
menu_bell\t\tno
ringback_disabled\tyes
statmode_default\toff
"""

MODULE_PATH = Path("/usr/lib/baresip/modules")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # baresip colours its log


class SoftphoneError(Exception):
    """A softphone refused a command, reported a failure, or did not answer."""


class Baresip:
    """One baresip user agent with one account, driven over ``ctrl_tcp``.

    :param directory: an empty directory for the config and the log.
    :param account: an account in the syntax of baresip's ``accounts`` file, e.g.
        ``<sip:alice@example.test>;auth_pass=secret;outbound="sip:127.0.0.1:5060"``.
    :param executable: the baresip binary (``require_tool("baresip")``).
    :param lifetime: seconds after which baresip quits by itself (``-t``).
    :param call_timeout: seconds a call may stay unanswered.
    :param sip_trace: log every SIP message sent and received (``-s``).
    """

    def __init__(
        self,
        directory: Path,
        account: str,
        *,
        executable: str = "baresip",
        lifetime: float = 300.0,
        call_timeout: int = 30,
        sip_trace: bool = True,
    ) -> None:
        self.directory = directory
        self.account = account
        self.sip_port = free_port()
        self.ctrl_port = free_port()
        self.log = directory / "baresip.log"
        self.events: list[Message] = []
        """Every event received so far, in order (for assertions and failures)."""
        self._pending: list[Message] = []
        self._buffer = b""
        self._tokens = itertools.count(1)
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._executable = executable
        self._lifetime = lifetime
        self._call_timeout = call_timeout
        self._sip_trace = sip_trace

    def start(self, timeout: float = 10.0) -> None:
        """Write the config, start baresip, connect, and add the account.

        An account with a ``regint`` starts registering now: see :meth:`register_ok`.

        :raises SoftphoneError: if baresip exits, or its control port does not
            accept a connection or the account within ``timeout`` seconds.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "config").write_text(
            _CONFIG.format(
                sip_port=self.sip_port,
                ctrl_port=self.ctrl_port,
                dns_port=free_port(),  # nothing listens there: no lookup leaves
                call_timeout=self._call_timeout,
                module_path=MODULE_PATH,
            )
        )
        try:
            self._launch(timeout)
        except BaseException:
            self.stop()
            raise

    def _launch(self, timeout: float) -> None:
        """Run baresip, wait for its control port, add the account."""
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(
                [
                    self._executable,
                    "-f",
                    str(self.directory),
                    "-t",
                    str(int(self._lifetime)),
                    *(["-s"] if self._sip_trace else []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise self._error(f"baresip exited with {self._process.returncode}")
            try:
                self._sock = socket.create_connection(
                    ("127.0.0.1", self.ctrl_port), timeout=1.0
                )
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise self._error(
                        f"no control port 127.0.0.1:{self.ctrl_port} in {timeout}s"
                    ) from None
                time.sleep(0.05)
        self.command("uanew", self.account, timeout=max(deadline - time.monotonic(), 1))

    def quit(self) -> None:
        """Ask baresip to end its calls, unregister and exit; do not wait."""
        if self._sock is not None:
            with contextlib.suppress(OSError, SoftphoneError):
                self._send({"command": "quit", "token": "quit"})
            self._sock.close()
            self._sock = None

    def stop(self, timeout: float = 3.0) -> None:
        """Quit, and end the process if it has not exited ``timeout`` s later.

        Baresip answers its first SIGTERM like ``quit`` (which may wait for an
        answer that never comes, such as to a BYE sent to the wrong place) and
        exits at once on the second, which :func:`conftest.stop` sends; signals
        sent back to back would merge into one, hence the pause between them.
        """
        self.quit()
        process = self._process
        if process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.5)
        stop(process)

    def __enter__(self) -> Baresip:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_text(self) -> str:
        """What baresip printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # Commands (the ``menu`` module's long names).

    def dial(self, uri: str, timeout: float = 5.0) -> None:
        """Start a call to ``uri``; CALL_RINGING/CALL_ESTABLISHED follow as events."""
        self.command("dial", uri, timeout=timeout)

    def accept(self, timeout: float = 5.0) -> None:
        """Answer the current incoming call (after CALL_INCOMING)."""
        self.command("accept", timeout=timeout)

    def hangup(self, timeout: float = 5.0) -> None:
        """End the current call, or reject or cancel it if not yet established."""
        self.command("hangup", timeout=timeout)

    def command(
        self, name: str, params: str | None = None, *, timeout: float = 5.0
    ) -> str:
        """Run a baresip command and return the text of its response.

        Events that arrive before the response are kept for :meth:`wait_event`.

        :raises SoftphoneError: if baresip answers ``ok: false`` or not in time.
        """
        token = f"t{next(self._tokens)}"
        request: Message = {"command": name, "token": token}
        if params is not None:
            request["params"] = params
        self._send(request)
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline, f"the response to {name!r}")
            if message.get("response") and message.get("token") == token:
                if not message.get("ok"):
                    raise self._error(f"{name} {params or ''}: {message.get('data')}")
                return str(message.get("data", ""))

    # Events.

    def wait_event(
        self, type: str, timeout: float = 10.0, *, fail_on: Collection[str] = ()
    ) -> Message:
        """Take the next event of ``type`` (e.g. ``CALL_ESTABLISHED``) off the queue.

        :param fail_on: event types that mean ``type`` will not come (e.g.
            ``CALL_CLOSED`` while waiting for ``CALL_ESTABLISHED``): give up at once.
        :raises SoftphoneError: on a ``fail_on`` event, or none of ``type`` in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self._pending):
                if event.get("type") == type:
                    return self._pending.pop(index)
                if event.get("type") in fail_on:
                    del self._pending[index]
                    raise self._error(f"{event.get('type')} while waiting for {type}")
            self._receive(deadline, f"event {type}")

    def register_ok(self, timeout: float = 10.0) -> Message:
        """Wait until the account is registered (REGISTER_OK; REGISTER_FAIL fails)."""
        return self.wait_event("REGISTER_OK", timeout, fail_on={"REGISTER_FAIL"})

    # The wire: netstrings of JSON.

    def _send(self, message: Message) -> None:
        if self._sock is None:
            raise SoftphoneError("not started")
        data = json.dumps(message).encode()
        self._sock.sendall(b"%d:%s," % (len(data), data))

    def _receive(self, deadline: float, what: str) -> Message:
        """Read one message (an event is also queued); time out at ``deadline``."""
        if self._sock is None:
            raise SoftphoneError("not started")
        while True:
            message = self._parse_one()
            if message is not None:
                if message.get("event"):
                    self.events.append(message)
                    self._pending.append(message)
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._error(f"no {what} in time")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise self._error(f"no {what} in time") from None
            if not chunk:
                raise self._error(f"control connection closed waiting for {what}")
            self._buffer += chunk

    def _parse_one(self) -> Message | None:
        """Take one whole netstring off the buffer, or None if there is none yet."""
        length, colon, rest = self._buffer.partition(b":")
        if not colon:
            if self._buffer and not (self._buffer.isdigit() and len(self._buffer) < 9):
                raise self._error(f"bad netstring {self._buffer[:40]!r}")
            return None
        if not length.isdigit():
            raise self._error(f"bad netstring {self._buffer[:40]!r}")
        size = int(length)
        if len(rest) < size + 1:
            return None
        if rest[size : size + 1] != b",":
            raise self._error(f"bad netstring end {rest[: size + 1][-40:]!r}")
        self._buffer = rest[size + 1 :]
        decoded = json.loads(rest[:size])
        if not isinstance(decoded, dict):
            raise self._error(f"not a JSON object: {decoded!r}")
        return decoded

    def _error(self, what: str) -> SoftphoneError:
        seen = ", ".join(str(event.get("type")) for event in self.events) or "none"
        tail = "\n".join(_ANSI.sub("", self.log_text()).splitlines()[-40:])
        return SoftphoneError(
            f"{self.account}: {what}\nevents: {seen}\n"
            f"baresip log ({self.log}), the end:\n{tail}"
        )
