"""Inference audio is resampled by the resampler that converted the training data (PyAV/FFmpeg)."""

import numpy as np
import pytest

pytest.importorskip("speechbrain")
pytest.importorskip("av")


@pytest.mark.parametrize("rate,channels", [(44100, 1), (22050, 2), (8000, 1)])
def test_a_wav_resampled_for_inference_is_the_one_prepared_for_training(tmp_path, rate, channels):
    import soundfile as sf

    from serkit.data.audio import convert_wav, read_audio, resample, to_mono
    from serkit.speechbrain.dataio import load_wav

    rng = np.random.default_rng(0)
    t = np.arange(int(0.7 * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.05 * rng.standard_normal(t.size)
    src = tmp_path / "src.wav"
    sf.write(str(src), np.stack([x] * channels, axis=1).astype(np.float32), rate, subtype="FLOAT")
    data, sr = read_audio(src)
    training = resample(to_mono(data), sr, 16000)  # what convert_wav writes (before 16-bit PCM)
    inference = load_wav(src).numpy()
    assert inference.dtype == np.float32 and np.array_equal(inference, training)
    # and the prepared wav differs from it by the 16-bit quantisation only
    dst = tmp_path / "dst.wav"
    convert_wav(src, dst)
    prepared = load_wav(dst).numpy()
    assert prepared.shape == inference.shape
    assert np.abs(prepared - inference).max() <= 1 / 32767
