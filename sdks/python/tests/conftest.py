"""Test harness: runs the real Spinwire binary on loopback ports for the integration tests.

The binary is ``$SPINWIRE_BIN`` (default ``/work/main/target/debug/spinwire``). Each
server gets a Centrifugo v6 JSON config in a temp dir, is ready when ``GET /health``
answers 200, and is stopped with SIGTERM (SIGKILL after 5 s). A server whose stderr
mentions "panicked" fails the test that was running.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spinwire import ApiClient, HttpApiClient

REPO_ROOT = Path(__file__).resolve().parents[3]
SPINWIRE_BIN = Path(os.environ.get("SPINWIRE_BIN", REPO_ROOT / "target" / "debug" / "spinwire"))
READY_TIMEOUT = 20.0
SECRET = "python-sdk-test-secret"
HTTP_KEY = "python-sdk-http-key"
GRPC_KEY = "python-sdk-grpc-key"

CHAT_NAMESPACE = {
    "name": "chat",
    "allow_subscribe_for_client": True,
    "allow_publish_for_subscriber": True,
    "presence": True,
    "allow_presence_for_subscriber": True,
    "join_leave": True,
    "history_size": 100,
    "history_ttl": "300s",
    "allow_history_for_subscriber": True,
    "force_recovery": True,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Server:
    """One running spinwire process and the addresses/keys the tests need."""

    config: dict[str, Any]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "server.log"

    @property
    def http_port(self) -> int:
        return self.config["http_server"]["port"]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/connection/websocket"

    @property
    def grpc_api_target(self) -> str:
        return f"127.0.0.1:{self.config['grpc_api']['port']}"

    @property
    def stream_target(self) -> str:
        return f"127.0.0.1:{self.config['grpc_stream']['port']}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        config_path = self.workdir / "config.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(SPINWIRE_BIN), "--config", str(config_path)], stdout=log_file, stderr=subprocess.STDOUT
        )
        log_file.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"spinwire exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"spinwire not healthy within {READY_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def problem(self) -> str | None:
        """Why this server is unhealthy, if it is."""
        if "panicked" in self.log():
            return "server log contains 'panicked'"
        if self.process is not None and self.process.poll() is not None and self.process.returncode not in (0, -15):
            return f"server exited on its own with {self.process.returncode}"
        return None


def base_config() -> dict[str, Any]:
    return {
        "log": {"level": "info"},
        "http_server": {"address": "127.0.0.1", "port": free_port()},
        "health": {"enabled": True},
        "client": {"token": {"hmac_secret_key": SECRET}},
        "http_api": {"key": HTTP_KEY},
        "grpc_api": {"enabled": True, "address": "127.0.0.1", "port": free_port(), "key": GRPC_KEY},
        "grpc_stream": {"enabled": True, "address": "127.0.0.1", "port": free_port()},
        "channel": {"namespaces": [CHAT_NAMESPACE]},
    }


_servers: list[Server] = []


def start_server(extra: dict[str, Any] | None = None) -> Server:
    if not SPINWIRE_BIN.is_file():
        pytest.fail(
            f"spinwire binary not found at {SPINWIRE_BIN}: build the server or set SPINWIRE_BIN",
            pytrace=False,
        )
    server = Server(deep_merge(base_config(), extra or {}), Path(tempfile.mkdtemp(prefix="spinwire-py-")))
    _servers.append(server)
    try:
        server.start()
    except RuntimeError as err:
        server.stop()
        pytest.fail(str(err), pytrace=False)
    return server


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """The shared server (chat namespace with history, presence and forced recovery)."""
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _no_server_panics() -> Iterator[None]:
    yield
    for srv in _servers:
        problem = srv.problem()
        if problem:
            pytest.fail(f"{problem}\n----- server log -----\n{srv.log()[-5000:]}", pytrace=False)


@pytest_asyncio.fixture
async def api(server: Server) -> Any:
    async with ApiClient(server.grpc_api_target, api_key=GRPC_KEY) as client:
        yield client


@pytest.fixture
def http_api(server: Server) -> HttpApiClient:
    return HttpApiClient(server.base_url, api_key=HTTP_KEY)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for srv in _servers:
        srv.stop()
        if exitstatus == 0:  # keep configs and logs of a failed run for a look
            shutil.rmtree(srv.workdir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if exitstatus == 0:
        return
    for srv in _servers:
        terminalreporter.section(f"spinwire log ({srv.workdir})")
        terminalreporter.write_line(srv.log()[-4000:] or "(empty)")
