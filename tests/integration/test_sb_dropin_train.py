"""docs/examples/speechbrain_iemocap/train.py: SpeechBrain's IEMOCAP recipe layout with serkit heads as
its lobes, trained on a serkit fold."""

import importlib.util
import json

import pytest
import torch

pytest.importorskip("speechbrain")

from tests.fixtures.sb import CLASSES, REPO, make_fold  # noqa: E402

EXAMPLE = REPO / "docs" / "examples" / "speechbrain_iemocap"


def _load_example():
    spec = importlib.util.spec_from_file_location("sb_iemocap_example_train", EXAMPLE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speechbrain_style_train_py_trains_serkit_heads_on_a_serkit_fold(tmp_path):
    """SpeechBrain's recipe layout on serkit's fold JSONs (--skip_prep): the classification error that
    SpeechBrain's own classification_error reports on the test set is 0 on this separable set and equals
    the one counted by hand from the trained modules."""
    import speechbrain as sb

    fold = make_fold(tmp_path / "data", per_class=(6, 2, 3))
    train = _load_example()
    out = tmp_path / "exp"
    brain, datasets = train.main(
        [
            str(EXAMPLE / "hparams" / "train.yaml"),
            "--fold_dir",
            str(fold),
            "--skip_prep",
            "True",
            "--output_folder",
            str(out),
            "--number_of_epochs",
            "15",
            "--lr",
            "0.01",
            "--noprogressbar",
        ]
    )
    reported = brain.stage_stats["error_rate"]
    # by hand: each test utterance alone, argmax of the classifier's log-probabilities vs its label
    brain.on_evaluate_start(min_key="error_rate")
    brain.modules.eval()
    labels = json.loads((fold / "test.json").read_text(encoding="utf-8"))
    wrong = 0
    with torch.no_grad():
        for item in labels.values():
            wav = sb.dataio.dataio.read_audio(item["wav"]).unsqueeze(0)
            lens = torch.ones(1)
            feats = brain.modules.mean_var_norm(brain.modules.compute_features(wav), lens)
            log_probs = brain.modules.classifier(brain.modules.embedding_model(feats, lens))
            assert log_probs.shape == (1, 1, len(CLASSES))
            predicted = brain.label_encoder.decode_ndim(log_probs.argmax(-1))[0][0]
            wrong += predicted != item["emo"]
    assert len(labels) == 3 * len(CLASSES)
    assert reported == pytest.approx(wrong / len(labels))
    assert reported == 0.0
    assert "test error_rate: 0.00" in (out / "train_log.txt").read_text(encoding="utf-8")
