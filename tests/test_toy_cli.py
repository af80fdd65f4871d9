"""``bbh toy`` end to end: files, figures, real uncertainty, and CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bbh.cli import main

STOCHASTIC = ("bbh", "mc-dropout", "ensemble", "bbb", "mnf")


def test_bbh_toy_writes_figure_and_json_with_real_uncertainty(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BBH_CACHE_DIR", str(tmp_path / "cache"))  # the HMC reference is computed afresh
    out = tmp_path / "toy"
    assert main(["toy", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}/toy.png" in printed
    png = (out / "toy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    report = json.loads((out / "toy.json").read_text())
    assert set(report["methods"]) == {"bbh", "map", *STOCHASTIC}
    b, m = report["methods"]["bbh"], report["methods"]["map"]
    for summary in report["methods"].values():
        assert {"rmse", "std_inside", "std_outside", "train_seconds", "std_ratio_inside",
                "std_ratio_outside"} <= set(summary)
    for name in STOCHASTIC:
        assert report["methods"][name]["std_inside"] > 0.1, name
    # the HMC reference reproduces the measurement (std 3.9 inside, 10.3 outside, RMSE 62)
    hmc = report["hmc"]
    assert abs(hmc["std_inside"] / 3.9 - 1) < 0.15 and abs(hmc["std_outside"] / 10.3 - 1) < 0.15, hmc
    assert 55 < hmc["rmse"] < 70 and not hmc["cached"]
    assert b["std_ratio_outside"] == pytest.approx(b["std_outside"] / hmc["std_outside"])
    # BbH's uncertainty is real: clearly larger away from the data than near it, and not collapsed
    assert b["std_outside"] > 1.5 * b["std_inside"] and b["std_inside"] > 1.0, b
    # and the fit is a fit: the HMC gold standard has RMSE ~62 on this grid (issue 3)
    assert b["rmse"] < 90
    assert m["std_inside"] == 0.0 and m["std_outside"] == 0.0
    assert not list(out.glob(".*")), "temporary files left behind"


def test_bbh_toy_faithful_settings_run(tmp_path):
    assert main(["toy", "--out", str(tmp_path), "--faithful", "--samples", "20", "--no-hmc"]) == 0
    report = json.loads((tmp_path / "toy.json").read_text())
    assert report["faithful"] is True and "hmc" not in report
    assert set(report["methods"]) == {"bbh", "map", *STOCHASTIC}
    for name in ("bbh", "bbb", "mnf"):
        assert report["methods"][name]["setting"]["kl_anneal"] == {"kind": "toy", "offset": 1.0}
    assert report["methods"]["ensemble"]["setting"]["options"]["members"] == 10


def test_unknown_method_is_a_clear_cli_error(capsys):
    with pytest.raises(SystemExit) as err:
        main(["toy", "--methods", "bbh,hmc2"])
    assert err.value.code == 2
    assert "unknown method(s) 'hmc2'; choose from bbh, map, mc-dropout, ensemble, bbb, mnf" in capsys.readouterr().err


def test_console_script_prints_help():
    result = subprocess.run([sys.executable, "-m", "bbh.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "toy" in result.stdout
