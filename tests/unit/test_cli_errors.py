"""The careless mistakes a newcomer makes first: each is one line on stderr and exit code
2, never a traceback, and is caught before any model loads. Servers here are real, on
127.0.0.1, and stopped at the end of each test."""
from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from reactinfer.cli.main import main


def one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "error:" in err and all(w in err for w in words), err
    return err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@contextlib.contextmanager
def not_react_server() -> Iterator[int]:
    """A web server that answers every GET with an HTML page (not a ReAct server)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (the stdlib's name)
            body = b"<html><body>It works!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_loadtest_with_nothing_listening_is_one_line(capsys):
    port = free_port()
    for url in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/v1/embeddings"):
        assert main(["loadtest", url, "--rate", "5", "--duration", "1"]) == 2
        one_line_error(capsys, "nothing answers at", str(port), "react serve")


def test_loadtest_against_a_server_that_is_not_react_is_one_line(capsys):
    with not_react_server() as port:
        assert main(["loadtest", f"http://127.0.0.1:{port}", "--rate", "5",
                     "--duration", "1"]) == 2
    one_line_error(capsys, "/v1/models answered HTTP 200 without a model list",
                   "/v1/embeddings")


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_serve_refuses_a_port_out_of_range(port, capsys):
    assert main(["serve", "no-such-model", "--port", port]) == 2
    one_line_error(capsys, "--port must be in 1..65535", port)


def test_serve_on_a_port_in_use_is_one_line_before_any_model_loads(capsys):
    with listening() as port:
        # the model does not exist: the port is refused first, so nothing was loaded
        assert main(["serve", "no-such-model", "--port", str(port)]) == 2
    err = capsys.readouterr()
    assert err.out == ""  # no banner
    assert err.err.strip().splitlines() == [
        f"react serve: error: port {port} on 127.0.0.1 is already in use (another "
        "server?); stop it, or pick another --port"]


def test_listen_socket_takes_port_zero_and_says_which_port_it_got():
    from reactinfer.serving.server import listen_socket

    sock = listen_socket("127.0.0.1", 0)
    try:
        assert 0 < sock.getsockname()[1] <= 65535
    finally:
        sock.close()
