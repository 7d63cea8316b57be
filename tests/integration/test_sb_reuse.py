"""Reuse in someone else's SpeechBrain recipe: a HyperPyYAML file that is not ours builds serkit lobes,
trains with its own optimiser and checkpoints/recovers with SpeechBrain's Checkpointer."""

import pytest
import torch

pytest.importorskip("speechbrain")

FOREIGN_YAML = """
seed: 7
__set_seed: !apply:torch.manual_seed [!ref <seed>]
output_folder: !PLACEHOLDER
save_folder: !ref <output_folder>/save
n_feats: 16
n_emotions: 3

compute_features: !new:serkit.speechbrain.lobes.SpecAugment
    time_mask_prob: 0.0
    channel_mask_prob: 0.0

embedding_model: !new:serkit.speechbrain.lobes.SERHead
    name: shiftcnn
    input_dim: !ref <n_feats>
    num_classes: !ref <n_emotions>
    pooling: attention

opt_class: !name:torch.optim.Adam
    lr: 0.01

epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter
    limit: 3

checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
    checkpoints_dir: !ref <save_folder>
    recoverables:
        embedding_model: !ref <embedding_model>
        counter: !ref <epoch_counter>
"""


@pytest.mark.slow
def test_foreign_hyperpyyaml_trains_checkpoints_and_recovers_a_serkit_head(tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    hp = load_hyperpyyaml(FOREIGN_YAML, {"output_folder": str(tmp_path)})
    head = hp["embedding_model"]
    optimizer = hp["opt_class"](head.parameters())
    x = torch.randn(6, 12, 16)
    lens = torch.tensor([1.0, 0.5, 0.75, 1.0, 0.25, 0.9])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    losses = []
    for _ in hp["epoch_counter"]:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(hp["compute_features"](x, lens), lens), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        hp["checkpointer"].save_and_keep_only(meta={"loss": loss.item()}, min_keys=["loss"])
    assert losses[-1] < losses[0]
    head.eval()
    with torch.no_grad():
        expected = head(x, lens)

    fresh = load_hyperpyyaml(FOREIGN_YAML, {"output_folder": str(tmp_path), "seed": 8})
    with torch.no_grad():
        assert not torch.allclose(fresh["embedding_model"].eval()(x, lens), expected)
    fresh["checkpointer"].recover_if_possible()
    assert fresh["epoch_counter"].current == 3
    with torch.no_grad():
        assert torch.allclose(fresh["embedding_model"].eval()(x, lens), expected, atol=1e-6)
