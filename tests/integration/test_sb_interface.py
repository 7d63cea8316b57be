"""EmotionClassifier is a SpeechBrain Pretrained interface: from_hparams with SpeechBrain's arguments,
.mods/.hparams, encode_batch, and loadable with SpeechBrain's own foreign_class."""

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from tests.fixtures.sb import PITCH, SHARED_CONF, head_conf, write_tone  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def featex(sb_tiny):
    from serkit.speechbrain.train import main

    setup = sb_tiny
    out = setup["root"] / "exp" / "interface_linear" / "fold1"
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
                "2",
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


@pytest.fixture(scope="module")
def finetuned(sb_tiny):
    from serkit.speechbrain.train import main

    setup = sb_tiny
    out = setup["root"] / "exp" / "interface_flea" / "fold1"
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
    return setup, out


def _wav(tmp_path, pitch=PITCH["sad"], seconds=0.6, name="x.wav"):
    path = tmp_path / name
    write_tone(path, pitch, seconds, np.random.default_rng(3))
    return path


@pytest.mark.parametrize("which", ["featex", "finetuned"])
def test_is_a_speechbrain_pretrained_with_mods_hparams_and_encode_batch(which, request, tmp_path):
    from speechbrain.inference.interfaces import Pretrained

    from serkit.speechbrain.interface import EmotionClassifier

    setup, out = request.getfixturevalue(which)
    clf = EmotionClassifier.from_hparams(
        source=str(out), hparams_file="hyperparams.yaml", overrides={}, savedir=str(tmp_path / "unused")
    )
    assert isinstance(clf, Pretrained)
    assert set(clf.mods.keys()) == {"layer_sum", "head", "upstream"}
    assert clf.hparams.train_info["setting"] == ("finetune" if which == "finetuned" else "featex")
    wav = torch.from_numpy(__import__("soundfile").read(str(_wav(tmp_path)), dtype="float32")[0])
    batch = wav.unsqueeze(0)
    emb = clf.encode_batch(batch)
    head = clf.mods.head.head
    assert emb.shape == (1, 1, head.classifier.in_features)
    probs, score, index, labels = clf.classify_batch(batch)
    assert torch.allclose(torch.softmax(head.classifier(emb[:, 0]), -1), probs, atol=1e-6)
    assert labels == [clf.classes[int(index[0])]] and score[0] == probs[0].max()
    assert clf.classify_file(str(tmp_path / "x.wav"))[3] == labels


def test_overrides_reach_the_hyperparams(featex):
    from serkit.speechbrain.interface import EmotionClassifier

    _, out = featex
    clf = EmotionClassifier.from_hparams(source=str(out), overrides={"seed": 12345})
    assert clf.hparams.seed == 12345


@pytest.mark.parametrize("which", ["featex", "finetuned"])
def test_speechbrain_foreign_class_loads_a_fold_and_gives_the_same_probabilities(which, request, tmp_path):
    from speechbrain.inference.interfaces import foreign_class

    from serkit.speechbrain.interface import EmotionClassifier, write_foreign_files

    setup, out = request.getfixturevalue(which)
    write_foreign_files(out)
    ours = EmotionClassifier.from_hparams(source=str(out))
    theirs = foreign_class(
        source=str(out),
        hparams_file="inference.yaml",
        pymodule_file="custom.py",
        classname="EmotionClassifier",
        savedir=str(tmp_path / "sb"),
        run_opts={"device": "cpu"},
    )
    assert type(theirs).__name__ == "EmotionClassifier" and theirs.classes == ours.classes
    assert theirs.checkpoint.path == ours.checkpoint.path
    path = _wav(tmp_path)
    assert torch.equal(theirs.classify_file(str(path))[0], ours.classify_file(str(path))[0])


def test_foreign_files_never_overwrite_a_users_file(featex, tmp_path):
    from serkit.speechbrain.interface import write_foreign_files
    from serkit.utils import SerkitError

    _, out = featex
    copy = tmp_path / "fold1"
    shutil.copytree(out, copy)
    (copy / "custom.py").write_text("print('mine')\n", encoding="utf-8")
    with pytest.raises(SerkitError, match="custom.py: exists and was not written by serkit"):
        write_foreign_files(copy)
    assert (copy / "custom.py").read_text(encoding="utf-8") == "print('mine')\n"


def test_a_moved_upstream_is_named_and_upstream_overrides_it(featex, tmp_path, capsys):
    from serkit.cli import main as serkit

    setup, out = featex
    copy = tmp_path / "fold1"
    shutil.copytree(out, copy)
    info = json.loads((copy / "train_info.json").read_text(encoding="utf-8"))
    gone = str(tmp_path / "moved_away" / "tiny_hubert.pt")
    info["upstream"] = gone
    (copy / "train_info.json").write_text(json.dumps(info), encoding="utf-8")
    wav = _wav(tmp_path)
    assert serkit(["predict", "--exp", str(copy), str(wav), "--no-progress"]) != 0
    assert f"records the upstream {gone}: not found; pass --upstream" in capsys.readouterr().err
    assert (
        serkit(["predict", "--exp", str(copy), str(wav), "--no-progress", "--upstream", str(setup["ckpt"])])
        == 0
    )
    assert json.loads(capsys.readouterr().out.splitlines()[0])["file"] == str(wav)


def test_predict_skips_appledouble_files_in_a_folder(featex, tmp_path, capsys):
    from serkit.cli import main as serkit

    _, out = featex
    folder = tmp_path / "audio"
    folder.mkdir()
    _wav(folder, name="a.wav")
    (folder / "._a.wav").write_bytes(b"\x00\x05\x16\x07Mac OS X        ")  # AppleDouble metadata
    assert serkit(["predict", "--exp", str(out), str(folder), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["file"] for line in lines] == [str(folder / "a.wav")]
