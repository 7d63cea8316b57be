"""serkit predict and EmotionClassifier: a trained fold classifies raw audio; bad input gets a clear
message."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from test_sb_helpers import CLASSES, CONF, PITCH, read_predictions, tiny_setup, write_tone  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from serkit.speechbrain.train import main

    setup = tiny_setup(tmp_path_factory)
    out = setup["root"] / "exp" / "predict_linear" / "fold1"
    assert main([str(CONF / "linear.yaml"), "--fold-dir", str(setup["fold"]), "--output-folder", str(out),
                 "--feats", str(setup["feats"]), "--number_of_epochs", "4", "--lr", "0.05", "--warmup_epochs",
                 "0", "--batch_size", "8", "--channel_mask_width", "8", "--noprogressbar"]) == 0
    return setup, out


def test_interface_on_raw_audio_matches_the_training_run_on_cached_features(trained):
    from serkit.speechbrain.interface import EmotionClassifier

    setup, out = trained
    clf = EmotionClassifier.from_hparams(source=str(out))
    best = clf.checkpoint.meta["epoch"]
    _, rows = read_predictions(out / "predictions" / f"test.epoch{best:03d}.tsv")
    for utt, _, pred, *probs in rows[:4]:
        out_prob, score, index, text = clf.classify_file(setup["root"] / "wavs" / f"{utt}.wav")
        assert text[0] == pred
        # same model on features recomputed from the wav (the cache was float32): same probabilities
        assert np.allclose(out_prob[0].numpy(), [float(p) for p in probs], atol=1e-3)


def test_classify_batch_is_padding_invariant(trained):
    from serkit.speechbrain.dataio import load_wav
    from serkit.speechbrain.interface import EmotionClassifier

    setup, out = trained
    clf = EmotionClassifier.from_hparams(source=str(out))
    a, b = (load_wav(setup["root"] / "wavs" / f"test_{c}_00.wav") for c in ("ang", "sad"))
    n = max(a.numel(), b.numel())
    batch = torch.zeros(2, n)
    batch[0, : a.numel()], batch[1, : b.numel()] = a, b
    together, _, _, _ = clf.classify_batch(batch, torch.tensor([a.numel() / n, b.numel() / n]))
    alone_a = clf.classify_batch(a.unsqueeze(0))[0]
    alone_b = clf.classify_batch(b.unsqueeze(0))[0]
    assert torch.allclose(together[0], alone_a[0], atol=1e-4)
    assert torch.allclose(together[1], alone_b[0], atol=1e-4)


def test_predict_cli_prints_one_json_line_per_file_and_batches_folders(trained, tmp_path, capsys):
    from serkit.cli import main as serkit

    setup, out = trained
    wavs = setup["root"] / "wavs"
    folder = tmp_path / "folder"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, c in enumerate(CLASSES):
        write_tone(folder / f"{c}.wav", PITCH[c], 0.5 + 0.1 * i, rng)
    assert serkit(["predict", "--exp", str(out), str(wavs / "test_hap_00.wav"), str(folder),
                   "--batch-size", "3", "--no-progress"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(wavs / "test_hap_00.wav")] + \
        [str(folder / f"{c}.wav") for c in sorted(CLASSES)]
    for line in lines:
        assert set(line["probs"]) == set(CLASSES) and abs(sum(line["probs"].values()) - 1) < 1e-3
        assert line["label"] == max(line["probs"], key=line["probs"].get)


def test_bad_input_is_named_and_the_good_files_still_get_results(trained, tmp_path, capsys, caplog):
    import soundfile as sf

    from serkit.cli import main as serkit
    from serkit.speechbrain.interface import EmotionClassifier
    from serkit.utils import SerkitError

    setup, out = trained
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    rng = np.random.default_rng(2)
    at8k = tmp_path / "at8k.wav"
    write_tone(at8k, PITCH["neu"], 0.6, rng, sample_rate=8000)
    stereo = tmp_path / "stereo.wav"
    write_tone(stereo, PITCH["neu"], 0.6, rng, channels=2)
    tiny = tmp_path / "tiny.wav"
    write_tone(tiny, PITCH["neu"], 0.01, rng)
    rc = serkit(["predict", "--exp", str(out), str(tmp_path / "missing.wav"), str(empty), str(at8k),
                 str(stereo), str(tiny)])
    assert rc == 2
    printed = [json.loads(line)["file"] for line in capsys.readouterr().out.splitlines()]
    assert printed == [str(at8k), str(stereo)]  # resampled / downmixed, not refused
    clf = EmotionClassifier.from_hparams(source=str(out))
    with pytest.raises(SerkitError, match="missing.wav: file not found"):
        clf.classify_file(tmp_path / "missing.wav")
    with pytest.raises(SerkitError, match="empty audio"):
        clf.classify_file(empty)
    with pytest.raises(SerkitError, match="shorter than the upstream's receptive field"):
        clf.classify_file(tiny)
    with pytest.raises(SerkitError, match="pass one fold"):
        EmotionClassifier.from_hparams(source=str(out.parent))
