"""The MFSN text path's greedy CTC decoding (serkit.speechbrain.mfsn.ctc_greedy_transcripts)."""

import numpy as np
import pytest

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from serkit.utils import SerkitError  # noqa: E402


def test_ctc_greedy_transcripts_merge_repeats_and_drop_blanks(tmp_path):
    import torch

    from serkit.speechbrain.mfsn import ctc_greedy_transcripts

    (tmp_path / "dict.ltr.txt").write_text("| 10\nH 5\nI 4\n")
    V = 7  # <s> <pad> </s> <unk> | H I
    inner = {"model": {"_name": "wav2vec2", "encoder_layers": 12}, "task": {"_name": "audio_pretraining"}}
    cfg = {
        "model": {"_name": "wav2vec_ctc", "w2v_args": inner},
        "task": {"_name": "audio_pretraining", "normalize": False},
    }  # post-LN: no final layer norm
    weights = {
        "w2v_encoder.proj.weight": torch.eye(V),
        "w2v_encoder.proj.bias": torch.zeros(V),
        "w2v_encoder.w2v_model.mask_emb": torch.zeros(V),
    }
    torch.save({"cfg": cfg, "model": weights}, tmp_path / "ctc.pt")
    # frames: H H <blank> I | | H I I  ->  "hi hi"
    ids = [5, 5, 0, 6, 4, 4, 5, 0, 6, 6]

    class Reader:
        def load(self, utt, layers):
            return np.eye(V, dtype=np.float32)[ids][None]

    out = ctc_greedy_transcripts(tmp_path / "ctc.pt", tmp_path / "dict.ltr.txt", Reader(), 12, ["u1"])
    assert out == {"u1": "hi hi"}
    (tmp_path / "bad.txt").write_text("| 1\n")
    with pytest.raises(SerkitError, match="dictionary"):
        ctc_greedy_transcripts(tmp_path / "ctc.pt", tmp_path / "bad.txt", Reader(), 12, ["u1"])
