"""Single-file outputs never replace what serkit did not write: `serkit export-upstream --out`,
`serkit make-upstream --out` and `serkit results --out` refuse a foreign file (and export refuses the
upstream it was trained from), and replace their own earlier output."""

from __future__ import annotations

import json
import re

import pytest

torch = pytest.importorskip("torch")

from serkit.cli import main  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402


def test_make_upstream_refuses_a_file_it_did_not_write_and_replaces_its_own(tmp_path, capsys):
    foreign = tmp_path / "hubert_base_ls960.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "cfg": {}}, foreign)
    before = foreign.read_bytes()
    assert main(["make-upstream", "tiny-hubert", "--out", str(foreign)]) == 2
    assert re.search(
        r"--out .*hubert_base_ls960.pt: exists and is not a checkpoint `serkit make-upstream` "
        r"wrote; .*choose another --out",
        capsys.readouterr().err,
    )
    assert foreign.read_bytes() == before
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    assert main(["make-upstream", "tiny-hubert", "--out", str(notes)]) == 2
    assert "notes.txt: exists and is not a checkpoint" in capsys.readouterr().err
    assert notes.read_text() == "mine\n"
    own = tmp_path / "tiny.pt"
    assert main(["make-upstream", "tiny-hubert", "--out", str(own), "--seed", "1"]) == 0
    first = torch.load(own, weights_only=False)["model"]
    assert main(["make-upstream", "tiny-hubert", "--out", str(own), "--seed", "2"]) == 0  # its own: replaced
    second = torch.load(own, weights_only=False)
    assert second["serkit"]["seed"] == 2
    assert any(not torch.equal(first[k], second["model"][k]) for k in first)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_export_upstream_refuses_the_recorded_upstream_and_foreign_files(tmp_path):
    from serkit.speechbrain.export import export_upstream

    exp = tmp_path / "fold1"
    exp.mkdir()
    upstream = tmp_path / "released.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra_state": {"metrics": {}}}, upstream)
    before = upstream.read_bytes()
    (exp / "train_info.json").write_text(json.dumps({"setting": "finetune", "upstream": str(upstream)}))
    with pytest.raises(SerkitError, match=r"--out .*released.pt: is the upstream the fold was trained from"):
        export_upstream(exp, upstream)
    link = tmp_path / "link.pt"
    link.symlink_to(upstream)
    with pytest.raises(SerkitError, match="is the upstream the fold was trained from"):
        export_upstream(exp, link)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(
        SerkitError,
        match=r"other.pt: exists and is not an upstream `serkit export-upstream` "
        "wrote",
    ):
        export_upstream(exp, other)
    assert upstream.read_bytes() == before and link.is_symlink()
    from serkit.speechbrain.export import is_export

    # what export writes is recognised as its own (so a re-export replaces it); the upstream is not
    ours = tmp_path / "teacher.pt"
    torch.save({"model": {}, "extra_state": {"serkit_export": {"from": str(exp), "epoch": 1}}}, ours)
    assert is_export(ours) and not is_export(upstream) and not is_export(exp / "train_info.json")


def test_results_refuses_a_file_it_did_not_write_and_replaces_its_own(tmp_path, capsys):
    header = "| method | setting | protocol | upstream | selection | folds | UA | WA | WF1 |"
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(
        json.dumps(
            {
                "method": "m",
                "setting": "featex",
                "protocol": "p",
                "upstream": "u",
                "selection": "valid",
                "folds": ["fold1"],
                "summary": {k: {"mean": 0.5, "std": 0.0} for k in ("ua", "wa", "weighted_f1")},
            }
        )
    )
    paper = tmp_path / "paper_notes.md"
    paper.write_text("# my notes\n")
    assert main(["results", str(run), "--out", str(paper)]) == 2
    assert "paper_notes.md: exists and is not a table `serkit results` wrote" in capsys.readouterr().err
    assert paper.read_text() == "# my notes\n"
    out = tmp_path / "RESULTS.md"
    out.write_text(header + "\n| old |\n")
    assert main(["results", str(run), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == header and lines[2].startswith("| m | featex | p | u | valid | 1 |")
