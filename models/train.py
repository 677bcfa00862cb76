"""Training on sim datasets: the VAE anomaly detector (background only) and the classifier.

Every run: fixed seeds, per-epoch weight checkpoints, the deployed network exported to the qnet
IR (``encoder.qnet.json``), evaluation on scores computed by the IR emulator (the integers the
hardware produces), plots and one JSON summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from l1forge.errors import DataFormatError
from l1forge.models.config import Config, config_to_dict

log = logging.getLogger(__name__)

# Beside the IR in a training folder: what `load_deploy_model` rebuilds the QKeras network from.
HARDWARE_WEIGHTS = "hardware.weights.h5"
INPUT_SCALING = "input_scaling.json"
# Beside the summary: the test-sample scores the metrics were computed from (for ROC plots).
TEST_SCORES = "test_scores.npz"


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Hardware-integer network inputs grouped by process name."""

    by_process: dict[str, np.ndarray]


def read_inputs(path: str | Path, hw_bits: int, max_events: int | None = None) -> Inputs:
    """The 57 hardware integers of every event in a sim dataset, saturated to the input word."""
    from l1forge.sim.dataset import read_events

    ev = read_events(path)
    x = np.asarray(ev.objects_hw).reshape(len(ev.objects_hw), -1).astype(np.int64)
    lo, hi = -(1 << (hw_bits - 1)), (1 << (hw_bits - 1)) - 1
    n_sat = int(np.count_nonzero((x < lo) | (x > hi)))
    if n_sat:
        log.warning("%s: %d input values saturated to the %d-bit word", path, n_sat, hw_bits)
    x = np.clip(x, lo, hi)
    labels = np.asarray(ev.label)
    out = {}
    for i, name in enumerate(ev.processes):
        sel = x[labels == i][:max_events]
        if len(sel):
            out[str(name)] = sel
    if not out:
        raise DataFormatError(f"{path}: no events")
    return Inputs(out)


