"""Whatever arrives on the daemon's socket, the sender gets a reply and the daemon keeps serving
(the reviewer's r1/repro_6: `[1, 2]` or `{"argv": 5}` ended the daemon)."""

from __future__ import annotations

import socket

import pytest

from engine import daemon_client as dc
from hblsp.daemon import BadRequest, RunRequest, parse_request
from tests.support.daemon import ask, daemon_command, private_daemon

MALFORMED = [
    b"[1, 2]\n",
    b'{"argv": 5}\n',
    b'{"argv": ["-c", 3], "cwd": "/"}\n',
    b'{"argv": ["-c", "x.yaml"], "cwd": 7}\n',
    b'{"argv": ["-c", "x.yaml"], "cwd": "relative/dir"}\n',
    b'{"argv": ["-c", "x.yaml"], "cwd": "/", "columns": "wide"}\n',
    b'{"cmd": "explode"}\n',
    b'"just a string"\n',
    b"null\n",
    b"not json at all\n",
    b"\xff\xfe\x00 binary\n",
    b"\n",
    b'{"argv": ["' + b"x" * (1 << 20) + b'"]}\n',  # a line longer than any request
]


@pytest.mark.parametrize("line", [m.decode("utf-8", "replace") for m in MALFORMED[:-1]])
def test_parse_request_names_what_is_wrong(line):
    with pytest.raises(BadRequest):
        parse_request(line)


def test_parse_request_accepts_the_protocol():
    assert parse_request('{"cmd": "status"}') == {"cmd": "status"}
    req = parse_request('{"protocol": 2, "argv": ["-c", "x.yaml"], "cwd": "/w", "tty": true, "columns": 80, '
                        '"hbcompile": {"version": "0.1.0"}}')
    assert req == RunRequest(["-c", "x.yaml"], "/w", True, 80, {"version": "0.1.0"})


def test_malformed_requests_get_an_error_and_the_daemon_serves_on(tmp_path):
    sock_dir = tmp_path / "run"
    with private_daemon(sock_dir) as env:
        for payload in MALFORMED:
            replies = ask(sock_dir, payload)
            assert len(replies) == 1 and replies[0]["error"].startswith("bad request"), (payload, replies)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # connects and hangs up without a word
            s.connect(str(sock_dir / "daemon.sock"))
        # a well-formed run whose folder is gone: the run fails with a message, the daemon lives on
        gone = ask(sock_dir, (f'{{"protocol": 2, "argv": ["-c", "x.yaml", "--no-daemon"], "cwd": "{tmp_path}/gone", '
                              f'"hbcompile": {_identity_json()}}}\n').encode())
        assert gone[0] == {"accepted": True} and gone[-1] == {"exit": 2}
        assert "gone" in "".join(r.get("err", "") for r in gone)
        status = daemon_command(env, "status")
        assert status.returncode == 0 and "1 runs" in status.stdout, status.stdout + status.stderr
        assert "Traceback" not in (sock_dir / "daemon.log").read_text()


def _identity_json() -> str:
    import json

    return json.dumps(dc.code_identity())
