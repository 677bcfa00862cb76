import pytest

from l1forge.errors import ConfigError
from l1forge.models.config import load_config, make_config


def test_defaults_fit_the_hardware_budget():
    cfg = make_config()
    assert cfg.network.weight_bits <= 8 and cfg.network.input_bits <= 14
    assert (cfg.network.n_inputs, *cfg.network.hidden, cfg.network.latent) == (57, 32, 16, 3)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"network": {"weight_bits": 40}}, "network.weight_bits"),
        ({"network": {"hidden": [32, "x"]}}, "network.hidden[1]"),
        ({"network": {"kind": "gan"}}, "network.kind"),
        ({"network": {"bogus": 1}}, "network.bogus"),
        ({"training": {"learning_rate": -1}}, "training.learning_rate"),
        ({"other": {}}, "other"),
        ({"network": {"score": "kl"}}, "network.score"),
        ({"network": {"kind": "classifier", "score": "student"}}, "network.score"),
        ({"network": {"student_hidden": []}}, "network.student_hidden"),
        ({"training": {"kl_warmup_epochs": -1}}, "training.kl_warmup_epochs"),
    ],
)
def test_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        make_config(raw)


def test_yaml_round_trip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("network:\n  hidden: [8]\n  weight_bits: 6\ntraining:\n  epochs: 2\n")
    cfg = load_config(p, kind="classifier")
    assert cfg.network.hidden == (8,) and cfg.network.kind == "classifier"
    assert cfg.training.epochs == 2
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_student_hardware_network_is_the_student():
    cfg = make_config({"network": {"score": "student", "student_hidden": [8, 4]}}).network
    hw = cfg.hardware()
    assert (hw.kind, hw.hidden, hw.n_outputs) == ("classifier", (8, 4), 1)
    assert (hw.weight_bits, hw.input_bits) == (cfg.weight_bits, cfg.input_bits)
    assert make_config().network.hardware() == make_config().network
