"""CLI: checkconfig rejects bad configs naming the key, gentoken mints a token the server
accepts, version prints something."""

import json
import subprocess
import time

import jwt as pyjwt
import pytest

import interop_helpers as h


def run(args, tmp_path=None, timeout=20):
    try:
        return subprocess.run(
            [h.SPINWIRE_BIN, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except FileNotFoundError:
        pytest.fail(f"binary not found at {h.SPINWIRE_BIN} (set SPINWIRE_BIN)", pytrace=False)


def write_config(tmp_path, cfg, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path


def test_checkconfig_accepts_valid_config(server, tmp_path):
    path = write_config(tmp_path, server.config)
    res = run(["checkconfig", "--config", str(path)])
    assert res.returncode == 0, f"stdout={res.stdout!r} stderr={res.stderr!r}"


@pytest.mark.parametrize(
    "cfg,needle",
    [
        pytest.param({"client": {"channel_limit": "lots"}}, "channel_limit", id="bad-type"),
        pytest.param(
            {"channel": {"namespaces": [{"name": "bad name!", "presence": True}]}},
            "namespace",
            id="bad-namespace-name",
        ),
        pytest.param(
            {"channel": {"namespaces": [{"name": "chat", "history_size": 10}]}},
            "history",
            id="history-size-without-ttl",
        ),
    ],
)
def test_checkconfig_rejects_bad_config(tmp_path, cfg, needle):
    path = write_config(tmp_path, cfg)
    res = run(["checkconfig", "--config", str(path)])
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"checkconfig accepted a bad config: {out!r}"
    assert needle in out.lower(), f"output does not mention {needle!r}: {out!r}"


@pytest.mark.parametrize(
    "cfg,key_path",
    [
        pytest.param(
            {"channel": {"namespaces": [{"name": "chat", "presence": "yes"}]}},
            "channel.namespaces[0].presence",
            id="namespace-option-bad-type",
        ),
        pytest.param({"client": {"channel_limit": "lots"}}, "client.channel_limit", id="client-option-bad-type"),
    ],
)
def test_checkconfig_names_the_full_key_path(tmp_path, cfg, key_path):
    """A type error is reported on stderr with the exact key path of the bad value."""
    path = write_config(tmp_path, cfg)
    res = run(["checkconfig", "--config", str(path)])
    assert res.returncode != 0, f"checkconfig accepted a bad config: stdout={res.stdout!r} stderr={res.stderr!r}"
    assert key_path in res.stderr, f"stderr does not name {key_path!r}: stderr={res.stderr!r} stdout={res.stdout!r}"


def test_checkconfig_strict_rejects_tls(server, tmp_path):
    """TLS enabled without a certificate must not pass checkconfig --strict, and the error
    names the section (the server would otherwise have nothing to serve TLS with)."""
    cfg = json.loads(json.dumps(server.config))
    cfg["http_server"]["tls"] = {"enabled": True}
    path = write_config(tmp_path, cfg)
    res = run(["checkconfig", "--config", str(path), "--strict"])
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"checkconfig --strict accepted http_server.tls.enabled: {out!r}"
    assert "http_server.tls" in out, f"output does not name http_server.tls: {out!r}"


def test_version():
    res = run(["version"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip(), "version prints something"


async def test_gentoken_is_accepted_by_server(server, tmp_path):
    path = write_config(tmp_path, server.config)
    res = run(["gentoken", "--config", str(path), "-u", "42", "-q"])
    assert res.returncode == 0, f"stdout={res.stdout!r} stderr={res.stderr!r}"
    token = res.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token, f"-q prints only the token: {res.stdout!r}"

    header = pyjwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    claims = pyjwt.decode(token, server.secret, algorithms=["HS256"])
    assert claims["sub"] == "42"
    assert abs(claims["exp"] - (int(time.time()) + 7 * 24 * 3600)) < 120, "default TTL is 7 days"

    client, events = await h.connect(server, token=token)
    try:
        connected = events.history[-1][1]
        assert connected.client
        channel = f"chat:{h.uid('gentoken-')}"
        sub, _, _ = await h.subscribe(client, channel)
        presence = await sub.presence()
        assert [info.user for info in presence.clients.values()] == ["42"]
    finally:
        await h.disconnect_all(client)
