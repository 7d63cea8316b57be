"""`serkit train` with a ShiftSER yaml: the finetune optimiser (paper: Adam; featex: ours), the official
weight-decay groups, and max_duration reaching the data, end to end on the tiny fold."""

import glob
import json

import pytest
import torch

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from tests.fixtures.sb import head_conf, read_predictions  # noqa: E402

pytestmark = pytest.mark.slow

FAST = ["--number_of_epochs", "1", "--batch_size", "8", "--channel_mask_width", "8", "--noprogressbar"]


def train(conf, setup, out, *extra):
    from serkit.speechbrain.train import main

    return main(
        [*head_conf(conf), "--fold-dir", str(setup["fold"]), "--output-folder", str(out), *extra, *FAST]
    )


def saved_optimizer(out):
    (ckpt,) = sorted(glob.glob(str(out / "save" / "CKPT+*")))[-1:]
    return torch.load(f"{ckpt}/optimizer.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.parametrize("choice", ["paper", "featex"])
def test_finetune_optimizer(choice, sb_tiny, tmp_path):
    setup = sb_tiny
    out = tmp_path / choice
    assert (
        train("shiftcnn", setup, out, "--upstream", str(setup["ckpt"]), "--finetune_optimizer", choice) == 0
    )
    info = json.loads((out / "train_info.json").read_text())
    assert info["setting"] == "finetune" and info["finetune_optimizer"] == choice
    groups = saved_optimizer(out)["param_groups"]
    assert [g["weight_decay"] for g in groups] == ([0.0, 0.0] if choice == "paper" else [0.05, 0.0])
    assert all(g["decoupled_weight_decay"] is (choice == "featex") for g in groups)  # Adam vs AdamW
    # 16 training utterances, batch 8: the last of 2 steps at progress 0.5 epoch of the 5 warm-up epochs
    lr = 5e-4 * 0.5 / 5 if choice == "paper" else 5e-7 + (5e-4 - 5e-7) * 0.5 / 5
    assert [g["lr"] for g in groups] == pytest.approx([lr, lr], rel=1e-9)


def test_featex_groups_and_max_duration(sb_tiny, tmp_path):
    setup = sb_tiny
    out = tmp_path / "crop"
    assert (
        train(
            "shiftformer",
            setup,
            out,
            "--feats",
            str(setup["feats"]),
            "--max_duration",
            "0.3",
            "--pad_to_max",
            "True",
        )
        == 0
    )
    info = json.loads((out / "train_info.json").read_text())
    assert (info["max_duration"], info["crop"], info["pad_to_max"]) == (0.3, "start", True)
    groups = saved_optimizer(out)["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    # every test utterance is longer than 0.3 s: cut to the same 14 frames, the same logits as the model
    # sees for the first 14 frames
    from serkit.speechbrain.interface import EmotionClassifier
    from serkit.upstream.features import FeatureReader

    clf = EmotionClassifier.from_hparams(source=str(out), checkpoint="last")
    reader = FeatureReader(setup["feats"])
    _, rows = read_predictions(out / "predictions" / "test.epoch001.tsv")
    for utt, _, _, *probs in rows:
        feats = torch.from_numpy(reader.load(utt)).float().transpose(0, 1)[:14]  # (T, L, C) -> 14 frames
        with torch.no_grad():
            logits = clf.head(clf.layer_sum(feats.transpose(0, 1)[None]), None)
        expected = torch.tensor([float(p) for p in probs])
        assert torch.allclose(torch.softmax(logits, -1)[0], expected, atol=1e-4)
