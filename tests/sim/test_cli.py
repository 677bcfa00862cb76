import json

from l1forge.cli import main
from l1forge.sim.dataset import read_events


def test_events_then_summary(tmp_path, capsys):
    out = tmp_path / "ev.h5"
    rc = main(
        [
            "sim",
            "events",
            "--process",
            "zll",
            "--process",
            "h0_tautau",
            "--n",
            "30",
            "--out",
            str(out),
            "--pileup",
            "5",
            "--seed",
            "4",
            "--pileup-library-events",
            "2000",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events"] == 60 and set(summary["processes"]) == {"zll", "h0_tautau"}
    ev = read_events(out)
    assert ev.processes == ("zll", "h0_tautau") and len(ev) == 60
    assert main(["sim", "summary", str(out), "--plots", str(tmp_path / "plots")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["plots"]) == 4
    assert all((tmp_path / "plots" / f"ev_{k}.png").stat().st_size > 1000 for k in ("met", "jet"))


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert (
        main(["sim", "events", "--process", "nope", "--n", "3", "--out", str(tmp_path / "x.h5")])
        == 2
    )
    assert "unknown process 'nope'" in capsys.readouterr().err
    assert (
        main(["sim", "events", "--process", "zll", "--n", "-1", "--out", str(tmp_path / "x.h5")])
        == 2
    )
    assert "positive" in capsys.readouterr().err
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n broken")
    assert main(["sim", "summary", str(tmp_path / "bad.h5")]) == 2
    assert "corrupt" in capsys.readouterr().err
