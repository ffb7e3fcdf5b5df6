"""`gtasr-eval targets`: the verdicts against bicubic, the colour check, and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gtasr_deploy.cli.eval import main
from gtasr_deploy.errors import InputError
from gtasr_deploy.evaluation import targets
from gtasr_deploy.evaluation.peers import Method, open_method
from gtasr_deploy.media.images import write_image

from test_eval import assets, photo  # noqa: F401  (assets: the LPIPS weights fixture)


@pytest.fixture
def heldout(tmp_path):
    folder = tmp_path / "heldout"
    folder.mkdir()
    write_image(folder / "a.png", photo(90, 120, 3))  # smaller than the crop on one side
    write_image(folder / "b.png", photo(160, 150, 4))
    (folder / "LICENSES.txt").write_text("not an image")
    return folder


def test_verdicts_follow_the_three_targets():
    def kind(psnr, lpips, colour):
        return targets.KindResult(kind="x", psnr_y={"bicubic": 25.0, "gtasr": psnr}, lpips={"bicubic": 0.40, "gtasr": lpips},
                                  colour={"p": [colour, -0.5, 0.0]})

    assert kind(24.0, 0.37, 2.0).verdicts() == {"lpips": True, "psnr_y": True, "colour": True}  # all at the limits
    assert kind(23.99, 0.3701, -2.01).verdicts() == {"lpips": False, "psnr_y": False, "colour": False}
    assert kind(26.0, 0.10, 0.0).colour_max == 0.5


def test_centre_crop_is_centred_and_cut_to_multiples_of_four():
    img = np.arange(10 * 13 * 3).reshape(10, 13, 3)
    assert targets.centre_crop(img, 8).shape == (8, 8, 3)
    assert (targets.centre_crop(img, 8)[0, 0] == img[1, 2]).all()
    assert targets.centre_crop(img, 0).shape == (8, 12, 3)
    assert targets.centre_crop(img, 12).shape == (8, 12, 3)  # smaller than the crop: the whole side
    with pytest.raises(InputError, match="--crop 6"):
        targets.TargetsConfig(crop=6)


def test_a_colour_shifted_bicubic_fails_colour_and_lpips_only(heldout, monkeypatch, assets):  # noqa: F811
    """'gtasr' = bicubic + 3/255 on red: PSNR-Y within 1 dB, LPIPS not 0.03 better, colour off by 3."""
    def shifted(name, options):
        bicubic = open_method("bicubic")
        if name == "bicubic":
            return bicubic
        return Method("gtasr", lambda rgb: bicubic(np.rint(rgb * 255).astype(np.uint8)) + np.array([3 / 255, 0, 0], np.float32))

    monkeypatch.setattr(targets, "open_method", shifted)
    report = targets.run_targets(heldout, targets.TargetsConfig(crop=64))
    assert report.stems == ("a", "b") and [k.kind for k in report.kinds] == ["bicubic", "degraded"]
    for k in report.kinds:
        for stem, (dr, dg, db) in k.colour.items():
            assert 2.5 < dr <= 3.0 and abs(dg) < 1e-9 and abs(db) < 1e-9, stem  # red clipped at 255 in places
        assert k.verdicts() == {"lpips": False, "psnr_y": True, "colour": False}
        assert abs(k.lpips["gtasr"] - k.lpips["bicubic"]) < 0.03
    assert not report.met
    text = targets.format_report(report)
    assert "| bicubic |" in text and "no: lpips, colour" in text and "all targets met: no" in text


def test_cli_targets_writes_json_and_exits_1_when_missed(heldout, tmp_path, assets):  # noqa: F811
    (heldout / "b.png").unlink()  # one photo keeps it quick
    out = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["targets", str(heldout), "--crop", "64", "--json", str(out), "-q"])  # embedded weights
    assert result.exit_code in (0, 1), result.output
    report = json.loads(out.read_text())
    assert result.exit_code == (0 if report["met"] else 1)
    assert [k["kind"] for k in report["kinds"]] == ["bicubic", "degraded"]
    assert set(report["kinds"][0]["colour"]) == {"a"} and len(report["kinds"][1]["colour"]["a"]) == 3
    assert "| degraded |" in result.stdout
    bad = CliRunner().invoke(main, ["targets", str(tmp_path / "missing"), "-q"])
    assert bad.exit_code == 2 and "not a folder" in bad.output
