"""The control socket: schema checks, garbage never kills it, the client times out cleanly."""

from __future__ import annotations

import json

import pytest
import zmq

from l1forge.online.control import commands
from l1forge.online.control.commands import (
    CommandHandler,
    ControlClient,
    ControlError,
    ControlServer,
    ControlTimeout,
    RequestError,
    parse_request,
)
from l1forge.online.control.runcontrol import RunControl

REPLY_MS = 5000


@pytest.fixture
def server(tmp_path, zmq_ctx):
    rc = RunControl(tmp_path / "state")
    srv = ControlServer(CommandHandler(rc), "tcp://127.0.0.1:0", context=zmq_ctx).start()
    yield srv
    srv.close()


def _raw_request(ctx, endpoint: str, frames: list[bytes], kind: int = zmq.REQ) -> dict | None:
    sock = ctx.socket(kind)
    sock.linger = 0
    try:
        sock.connect(endpoint)
        if kind == zmq.DEALER:
            frames = [b"", *frames]
        sock.send_multipart(frames)
        if not sock.poll(REPLY_MS):
            return None
        reply = sock.recv_multipart()
        return json.loads(reply[-1])
    finally:
        sock.close(linger=0)


@pytest.mark.parametrize(
    ("frames", "words"),
    [
        ([b"\xff\xfe not json"], "not JSON"),
        ([b"[1, 2, 3]"], "JSON object"),
        ([b'{"command": "launch"}'], "unknown command"),
        ([b'{"command": "start", "args": []}'], "args must be an object"),
        ([b'{"command": "start", "args": {"now": true}}'], "unknown argument"),
        ([b'{"command": "set_model", "args": {"name": "ad"}}'], "missing argument 'path'"),
        ([b'{"command": "set_model", "args": {"name": 3, "path": "x"}}'], "wrong type"),
        ([b'{"command": "status", "extra": 1}'], "unknown request keys"),
        ([b'{"command": "status"}', b"second frame"], "2 frames"),
        ([b""], "not JSON"),
    ],
)
def test_garbage_gets_an_error_reply(server, zmq_ctx, frames, words):
    reply = _raw_request(zmq_ctx, server.endpoint, frames)
    assert reply is not None and reply["ok"] is False
    assert reply["type"] == "RequestError"
    assert words in reply["error"]
    # ... and the server still answers a good request.
    ok = _raw_request(zmq_ctx, server.endpoint, [b'{"command": "status"}'])
    assert ok["ok"] is True and ok["result"]["state"] == "idle"


def test_odd_framing_and_oversized_messages_do_not_kill_the_server(server, zmq_ctx):
    # A DEALER that sends without the REQ envelope still gets an answer.
    dealer = zmq_ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(server.endpoint)
    dealer.send(b'{"command": "status"}')
    assert dealer.poll(REPLY_MS)
    assert json.loads(dealer.recv_multipart()[-1])["ok"] is True
    # Over MAX_REQUEST_BYTES: ZeroMQ drops that connection; nobody answers it.
    big = zmq_ctx.socket(zmq.DEALER)
    big.linger = 0
    big.connect(server.endpoint)
    big.send_multipart([b"", b"x" * (commands.MAX_REQUEST_BYTES + 1)])
    assert not big.poll(300)
    big.close(linger=0)
    dealer.close(linger=0)
    client = ControlClient(server.endpoint, timeout_s=5, context=zmq_ctx)
    assert client.status()["state"] == "idle"
    assert server.n_requests == 2  # the oversized message never reached the handler


def test_commands_errors_come_back_as_control_errors(server, zmq_ctx, tmp_path):
    client = ControlClient(server.endpoint, timeout_s=5, context=zmq_ctx, token=server.token)
    with pytest.raises(ControlError, match="cannot start in state idle"):
        client.start()
    with pytest.raises(ControlError, match="no configuration given"):
        client.configure()
    with pytest.raises(ControlError, match="cannot read run configuration"):
        client.configure(tmp_path / "absent.yaml")
    with pytest.raises(ControlError, match=r"^configure: backend: missing section"):
        client.configure(config={"source": {"kind": "pythia"}})
    assert client.reset() == {"state": "idle"}
    assert client.status()["state"] == "idle"


