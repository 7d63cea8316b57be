"""serkit predict and EmotionClassifier: a trained fold classifies raw audio; bad input gets a clear
message."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from tests.fixtures.sb import CLASSES, PITCH, head_conf, read_predictions, write_tone  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(sb_tiny):
    from serkit.speechbrain.train import main

    setup = sb_tiny
    out = setup["root"] / "exp" / "predict_linear" / "fold1"
    assert (
        main(
            [
                *head_conf("linear"),
                "--fold-dir",
                str(setup["fold"]),
                "--output-folder",
                str(out),
                "--feats",
                str(setup["feats"]),
                "--number_of_epochs",
                "4",
                "--lr",
                "0.05",
                "--warmup_epochs",
                "0",
                "--batch_size",
                "8",
                "--channel_mask_width",
                "8",
                "--noprogressbar",
            ]
        )
        == 0
    )
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
    assert (
        serkit(
            [
                "predict",
                "--exp",
                str(out),
                str(wavs / "test_hap_00.wav"),
                str(folder),
                "--batch-size",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(wavs / "test_hap_00.wav")] + [
        str(folder / f"{c}.wav") for c in sorted(CLASSES)
    ]
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
    rc = serkit(
        [
            "predict",
            "--exp",
            str(out),
            str(tmp_path / "missing.wav"),
            str(empty),
            str(at8k),
            str(stereo),
            str(tiny),
        ]
    )
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


def _strict_json(line):
    """json.loads that refuses NaN/Infinity (what other JSON parsers do)."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_audio_is_refused_by_name_and_the_output_is_json(trained, tmp_path, capsys, bad):
    import soundfile as sf

    from serkit.cli import main as serkit

    setup, out = trained
    x = 0.1 * np.sin(np.linspace(0, 400, 9600)).astype(np.float32)
    x[100] = bad
    broken = tmp_path / "broken.wav"
    sf.write(str(broken), x, 16000, subtype="FLOAT")
    good = setup["root"] / "wavs" / "test_hap_00.wav"
    assert serkit(["predict", "--exp", str(out), str(broken), str(good)]) == 2
    captured = capsys.readouterr()  # errors are logged on stderr
    printed = [_strict_json(line) for line in captured.out.splitlines()]
    assert [p["file"] for p in printed] == [str(good)]
    assert (
        f"{broken}: non-finite samples (NaN or Inf) at 1 time step(s), the first at 0.006 s" in captured.err
    )


def test_absurd_sample_rates_and_durations_are_refused_before_reading(trained, tmp_path, capsys):
    import soundfile as sf

    from serkit.cli import main as serkit
    from serkit.speechbrain.interface import EmotionClassifier
    from serkit.utils import SerkitError

    setup, out = trained
    rng = np.random.default_rng(3)
    one_hz = tmp_path / "one_hz.wav"  # 4000 samples: 8 KB that would resample to 64M samples
    sf.write(str(one_hz), (0.1 * rng.standard_normal(4000)).astype(np.float32), 1, subtype="PCM_16")
    fast = tmp_path / "fast.wav"
    write_tone(fast, PITCH["neu"], 0.01, rng, sample_rate=768000)
    long = tmp_path / "long.wav"
    write_tone(long, PITCH["neu"], 2.5, rng)
    good = setup["root"] / "wavs" / "test_hap_00.wav"
    assert (
        serkit(
            [
                "predict",
                "--exp",
                str(out),
                str(one_hz),
                str(fast),
                str(long),
                str(good),
                "--max-duration",
                "2",
            ]
        )
        == 2
    )
    captured = capsys.readouterr()
    assert [_strict_json(line)["file"] for line in captured.out.splitlines()] == [str(good)]
    assert f"{one_hz}: sample rate 1 Hz is outside 1000..384000 Hz" in captured.err
    assert f"{fast}: sample rate 768000 Hz is outside 1000..384000 Hz" in captured.err
    assert f"{long}: 2.5 s of audio is longer than --max-duration 2 s" in captured.err
    assert "3 of 4 file(s) could not be classified" in captured.err
    with pytest.raises(SerkitError, match="longer than --max-duration 2 s"):
        EmotionClassifier.from_hparams(source=str(out)).classify_file(long, max_duration=2)


def test_predict_help_says_an_exp_folder_is_code(capsys):
    from serkit.cli import main as serkit

    with pytest.raises(SystemExit):
        serkit(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "trusted sources only" in text and "HyperPyYAML" in text and "weights_only" in text
    assert "--max-duration" in text


@pytest.mark.parametrize("force", [None, "1"], ids=["unset", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"])
def test_a_pickle_in_a_head_checkpoint_is_refused_not_run(trained, tmp_path, monkeypatch, capsys, force):
    import os
    import shutil

    from serkit.cli import main as serkit

    setup, out = trained
    exp = tmp_path / "exp"
    shutil.copytree(out, exp)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    for head in exp.glob("save/CKPT+*/head.ckpt"):
        torch.save({"weight": Payload()}, head)
    if force is None:
        monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    else:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", force)
    assert serkit(["predict", "--exp", str(exp), str(setup["root"] / "wavs" / "test_hap_00.wav")]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "refusing to load this checkpoint" in err and "trusted sources only" in err
    assert "GLOBAL posix.mkdir" in err and str(exp / "save" / "CKPT+") in err


def test_predict_works_with_the_unpickling_override_unset(trained, monkeypatch, capsys):
    from serkit.cli import main as serkit

    setup, out = trained
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    assert serkit(["predict", "--exp", str(out), str(setup["root"] / "wavs" / "test_hap_00.wav")]) == 0
    assert _strict_json(capsys.readouterr().out.splitlines()[0])["label"] in CLASSES


def test_every_file_of_a_training_checkpoint_loads_weights_only(trained):
    setup, out = trained
    files = sorted(out.glob("save/CKPT+*/*.ckpt"))
    names = {f.name for f in files}
    assert {"head.ckpt", "layer_sum.ckpt", "optimizer.ckpt", "rng.ckpt"} <= names
    for f in files:
        if f.name in ("counter.ckpt", "brain.ckpt") or f.name.startswith("dataloader"):
            continue  # text files
        torch.load(f, map_location="cpu", weights_only=True)


def test_checkpoint_last_is_the_last_finished_epoch_not_a_killed_runs_intra_epoch_one(trained, tmp_path):
    import re
    import shutil
    import time

    from serkit.speechbrain.interface import EmotionClassifier

    _, out = trained
    exp = tmp_path / "exp"
    shutil.copytree(out, exp)
    last = EmotionClassifier.from_hparams(source=str(exp), checkpoint="last").checkpoint
    # what `--ckpt_interval_steps` leaves when a run is killed mid-epoch: a newer, intra-epoch checkpoint
    intra = exp / "save" / "CKPT+intra-epoch"
    shutil.copytree(last.path, intra)
    meta = (intra / "CKPT.yaml").read_text()
    meta = re.sub(r"end-of-epoch: true", "end-of-epoch: false", meta)
    meta = re.sub(r"unixtime: \S+", f"unixtime: {time.time() + 60}", meta)
    (intra / "CKPT.yaml").write_text(meta + "brain_intra_epoch_ckpt: true\n")
    loaded = EmotionClassifier.from_hparams(source=str(exp), checkpoint="last").checkpoint
    assert loaded.path == last.path and loaded.meta["end-of-epoch"] is True
