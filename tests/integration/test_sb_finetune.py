"""Finetuning (FLEA yaml) through SERBrain: the upstream's transformer learns, its CNN stays frozen."""

import json

import pytest
import torch

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from tests.fixtures.sb import SHARED_CONF, read_predictions, split_ids  # noqa: E402

pytestmark = pytest.mark.slow


def test_flea_finetune_trains_transformer_keeps_cnn_and_predict_restores_it(sb_tiny, tmp_path):
    from serkit.speechbrain.interface import EmotionClassifier
    from serkit.speechbrain.lobes import FairseqUpstream
    from serkit.speechbrain.train import main

    setup = sb_tiny
    out = tmp_path / "flea" / "fold1"
    assert (
        main(
            [
                str(SHARED_CONF / "flea.yaml"),
                "--fold-dir",
                str(setup["fold"]),
                "--output-folder",
                str(out),
                "--upstream",
                str(setup["ckpt"]),
                "--number_of_epochs",
                "1",
                "--batch_size",
                "4",
                "--lr",
                "0.001",
                "--noprogressbar",
            ]
        )
        == 0
    )
    info = json.loads((out / "train_info.json").read_text())
    assert info["setting"] == "finetune" and info["selection"] == "valid_test_mean"
    assert info["upstream_layers"] == [2] and info["feats"] is None
    _, rows = read_predictions(out / "predictions" / "test.epoch001.tsv")
    assert [r[0] for r in rows] == split_ids(setup["fold"], "test")

    pretrained = FairseqUpstream(str(setup["ckpt"]))
    clf = EmotionClassifier.from_hparams(source=str(out))
    tuned = clf.finetuned_upstream
    before, after = dict(pretrained.model.named_parameters()), dict(tuned.model.named_parameters())
    cnn = [n for n in before if n.startswith("feature_extractor.")]
    transformer = [n for n in before if n.startswith("encoder.layers.")]
    assert cnn and transformer
    assert all(torch.equal(before[n], after[n]) for n in cnn)
    assert any(not torch.equal(before[n], after[n]) for n in transformer)
    # the restored model reproduces the training run's test predictions from raw audio
    utt, _, pred, *probs = rows[0]
    out_prob, _, _, text = clf.classify_file(setup["root"] / "wavs" / f"{utt}.wav")
    assert text[0] == pred
    assert torch.allclose(out_prob[0], torch.tensor([float(p) for p in probs]), atol=1e-3)


def test_finetune_lobe_gradients_reach_the_transformer_not_the_cnn(sb_tiny):
    from serkit.speechbrain.lobes import FairseqUpstream

    setup = sb_tiny
    lobe = FairseqUpstream(str(setup["ckpt"]), layers="all").train()
    wav = torch.randn(2, 8000)
    layers, lens = lobe(wav, torch.tensor([1.0, 0.6]))
    assert layers.shape[:2] == (2, 3) and lens.tolist()[0] == 1.0
    layers.sum().backward()
    grads = {n: p.grad for n, p in lobe.model.named_parameters()}
    assert all(g is None for n, g in grads.items() if n.startswith("feature_extractor."))
    transformer = [g for n, g in grads.items() if n.startswith("encoder.layers.")]
    assert any(g is not None and g.abs().sum() > 0 for g in transformer)


def test_exported_teacher_is_a_fairseq_checkpoint_with_the_finetuned_weights(sb_tiny, tmp_path):
    from serkit.speechbrain.export import export_upstream
    from serkit.speechbrain.interface import EmotionClassifier
    from serkit.speechbrain.train import main
    from serkit.upstream import load_upstream
    from serkit.utils import SerkitError

    setup = sb_tiny
    out = tmp_path / "teacher" / "fold1"
    assert (
        main(
            [
                str(SHARED_CONF / "flea.yaml"),
                "--fold-dir",
                str(setup["fold"]),
                "--output-folder",
                str(out),
                "--upstream",
                str(setup["ckpt"]),
                "--number_of_epochs",
                "1",
                "--batch_size",
                "4",
                "--lr",
                "0.001",
                "--noprogressbar",
            ]
        )
        == 0
    )
    path = export_upstream(out, tmp_path / "teacher.pt")
    exported = load_upstream(str(path))
    tuned = EmotionClassifier.from_hparams(source=str(out)).finetuned_upstream.model.state_dict()
    original = load_upstream(str(setup["ckpt"])).model.state_dict()
    got = exported.model.state_dict()
    assert set(got) == set(original)
    assert all(torch.equal(got[k], tuned[k]) for k in got)
    assert any(not torch.equal(got[k], original[k]) for k in got if k.startswith("encoder.layers."))
    # a featex run cannot be exported
    (tmp_path / "featex").mkdir()
    (tmp_path / "featex" / "train_info.json").write_text(json.dumps({"setting": "featex"}))
    with pytest.raises(SerkitError, match="only a finetuned upstream"):
        export_upstream(tmp_path / "featex", tmp_path / "x.pt")
