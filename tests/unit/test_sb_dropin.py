"""serkit heads as drop-in lobes of someone else's SpeechBrain recipe (SpeechBrain's IEMOCAP layout:
embedding_model -> classifier, sb.nnet.losses.nll_loss, classification_error)."""

import pytest
import torch

pytest.importorskip("speechbrain")


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


@pytest.mark.parametrize(
    "name,kw",
    [
        ("linear", {}),
        ("ffn", {"hidden": 6}),
        ("shiftcnn", {}),
        ("transformer", {"num_heads": 2}),
        ("lstm", {}),
    ],
)
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