def test_shutdown_sets_the_flag(tmp_path, zmq_ctx):
    handler = CommandHandler(RunControl(tmp_path / "state"))
    srv = ControlServer(handler, context=zmq_ctx).start()
    try:
        client = ControlClient(srv.endpoint, timeout_s=5, context=zmq_ctx, token=srv.token)
        assert client.shutdown()["shutdown"]
        assert handler.shutdown_requested.is_set()
    finally:
        srv.close()


def test_client_times_out_without_a_server(zmq_ctx):
    probe = zmq_ctx.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)  # a port nobody listens on any more
    client = ControlClient(f"tcp://127.0.0.1:{port}", timeout_s=0.3, context=zmq_ctx)
    with pytest.raises(ControlTimeout, match="no reply"):
        client.status()


def test_parse_request_accepts_the_schema():
    assert parse_request([b'{"command": "stop"}']) == ("stop", {})
    cmd, args = parse_request([b'{"command": "set_menu", "args": {"menu": {"seeds": []}}}'])
    assert cmd == "set_menu" and args == {"menu": {"seeds": []}}
    with pytest.raises(RequestError):
        parse_request([])


GUARDED = [
    ("configure", {"config": {"source": {"kind": "pythia"}}}),
    ("start", {}),
    ("stop", {}),
    ("reset", {}),
    ("shutdown", {}),
    ("set_model", {"name": "ad", "path": "/tmp/x.json"}),
    ("set_menu", {"menu": {"seeds": []}}),
    ("swap", {"name": "ad", "path": "/tmp/x.json", "menu": {"seeds": []}}),
]


@pytest.mark.parametrize("token", [None, "0" * 64, "not-the-token-either"])
def test_commands_without_the_right_token_are_refused_and_counted(tmp_path, zmq_ctx, token, caplog):
    import logging

    from l1forge.online.security import AUTH_LOGGER

    handler = CommandHandler(RunControl(tmp_path / "state"))
    srv = ControlServer(handler, context=zmq_ctx).start()
    try:
        stranger = ControlClient(srv.endpoint, timeout_s=5, context=zmq_ctx, token=token)
        why = "without the control token" if token is None else "with a wrong control token"
        with caplog.at_level(logging.WARNING, logger=AUTH_LOGGER):
            for command, args in GUARDED:
                with pytest.raises(ControlError, match=f"refused: {command} sent {why}"):
                    stranger.request(command, **args)
        assert stranger.status()["state"] == "idle"  # status needs no token
        assert srv.n_unauthorized == len(GUARDED)
        assert srv.counters()["unauthorized"] == len(GUARDED)
        assert not handler.shutdown_requested.is_set()  # the handler never ran them
        assert handler.runcontrol.state == "idle"
        # rate-limited: one warning for the burst, naming the first refused command
        warnings = [r.getMessage() for r in caplog.records if r.name == AUTH_LOGGER]
        assert len(warnings) == 1 and "control configure refused" in warnings[0], warnings
        # the rightful client still works
        rightful = ControlClient(srv.endpoint, timeout_s=5, context=zmq_ctx, token=srv.token)
        assert rightful.shutdown()["shutdown"] and handler.shutdown_requested.is_set()
        assert srv.n_unauthorized == len(GUARDED)
    finally:
        srv.close()


def test_refusal_reply_type_and_token_type(server, zmq_ctx):
    reply = _raw_request(zmq_ctx, server.endpoint, [b'{"command": "stop"}'])
    assert reply["ok"] is False and reply["type"] == "Unauthorized"
    assert "without the control token" in reply["error"]
    wrong = json.dumps({"command": "stop", "token": server.token + "x"}).encode()
    assert "wrong control token" in _raw_request(zmq_ctx, server.endpoint, [wrong])["error"]
    bad = _raw_request(zmq_ctx, server.endpoint, [b'{"command": "stop", "token": 42}'])
    assert bad["type"] == "RequestError" and "token must be a string" in bad["error"]
    assert server.n_unauthorized == 2 and server.n_malformed == 1
    right = json.dumps({"command": "reset", "token": server.token}).encode()
    assert _raw_request(zmq_ctx, server.endpoint, [right]) == {
        "ok": True,
        "command": "reset",
        "result": {"state": "idle"},
    }


