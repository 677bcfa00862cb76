import json

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from l1forge.errors import DataFormatError
from l1forge.models import evaluate
from l1forge.models.config import make_config
from l1forge.models.emulator import Emulator
from l1forge.models.qnet import load
from l1forge.models.train import TEST_SCORES, Inputs, load_recon_score, train


def test_auc_and_thresholds():
    bg = np.arange(100000, dtype=float)
    assert evaluate.roc_auc(bg, bg + 1e9) == 1.0
    assert evaluate.roc_auc(bg, bg) == pytest.approx(0.5)  # identical samples, ties averaged
    t = evaluate.threshold_at_fpr(bg, 1e-4)
    assert np.mean(bg > t) == pytest.approx(1e-4)  # exactly 10 of 100000 pass
    _, rate = evaluate.threshold_for_rate(bg, 400.0)
    assert rate == pytest.approx(400.0)  # FPR 1e-5 at 40 MHz
    tpr, fpr = evaluate.tpr_at_fpr(bg, np.array([t, t + 1]), 1e-4)
    assert (tpr, fpr) == (0.5, 1e-4)  # a score equal to the threshold does not fire


@pytest.mark.parametrize("kind", ["ad", "classifier"])
def test_train_exports_ir_and_evaluates_on_emulator(tmp_path, kind):
    rng = np.random.default_rng(1)
    bg = np.rint(rng.normal(0, 40, (3000, 57))).astype(np.int64)
    sig = np.rint(rng.normal(30, 80, (600, 57))).astype(np.int64)
    raw = {
        "network": {"kind": kind, "hidden": [8]},
        "training": {"epochs": 2, "batch_size": 128, "learning_rate": 0.01},
    }
    summary = train(make_config(raw), Inputs({"minbias": bg}), Inputs({"sig": sig}), tmp_path)
    ir = load(tmp_path / "encoder.qnet.json")
    assert len(ir.outputs) == 1
    assert (tmp_path / "score_ir_roc.png").is_file()
    assert (tmp_path / "checkpoints" / "epoch002.weights.h5").is_file()
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["score"]["signals"]["sig"]["auc"] == summary["score"]["signals"]["sig"]["auc"]
    # this signal is wider than the background: any trained score separates it
    assert summary["score"]["signals"]["sig"]["auc"] > 0.6
    y = Emulator(ir).run(bg[:100])
    assert_array_equal(y, Emulator(load(tmp_path / "encoder.qnet.json")).run(bg[:100]))
    if kind == "ad":
        assert "recon_mse" in summary
    # the QKeras network rebuilt from the folder computes what the IR computes
    from l1forge.models.networks import exact_predict
    from l1forge.models.train import load_deploy_model

    deploy = load_deploy_model(tmp_path)
    assert_array_equal(exact_predict(deploy, bg[:500]), Emulator(ir).run_float(bg[:500]))
    # the float score rebuilt from the folder is the training's: the stored test scores
    if kind == "ad":
        recon, cfg = load_recon_score(tmp_path)
        assert cfg.network.kind == "ad"
        with np.load(tmp_path / TEST_SCORES) as z:
            np.testing.assert_allclose(recon(sig), z["recon_mse/sig"], rtol=1e-5)
    else:
        with pytest.raises(DataFormatError, match="no reconstruction score"):
            load_recon_score(tmp_path)


def test_load_deploy_model_names_what_is_missing(tmp_path):
    from l1forge.errors import DataFormatError
    from l1forge.models.train import load_deploy_model

    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(DataFormatError, match=r"hardware\.weights\.h5"):
        load_deploy_model(tmp_path)


