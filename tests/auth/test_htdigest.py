"""The users file (htdigest format) and the sipproxy-passwd command."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sipproxy.auth import passwd
from sipproxy.auth.digest import (
    Authenticator,
    Outcome,
    compute_response,
    parse_credentials,
)
from sipproxy.auth.ha1 import compute_ha1
from sipproxy.auth.htdigest import (
    UserDB,
    UsersFileError,
    load_users,
    read_realms,
    write_user,
)
from sipproxy.sip.headers import Headers
from sipproxy.sip.message import Request

REALM = "example.test"
NOW = 5000.0


def md5(user: str, realm: str, password: str) -> str:
    return compute_ha1(user, realm, password, "MD5")


def sha256(user: str, realm: str, password: str) -> str:
    return compute_ha1(user, realm, password, "SHA-256")


def authenticates(users: UserDB, user: str, password: str) -> bool:
    """Whether a UA knowing ``password`` gets OK from an Authenticator on ``users``.

    Answers every algorithm offered (the challenges share a nonce, so each answer
    counts one up); all must verify.
    """
    auth = Authenticator(users.realm, users, b"secret")
    uri = f"sip:{users.realm}"
    outcomes = []
    for count, value in enumerate(auth.challenge(NOW), start=1):
        nc = f"{count:08x}"
        _, params = parse_credentials(value)
        algorithm, nonce = params["algorithm"], params["nonce"]
        response = compute_response(
            compute_ha1(user, users.realm, password, algorithm),
            algorithm=algorithm,
            method="REGISTER",
            uri=uri,
            nonce=nonce,
            qop="auth",
            nc=nc,
            cnonce="c",
        )
        creds = (
            f'Digest username="{user}", realm="{users.realm}", nonce="{nonce}", '
            f'uri="{uri}", response="{response}", algorithm={algorithm}, '
            f'qop=auth, nc={nc}, cnonce="c"'
        )
        request = Request("REGISTER", uri, Headers.of(("Authorization", creds)))
        outcomes.append(auth.verify(request, NOW).outcome)
    return outcomes == [Outcome.OK] * len(outcomes)


# -- reading ------------------------------------------------------------------


def test_load_reads_both_forms_and_skips_the_rest(tmp_path: Path) -> None:
    """Htdigest-style lines, the SHA-256 fourth field; comments, blanks, realms."""
    path = tmp_path / "users"
    path.write_text(
        "# sipproxy users\n"
        "\n"
        f"alice:{REALM}:{md5('alice', REALM, 'a')}\n"
        f"bob:{REALM}:{md5('bob', REALM, 'b').upper()}:{sha256('bob', REALM, 'b')}\n"
        f"carol:elsewhere:{md5('carol', 'elsewhere', 'c')}\n"
        "   # indented comment\n"
    )
    users = load_users(path, REALM)
    assert users.realm == REALM
    assert sorted(users) == ["alice", "bob"]
    assert "alice" in users
    assert "carol" not in users
    assert len(users) == 2
    assert users.ha1("alice", "MD5") == md5("alice", REALM, "a")
    assert users.ha1("alice", "SHA-256") is None
    assert users.ha1("bob", "md5") == md5("bob", REALM, "b")  # lower-cased
    assert users.ha1("bob", "sha-256") == sha256("bob", REALM, "b")
    assert users.ha1("carol", "MD5") is None
    assert users.algorithms == {"MD5"}


def test_algorithms_of_an_all_sha256_file(tmp_path: Path) -> None:
    """When every line has a SHA-256 HA1, both algorithms can be offered."""
    path = tmp_path / "users"
    write_user(path, "alice", REALM, "a")
    write_user(path, "bob", REALM, "b")
    assert load_users(path, REALM).algorithms == {"MD5", "SHA-256"}
    assert UserDB(REALM).algorithms == {"MD5", "SHA-256"}


def test_file_is_a_value() -> None:
    """A UserDB cannot be changed after loading; the server swaps in a new one."""
    users = UserDB(REALM)
    with pytest.raises(AttributeError):
        users.realm = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("alice", "fields"),
        (f"alice:{REALM}", "fields"),
        (f"alice:{REALM}:{'0' * 32}:{'0' * 64}:extra", "fields"),
        (f":{REALM}:{'0' * 32}", "empty user"),
        (f"alice:{REALM}:{'0' * 31}", "32 hex"),
        (f"alice:{REALM}:{'g' * 32}", "32 hex"),
        (f"alice:{REALM}:{'0' * 32}:{'0' * 63}", "64 hex"),
        (f"alice:other:{'0' * 31}", "32 hex"),  # other realms must be sound too
    ],
)
def test_malformed_line_names_file_and_line(
    tmp_path: Path, line: str, reason: str
) -> None:
    """A malformed line raises UsersFileError with the file and line number."""
    path = tmp_path / "users"
    path.write_text(f"# header\nbob:{REALM}:{'1' * 32}\n{line}\n")
    with pytest.raises(UsersFileError, match=reason) as info:
        load_users(path, REALM)
    assert info.value.path == str(path)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: ")


def test_error_never_shows_the_hash(tmp_path: Path) -> None:
    """The error message quotes no HA1 (it is as good as a password)."""
    ha1 = "f" * 31
    path = tmp_path / "users"
    path.write_text(f"alice:{REALM}:{ha1}\n")
    with pytest.raises(UsersFileError) as info:
        load_users(path, REALM)
    assert ha1 not in str(info.value)


def test_duplicate_user_is_an_error(tmp_path: Path) -> None:
    """A user listed twice in our realm: which line wins would be a guess."""
    path = tmp_path / "users"
    path.write_text(f"alice:{REALM}:{'1' * 32}\nalice:{REALM}:{'2' * 32}\n")
    with pytest.raises(UsersFileError, match=r":2: .*twice"):
        load_users(path, REALM)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    """A file that cannot be read raises UsersFileError naming it."""
    with pytest.raises(UsersFileError, match="nope"):
        load_users(tmp_path / "nope", REALM)


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 make the file unreadable, not a crash."""
    path = tmp_path / "users"
    path.write_bytes(b"\xff\xfe:" + REALM.encode() + b":" + b"0" * 32 + b"\n")
    with pytest.raises(UsersFileError, match="UTF-8"):
        load_users(path, REALM)


