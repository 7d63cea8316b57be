"""serkit: speech emotion recognition on self-supervised speech models (fairseq + SpeechBrain)."""

__version__ = "0.1.0"