def test_token_comparison_and_server_tokens():
    assert commands.token_matches("a" * 32, "a" * 32)
    assert not commands.token_matches("a" * 31 + "b", "a" * 32)
    assert not commands.token_matches(None, "a" * 32)
    assert not commands.token_matches("é" * 32, "a" * 32)  # non-ASCII: no TypeError
    with pytest.raises(commands.ConfigError, match="at least 16 characters"):
        ControlServer(lambda c, a: None, token="short")


def test_daemon_client_reads_endpoints_and_token_files(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    doc = {"control": "tcp://127.0.0.1:5555", "token": "t" * 64, "curve_keys": None}
    (state / commands.ENDPOINTS_FILE).write_text(json.dumps(doc))
    client = commands.daemon_client(state)
    assert (client.endpoint, client.token) == (doc["control"], doc["token"])
    same = commands.daemon_client(state, control="tcp://127.0.0.1:5555")
    assert same.token == doc["token"]
    other = commands.daemon_client(state, control="tcp://10.0.0.1:5555")
    assert other.token is None  # never send a local daemon's token elsewhere
    (tmp_path / "token").write_text("s" * 64 + "\n")
    explicit = commands.daemon_client(
        state, control="tcp://10.0.0.1:5555", token_file=tmp_path / "token"
    )
    assert explicit.token == "s" * 64
    assert commands.read_token_file(state / commands.ENDPOINTS_FILE) == doc["token"]
    (tmp_path / "empty").write_text("")
    with pytest.raises(commands.ConfigError, match="empty"):
        commands.read_token_file(tmp_path / "empty")
    with pytest.raises(commands.ConfigError, match="cannot read the control token file"):
        commands.read_token_file(tmp_path / "absent")


def test_set_scaling_through_the_socket_and_the_cli(
    tmp_path, zmq_ctx, events_h5, scaled_ad_ir, scaled_ad_net, capsys
):
    """set_scaling: refused unless running; in a run, ``l1forge online set-scaling FILE`` and
    the client reach the worker, which answers with what is active; bad values are refused."""
    from l1forge.cli import main
    from l1forge.firmware.registers import split_scaling

    rc = RunControl(tmp_path / "state")
    srv = ControlServer(CommandHandler(rc), "tcp://127.0.0.1:0", context=zmq_ctx).start()
    client = ControlClient(srv.endpoint, timeout_s=60, context=zmq_ctx, token=srv.token)
    sc, _ = split_scaling(scaled_ad_net)
    off, sh = [1] * 57, [sc.shift_hi] * 57
    try:
        with pytest.raises(ControlError, match="cannot set_scaling in state idle"):
            client.set_scaling(off, sh)
        config = {
            "source": {"kind": "replay", "path": str(events_h5), "loop": True, "rate_hz": 2000.0},
            "backend": {"kind": "emulator", "models": {"ad": str(scaled_ad_ir)}},
            "workers": {"n": 1},
            "menu": {"seeds": [{"name": "ZeroBias", "model": "", "prescale": 100}]},
            "storage": {"out_dir": str(tmp_path / "out"), "min_free_mb": 1},
            "state_dir": str(tmp_path / "state"),
            "duration_s": 120.0,
        }
        client.configure(config=config)
        client.start()
        doc = tmp_path / "scaling.json"
        doc.write_text(json.dumps({"offset": off, "shift": sh}))
        (tmp_path / "token").write_text(srv.token)
        cmd = ["online", "set-scaling", str(doc), "--control", srv.endpoint]
        assert main([*cmd, "--token-file", str(tmp_path / "token")]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert (answer["model"], answer["offset"], answer["shift"]) == ("ad", off, sh)
        (ack,) = answer["workers"].values()
        assert ack["ok"] and (ack["offset"], ack["shift"]) == (off, sh)
        with pytest.raises(ControlError, match=rf"SHIFT\[0\]: {sc.shift_hi + 1} outside"):
            client.set_scaling(off, [sc.shift_hi + 1] * 57)
        with pytest.raises(ControlError, match="no model 'cls'"):
            client.set_scaling(off, sh, model="cls")
        with pytest.raises(ControlError, match="list of integers"):
            client.set_scaling(["a"] * 57, sh)
        with pytest.raises(ControlError, match="missing argument 'shift'"):
            client.request("set_scaling", offset=off)
        assert client.stop()["lost"] == 0
    finally:
        if rc.state == "running":
            rc.stop()
        srv.close()
