"""`serkit train NAME_OR_PATH --overlay FILE`: shipped configs found by name, overlays applied before the
command line's overrides, and every bad input a SerkitError that names the file, before anything is
written."""

from pathlib import Path

import pytest

pytest.importorskip("speechbrain")

from serkit.speechbrain.train import _parse  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "plugins" / "serkit" / "conf"


def parse(tmp_path, *argv):
    return _parse(
        [
            *argv,
            "--fold-dir",
            str(tmp_path),
            "--output-folder",
            str(tmp_path / "out"),
            "--feats",
            str(tmp_path),
        ]
    )


def test_a_shipped_config_is_found_by_name_and_overlays_stack(tmp_path):
    args, _, overrides = parse(tmp_path, "mfsn", "--overlay", "mfsn_mini", "--lr", "0.5")
    assert args.hparams == str(SHARED / "mfsn.yaml") and args.overlay == [str(SHARED / "mfsn_mini.yaml")]
    assert overrides["fusion_dim"] == 32 and overrides["sec_layers"] == [0, 1, 2]
    assert overrides["lr"] == 0.5  # the command line wins over the overlay's 0.01
    mine = tmp_path / "wide.yaml"
    mine.write_text("fusion_dim: 64\n")
    _, _, overrides = parse(
        tmp_path, str(SHARED / "mfsn.yaml"), "--overlay", "mfsn_mini", "--overlay", str(mine)
    )
    assert overrides["fusion_dim"] == 64 and overrides["attn_dim"] == 16  # later overlays win
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("fusion_width: 8\n", r"bad.yaml: no key \['fusion_width'\] in .*mfsn.yaml to override"),
        ("model: !new:os.system [echo]\n", r"bad.yaml: not a plain yaml overlay"),
        ("- 1\n- 2\n", r"bad.yaml: an overlay is a mapping of `key: value` overrides, not list"),
    ],
)
def test_a_bad_overlay_names_itself(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SerkitError, match=message):
        parse(tmp_path, "mfsn", "--overlay", str(bad))
    assert not (tmp_path / "out").exists()


def test_unknown_names_and_unset_placeholders_fail(tmp_path):
    with pytest.raises(SerkitError, match=r"shiftcnn: no such hparams file, nor a config shipped"):
        parse(tmp_path, "shiftcnn")
    with pytest.raises(SerkitError, match=r"nosuch: no such overlay file"):
        parse(tmp_path, "mfsn", "--overlay", "nosuch")
    with pytest.raises(SerkitError, match=r"shiftser.yaml: give --method \(the config leaves it"):
        parse(tmp_path, "shiftser")
    args, _, overrides = parse(tmp_path, "shiftser", "--method", "shiftcnn")
    assert overrides == {"method": "shiftcnn"}
    assert not (tmp_path / "out").exists()
