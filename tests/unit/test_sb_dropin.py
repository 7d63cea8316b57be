"""serkit heads as drop-in lobes of someone else's SpeechBrain recipe (SpeechBrain's IEMOCAP layout:
embedding_model -> classifier, sb.nnet.losses.nll_loss, classification_error)."""
import importlib.util
import json

import pytest
import torch

pytest.importorskip("speechbrain")

from tests.fixtures.sb import CLASSES, REPO, make_fold  # noqa: E402

EXAMPLE = REPO / "docs" / "examples" / "speechbrain_iemocap"


def test_classifier_lobe_gives_speechbrain_log_probs_and_a_perfect_prediction_scores_zero_error():
    from speechbrain.nnet.losses import classification_error, nll_loss

    from serkit.speechbrain.lobes import SERHead

    torch.manual_seed(0)
    head = SERHead("linear", input_dim=4, num_classes=4, output="log_probs").eval()
    with torch.no_grad():
        head.head.classifier.weight.copy_(10 * torch.eye(4))
        head.head.classifier.bias.zero_()
    x = torch.eye(4)[[2, 0, 3, 1]].unsqueeze(1).repeat(1, 3, 1)  # (B, T, C): class k lights feature k
    targets = torch.tensor([[2], [0], [3], [1]])  # (B, 1), as SpeechBrain's label pipeline batches them
    with torch.no_grad():
        out = head(x, torch.ones(4))
    assert out.shape == (4, 1, 4)
    assert torch.allclose(out.exp().sum(-1), torch.ones(4, 1))
    assert classification_error(out, targets).item() == 0.0
    wrong = torch.tensor([[2], [0], [3], [0]])
    assert classification_error(out, wrong).item() == 0.25
    expected = -torch.log_softmax(10 * torch.eye(4)[[2, 0, 3, 1]], -1)[torch.arange(4), [2, 0, 3, 1]].mean()
    assert nll_loss(out, targets).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name,kw", [("linear", {}), ("ffn", {"hidden": 6}), ("shiftcnn", {}),
                                     ("transformer", {"num_heads": 2}), ("lstm", {})])
def test_embedding_lobe_is_the_vector_the_heads_final_layer_classifies(name, kw):
    from serkit.speechbrain.lobes import SERHead

    torch.manual_seed(0)
    logits_head = SERHead(name, input_dim=8, num_classes=3, **kw).eval()
    emb_head = SERHead(name, input_dim=8, num_classes=3, output="embedding", **kw).eval()
    emb_head.load_state_dict(logits_head.state_dict())
    x, lens = torch.randn(2, 7, 8), torch.tensor([1.0, 0.6])
    with torch.no_grad():
        emb = emb_head(x, lens)
        logits = logits_head(x, lens)
    assert emb.dim() == 3 and emb.shape[:2] == (2, 1)
    assert torch.allclose(logits_head.head.classifier(emb[:, 0]), logits, atol=1e-6)


def test_an_unknown_output_is_refused_by_name():
    from serkit.speechbrain.lobes import SERHead

    with pytest.raises(ValueError, match="output='probs'.*logits, log_probs, embedding"):
        SERHead("linear", input_dim=4, num_classes=2, output="probs")


def _load_example():
    spec = importlib.util.spec_from_file_location("sb_iemocap_example_train", EXAMPLE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_speechbrain_style_train_py_trains_serkit_heads_on_a_serkit_fold(tmp_path):
    """SpeechBrain's recipe layout on serkit's fold JSONs (--skip_prep): the classification error that
    SpeechBrain's own classification_error reports on the test set is 0 on this separable set and equals
    the one counted by hand from the trained modules."""
    import speechbrain as sb

    fold = make_fold(tmp_path / "data", per_class=(6, 2, 3))
    train = _load_example()
    out = tmp_path / "exp"
    brain, datasets = train.main([str(EXAMPLE / "hparams" / "train.yaml"), "--fold_dir", str(fold),
                                  "--skip_prep", "True", "--output_folder", str(out),
                                  "--number_of_epochs", "15", "--lr", "0.01", "--noprogressbar"])
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
