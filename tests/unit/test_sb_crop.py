"""max_duration / crop / pad_to_max in the SpeechBrain data pipeline, on cached features and on waveforms."""

import pytest
import torch

pytest.importorskip("speechbrain")

from serkit.speechbrain.dataio import crop_to, duration_limit, fold_datasets  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402
from tests.fixtures.sb import make_fold  # noqa: E402


def items(ds, key):
    return {item["id"]: item[key] for item in ds}


def test_crop_to_start_random_and_pad():
    x = torch.arange(10)
    assert crop_to(x, 4).tolist() == [0, 1, 2, 3]
    assert crop_to(x, 20).tolist() == list(range(10))  # shorter: untouched without pad
    assert crop_to(x[:3], 5, pad=True).tolist() == [0, 1, 2, 0, 0]
    torch.manual_seed(0)
    starts = {int(crop_to(x, 4, crop="random")[0]) for _ in range(200)}
    assert starts == set(range(7))  # every window of 4 in 10 is drawn, no other
    for _ in range(20):
        w = crop_to(x, 4, crop="random")
        assert w.tolist() == list(range(int(w[0]), int(w[0]) + 4))
    feats = torch.randn(9, 3, 2)  # (T, L, C): time is the first axis
    assert torch.equal(crop_to(feats, 5), feats[:5])
    padded = crop_to(feats, 12, pad=True)
    assert padded.shape == (12, 3, 2) and torch.equal(padded[:9], feats) and not padded[9:].any()


def test_duration_limit_in_samples_and_frames_and_bad_options():
    assert duration_limit(7.5) == 120000
    assert duration_limit(None) is None

    class Reader:  # only the frame rate is read
        frame_rate = 50

    assert duration_limit(7.5, reader=Reader()) == 374  # the official code's 374 frames for 7.5 s
    assert duration_limit(6, reader=Reader()) == 299
    with pytest.raises(SerkitError, match="crop 'middle'"):
        duration_limit(7.5, crop="middle")
    with pytest.raises(SerkitError, match="pad_to_max needs max_duration"):
        duration_limit(None, pad_to_max=True)
    for bad in (0, -1, "long"):
        with pytest.raises(SerkitError, match="max_duration must be a positive number"):
            duration_limit(bad)


def test_waveforms_cropped_at_the_start_everywhere_and_padded(tmp_path):
    fold = make_fold(tmp_path)
    full, _ = fold_datasets(fold)
    limit = 0.5
    n = int(limit * 16000)
    cut, _ = fold_datasets(fold, max_duration=limit)
    padded, _ = fold_datasets(fold, max_duration=limit, pad_to_max=True)
    for split in ("train", "valid", "test"):
        whole, short, pad = items(full[split], "sig"), items(cut[split], "sig"), items(padded[split], "sig")
        assert any(len(w) > n for w in whole.values()) and any(len(w) < n for w in whole.values())
        for utt, w in whole.items():
            assert torch.equal(short[utt], w[:n])
            assert len(pad[utt]) == n and torch.equal(pad[utt][: min(n, len(w))], w[:n])
            assert not pad[utt][len(w) :].any()


def test_random_crop_in_training_only(tmp_path):
    fold = make_fold(tmp_path)
    full, _ = fold_datasets(fold)
    rand, _ = fold_datasets(fold, max_duration=0.3, crop="random")
    n = int(0.3 * 16000)
    torch.manual_seed(0)
    whole = items(full["train"], "sig")
    starts = set()
    for _ in range(3):
        for utt, w in items(rand["train"], "sig").items():
            assert len(w) == n
            # the window is a contiguous piece of the utterance
            start = next(s for s in range(len(whole[utt]) - n + 1) if torch.equal(whole[utt][s : s + n], w))
            starts.add(start)
    assert len(starts) > 3 and starts != {0}
    for split in ("valid", "test"):  # evaluation: always the first max_duration seconds
        whole = items(full[split], "sig")
        for utt, w in items(rand[split], "sig").items():
            assert torch.equal(w, whole[utt][:n])


def test_cached_features_cut_in_frames_and_layers_selected(sb_tiny):
    setup = sb_tiny
    from serkit.upstream.features import FeatureReader

    reader = FeatureReader(setup["feats"])
    frames = duration_limit(0.6, reader=reader)
    assert frames == 29  # (9600 - 400) // 320 + 1
    full, _ = fold_datasets(setup["fold"], reader)
    cut, _ = fold_datasets(setup["fold"], reader, max_duration=0.6, pad_to_max=True, feature_layers=[2])
    lengths = []
    for split in ("train", "valid", "test"):
        whole, short = items(full[split], "feats"), items(cut[split], "feats")
        lengths += [f.shape[0] for f in whole.values()]
        for utt, f in whole.items():
            g = short[utt]
            assert g.shape == (frames, 1, f.shape[2])
            keep = min(frames, f.shape[0])
            assert torch.equal(g[:keep, 0], f[:keep, 2]) and not g[keep:].any()
    assert min(lengths) < frames < max(lengths)  # both cases seen
