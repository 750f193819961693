"""Real softphones in tests: Debian's ``linphonec`` (package ``linphone-cli``).

Each :class:`Linphonec` gets a directory of its own: its ``linphonerc`` (one
account, its friends), its home (liblinphone keeps chat rooms and friends in
``~/.local/share/linphone/linphone.db``) and ``linphonec.log``, liblinphone's
debug log with every SIP message. It runs as ``linphonec -c linphonerc`` in its
own process group and is driven through stdin: one console command a line
(``chat``, ``friend``, ``status register``, ``quit``); what it prints on stdout
is read back, and the tests wait for lines such as
``Message received from sip:alice@example.test: "hello"`` or
``Friend "bob" <sip:bob@example.test> is Online``.

Written for linphonec 5.1 (Debian 12, liblinphone 5.1.65). It runs headless as
is: no sound card is needed for messages and presence. Three settings make it
usable in a network namespace with only loopback:

- ``[sip] auto_net_state_mon=0``: liblinphone's own network monitor finds no
  route to the Internet and declares the network down a few seconds after
  start, which unregisters the account and stops every request;
- ``[sip] register_only_when_network_is_up=0``: with the monitor off, nobody
  tells the core the network is up, and it would never register;
- ``reg_route`` (the outbound proxy): without it requests for
  ``sip:bob@example.test`` are sent where DNS says, not through the proxy.

The SIP socket is bound to 127.0.0.1 (``bind_address``), TCP and TLS are off,
and every address given is numeric, so nothing is looked up in DNS.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.integration.conftest import free_port, stop

_CONFIG = """\
[sip]
sip_port={sip_port}
sip_tcp_port=-1
sip_tls_port=-1
bind_address=127.0.0.1
auto_net_state_mon=0
register_only_when_network_is_up=0
default_proxy=0
[rtp]
audio_rtp_port={audio_port}
video_rtp_port={video_port}
[video]
enabled=0
[proxy_0]
reg_proxy=<sip:127.0.0.1:{proxy_port}>
reg_route=<sip:127.0.0.1:{proxy_port};lr>
reg_identity=<sip:{user}@{domain}>
reg_expires=600
reg_sendregister=1
publish={publish}
[auth_info_0]
username={user}
passwd={password}
realm={domain}
domain={domain}
"""

_FRIEND = """\
[friend_{index}]
url=<{uri}>
pol=accept
subscribe={subscribe}
"""


class LinphonecError(Exception):
    """Linphonec exited, or did not print what was waited for in time."""


class Linphonec:
    """One linphonec with one account at the proxy, driven through stdin.

    :param directory: an empty directory for the config, the home and the log.
    :param user: the user name in ``domain``; also the digest user name.
    :param password: the user's password.
    :param proxy_port: the proxy on 127.0.0.1 (registrar and outbound proxy).
    :param subscribe_to: AORs whose presence to watch (friends with subscribe=1).
    :param accept_from: AORs allowed to watch ours (friends with pol=accept);
        linphonec 5.1 accepts no other watcher ("accept/deny is not implemented").
    :param publish: whether to PUBLISH our own presence (to our own AOR).
    :param executable: the linphonec binary (``require_tool("linphonec")``).
    """

    def __init__(
        self,
        directory: Path,
        user: str,
        password: str,
        proxy_port: int,
        *,
        domain: str = "example.test",
        subscribe_to: Sequence[str] = (),
        accept_from: Sequence[str] = (),
        publish: bool = False,
        executable: str = "linphonec",
    ) -> None:
        self.directory = directory
        self.user = user
        self.aor = f"sip:{user}@{domain}"
        self.sip_port = free_port()
        self.log = directory / "linphonec.log"
        self.output = ""
        """Everything linphonec printed on stdout so far."""
        self._seen = 0  # how much of ``output`` wait_for has consumed
        self._process: subprocess.Popen[bytes] | None = None
        self._executable = executable
        self._config = _CONFIG.format(
            sip_port=self.sip_port,
            audio_port=free_port(),
            video_port=free_port(),
            proxy_port=proxy_port,
            user=user,
            password=password,
            domain=domain,
            publish=int(publish),
        )
        friends = [(uri, 1) for uri in subscribe_to]
        friends += [(uri, 0) for uri in accept_from if uri not in subscribe_to]
        for index, (uri, subscribe) in enumerate(friends):
            self._config += _FRIEND.format(index=index, uri=uri, subscribe=subscribe)

    def start(self) -> None:
        """Write the config and start linphonec; it registers at once."""
        home = self.directory / "home"
        (home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        config = self.directory / "linphonerc"
        config.write_text(self._config)
        self._process = subprocess.Popen(
            [self._executable, "-c", str(config), "-d", "6", "-l", str(self.log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(home)},
            start_new_session=True,
        )

    def command(self, line: str) -> None:
        """Type one console command (e.g. ``chat sip:bob@example.test "hi"``)."""
        process = self._running()
        assert process.stdin is not None
        process.stdin.write(line.encode() + b"\n")
        process.stdin.flush()

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until stdout shows ``pattern`` (a regex) after what was matched.

        What linphonec printed before the test asked is not lost: the search
        starts after the end of the previous match of :meth:`wait_for`.

        :raises LinphonecError: if linphonec exits or does not print it in time.
        """
        found = self._search(pattern, self._seen, timeout)
        self._seen = found.end()
        return found

    def registered(self, timeout: float = 10.0) -> None:
        """Wait until ``status register`` says the account is registered.

        Leaves the place :meth:`wait_for` searches from where it was.
        """
        deadline = time.monotonic() + timeout
        wanted = rf"registered, identity={re.escape(self.aor)}"
        while True:
            start = len(self.output)
            self.command("status register")
            answer = self._search(r"registered(?:, identity=\S+|=-?\d+)", start, 2.0)
            if re.fullmatch(wanted, answer[0]):
                return
            if time.monotonic() >= deadline:
                raise self._error(f"{self.aor} not registered within {timeout} s")
            time.sleep(0.2)

    def _search(self, pattern: str, start: int, timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in stdout from ``start``; waits for it."""
        deadline = time.monotonic() + timeout
        expression = re.compile(pattern)
        while True:
            found = expression.search(self.output, start)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                raise self._error(f"no {pattern!r} within {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        """``quit`` (unregisters), then end the process group if it lingers."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(OSError, LinphonecError):
                self.command("quit")
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        stop(process)
        if process.stdout is not None:
            self.output += process.stdout.read().decode(errors="replace")
            process.stdout.close()
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def __enter__(self) -> Linphonec:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise LinphonecError("not started")
        if self._process.poll() is not None:
            raise self._error(f"linphonec exited with {self._process.returncode}")
        return self._process

    def _read(self, timeout: float) -> bool:
        """Append what stdout has within ``timeout`` s; False at end of output."""
        process = self._running()
        assert process.stdout is not None
        fd = process.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return True
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        self.output += chunk.decode(errors="replace")
        return True

    def _error(self, what: str) -> LinphonecError:
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        tail = "\n".join(log.splitlines()[-60:])
        return LinphonecError(
            f"{self.aor}: {what}\nstdout:\n{self.output[-3000:]}\n"
            f"linphonec log ({self.log}), the end:\n{tail}"
        )
