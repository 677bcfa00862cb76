"""The internal protocols of the data path: worker <-> dispatcher, dispatcher <-> collector,
source -> dispatcher.

Every message is a ZeroMQ multipart list whose first frame names it; event and result batches
inside travel as the frames of ``wire.encode_batch`` / ``wire.encode_results``. The fixed-size
metadata frames are ``struct`` layouts defined here, so no module reads them by offset.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l1forge.errors import ConfigError

# ---- the worker protocol: multipart messages, the first frame names the message ----
# worker -> dispatcher (the ROUTER prepends the worker's identity)
W_READY = b"READY"  # json {name, pid, host, credits}
W_HEARTBEAT = b"HB"  # [identity of the worker's data socket] when sent from its pulse socket
W_CONFIGURED = b"CONFIGURED"  # json {models: {name: sha256}, menu: sha256} or {error}
W_RESULT = b"RESULT"  # first_seq (u64), *wire.encode_results(...)
W_FAILED = b"FAILED"  # first_seq (u64), json {reason, message}: the batch cannot be processed
W_ACK = b"ACK"  # json {token, ok, ... | error}: answer to SET_MODEL/SET_MENU/SET_SCALING/SWAP
W_STATS = b"STATS"  # json {model: firmware seed status}: sent before a result that changed it
# dispatcher -> worker
D_CONFIG = b"CONFIG"  # json {run, backend, models: [names], menu, scaling}, 2 frames per model
D_BATCH = b"BATCH"  # *wire.encode_batch(...)
D_HEARTBEAT = b"HB"
D_SET_MODEL = b"SET_MODEL"  # json {token, name}, IR json bytes, IR npz bytes
D_SET_MENU = b"SET_MENU"  # json {token, menu}
D_SWAP = b"SWAP"  # json {token, name, menu}, IR json bytes, IR npz bytes: model + menu at once
D_SET_SCALING = b"SET_SCALING"  # json {token, model, offset, shift}
D_STOP = b"STOP"
D_WHO = b"WHO"  # unknown worker (declared dead or new dispatcher): send READY again
# dispatcher <-> collector (inproc PAIR) and source -> dispatcher (inproc PUSH/PULL)
C_RESULT = b"R"  # meta, *result frames[, *batch frames when sampled for the monitoring tap]
C_FAILED = b"F"  # meta, json
C_ACK = b"ACK"  # first_seq (u64)
C_NACK = b"NACK"  # first_seq (u64): the result was unreadable, send the batch again
S_BATCH = b"B"  # SOURCE_META (t_source, first_seq, n_events), *wire.encode_batch(...)
S_END = b"END"  # json {first_seq, end_seq}
# first_seq, t_source (perf_counter), n_result_frames, n_events (0: unknown), flags
META = struct.Struct("<QdIIBxxx")
FLAG_SAMPLED = 1  # the batch's frames follow the result (for the monitoring tap)
FLAG_OWNER = 2  # sent by the worker the batch is assigned to (else a late or stray copy)
U64 = struct.Struct("<Q")
F64 = struct.Struct("<d")
SOURCE_META = struct.Struct("<dQQ")


@dataclass(frozen=True)
class ModelFiles:
    """A qnet IR as bytes (JSON + npz) so it reaches workers on any host; sha256 of the JSON."""

    name: str
    ir_json: bytes
    ir_npz: bytes
    sha256: str

    @classmethod
    def read(cls, name: str, path: str | Path) -> ModelFiles:
        """Load and validate the IR first (DataFormatError if malformed), then read its bytes."""
        from l1forge.models import qnet

        path = Path(path)
        qnet.load(path)
        ir_json = path.read_bytes()
        npz = path.parent / json.loads(ir_json)["arrays_file"]
        return cls(name, ir_json, npz.read_bytes(), hashlib.sha256(ir_json).hexdigest())


@dataclass(frozen=True)
class InputScaling:
    """Per-feature integer offsets and shifts of a model's input ``scale`` op (the values of the
    register bank's OFFSET and SHIFT registers; the emulator's ``with_scaling``)."""

    model: str
    offset: tuple[int, ...]
    shift: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("set_scaling.model: must be a model name")
        for key in ("offset", "shift"):
            values = getattr(self, key)
            if not isinstance(values, list | tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values
            ):
                raise ConfigError(f"set_scaling.{key}: must be a list of integers")
            object.__setattr__(self, key, tuple(int(v) for v in values))

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "offset": list(self.offset), "shift": list(self.shift)}

    @classmethod
    def from_json(cls, doc: Any) -> InputScaling:
        """From ``to_json``'s mapping (other keys, such as a broadcast token, are ignored)."""
        if not isinstance(doc, dict) or not {"model", "offset", "shift"} <= set(doc):
            raise ConfigError("set_scaling: expected an object with model, offset and shift")
        return cls(doc["model"], doc["offset"], doc["shift"])


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker loads: backend settings, the models (in score-column order), the menu,
    and the input scalings set during the run (applied after the models are loaded)."""

    run: int
    backend: dict[str, Any]  # {"kind": ..., plus make_backend keyword arguments}
    models: tuple[ModelFiles, ...]
    menu_json: str
    scaling: tuple[InputScaling, ...] = ()

    def frames(self) -> list[bytes]:
        """The D_CONFIG message: a JSON head, then each model's IR JSON and npz bytes."""
        head = {
            "run": self.run,
            "backend": self.backend,
            "models": [m.name for m in self.models],
            "menu": self.menu_json,
            "scaling": [s.to_json() for s in self.scaling],
        }
        out = [D_CONFIG, json.dumps(head).encode()]
        for m in self.models:
            out += [m.ir_json, m.ir_npz]
        return out


def menu_text(menu_doc: dict[str, Any]) -> tuple[str, str]:
    """A menu's JSON text as broadcast to the workers, and its sha256 (what they acknowledge)."""
    text = json.dumps(menu_doc)
    return text, hashlib.sha256(text.encode()).hexdigest()
