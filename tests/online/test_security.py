"""CURVE on real sockets: authorized clients are served, others get nothing and are logged."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest
import zmq

from l1forge.online import security
from l1forge.online.security import SecurityError

TIMEOUT_MS = 1500


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> security.CurveKeys:
    return security.generate_keys(tmp_path_factory.mktemp("keys") / "k")


@pytest.fixture(scope="module")
def stranger_keys(tmp_path_factory) -> security.CurveKeys:
    """A valid key folder whose client key is NOT in the server's authorized folder."""
    return security.generate_keys(tmp_path_factory.mktemp("keys") / "other")


@pytest.fixture
def echo_server(keys):
    """A CURVE REP server on tcp (all interfaces) answering each request with b"ok:" + it."""
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.linger = 0
    endpoint = security.bind_server(rep, "tcp://0.0.0.0:0", keys)
    port = endpoint.rsplit(":", 1)[1]
    yield ctx, rep, f"tcp://127.0.0.1:{port}"
    rep.close(linger=0)
    security.stop_authenticator(ctx)
    ctx.term()


def _ask(ctx: zmq.Context, rep: zmq.Socket, endpoint: str, client_keys) -> bytes | None:
    """Send one request from a new REQ client; serve it if it arrives; the reply or None."""
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    try:
        security.connect_client(req, endpoint, client_keys)
        req.send(b"ping")
        if rep.poll(TIMEOUT_MS):
            rep.send(b"ok:" + rep.recv())
            if req.poll(TIMEOUT_MS):
                return req.recv()
        return None
    finally:
        req.close(linger=0)


def test_authorized_client_is_served(echo_server, keys):
    ctx, rep, endpoint = echo_server
    assert _ask(ctx, rep, endpoint, keys) == b"ok:ping"


def test_unknown_key_is_refused_and_logged(echo_server, keys, stranger_keys, caplog):
    ctx, rep, endpoint = echo_server
    # The stranger knows the server's public key (else the handshake fails before ZAP).
    forged = dataclasses.replace(stranger_keys, server_public=keys.server_public)
    with caplog.at_level(logging.WARNING, logger=security.AUTH_LOGGER):
        assert _ask(ctx, rep, endpoint, forged) is None
    assert security.refused_count(ctx) >= 1
    denied = [r for r in caplog.records if r.name == security.AUTH_LOGGER]
    assert denied and "DENIED" in denied[0].getMessage()
    assert stranger_keys.client_public.decode() in denied[0].getMessage()


def test_client_without_keys_gets_no_reply(echo_server):
    ctx, rep, endpoint = echo_server
    assert _ask(ctx, rep, endpoint, None) is None


def test_non_loopback_bind_without_keys_is_refused():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    try:
        with pytest.raises(SecurityError, match="curve_keys"):
            security.bind_server(sock, "tcp://0.0.0.0:0", None)
        with pytest.raises(SecurityError, match="without CURVE keys"):
            security.check_bind("tcp://10.1.2.3:5555", None)
        security.check_bind("tcp://127.0.0.1:5555", None)
        security.check_bind("ipc:///tmp/x", None)
    finally:
        sock.close(linger=0)
        ctx.term()


def test_keys_folder_checks(tmp_path, keys):
    with pytest.raises(SecurityError, match="already holds"):
        security.generate_keys(keys.folder)
    with pytest.raises(SecurityError, match=r"server\.key not found"):
        security.load_keys(tmp_path)
    assert (keys.authorized_dir / "client.key").is_file()