def test_read_realms(tmp_path: Path) -> None:
    """read_realms lists the realms a file names; none for a missing file."""
    path = tmp_path / "users"
    assert read_realms(path) == frozenset()
    path.write_text(f"a:r1:{'0' * 32}\nb:r2:{'0' * 32}\n# c:r3:x\nd:r1:{'0' * 32}\n")
    assert read_realms(path) == {"r1", "r2"}


# -- writing ------------------------------------------------------------------


def test_write_user_creates_a_private_file(tmp_path: Path) -> None:
    """A new file has mode 0600 and no plaintext; the user authenticates."""
    path = tmp_path / "users"
    assert write_user(path, "alice", REALM, "s3cret-pw") is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "s3cret-pw" not in text
    assert text == (
        f"alice:{REALM}:{md5('alice', REALM, 's3cret-pw')}:"
        f"{sha256('alice', REALM, 's3cret-pw')}\n"
    )
    assert authenticates(load_users(path, REALM), "alice", "s3cret-pw")


def test_write_user_replaces_only_that_line(tmp_path: Path) -> None:
    """Changing a password keeps comments, order, other users and other realms."""
    path = tmp_path / "users"
    path.write_text(
        f"# keep me\nalice:{REALM}:{'1' * 32}\nalice:other:{'2' * 32}\n"
        f"bob:{REALM}:{'3' * 32}\n"
    )
    path.chmod(0o640)
    assert write_user(path, "alice", REALM, "new") is False
    lines = path.read_text().splitlines()
    assert lines[0] == "# keep me"
    assert lines[1].startswith(f"alice:{REALM}:{md5('alice', REALM, 'new')}:")
    assert lines[2:] == [f"alice:other:{'2' * 32}", f"bob:{REALM}:{'3' * 32}"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert authenticates(load_users(path, REALM), "alice", "new")
    assert not authenticates(load_users(path, REALM), "alice", "old")


def test_write_user_leaves_no_temporary_files(tmp_path: Path) -> None:
    """The file is replaced atomically; nothing is left beside it."""
    path = tmp_path / "users"
    write_user(path, "alice", REALM, "a")
    write_user(path, "bob", REALM, "b")
    assert os.listdir(tmp_path) == ["users"]


@pytest.mark.parametrize(
    ("user", "realm"), [("", REALM), ("a:b", REALM), ("a\nb", REALM), ("a", "r:x")]
)
def test_write_user_refuses_what_the_file_cannot_hold(
    tmp_path: Path, user: str, realm: str
) -> None:
    """A ':' or a line break in the user or realm would corrupt the file."""
    with pytest.raises(ValueError, match="must"):
        write_user(tmp_path / "users", user, realm, "pw")
    assert not (tmp_path / "users").exists()


def test_write_user_refuses_a_broken_file(tmp_path: Path) -> None:
    """A malformed file is not rewritten (the user must look at it)."""
    path = tmp_path / "users"
    path.write_text("garbage\n")
    with pytest.raises(UsersFileError):
        write_user(path, "alice", REALM, "pw")
    assert path.read_text() == "garbage\n"


# -- the real htdigest --------------------------------------------------------


def _htdigest() -> str:
    tool = shutil.which("htdigest")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("htdigest (apache2-utils) is required under CI")
        pytest.skip("htdigest (apache2-utils) is not installed")
    return tool


def _run_htdigest(tool: str, *args: str, password: str) -> None:
    # Without a controlling terminal, getpass() reads the password from stdin.
    subprocess.run(
        [tool, *args],
        input=f"{password}\n{password}\n".encode(),
        check=True,
        capture_output=True,
        start_new_session=True,
        timeout=10,
    )


def test_file_written_by_htdigest(tmp_path: Path) -> None:
    """A file from Apache's htdigest loads, and its users authenticate with MD5."""
    tool = _htdigest()
    path = tmp_path / "users"
    _run_htdigest(tool, "-c", str(path), REALM, "alice", password="wonderland")
    _run_htdigest(tool, str(path), REALM, "bob", password="builder")
    _run_htdigest(tool, str(path), "elsewhere", "carol", password="x")
    users = load_users(path, REALM)
    assert sorted(users) == ["alice", "bob"]
    assert users.ha1("alice", "MD5") == md5("alice", REALM, "wonderland")
    assert users.algorithms == {"MD5"}
    assert authenticates(users, "bob", "builder")
    assert not authenticates(users, "bob", "wonderland")


def test_htdigest_and_sipproxy_passwd_share_a_file(tmp_path: Path) -> None:
    """Lines from either tool survive the other one editing the file."""
    tool = _htdigest()
    path = tmp_path / "users"
    _run_htdigest(tool, "-c", str(path), REALM, "alice", password="a")
    write_user(path, "bob", REALM, "b")
    _run_htdigest(tool, str(path), REALM, "alice", password="a2")
    users = load_users(path, REALM)
    assert users.ha1("bob", "SHA-256") == sha256("bob", REALM, "b")
    assert authenticates(users, "alice", "a2")
    assert authenticates(users, "bob", "b")


# -- sipproxy-passwd ----------------------------------------------------------


def run_passwd(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], stdin: str = ""
) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return passwd.main(argv)