def test_student_score_is_the_exported_bit_exact_network(tmp_path):
    """Score "student": the IR is the small regressor of the teacher's log MSE, bit-exact."""
    from l1forge.models.networks import exact_predict
    from l1forge.models.train import TEST_SCORES, load_deploy_model
    from l1forge.models.vectors import bitexact_vectors

    rng = np.random.default_rng(2)
    # events of varied activity (a per-event scale), so the teacher's error varies with it
    activity = np.exp(rng.uniform(-0.7, 0.7, (3000, 1)))
    bg = np.rint(rng.normal(0, 40, (3000, 57)) * activity).astype(np.int64)
    sig = np.rint(rng.normal(0, 40, (600, 57)) * 3).astype(np.int64)
    raw = {
        "network": {"hidden": [8], "score": "student", "student_hidden": [6]},
        "training": {"epochs": 12, "batch_size": 128, "learning_rate": 0.01},
    }
    summary = train(make_config(raw), Inputs({"minbias": bg}), Inputs({"sig": sig}), tmp_path)
    ir = load(tmp_path / "encoder.qnet.json")
    assert ir.input_specs[0].size == 57 and ir.output_specs[0].size == 1
    assert (tmp_path / "student_history.csv").is_file()
    # the student learned the teacher's ranking (seeded; measured 0.38 and AUC 0.68 here)
    assert summary["score"]["signals"]["sig"]["auc"] > 0.6
    deploy = load_deploy_model(tmp_path)
    assert [w.shape for w in deploy.get_layer("dense0").get_weights()] == [(57, 6), (6,)]
    x = bitexact_vectors(ir, 4000, seed=3)
    with Emulator(ir) as emu:
        assert_array_equal(exact_predict(deploy, x), emu.run_float(x))
    with np.load(tmp_path / TEST_SCORES) as scores:
        assert len(scores["score_ir/background"]) == summary["n_background_test"]
        assert len(scores["recon_mse/sig"]) == len(sig)
        teacher = np.log(scores["recon_mse/background"])
        assert np.corrcoef(scores["score_ir/background"], teacher)[0, 1] > 0.2
        # the teacher rebuilt from the last checkpoint is the final VAE, not an earlier epoch's
        recon, _ = load_recon_score(tmp_path)
        np.testing.assert_allclose(recon(sig), scores["recon_mse/sig"], rtol=1e-5)
        (tmp_path / "checkpoints" / "epoch012.weights.h5").unlink()
        with pytest.raises(DataFormatError, match="epoch012"):
            load_recon_score(tmp_path)


def test_kl_warmup_raises_beta_linearly(tmp_path):
    from l1forge.models import networks

    m = networks.vae_models(make_config({"network": {"hidden": [8]}}).network, _scaling(), 0.5)
    cb = m.warmup(4)
    assert [cb.beta_at(e) for e in range(6)] == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    cb.on_epoch_begin(1)
    assert float(m.kl_weight.beta.numpy()) == 0.125
    # beta is no weight: VAE weight files keep the layout they had before the warm-up option
    assert not m.kl_weight.weights
    rng = np.random.default_rng(1)
    bg = np.rint(rng.normal(0, 40, (2000, 57))).astype(np.int64)
    raw = {
        "network": {"hidden": [8]},
        "training": {"epochs": 2, "batch_size": 256, "kl_warmup_epochs": 2},
    }
    train(make_config(raw), Inputs({"minbias": bg}), Inputs({"sig": bg[:100]}), tmp_path)
    import csv

    with (tmp_path / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    loss, recon, kl = ([float(r[k]) for r in rows] for k in ("loss", "recon", "kl"))
    # epoch 1 trains at beta 0 (loss = reconstruction), epoch 2 at beta 0.25
    assert loss[0] == pytest.approx(recon[0], rel=1e-5)
    assert loss[1] == pytest.approx(recon[1] + 0.25 * kl[1], rel=1e-3) and kl[1] > 0


def _scaling():
    from l1forge.models.networks import InputScaling

    return InputScaling(offset=np.zeros(57, np.int64), shift=np.zeros(57, np.int64))


def test_train_ad_without_config_trains_the_shipped_network(tmp_path):
    """`l1forge train ad` with no --config trains models/ad_shipped.yaml (the demo does too)."""
    from l1forge.cli import main
    from l1forge.models.config import SHIPPED_AD_CONFIG, config_to_dict, load_config
    from l1forge.sim.dataset import write_events
    from l1forge.sim.generate import generate_events

    bg = write_events(tmp_path / "bg.h5", generate_events("minbias", 600, 3, 0.0, progress=False))
    sig = write_events(tmp_path / "sig.h5", generate_events("ato4l", 100, 4, 0.0, progress=False))
    args = ["train", "ad", "--data", str(bg), "--signals", str(sig), "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "ad")]) == 0
    summary = json.loads((tmp_path / "ad" / "summary.json").read_text())
    shipped = json.loads(json.dumps(config_to_dict(load_config(SHIPPED_AD_CONFIG, kind="ad"))))
    shipped["training"]["epochs"] = 1
    assert summary["config"] == shipped
    assert summary["config"]["network"]["score"] == "student"
    ir = load(tmp_path / "ad" / "encoder.qnet.json")
    assert ir.output_specs[0].size == 1
    # a file given with --config still wins
    mine = tmp_path / "mine.yaml"
    mine.write_text("network:\n  hidden: [8]\n  decoder: [8]\n")
    assert main([*args, "--out", str(tmp_path / "mine"), "--config", str(mine)]) == 0
    summary = json.loads((tmp_path / "mine" / "summary.json").read_text())
    assert summary["config"]["network"]["score"] == "latent_mu2"
    assert summary["config"]["network"]["hidden"] == [8]