def _split(x: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(len(x))
    n_val = int(len(x) * frac)
    return x[idx[n_val:]], x[idx[:n_val]]


def _callbacks(out_dir: Path):
    import tensorflow as tf

    ckpt = out_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    return [
        tf.keras.callbacks.ModelCheckpoint(
            str(ckpt / "epoch{epoch:03d}.weights.h5"), save_weights_only=True
        ),
        tf.keras.callbacks.CSVLogger(str(out_dir / "history.csv")),
    ]


def train(
    cfg: Config,
    background: Inputs,
    signals: Inputs,
    out_dir: str | Path,
    rate_hz: float = 1000.0,
) -> dict[str, Any]:
    """Train ``cfg.network.kind``, export the IR, evaluate on the emulator; return the summary."""
    import tensorflow as tf

    from l1forge.models import evaluate, networks, qnet
    from l1forge.models.emulator import Emulator
    from l1forge.models.export import export_qnet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net_cfg, tr = cfg.network, cfg.training
    tf.keras.utils.set_random_seed(tr.seed)
    bg_all = np.concatenate(list(background.by_process.values()))
    bg_train, bg_test = _split(bg_all, 0.5, tr.seed)
    bg_fit, bg_val = _split(bg_train, tr.validation_fraction, tr.seed + 1)
    scaling = networks.fit_input_scaling(bg_fit)
    opt = tf.keras.optimizers.Adam(tr.learning_rate)
    fit_kw = dict(
        epochs=tr.epochs, batch_size=tr.batch_size, verbose=2, callbacks=_callbacks(out_dir)
    )
    recon_model = None
    if net_cfg.kind == "ad":
        m = networks.vae_models(net_cfg, scaling, tr.beta_kl)
        m.vae.compile(optimizer=opt)
        val = (bg_val.astype(np.float32),) if len(bg_val) else None
        vae_kw = dict(fit_kw)
        if tr.kl_warmup_epochs:
            vae_kw["callbacks"] = [*fit_kw["callbacks"], m.warmup(tr.kl_warmup_epochs)]
        m.vae.fit(bg_fit.astype(np.float32), validation_data=val, **vae_kw)
        trained, recon_model = m.hardware, m.recon_score
        if net_cfg.score == "student":
            trained = _train_student(cfg, scaling, recon_model, bg_fit, bg_val, out_dir)
    else:
        sig_all = np.concatenate(list(signals.by_process.values()))
        sig_train, _ = _split(sig_all, 0.5, tr.seed)
        x = np.concatenate([bg_train, sig_train]).astype(np.float32)
        y = np.concatenate([np.zeros(len(bg_train)), np.ones(len(sig_train))]).astype(np.float32)
        w = np.where(y == 1, len(bg_train) / max(len(sig_train), 1), 1.0)
        perm = np.random.default_rng(tr.seed).permutation(len(x))  # validation_split takes the tail
        x, y, w = x[perm], y[perm], w[perm]
        trained = networks.hardware_model(net_cfg, scaling)
        trained.compile(optimizer=opt, loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
        trained.fit(
            x, y, sample_weight=w, validation_split=tr.validation_fraction, shuffle=True, **fit_kw
        )
    deploy = networks.deploy_model(net_cfg.hardware(), scaling, trained)
    trained.save_weights(str(out_dir / HARDWARE_WEIGHTS))
    (out_dir / INPUT_SCALING).write_text(
        json.dumps({"offset": scaling.offset.tolist(), "shift": scaling.shift.tolist()}) + "\n"
    )
    ir = export_qnet(deploy, name=f"l1forge_{net_cfg.kind}", config=config_to_dict(cfg))
    ir_path = qnet.save(ir, out_dir / "encoder.qnet.json")
    out_fixed = ir.output_specs[0].fixed
    sig_test = {
        k: (_split(v, 0.5, tr.seed)[1] if net_cfg.kind == "classifier" else v)
        for k, v in signals.by_process.items()
    }
    with Emulator(ir) as emu:
        bg_int = emu.run(bg_test)[:, 0]
        sig_int = {k: emu.run(v)[:, 0] for k, v in sig_test.items()}
    summary: dict[str, Any] = {
        "kind": net_cfg.kind,
        "qnet": str(ir_path),
        "config": config_to_dict(cfg),
        "n_background_train": len(bg_fit),
        "n_background_test": len(bg_test),
        "output_format": out_fixed.hls_type(),
        "score": evaluate.evaluate_scores(
            bg_int.astype(float),
            {k: v.astype(float) for k, v in sig_int.items()},
            out_dir,
            rate_hz,
            score_name="score_ir",
        ),
    }
    if recon_model is not None:

        def recon(x: np.ndarray) -> np.ndarray:
            return recon_model.predict(x.astype(np.float32), batch_size=8192, verbose=0)[:, 0]

        summary["recon_mse"] = evaluate.evaluate_scores(
            recon(bg_test),
            {k: recon(v) for k, v in sig_test.items()},
            out_dir,
            rate_hz,
            score_name="recon_mse",
        )
    scores = {"score_ir/background": bg_int, **{f"score_ir/{k}": v for k, v in sig_int.items()}}
    if recon_model is not None:
        scores["recon_mse/background"] = recon(bg_test)
        scores.update({f"recon_mse/{k}": recon(v) for k, v in sig_test.items()})
    np.savez(out_dir / TEST_SCORES, **scores)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def student_target(mse: np.ndarray) -> np.ndarray:
    """What the student regresses: log of the teacher's reconstruction MSE (same ranking, a
    range the student's fixed-point output holds)."""
    return np.log(np.maximum(np.asarray(mse, np.float64), 1e-6)).astype(np.float32)


def _train_student(cfg: Config, scaling, teacher, bg_fit, bg_val, out_dir: Path):
    """CICADA-style distillation: a small quantized network learns the teacher VAE's log MSE."""
    import tensorflow as tf

    from l1forge.models import networks

    def target(x: np.ndarray) -> np.ndarray:
        return student_target(teacher.predict(x.astype(np.float32), batch_size=8192, verbose=0))

    tr = cfg.training
    student = networks.hardware_model(cfg.network.hardware(), scaling)
    student.compile(optimizer=tf.keras.optimizers.Adam(tr.learning_rate), loss="mse")
    val = (bg_val.astype(np.float32), target(bg_val)) if len(bg_val) else None
    student.fit(
        bg_fit.astype(np.float32),
        target(bg_fit),
        validation_data=val,
        epochs=tr.epochs,
        batch_size=tr.batch_size,
        verbose=2,
        callbacks=[tf.keras.callbacks.CSVLogger(str(out_dir / "student_history.csv"))],
    )
    return student


def _config_and_scaling(d: Path, also: tuple[str, ...] = ()):
    """A training folder's config and the input scaling it was trained with (``also``: other
    files the caller needs, checked to be there with them)."""
    from l1forge.models import networks
    from l1forge.models.config import make_config

    missing = [n for n in ("summary.json", *also, INPUT_SCALING) if not (d / n).is_file()]
    if missing:
        raise DataFormatError(f"{d}: not a complete training folder, missing {missing}")
    cfg = make_config(json.loads((d / "summary.json").read_text())["config"])
    raw = json.loads((d / INPUT_SCALING).read_text())
    scaling = networks.InputScaling(
        offset=np.asarray(raw["offset"], np.int64), shift=np.asarray(raw["shift"], np.int64)
    )
    return cfg, scaling


def load_recon_score(train_dir: str | Path):
    """The float score of an ``ad`` training folder: x (hardware integers, saturated to the
    folder's input word as ``read_inputs`` does) -> reconstruction MSE of its VAE, rebuilt from
    the last epoch's checkpoint (for a student, the teacher). Returns ``(score, config)``.
    """
    from l1forge.models import networks

    d = Path(train_dir)
    cfg, scaling = _config_and_scaling(d)
    if cfg.network.kind != "ad":
        raise DataFormatError(f"{d}: a {cfg.network.kind} training has no reconstruction score")
    ckpt = d / "checkpoints" / f"epoch{cfg.training.epochs:03d}.weights.h5"
    if not ckpt.is_file():
        raise DataFormatError(f"{d}: the VAE's last checkpoint {ckpt.name} is missing")
    m = networks.vae_models(cfg.network, scaling, cfg.training.beta_kl)
    m.vae.load_weights(str(ckpt))

    def score(x: np.ndarray) -> np.ndarray:
        return m.recon_score.predict(x.astype(np.float32), batch_size=8192, verbose=0).ravel()

    return score, cfg


def load_deploy_model(train_dir: str | Path):
    """The QKeras deploy network of a `train` output folder (config, scaling, trained weights).

    Checked against the folder's IR: the two must agree bit for bit on the corner vectors.
    """
    import numpy.testing

    from l1forge.models import networks, qnet
    from l1forge.models.emulator import Emulator
    from l1forge.models.vectors import bitexact_vectors

    d = Path(train_dir)
    cfg, scaling = _config_and_scaling(d, ("encoder.qnet.json", HARDWARE_WEIGHTS))
    trained = networks.hardware_model(cfg.network.hardware(), scaling)
    trained.load_weights(str(d / HARDWARE_WEIGHTS))
    deploy = networks.deploy_model(cfg.network.hardware(), scaling, trained)
    ir = qnet.load(d / "encoder.qnet.json")
    x = bitexact_vectors(ir, 4096, seed=0)
    with Emulator(ir) as emu:
        want = emu.run_float(x)
    got = networks.exact_predict(deploy, x)
    try:
        numpy.testing.assert_array_equal(got, want)
    except AssertionError as exc:
        raise DataFormatError(f"{d}: the rebuilt QKeras network differs from its IR") from exc
    return deploy