def test_passwd_from_stdin_writes_a_usable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--password-stdin adds a user whose digest verifies; the password is not shown."""
    path = tmp_path / "users"
    argv = [str(path), "alice", "--realm", REALM, "--password-stdin"]
    assert run_passwd(monkeypatch, argv, "correct horse\n") == 0
    out, err = capsys.readouterr()
    assert "added" in out
    assert "correct horse" not in out + err
    assert "correct horse" not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = load_users(path, REALM)
    assert authenticates(users, "alice", "correct horse")
    assert not authenticates(users, "alice", "correct")


def test_passwd_takes_the_realm_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --realm, the file's only realm is used; several need --realm."""
    path = tmp_path / "users"
    write_user(path, "alice", REALM, "a")
    assert run_passwd(monkeypatch, [str(path), "bob", "--password-stdin"], "b\n") == 0
    assert authenticates(load_users(path, REALM), "bob", "b")
    write_user(path, "carol", "elsewhere", "c")
    assert run_passwd(monkeypatch, [str(path), "dave", "--password-stdin"], "d\n") == 2
    assert "several realms" in capsys.readouterr().err


def test_passwd_new_file_needs_a_realm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new file names no realm yet, so --realm is required."""
    path = tmp_path / "users"
    assert run_passwd(monkeypatch, [str(path), "a", "--password-stdin"], "p\n") == 2
    assert "--realm" in capsys.readouterr().err
    assert not path.exists()


def test_passwd_prompts_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --password-stdin the password is asked twice and must match."""
    path = tmp_path / "users"
    answers = iter(["one", "two", "same", "same"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert passwd.main([str(path), "alice", "--realm", REALM]) == 2
    assert "differ" in capsys.readouterr().err
    assert not path.exists()
    assert passwd.main([str(path), "alice", "--realm", REALM]) == 0
    assert authenticates(load_users(path, REALM), "alice", "same")


def test_passwd_refuses_an_empty_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty line on stdin is no password."""
    path = tmp_path / "users"
    argv = [str(path), "alice", "--realm", REALM, "--password-stdin"]
    assert run_passwd(monkeypatch, argv, "\n") == 2
    assert not path.exists()


def test_passwd_reports_a_broken_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed file or bad user name exits 1 with the reason."""
    path = tmp_path / "users"
    path.write_text("garbage\n")
    argv = [str(path), "alice", "--realm", REALM, "--password-stdin"]
    assert run_passwd(monkeypatch, argv, "pw\n") == 1
    assert f"{path}:1:" in capsys.readouterr().err
    argv = [str(tmp_path / "new"), "a:b", "--realm", REALM, "--password-stdin"]
    assert run_passwd(monkeypatch, argv, "pw\n") == 1


def test_passwd_entry_point_is_declared() -> None:
    """setup.cfg installs the command as sipproxy-passwd."""
    setup_cfg = Path(__file__).parents[2] / "setup.cfg"
    assert "sipproxy-passwd = sipproxy.auth.passwd:main" in setup_cfg.read_text()
