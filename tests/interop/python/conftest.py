"""Session fixtures for the Spinwire Python interop suite.

Harness contract: the binary is $SPINWIRE_BIN (default <repo>/target/debug/spinwire), run
as `spinwire --config FILE` with a Centrifugo v6 JSON config; ready when GET /health
answers 200 (20 s timeout); stopped with SIGTERM, then SIGKILL after 5 s. The server log
is printed in the terminal summary when any test failed. A server whose stderr contains
"panicked" (or that exited on its own) fails the run at teardown, printing its log.
"""

import importlib
import importlib.resources
import sys

import pytest
import pytest_asyncio

import interop_helpers as h


# ----------------------------------------------------------------------------------------
# Server
# ----------------------------------------------------------------------------------------

_servers = []
_failed = []


@pytest.fixture(scope="session")
def server():
    """One Spinwire process for the whole Python session (HTTP API + gRPC API)."""
    srv = h.SpinwireServer(h.python_suite_config)
    _servers.append(srv)
    try:
        srv.start()
    except h.ServerNotReady as e:
        srv.stop()
        pytest.fail(str(e), pytrace=False)
    yield srv
    problem = srv.stop()
    if problem:
        # Fails the run (error in the last test's teardown) and prints the log.
        _failed.append("server fixture")
        pytest.fail(f"spinwire (port {srv.port}): {problem}\n----- server log -----\n{srv.log_tail()}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        _failed.append(item.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _failed:
        return
    for srv in _servers:
        terminalreporter.section(f"spinwire log (port {srv.port})")
        terminalreporter.write_line(srv.log_tail() or "(empty)")


# ----------------------------------------------------------------------------------------
# Server API clients
# ----------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def cent_client(server):
    """`cent` async client bound to the session server's HTTP API."""
    from cent import AsyncClient

    client = AsyncClient(server.api_url, server.api_key, timeout=5.0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
def grpc_api(tmp_path_factory):
    """Generate Python gRPC stubs from <repo>/proto at session start (grpcio-tools) and
    return the (api_pb2, api_pb2_grpc) modules."""
    from grpc_tools import protoc

    rel = "centrifugal/centrifugo/api/api.proto"
    proto_file = h.PROTO_ROOT / rel
    if not proto_file.exists():
        pytest.fail(f"api.proto not found at {proto_file}", pytrace=False)
    out = tmp_path_factory.mktemp("grpc_stubs")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{h.PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            rel,
        ]
    )
    if rc != 0:
        pytest.fail(f"protoc failed for {proto_file} (exit {rc})", pytrace=False)
    sys.path.insert(0, str(out))
    api_pb2 = importlib.import_module("centrifugal.centrifugo.api.api_pb2")
    api_pb2_grpc = importlib.import_module("centrifugal.centrifugo.api.api_pb2_grpc")
    return api_pb2, api_pb2_grpc
