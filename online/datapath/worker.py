"""A trigger worker: event batches in, network scores and menu decisions out.

Runs as its own process, on this host (started by the pipeline) or on another one:
``python -m l1forge.online.datapath.worker --connect tcp://daemon-host:PORT`` (also
``l1forge online worker``). It connects a DEALER socket to the dispatcher, announces its credits,
receives the run setup (backend, the models' IR bytes, the menu), then answers every batch with
a ResultBatch: the scores of all events, their seed bits, and the objects of accepted events.
Model, menu and input-scaling updates arrive on the same socket, so they apply between two
batches; a SWAP carries a model and its menu in one message, so no batch runs on the new model
with the old menu. A backend with a register bank gets the menu's thresholds and the scaling as
register writes (``tuning.py``), and its seed bits decide its seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from l1forge.errors import ConfigError, DataFormatError, L1ForgeError
from l1forge.firmware.registers import with_scaling
from l1forge.models import qnet
from l1forge.models.qnet import QNet
from l1forge.online.datapath import protocol as msg
from l1forge.online.datapath.backends import Backend, make_backend, outputs_float
from l1forge.online.datapath.menu import Menu
from l1forge.online.datapath.protocol import InputScaling
from l1forge.online.datapath.tuning import FirmwareSeeds, check_scaling, registers_of
from l1forge.online.datapath.wire import (
    ResultBatch,
    WireError,
    decode_batch,
    encode_results,
    peek_first_seq,
)
from l1forge.online.security import connect_client
from l1forge.sim.l1objects import N_INPUTS

log = logging.getLogger(__name__)


@dataclass
class _Model:
    name: str
    net: QNet
    backend: Backend
    sha256: str
    base: QNet  # the IR as loaded (``net`` is it with the run-time input scaling, if any)


def _load_ir(tmp: Path, name: str, ir_json: bytes, ir_npz: bytes) -> tuple[QNet, str]:
    """Write the IR bytes to a private folder and load them with qnet.load (full validation)."""
    try:
        doc = json.loads(ir_json)
        npz_name = Path(str(doc["arrays_file"])).name
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DataFormatError(f"model {name}: not a qnet IR JSON document ({exc})") from exc
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    (folder / npz_name).write_bytes(ir_npz)
    path = folder / f"{name}.json"
    path.write_bytes(ir_json)
    net = qnet.load(path)
    if len(net.inputs) != 1 or net.input_specs[0].size != N_INPUTS:
        raise DataFormatError(f"model {name}: the network must take the {N_INPUTS} L1 inputs")
    return net, hashlib.sha256(ir_json).hexdigest()


class TriggerWorker:
    """Backends of every model plus the menu; `process` turns a batch's frames into results."""

    def __init__(self, name: str, tmp: Path):
        self.name = name
        self.tmp = tmp
        self.models: list[_Model] = []
        self.menu: Menu | None = None
        self.menu_sha256 = ""
        self.backend_cfg: dict[str, Any] = {}
        self.firmware: dict[str, FirmwareSeeds] = {}  # models whose backend has registers
        self.new_mismatches = 0  # seed-bit mismatches not reported to the dispatcher yet

    def _backend(self, index: int, net: QNet) -> Backend:
        cfg = dict(self.backend_cfg)
        kind = cfg.pop("kind", "emulator")
        threads = int(cfg.pop("threads", 1))
        if kind != "emulator" and index == 0:  # the hardware runs the first model (the AD)
            return make_backend(kind, **cfg)
        return make_backend("emulator", net=net, threads=threads, chunk_size=4096)

    def configure(self, head: dict, model_frames: list[bytes]) -> dict:
        """Load the run setup; returns the sha256 of every model and of the menu."""
        self.backend_cfg = dict(head["backend"])
        names = list(head["models"])
        if len(model_frames) != 2 * len(names):
            raise DataFormatError("CONFIG: expected an IR JSON and npz frame per model")
        for m in self.models:
            m.backend.close()
        self.models = []
        for i, name in enumerate(names):
            net, sha = _load_ir(self.tmp, name, model_frames[2 * i], model_frames[2 * i + 1])
            self.models.append(_Model(name, net, self._backend(i, net), sha, net))
        self.firmware = {
            m.name: FirmwareSeeds(m.name, m.backend)
            for m in self.models
            if registers_of(m.backend) is not None
        }
        self.set_menu(head["menu"])
        for doc in head.get("scaling", []):
            self.set_scaling(InputScaling.from_json(doc))
        return {"models": {m.name: m.sha256 for m in self.models}, "menu": self.menu_sha256}

    def set_model(self, name: str, ir_json: bytes, ir_npz: bytes) -> str:
        """Replace model `name` (validated first; the old one keeps running if this fails)."""
        index = next((i for i, m in enumerate(self.models) if m.name == name), None)
        if index is None:
            raise ConfigError(f"set_model: this run has no model {name!r}")
        net, sha = _load_ir(self.tmp, name, ir_json, ir_npz)
        old = self.models[index]
        swap = getattr(old.backend, "swap", None)
        if swap is not None:
            swap(net)
            backend = old.backend
        else:
            backend = self._backend(index, net)
            old.backend.close()
        self.models[index] = _Model(name, net, backend, sha, net)  # its own scaling again
        self.firmware.pop(name, None)
        if registers_of(backend) is not None:
            # a new board or simulation starts from reset: program the running menu's thresholds
            fw = FirmwareSeeds(name, backend)
            if self.menu is not None:
                fw.program(fw.plan(self.menu))
            self.firmware[name] = fw
        log.info("worker %s: model %s now %s", self.name, name, sha[:12])
        return sha

    def set_menu(self, menu_json: str) -> str:
        return self._install_menu(self._checked_menu(menu_json), menu_json)

    def swap(self, name: str, ir_json: bytes, ir_npz: bytes, menu_json: str) -> tuple[str, str]:
        """Model `name` and the menu together, between two batches: both are checked before
        either is installed, so a refused swap leaves the old pair. (IR sha256, menu sha256)."""
        menu = self._checked_menu(menu_json)
        sha = self.set_model(name, ir_json, ir_npz)  # validated before it replaces the old one
        return sha, self._install_menu(menu, menu_json)

    def _checked_menu(self, menu_json: str) -> Menu:
        menu = Menu.from_json(menu_json)
        menu.check_models(m.name for m in self.models)
        for fw in self.firmware.values():
            fw.plan(menu)  # a menu the register bank cannot hold is refused before any change
        return menu

    def _install_menu(self, menu: Menu, menu_json: str) -> str:
        """Replace the menu; a register bank gets its thresholds first (all checked before any
        write, so a menu the bank cannot hold is refused and the old one stays)."""
        plans = {name: fw.plan(menu) for name, fw in self.firmware.items()}
        for name, plan in plans.items():
            self.firmware[name].program(plan)
        self.menu = menu
        self.menu_sha256 = hashlib.sha256(menu_json.encode()).hexdigest()
        return self.menu_sha256

    def set_scaling(self, setting: InputScaling) -> dict[str, Any]:
        """New input offsets and shifts of a model: register writes + COMMIT on a backend with a
        register bank, else the emulator swaps to ``with_scaling`` of the loaded IR. Checked
        before anything changes; returns what is now active."""
        m = next((m for m in self.models if m.name == setting.model), None)
        if m is None:
            raise ConfigError(f"set_scaling: this run has no model {setting.model!r}")
        regs = registers_of(m.backend)
        out: dict[str, Any] = {"model": m.name, "backend": m.backend.name}
        if regs is not None:
            regs.set_scaling(setting.offset, setting.shift)  # range-checked before any write
            n = regs.map.n_features
            out["offset"] = [regs.read("OFFSET", j) for j in range(n)]
            out["shift"] = [regs.read("SHIFT", j) for j in range(n)]
            out["registers_version"] = regs.version
        else:
            swap = getattr(m.backend, "swap", None)
            if swap is None:
                raise ConfigError(
                    f"set_scaling: backend {m.backend.name} of model {m.name!r} has no register "
                    "bank (build the firmware with `l1forge firmware build --registers`)"
                )
            check_scaling(m.base, setting.offset, setting.shift)
            net = with_scaling(m.base, setting.offset, setting.shift)
            swap(net)
            m.net = net
            out.update(offset=list(setting.offset), shift=list(setting.shift))
            out["registers_version"] = None
        log.info("worker %s: input scaling of %s set", self.name, m.name)
        return out

    def firmware_status(self) -> dict[str, dict[str, Any]]:
        """Per model with a register bank: its VERSION, seed slots and seed-bit mismatches."""
        return {name: fw.status() for name, fw in self.firmware.items()}

    def process(self, frames: list) -> ResultBatch:
        """Scores, seed bits and accepted objects of one wire batch."""
        assert self.menu is not None
        batch = decode_batch(frames)
        n = len(batch)
        x = batch.objects_hw.reshape(n, N_INPUTS)
        t0 = time.perf_counter()
        scores = np.empty((n, len(self.models)), dtype=np.float64)
        by_name = {}
        for j, m in enumerate(self.models):
            y = m.backend.infer(x)
            scores[:, j] = outputs_float(m.net, y)[:, 0]  # a model's score: its first output
            by_name[m.name] = scores[:, j]
        latency = time.perf_counter() - t0
        seqs = batch.seqs()
        per_model = {name: fw.fired() for name, fw in self.firmware.items()}
        fired = {seed: f for by_seed in per_model.values() for seed, f in by_seed.items()}
        bits = self.menu.decide(by_name, seqs, fired_by=fired)
        if fired:  # the firmware decided these seeds: count where the software menu disagrees
            software = self.menu.decide(by_name, seqs, prescale=False)
            self.new_mismatches += sum(
                self.firmware[name].compare(f, self.menu, software) for name, f in per_model.items()
            )
        acc = np.flatnonzero(bits).astype(np.uint32)
        return ResultBatch(
            run=batch.run,
            first_seq=batch.first_seq,
            lumisection=batch.lumisection,
            event=batch.event,
            scores=scores,
            seed_bits=bits,
            objects_hw=batch.objects_hw[acc],
            accepted_index=acc,
            latency_s=latency,
            worker=self.name[:32],
        )

    def close(self) -> None:
        for m in self.models:
            m.backend.close()


