"""Read a run's files with ROOT itself (PyROOT and RDataFrame), not uproot; print one JSON object.

Run with the interpreter of the ROOT virtual environment (``make root-venv``: ROOT from the
package index wants numpy 2, l1forge pins numpy 1.26, so ROOT gets a venv of its own):

    .venv-root/bin/python scripts/root_read.py RUN_FOLDER [DQM_FILE]

For each ``run*_ls*.root`` in RUN_FOLDER: the ``Events`` tree's entries, its branch names, the
``seq`` values (sorted), and RDataFrame sums of ``seed_bits`` and of every ``objects_hw``
element; for the DQM file: every histogram's entries and its integral including flow bins.
This script imports nothing of l1forge: it sees only what is on disk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _events(path: Path) -> dict:
    import ROOT

    f = ROOT.TFile.Open(str(path))
    if not f or f.IsZombie():
        raise SystemExit(f"ROOT cannot open {path}")
    tree = f.Get("Events")
    if not tree:
        raise SystemExit(f"{path}: no Events tree")
    branches = sorted(b.GetName() for b in tree.GetListOfBranches())
    n = int(tree.GetEntries())
    out = {"entries": n, "branches": branches}
    if n:
        df = ROOT.RDataFrame("Events", str(path))
        df = df.Define("objects_sum", "ROOT::VecOps::Sum(ROOT::VecOps::RVec<Long64_t>(objects_hw))")
        df = df.Define("bits", "(ULong64_t)seed_bits")
        seq = df.Take["ULong64_t"]("seq")
        bits = df.Sum["ULong64_t"]("bits")
        obj = df.Sum["Long64_t"]("objects_sum")
        out["seq"] = sorted(int(s) for s in seq.GetValue())
        out["seed_bits_sum"] = int(bits.GetValue())
        out["objects_hw_sum"] = int(obj.GetValue())
    f.Close()
    return out


def _histograms(path: Path) -> dict:
    import ROOT

    f = ROOT.TFile.Open(str(path))
    if not f or f.IsZombie():
        raise SystemExit(f"ROOT cannot open {path}")
    found: dict = {}

    def walk(directory, prefix: str) -> None:
        for key in directory.GetListOfKeys():
            obj = key.ReadObj()
            name = f"{prefix}{key.GetName()}"
            if obj.InheritsFrom("TDirectory"):
                walk(obj, name + "/")
            elif obj.InheritsFrom("TH1"):
                if obj.InheritsFrom("TH2"):
                    total = obj.Integral(0, obj.GetNbinsX() + 1, 0, obj.GetNbinsY() + 1)
                else:
                    total = obj.Integral(0, obj.GetNbinsX() + 1)
                found[name] = {"integral": float(total), "dimension": int(obj.GetDimension())}

    walk(f, "")
    f.Close()
    return found


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    import ROOT

    ROOT.gROOT.SetBatch(True)
    folder = Path(argv[1])
    files = sorted(folder.glob("run*_ls*.root"))
    out = {
        "root_version": ROOT.gROOT.GetVersion(),
        "files": {p.name: _events(p) for p in files},
    }
    if len(argv) == 3:
        out["dqm"] = _histograms(Path(argv[2]))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
