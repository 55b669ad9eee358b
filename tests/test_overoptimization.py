"""The overoptimization benchmark: its estimators and fits (known answers), its verdicts on synthetic curves,
and the --quick smoke run (into a temporary directory, never over committed results)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.overoptimization import best_of_n_expectations, fit_form, verdicts  # noqa: E402


def test_best_of_n_expectations_known_answer():
    proxy, gold = np.array([[1.0, 2.0, 3.0]]), np.array([[10.0, 20.0, 30.0]])
    # n = 1: the mean 20; n = 2: subsets {1,2} {1,3} {2,3} pick 20, 30, 30 -> 80/3; n = 3: 30
    np.testing.assert_allclose(best_of_n_expectations(proxy, gold, [1, 2, 3]), [20.0, 80 / 3, 30.0])
    # the proxy's order decides, not the gold's: a proxy that ranks backwards picks the worst gold
    np.testing.assert_allclose(best_of_n_expectations(-proxy, gold, [3]), [10.0])
    with pytest.raises(ValueError, match="needs 1 <= n <= 3"):
        best_of_n_expectations(proxy, gold, [4])


def test_fits_recover_gao_forms():
    d = np.array([0.25, 0.5, 1.0, 1.5, 2.0, 3.0])
    bon = fit_form(d, d * (0.3 - 0.1 * d), "bon")
    assert bon["alpha"] == pytest.approx(0.3) and bon["beta"] == pytest.approx(0.1) and bon["r2"] == pytest.approx(1.0)
    rl = fit_form(np.r_[0.0, d], np.r_[0.0, d * (0.3 - 0.1 * np.log(d))], "rl")  # d = 0 is dropped
    assert rl["alpha"] == pytest.approx(0.3) and rl["beta"] == pytest.approx(0.1) and rl["points"] == 6
    assert math.isnan(fit_form(np.array([1.0]), np.array([0.1]), "bon")["alpha"])  # too few points


def curve(method, proxy, d, gold):
    return {"task": "t", "method": method, "proxy": proxy, "d": list(d), "gold": list(gold)}


def test_verdicts_on_synthetic_curves():
    d = np.linspace(0, 3, 31)
    rows = [
        curve("best-of-n", "small", d, 0.5 + d * (0.2 - 0.1 * d)),  # peak at d = 1
        curve("best-of-n", "large", d, 0.5 + d * (0.2 - 0.05 * d)),  # peak at d = 2: further out
        curve("ppo", "small", d, 0.5 + 0.5 * d * (0.2 - 0.1 * d)),  # half the gain per d: spends more KL
        curve("ppo", "large", d, 0.5 + 0.5 * d * (0.2 - 0.05 * d)),
        curve("ppo", "ensemble-min", d, 0.5 + 0.5 * d * (0.2 - 0.05 * d) + 0.02 * d),  # falls less
    ]
    v = verdicts(rows, "t", tol=0.01)
    assert v["gold peaks then falls"]["verdict"] == "yes"
    assert v["RL spends more KL than best-of-n for the same gain"]["verdict"] == "yes"
    assert v["a larger proxy moves the peak out"]["verdict"] == "yes"
    assert v["ensembles flatten the fall"]["verdict"] == "yes"
    flat = [curve("best-of-n", "small", d, 0.5 + 0.0 * d)]
    assert verdicts(flat, "t", tol=0.01)["gold peaks then falls"]["verdict"] == "no"


def stamp(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


@pytest.mark.slow
def test_quick_run_writes_report(tmp_path):
    """--quick: every proxy (two sizes, ensemble mean and min), best-of-n, PPO and RLOO, fits and report."""
    committed = REPO / "benchmarks" / "results" / "overoptimization.json"
    before = stamp(committed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.overoptimization", "--quick", "--out", str(tmp_path)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((tmp_path / "overoptimization.json").read_text())
    assert data["quick"] is True and data["tasks"] == ["sentiment"]
    got = {(row["method"], row["proxy"]) for row in data["rows"]}
    assert got == {(m, p) for m in ("best-of-n", "ppo", "rloo")
                   for p in ("small", "large", "ensemble-mean", "ensemble-min")}
    for row in data["rows"]:
        assert len(row["d"]) == len(row["gold"]) >= 3 and 0.0 <= row["d"][0] < 0.05  # the initial policy
        assert {"alpha", "beta", "r2"} <= set(row["fit"])
    bon = next(row for row in data["rows"] if row["method"] == "best-of-n")
    assert bon["n"] == [1, 2, 4, 8] and bon["kl"][-1] == pytest.approx(math.log(8) - 7 / 8)
    assert set(data["verdicts"]["sentiment"]) == {"gold peaks then falls", "a larger proxy moves the peak out",
                                                  "RL spends more KL than best-of-n for the same gain",
                                                  "ensembles flatten the fall"}
    report = (tmp_path / "overoptimization.md").read_text()
    assert "| sentiment | ppo | ensemble-min |" in report and "the paper's findings" in report
    assert stamp(committed) == before  # the committed results are never written by a quick run


def test_committed_report_is_reproduced_from_its_json(tmp_path):
    """--report-only recomputes the fits, verdicts and report from the JSON: the committed report is exactly
    what the committed JSON gives (no figure in it is typed by hand), and the verdicts carry their tally."""
    results = REPO / "benchmarks" / "results"
    if not (results / "overoptimization.json").exists():
        pytest.skip("the full overoptimization results are not committed")
    for name in ("overoptimization.json", "overoptimization.md"):
        (tmp_path / name).write_bytes((results / name).read_bytes())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-m", "benchmarks.overoptimization", "--report-only", "--out", str(tmp_path)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "overoptimization.md").read_text() == (results / "overoptimization.md").read_text()
    data = json.loads((tmp_path / "overoptimization.json").read_text())
    assert data["quick"] is False and len(data["tasks"]) >= 2
    for found in data["verdicts"].values():
        for v in found.values():
            assert v["verdict"] in ("yes", "no", "inconclusive") and " of " in v["tally"]