def serve(
    connect: str,
    *,
    name: str,
    credits: int,
    heartbeat_s: float = 0.5,
    parent_pid: int = 0,
    give_up_s: float | None = None,
    curve_keys: str | None = None,
    work_dir: str | None = None,
    ctx: zmq.Context | None = None,
    runs: int = 1,
) -> int:
    """The worker loop: returns 0 after the STOP of its `runs`-th run (0: serve every run until
    killed), 1 when the parent died or the dispatcher vanished.

    Between runs it keeps its connection (ZeroMQ reconnects it when the daemon binds the
    worker endpoint again, at the next run or after a daemon restart) and registers again as
    soon as a dispatcher answers its heartbeats with WHO.
    """
    ctx = ctx or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"{name}.{os.getpid()}".encode())
    sock.setsockopt(zmq.RCVHWM, 0)
    connect_client(sock, connect, curve_keys)
    hello = {"name": name, "pid": os.getpid(), "host": socket.gethostname(), "credits": credits}
    sock.send_multipart([msg.W_READY, json.dumps(hello).encode()])
    awaiting_config = True
    ready_sent = time.monotonic()
    served = 0
    tmp = Path(tempfile.mkdtemp(prefix="l1f-worker-", dir=work_dir))
    worker = TriggerWorker(name, tmp)
    last_heard = last_sent = time.monotonic()
    code = 1
    stop_pulse = threading.Event()
    pulse = threading.Thread(
        target=_pulse,
        args=(ctx, connect, sock.getsockopt(zmq.IDENTITY), heartbeat_s, curve_keys, stop_pulse),
        daemon=True,
    )
    pulse.start()
    try:
        while True:
            if parent_pid and os.getppid() != parent_pid:
                log.warning("worker %s: the daemon process went away, exiting", name)
                break
            if sock.poll(int(heartbeat_s * 1000)):
                frames = sock.recv_multipart(copy=False)
                last_heard = time.monotonic()
                kind = frames[0].bytes
                if kind == msg.D_BATCH:
                    _batch(sock, worker, frames[1:])
                elif kind == msg.D_CONFIG:
                    awaiting_config = False
                    try:
                        info = worker.configure(
                            json.loads(frames[1].bytes), [f.bytes for f in frames[2:]]
                        )
                    except (L1ForgeError, OSError, ValueError) as exc:
                        info = {"error": str(exc)}
                    sock.send_multipart([msg.W_CONFIGURED, json.dumps(info).encode()])
                elif kind in (msg.D_SET_MODEL, msg.D_SET_MENU, msg.D_SWAP, msg.D_SET_SCALING):
                    _update(sock, worker, kind, frames)
                elif kind == msg.D_STOP:
                    served += 1
                    if runs and served >= runs:
                        code = 0
                        break
                    # the run is over: drop its setup and wait for the daemon's next run
                    log.info("worker %s: run over (%d served), waiting for the next", name, served)
                    worker.close()
                    worker = TriggerWorker(name, tmp)
                    sock.send_multipart([msg.W_READY, json.dumps(hello).encode()])
                    awaiting_config, ready_sent = True, time.monotonic()
                elif kind == msg.D_WHO and (
                    not awaiting_config or time.monotonic() - ready_sent > 2 * heartbeat_s
                ):
                    # declared dead, or a new dispatcher (next run, restarted daemon) that never
                    # got our READY: register again
                    sock.send_multipart([msg.W_READY, json.dumps(hello).encode()])
                    awaiting_config, ready_sent = True, time.monotonic()
                elif kind != msg.D_HEARTBEAT:
                    log.warning("worker %s: unknown message %r", name, kind[:16])
            now = time.monotonic()
            if now - last_sent >= heartbeat_s:
                sock.send_multipart([msg.W_HEARTBEAT])
                if worker.firmware:
                    _stats(sock, worker)
                last_sent = now
            if give_up_s is not None and now - last_heard > give_up_s:
                log.warning("worker %s: nothing from the dispatcher for %.0f s", name, give_up_s)
                break
    finally:
        stop_pulse.set()
        pulse.join(5)
        worker.close()
        sock.close(0)
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        tmp.rmdir()
    return code


