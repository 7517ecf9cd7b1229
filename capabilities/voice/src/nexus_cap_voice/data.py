"""Spoken-word data: mono WAV utterances named `{label}_{speaker}_{take}.wav` (the Free Spoken
Digit Dataset layout), and a seeded synthesizer of speech-like words in numpy.

WAV files are read with the standard library; other formats go through ffmpeg when it is
installed. Every utterance is returned as float32 samples in [-1, 1] at `SAMPLE_RATE`.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nexus_kernel.kit.datasets import DatasetError
from nexus_kernel.run.fsio import atomic_write_bytes

SAMPLE_RATE = 8000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
_NAME_PATTERN = re.compile(r"^(?P<label>[^_]+)_(?P<speaker>[^_]+)_(?P<take>\d+)$")
TEST_TAKES = range(0, 5)
"""The Free Spoken Digit Dataset's test split: takes 0-4 of every speaker."""


@dataclass(frozen=True)
class Utterance:
    label: str
    speaker: str
    take: int
    samples: np.ndarray

    @property
    def file_name(self) -> str:
        return f"{self.label}_{self.speaker}_{self.take}.wav"


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling by zero-padding or truncating the spectrum."""
    if source_rate == target_rate:
        return samples.astype(np.float32)
    count = max(1, round(len(samples) * target_rate / source_rate))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    kept = np.zeros(count // 2 + 1, dtype=complex)
    width = min(len(kept), len(spectrum))
    kept[:width] = spectrum[:width]
    return (np.fft.irfft(kept, n=count) * count / len(samples)).astype(np.float32)


def _require_file(path: Path) -> None:
    """A `DatasetError` unless `path` is an existing file (not a folder)."""
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, not an audio file")
    if not path.exists():
        raise DatasetError(f"{path}: audio file does not exist")


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Samples of a PCM WAV file as float32 in [-1, 1] (channels averaged) and its rate.

    A missing file, a folder, a file with no samples and a truncated file (fewer sample bytes
    than its header promises) are each a `DatasetError` naming the file.
    """
    _require_file(path)
    try:
        with wave.open(str(path), "rb") as reader:
            width, channels, rate = reader.getsampwidth(), reader.getnchannels(), reader.getframerate()
            promised = reader.getnframes() * width * channels
            raw = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise DatasetError(f"{path}: not a PCM WAV file ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    # wave reads a cut file without complaint: readframes just returns fewer bytes.
    if len(raw) < promised:
        raise DatasetError(f"{path}: truncated WAV: the header promises {promised} bytes of samples, "
                           f"the file holds {len(raw)}")
    if not raw:
        raise DatasetError(f"{path}: the WAV file holds no samples")
    if width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        samples = np.frombuffer(raw, dtype).astype(np.float32) / float(np.iinfo(dtype).max)
    elif width == 3:
        bytes_ = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        values = bytes_[:, 0] | (bytes_[:, 1] << 8) | (bytes_[:, 2] << 16)
        samples = (np.where(values >= 2**23, values - 2**24, values) / 2**23).astype(np.float32)
    else:
        raise DatasetError(f"{path}: unsupported WAV sample width {width} bytes")
    return samples.reshape(-1, channels).mean(axis=1), rate


def read_audio(path: Path) -> np.ndarray:
    """Mono float32 samples at `SAMPLE_RATE` from a WAV file, or any format ffmpeg reads."""
    _require_file(path)
    if path.suffix.lower() == ".wav":
        samples, rate = read_wav(path)
        return resample(samples, rate, SAMPLE_RATE)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise DatasetError(f"{path}: reading {path.suffix} files needs ffmpeg, which is not installed "
                           "(apt-get install ffmpeg), or convert it to WAV")
    result = subprocess.run(
        [ffmpeg, "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-ac", "1",
         "-ar", str(SAMPLE_RATE), "-"], capture_output=True, check=False,
    )
    if result.returncode != 0:
        raise DatasetError(f"{path}: ffmpeg could not decode it: {result.stderr.decode(errors='replace').strip()}")
    if len(result.stdout) < 2:
        raise DatasetError(f"{path}: ffmpeg decoded no samples from it")
    return np.frombuffer(result.stdout, np.int16).astype(np.float32) / 32767


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit mono PCM WAV file contents."""
    import io

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def write_folder(folder: Path, utterances: Sequence[Utterance]) -> None:
    """Write `utterances` as `{label}_{speaker}_{take}.wav` files (each atomically)."""
    for utterance in utterances:
        atomic_write_bytes(folder / utterance.file_name, wav_bytes(utterance.samples))


def load_folder(folder: Path, split: str | None = None) -> list[Utterance]:
    """Every `{label}_{speaker}_{take}.<audio>` file in `folder` (or its `recordings/`), sorted;
    `split="test"` keeps takes 0-4, `split="train"` the others. A file named otherwise is an
    error naming it."""
    if (folder / "recordings").is_dir():
        folder = folder / "recordings"
    if not folder.is_dir():
        raise DatasetError(f"audio folder {folder} does not exist")
    utterances = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        match = _NAME_PATTERN.match(path.stem)
        if match is None:
            raise DatasetError(f"{path}: name is not {{label}}_{{speaker}}_{{take}}{path.suffix}")
        take = int(match["take"])
        if split is not None and (take in TEST_TAKES) != (split == "test"):
            continue
        utterances.append(Utterance(match["label"], match["speaker"], take, read_audio(path)))
    if not utterances:
        raise DatasetError(f"{folder}: no audio files for split {split!r}")
    return utterances


# Each word is a sequence of (first formant Hz, second formant Hz, voiced, relative length).
_WORDS: dict[str, tuple[tuple[int, int, bool, float], ...]] = {
    "zero": ((0, 0, False, 0.6), (400, 2000, True, 1.0), (650, 1200, True, 1.0)),
    "one": ((450, 900, True, 1.0), (700, 1200, True, 0.8), (300, 1500, True, 0.5)),
    "two": ((0, 0, False, 0.4), (320, 850, True, 1.6)),
    "three": ((0, 0, False, 0.7), (420, 1400, True, 0.5), (280, 2300, True, 1.2)),
    "four": ((0, 0, False, 0.6), (550, 850, True, 1.4)),
    "five": ((0, 0, False, 0.6), (750, 1300, True, 0.9), (320, 2200, True, 0.9)),
    "six": ((0, 0, False, 0.8), (400, 2000, True, 0.8), (0, 0, False, 0.8)),
    "seven": ((0, 0, False, 0.6), (550, 1800, True, 0.8), (500, 1500, True, 0.8)),
    "eight": ((500, 1900, True, 1.0), (320, 2300, True, 0.8)),
    "nine": ((300, 1500, True, 0.5), (750, 1300, True, 1.0), (300, 1600, True, 0.6)),
}
LABELS = tuple(_WORDS)


def _formant_gain(frequencies: np.ndarray, formants: Sequence[float], bandwidth: float) -> np.ndarray:
    gain = np.zeros_like(frequencies)
    for formant, weight in zip(formants, (1.0, 0.6)):
        gain += weight / (1 + ((frequencies - formant) / bandwidth) ** 2)
    return gain + 0.02


@dataclass(frozen=True)
class Speaker:
    """What makes two synthetic speakers sound different."""

    pitch: float
    tract: float
    rate: float
    breath: float

    @classmethod
    def draw(cls, rng: random.Random) -> Speaker:
        return cls(pitch=rng.uniform(90, 240), tract=rng.uniform(0.85, 1.2),
                   rate=rng.uniform(0.8, 1.25), breath=rng.uniform(0.01, 0.05))


def synthesize(label: str, speaker: Speaker, rng: random.Random) -> np.ndarray:
    """One utterance of `label`: harmonic (voiced) or band-noise (unvoiced) segments shaped by
    the word's formants, scaled by the speaker's vocal tract, pitch and rate, with jitter."""
    noise = np.random.default_rng(rng.getrandbits(32))
    pieces = []
    for first, second, voiced, length in _WORDS[label]:
        seconds = 0.12 * length * speaker.rate * rng.uniform(0.85, 1.15)
        count = int(seconds * SAMPLE_RATE)
        envelope = np.sin(np.pi * np.linspace(0, 1, count)) ** 0.5
        formants = [f * speaker.tract * rng.uniform(0.95, 1.05) for f in (first, second)]
        if voiced:
            pitch = speaker.pitch * rng.uniform(0.93, 1.07) * (1 + 0.08 * np.linspace(0.5, -0.5, count))
            phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
            harmonics = np.arange(1, int(SAMPLE_RATE / 2 / pitch.max()))
            gains = _formant_gain(harmonics[:, None] * pitch[None, :], formants, 90.0)
            wave_ = (gains * np.sin(harmonics[:, None] * phase[None, :])).sum(axis=0)
        else:
            spectrum = np.fft.rfft(noise.standard_normal(count))
            frequencies = np.fft.rfftfreq(count, 1 / SAMPLE_RATE)
            centre = 2500 + 800 * (list(_WORDS).index(label) % 3) * speaker.tract
            wave_ = np.fft.irfft(spectrum * _formant_gain(frequencies, [centre, centre * 1.3], 500.0), n=count)
        pieces.append(wave_ / (np.abs(wave_).max() + 1e-9) * envelope * (1.0 if voiced else 0.4))
    utterance = np.concatenate(pieces)
    utterance += speaker.breath * noise.standard_normal(len(utterance))
    silence = np.zeros(int(rng.uniform(0.02, 0.1) * SAMPLE_RATE))
    return (0.8 * np.concatenate([silence, utterance, silence]) / (np.abs(utterance).max() + 1e-9)).astype(np.float32)


@dataclass(frozen=True)
class SyntheticRecipe:
    """Ten spoken digits said by `train_speakers` synthetic speakers for training and
    `test_speakers` unseen ones for the held-out split (`takes` each)."""

    seed: int = 1234
    train_speakers: int = 40
    test_speakers: int = 6
    validation_speakers: int = 10
    takes: int = 5

    def _speakers(self, label: str, count: int) -> list[tuple[str, Speaker]]:
        rng = random.Random(f"{self.seed}:{label}-speakers")
        return [(f"{label}{index}", Speaker.draw(rng)) for index in range(count)]

    def _unseen(self, label: str, speakers: int) -> list[Utterance]:
        rng = random.Random(f"{self.seed}:{label}")
        return [Utterance(word, name, take, synthesize(word, speaker, rng))
                for name, speaker in self._speakers(label, speakers)
                for word in LABELS for take in range(self.takes)]

    def test(self) -> list[Utterance]:
        """Unseen speakers, every digit, `takes` takes each."""
        return self._unseen("test", self.test_speakers)

    def validation(self) -> list[Utterance]:
        """Other unseen speakers (`validation_speakers`), the same layout as the test split:
        what a build watches to decide when to stop."""
        return self._unseen("validation", self.validation_speakers)

    def train(self) -> Iterator[Utterance]:
        """An endless stream of utterances by the training speakers."""
        speakers = self._speakers("train", self.train_speakers)
        rng = random.Random(f"{self.seed}:train")
        take = 0
        while True:
            name, speaker = rng.choice(speakers)
            word = rng.choice(LABELS)
            take += 1
            yield Utterance(word, name, take, synthesize(word, speaker, rng))