def test_control_socket_with_curve(tmp_path, keys, stranger_keys, caplog):
    from l1forge.online.control.commands import (
        CommandHandler,
        ControlClient,
        ControlServer,
        ControlTimeout,
    )
    from l1forge.online.control.runcontrol import RunControl

    ctx = zmq.Context()
    server = ControlServer(
        CommandHandler(RunControl(tmp_path / "state")), "tcp://0.0.0.0:0", keys=keys, context=ctx
    ).start()
    port = server.endpoint.rsplit(":", 1)[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        assert ControlClient(endpoint, keys=keys, context=ctx).status()["state"] == "idle"
        forged = dataclasses.replace(stranger_keys, server_public=keys.server_public)
        with caplog.at_level(logging.WARNING, logger=security.AUTH_LOGGER):
            for wrong in (forged, None):
                with pytest.raises(ControlTimeout):
                    ControlClient(endpoint, keys=wrong, timeout_s=1.0, context=ctx).status()
            deadline = time.monotonic() + 5
            while server.n_refused < 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # the server thread logs refusals at its next poll
        assert security.refused_count(ctx) >= 1  # the stranger's key, refused by ZAP
        assert server.n_refused >= 2  # both handshakes failed
        messages = [r.getMessage() for r in caplog.records if r.name == security.AUTH_LOGGER]
        assert any("MECHANISM_MISMATCH" in m for m in messages), messages  # the keyless client
    finally:
        server.close()
        security.stop_authenticator(ctx)
        ctx.term()


@pytest.mark.parametrize(
    ("server_type", "client_type"),
    [(zmq.ROUTER, zmq.DEALER), (zmq.PUB, zmq.SUB)],
    ids=["dispatcher-workers", "monitoring-tap"],
)
def test_data_socket_patterns_with_curve(keys, stranger_keys, server_type, client_type):
    """The dispatcher's ROUTER and the collector's PUB tap are bound with `bind_server`."""
    ctx = zmq.Context()
    server = ctx.socket(server_type)
    server.linger = 0
    clients = []
    try:
        port = security.bind_server(server, "tcp://0.0.0.0:0", keys).rsplit(":", 1)[1]
        forged = dataclasses.replace(stranger_keys, server_public=keys.server_public)
        for client_keys in (keys, forged, None):
            c = ctx.socket(client_type)
            c.linger = 0
            if client_type == zmq.SUB:
                c.setsockopt(zmq.SUBSCRIBE, b"")
            security.connect_client(c, f"tcp://127.0.0.1:{port}", client_keys)
            clients.append(c)
        authorized, stranger, keyless = clients
        deadline = time.monotonic() + 10
        received = False
        while not received and time.monotonic() < deadline:
            if server_type == zmq.PUB:
                server.send_multipart([b"mon", b"payload"])
                received = authorized.poll(100) != 0
            else:
                authorized.send(b"hello")
                if server.poll(1000):
                    ident, msg = server.recv_multipart()
                    assert msg == b"hello"
                    server.send_multipart([ident, b"batch"])
                    received = authorized.poll(1000) != 0
        assert received, "the authorized client got nothing"
        if server_type == zmq.ROUTER:
            for c in (stranger, keyless):
                # a refused handshake can leave the DEALER without a peer, where a blocking
                # send would wait for ever: then nothing can reach the server, as asserted
                try:
                    c.send(b"hello", zmq.NOBLOCK)
                except zmq.Again:
                    pass
            assert not server.poll(500)  # nothing from unauthenticated peers reaches the server
        else:
            server.send_multipart([b"mon", b"payload"])
        assert not stranger.poll(300) and not keyless.poll(300)
        assert security.refused_count(ctx) >= 1
    finally:
        for c in clients:
            c.close(linger=0)
        server.close(linger=0)
        security.stop_authenticator(ctx)
        ctx.term()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("localhost.localdomain", True),
        ("ip6-localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("example.org", False),
        ("localhost.example.org", False),
    ],
)
def test_one_loopback_check_for_config_sockets_and_the_web_endpoint(host, loopback):
    """The run config (curve_keys required?), socket binds and the web endpoint's bind and Host
    check answer alike: they once disagreed on LOCALHOST, localhost.localdomain, ip6-localhost."""
    from l1forge.online import config
    from l1forge.online.web import server

    assert security.is_loopback(host) is loopback
    assert config.is_loopback is security.is_loopback is server.is_loopback
    bound = f"tcp://[{host.strip('[]')}]:0" if ":" in host else f"tcp://{host}:0"
    if host and loopback:
        security.check_bind(bound, None)  # no keys needed
    elif host:
        with pytest.raises(SecurityError, match="without CURVE keys"):
            security.check_bind(bound, None)
