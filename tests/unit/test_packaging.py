"""The wheel: the shared configs and the recipes' own as package data (the recipes' own bytes), extras,
Python versions, and `serkit config` / `train NAME` / `config-dir` / `user-dir` run from an installed copy
outside the repo."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE_CONFIGS = sorted(REPO.glob("recipes/*/conf/**/*.yaml"))
SHARED_DIR = REPO / "plugins" / "serkit" / "conf"
SHARED_CONFIGS = sorted([*SHARED_DIR.glob("*.yaml"), *SHARED_DIR.glob("fairseq/*.yaml")])


def _in_wheel(config: Path) -> str:
    if config in SHARED_CONFIGS:
        return "serkit/conf/" + config.relative_to(SHARED_DIR).as_posix()
    recipe, rest = config.relative_to(REPO / "recipes").parts[0], config.relative_to(REPO / "recipes")
    return "serkit/conf/" + recipe + "/" + "/".join(rest.parts[2:])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps .` on a copy of the sources (the build writes build/ and *.egg-info)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "plugins", src / "plugins", symlinks=True, ignore=ignore)
    for conf in sorted(REPO.glob("recipes/*/conf")):
        shutil.copytree(conf, src / conf.relative_to(REPO), ignore=ignore)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(src),
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (whl,) = out.glob("serkit-*.whl")
    return whl


def test_wheel_ships_every_recipe_config_with_the_recipes_bytes(wheel):
    assert [c.relative_to(REPO).as_posix() for c in RECIPE_CONFIGS] == [
        "recipes/IEMOCAP/conf/mfsn_text.yaml",
        "recipes/IEMOCAP/conf/mfsn_text_mini.yaml",
    ]
    assert [c.relative_to(SHARED_DIR).as_posix() for c in SHARED_CONFIGS] == [
        "bas.yaml",
        "bas_search.yaml",
        "fairseq/cpt_hubert_base.yaml",
        "fairseq/cpt_hubert_tiny.yaml",
        "fairseq/hubert_tiny_iter1.yaml",
        "fairseq/ser_finetune.yaml",
        "flea.yaml",
        "mfsn.yaml",
        "mfsn_mini.yaml",
        "shiftser.yaml",
    ]
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for config in RECIPE_CONFIGS + SHARED_CONFIGS:
            assert z.read(_in_wheel(config)) == config.read_bytes(), config
        shipped = {n for n in names if n.startswith("serkit/conf/")}
        assert shipped == {_in_wheel(c) for c in RECIPE_CONFIGS + SHARED_CONFIGS}
        assert "serkit_fairseq/__init__.py" in names


def test_wheel_metadata_extras_and_python_versions(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(meta_name))
    assert meta["Requires-Python"] == ">=3.10"  # serkit.nn runs wherever torch does
    assert set(meta.get_all("Provides-Extra")) == {
        "speechbrain",
        "fairseq",
        "faiss",
        "faiss-gpu",
        "hf",
        "tensorboard",
        "all",
        "dev",
    }
    requires = meta.get_all("Requires-Dist")
    assert 'fairseq-fixed==0.12.3.1; python_version < "3.12" and extra == "fairseq"' in requires
    assert 'fairseq-fixed==0.12.3.1; python_version < "3.12" and extra == "all"' in requires
    assert 'faiss-gpu; extra == "faiss-gpu"' in requires
    assert 'faiss-cpu; extra == "faiss"' in requires
    assert 'speechbrain>=1.0; extra == "speechbrain"' in requires
    assert 'tensorboard; extra == "tensorboard"' in requires and 'tensorboard; extra == "all"' in requires
    assert not [
        r
        for r in requires
        if "extra" not in r
        and r.split(">")[0].split("=")[0]
        in ("speechbrain", "fairseq-fixed", "faiss-cpu", "faiss-gpu", "transformers", "tensorboard")
    ]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def installed_serkit(target: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    code = "import sys, serkit.cli; print(serkit.cli.__file__, file=sys.stderr); sys.exit(serkit.cli.main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.stderr.splitlines()[0] == str(target / "serkit" / "cli.py")  # the installed copy runs
    return proc


def test_installed_config_prints_and_copies(installed, tmp_path):
    shiftser = (REPO / "plugins" / "serkit" / "conf" / "shiftser.yaml").read_text(encoding="utf-8")
    proc = installed_serkit(installed, "config", "shiftser", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == shiftser

    proc = installed_serkit(installed, "config", "flea", "--out", "flea.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    flea = SHARED_DIR / "flea.yaml"
    assert (tmp_path / "flea.yaml").read_bytes() == flea.read_bytes()
    assert proc.stdout.strip() == str(tmp_path / "flea.yaml")

    (tmp_path / "mine.yaml").write_text("my own\n")
    proc = installed_serkit(installed, "config", "bas", "--out", "mine.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "mine.yaml: exists; choose another --out, or move it away first" in proc.stderr
    assert (tmp_path / "mine.yaml").read_text() == "my own\n"

    proc = installed_serkit(installed, "config", "shiftcnn", cwd=tmp_path)
    assert proc.returncode == 2 and "no config 'shiftcnn'; `serkit config` lists them" in proc.stderr

    proc = installed_serkit(installed, "config", cwd=tmp_path)
    listed = dict(line.split("\t") for line in proc.stdout.splitlines())
    ser_finetune = installed / "serkit" / "conf" / "fairseq" / "ser_finetune.yaml"
    assert listed["fairseq/ser_finetune"] == str(ser_finetune)
    assert listed["mfsn_mini"] == str(installed / "serkit" / "conf" / "mfsn_mini.yaml")
    assert len(listed) == len(RECIPE_CONFIGS) + len(SHARED_CONFIGS)


def test_installed_train_finds_a_shipped_config_by_name(installed, tmp_path):
    """`serkit train shiftser` reads the installed shiftser.yaml (here: it asks for the head first)."""
    proc = installed_serkit(
        installed,
        "train",
        "shiftser",
        "--fold-dir",
        "f",
        "--output-folder",
        "out",
        "--feats",
        "feats",
        cwd=tmp_path,
    )
    shiftser = installed / "serkit" / "conf" / "shiftser.yaml"
    assert proc.returncode == 2 and f"{shiftser}: give --method" in proc.stderr, proc.stderr
    proc = installed_serkit(
        installed,
        "train",
        "shiftcnn",
        "--fold-dir",
        "f",
        "--output-folder",
        "out",
        "--feats",
        "feats",
        cwd=tmp_path,
    )
    assert (
        proc.returncode == 2
        and "shiftcnn: no such hparams file, nor a config shipped with serkit" in proc.stderr
    ), proc.stderr
    assert not (tmp_path / "out").exists()


def test_installed_config_dir_and_user_dir(installed, tmp_path):
    proc = installed_serkit(installed, "config-dir", "fairseq", cwd=tmp_path)
    assert proc.stdout.strip() == str(installed / "serkit" / "conf" / "fairseq")
    proc = installed_serkit(installed, "user-dir", cwd=tmp_path)
    assert proc.stdout.strip() == str(installed / "serkit_fairseq")


def _make_n(*args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GPU", "MAKEFLAGS", "MAKELEVEL")}
    proc = subprocess.run(
        ["make", "-n", "-C", str(REPO), "install", *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_make_install_gpu_adds_faiss_gpu_only_when_asked():
    assert "bash tools/install_faiss_gpu.sh" in _make_n("GPU=1")
    assert not [line for line in _make_n("GPU=0") if "faiss" in line]
    lock = (REPO / "requirements" / "lock.txt").read_text().splitlines()
    (faiss_cpu,) = [line for line in lock if line.startswith("faiss-cpu==")]
    proc = subprocess.run(
        ["bash", str(REPO / "tools" / "install_faiss_gpu.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.split() == [
        str(REPO / ".venv" / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "-c",
        str(REPO / "requirements" / "lock.txt"),
        "faiss-gpu==" + faiss_cpu.split("==")[1],
    ]
