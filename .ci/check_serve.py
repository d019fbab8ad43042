"""CI: the README's serve command works on a clean environment (the package without extras, the default model).

Starts `<venv>/bin/strictcall serve` on a free port, waits for /health, sends one chat request with a tool
(`tool_choice: required`), checks that the answer holds a call to that tool whose arguments validate against
its schema, then stops the server with SIGINT and checks that it exits. Standard library plus jsonschema (a
runtime dependency), so it runs in the serve-only environment.
Usage: <venv>/bin/python .ci/check_serve.py <venv>/bin/strictcall
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import jsonschema

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
REQUEST = {
    "model": "SmolLM2-135M-Instruct",
    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}],
    "tool_choice": "required",
    "max_tokens": 100,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def main(strictcall: str) -> int:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", prefix="check-serve-", suffix=".log", delete=False)
    started = time.time()
    server = subprocess.Popen([strictcall, "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
    try:
        while get(f"{base}/health") != 200:
            if server.poll() is not None or time.time() - started > 600:
                print(f"check_serve: the server did not come up:\n{open(log.name).read()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        ready = time.time() - started
        request = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(REQUEST).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            body = json.load(response)
        calls = body["choices"][0]["message"].get("tool_calls") or []
        assert calls, f"no tool call in {body}"
        for call in calls:
            assert call["function"]["name"] == "get_weather", call
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMA)
        print(f"check_serve: ready in {ready:.0f} s; {len(calls)} valid call(s), e.g. get_weather({calls[0]['function']['arguments']})")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            print("check_serve: the server did not stop on SIGINT", file=sys.stderr)
            return 1
    print(f"check_serve: the server stopped (exit code {code})")
    return 0


if __name__ == "__main__":
    sys.exit(main(os.path.abspath(sys.argv[1])))  # absolute: the server runs in another directory
