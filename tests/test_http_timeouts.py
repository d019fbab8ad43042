"""Slow and stalled clients over real sockets: headers that never finish and bodies that never arrive are cut
off (`--client-timeout-s`), while a prompt client on another connection is served meanwhile."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import uvicorn

from strictcall.server.api import create_app
from strictcall.server.config import ServerConfig
from strictcall.server.http_protocol import TimedH11Protocol

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(build_serving, tiny_llama):
    serving = build_serving(tiny_llama)
    app = create_app(ServerConfig(served_model_names=("tiny",), max_model_len=1024, client_timeout_s=TIMEOUT_S), loader=lambda c: serving)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=TimedH11Protocol.with_timeout(TIMEOUT_S)))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    yield port
    uv.should_exit = True
    thread.join(timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    sock.settimeout(seconds)
    received = b""
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True, received
            received += data
    except ConnectionResetError:  # the server closed while our trickled bytes were unread: the kernel resets
        return True, received
    except TimeoutError:
        return False, received


def test_headers_that_never_finish_are_cut_off(server) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # trickling bytes does not keep the connection
            time.sleep(TIMEOUT_S / 3)
            sock.sendall(b"X")
        closed, _ = _closed_within(sock, TIMEOUT_S * 4)
        assert closed, "the stalled connection was never closed"


def test_a_body_that_never_arrives_is_a_408(server) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\"")
        closed, received = _closed_within(sock, TIMEOUT_S * 6)
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert b"request_timeout" in received


def test_others_are_served_while_a_client_stalls(server) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        response = httpx.post(f"http://127.0.0.1:{server}/v1/chat/completions", timeout=60,
                              json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert response.status_code == 200