def _pulse(
    ctx: zmq.Context,
    connect: str,
    ident: bytes,
    heartbeat_s: float,
    curve_keys: str | None,
    stop: threading.Event,
) -> None:
    """Heartbeats from a second socket, so a long batch or model load is not taken for death
    (a frozen or killed process stops these too)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 4)
    connect_client(sock, connect, curve_keys)
    try:
        while not stop.wait(heartbeat_s):
            try:
                sock.send_multipart([msg.W_HEARTBEAT, ident], zmq.NOBLOCK)
            except zmq.Again:
                pass  # the dispatcher is unreachable: nothing to tell it
    finally:
        sock.close(0)


def _batch(sock: zmq.Socket, worker: TriggerWorker, frames: list) -> None:
    try:
        result = worker.process(frames)
    except (WireError, DataFormatError, ConfigError) as exc:
        try:
            seq = decode_batch(frames).first_seq
        except WireError:
            seq = peek_first_seq(frames[0]) if frames else 0
        reason = getattr(exc, "reason", type(exc).__name__)
        doc = {"reason": f"worker:{reason}", "message": str(exc)}
        log.error("worker %s: batch %d failed: %s", worker.name, seq, exc)
        sock.send_multipart([msg.W_FAILED, msg.U64.pack(seq), json.dumps(doc).encode()])
        return
    if worker.new_mismatches:  # ahead of the result: the dispatcher has it before the drain
        _stats(sock, worker)
    sock.send_multipart(
        [msg.W_RESULT, msg.U64.pack(result.first_seq), *encode_results(result)], copy=False
    )


def _stats(sock: zmq.Socket, worker: TriggerWorker) -> None:
    worker.new_mismatches = 0
    sock.send_multipart([msg.W_STATS, json.dumps(worker.firmware_status()).encode()])


def _update(sock: zmq.Socket, worker: TriggerWorker, kind: bytes, frames: list) -> None:
    head = json.loads(frames[1].bytes)
    answer: dict[str, Any] = {"token": head.get("token"), "worker": worker.name}
    try:
        if kind == msg.D_SET_MODEL:
            sha = worker.set_model(head["name"], frames[2].bytes, frames[3].bytes)
            answer.update(ok=True, name=head["name"], sha256=sha)
        elif kind == msg.D_SWAP:
            ir_json, ir_npz = frames[2].bytes, frames[3].bytes
            sha, menu_sha = worker.swap(head["name"], ir_json, ir_npz, head["menu"])
            answer.update(ok=True, name=head["name"], sha256=sha, menu_sha256=menu_sha)
        elif kind == msg.D_SET_SCALING:
            answer.update(ok=True, **worker.set_scaling(InputScaling.from_json(head)))
        else:
            answer.update(ok=True, sha256=worker.set_menu(head["menu"]))
        if worker.firmware:
            answer["firmware"] = worker.firmware_status()
    except (L1ForgeError, OSError, ValueError, KeyError, IndexError) as exc:
        answer.update(ok=False, error=str(exc))
    sock.send_multipart([msg.W_ACK, json.dumps(answer).encode()])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m l1forge.online.datapath.worker",
        description="Run a trigger worker that connects to an l1forge online daemon.",
    )
    ap.add_argument("--connect", required=True, help="the daemon's worker endpoint (tcp://...)")
    ap.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}")
    ap.add_argument("--credits", type=int, default=4, help="batches this worker may hold")
    ap.add_argument("--heartbeat-s", type=float, default=0.5)
    ap.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    ap.add_argument("--give-up-s", type=float, default=None)
    ap.add_argument("--curve-keys", default=None, help="key folder (tcp to a remote daemon)")
    ap.add_argument("--work-dir", default=None, help="folder for the received IR files")
    ap.add_argument(
        "--runs",
        type=int,
        default=None,
        help="exit after serving this many runs (0: every run until killed; default 1 for a "
        "worker started by the daemon, 0 for a remote one)",
    )
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return serve(
        args.connect,
        name=args.name,
        credits=args.credits,
        heartbeat_s=args.heartbeat_s,
        parent_pid=args.parent_pid,
        give_up_s=args.give_up_s,
        curve_keys=args.curve_keys,
        work_dir=args.work_dir,
        runs=(1 if args.parent_pid else 0) if args.runs is None else max(0, args.runs),
    )


if __name__ == "__main__":
    sys.exit(main())
