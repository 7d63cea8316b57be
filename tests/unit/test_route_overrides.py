"""`serkit recipe route-overrides`: local/ser.sh's --head-overrides reach the heads whose configs have
each key."""

from __future__ import annotations

from pathlib import Path

import pytest

from serkit.recipe_cli import route_overrides
from serkit.utils import SerkitError

CONF = Path(__file__).resolve().parents[2] / "plugins" / "serkit" / "conf"
RUNS = {
    "shiftcnn": [str(CONF / "shiftser.yaml")],
    "bas_ffn": [str(CONF / "bas.yaml")],
    "bas": [str(CONF / "bas.yaml"), str(CONF / "bas_search.yaml")],
}


def test_each_key_goes_to_the_heads_whose_configs_have_it():
    routed = route_overrides("--head-overrides", "--channel_mask_width 5 --batch_size 16 --device cpu", RUNS)
    assert routed == {
        "shiftcnn": "--channel_mask_width 5 --batch_size 16 --device cpu",
        "bas_ffn": "--batch_size 16 --device cpu",
        "bas": "--batch_size 16 --device cpu",
    }
    # a key of bas.yaml that BAS's search config lacks would fail the search: bas (both configs) skips it
    assert route_overrides("--head-overrides", "--transformer_layers 3", RUNS)["bas"] == ""


def test_a_key_no_config_has_fails_naming_the_option_unless_it_is_the_recipes_default():
    with pytest.raises(
        SerkitError,
        match=r'--head-overrides "--channel_mask_width 5": --channel_mask_width '
        r"is a key of none of the configs it goes to \(bas.yaml; runs: bas_ffn\)",
    ):
        route_overrides("--head-overrides", "--channel_mask_width 5", {"bas_ffn": RUNS["bas_ffn"]})
    with pytest.raises(SerkitError, match="--channel_mask_widht is a key of none"):
        route_overrides("--head-overrides", "--channel_mask_widht 5", RUNS)
    assert route_overrides(
        "--head-overrides", "--channel_mask_width 5", {"bas_ffn": RUNS["bas_ffn"]}, default=True
    ) == {"bas_ffn": ""}
