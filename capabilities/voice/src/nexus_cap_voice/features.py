"""Log-mel features with torch alone (no torchaudio): `torch.stft` and a triangular mel
filterbank, padded or cropped to a fixed number of frames."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LogMel:
    """Feature settings; stored in the teacher's config so student and teacher agree."""

    sample_rate: int = 8000
    n_fft: int = 256
    hop: int = 80
    n_mels: int = 40
    frames: int = 96

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> LogMel:
        return cls(**values)

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)

    def filterbank(self) -> np.ndarray:
        """`(n_fft // 2 + 1, n_mels)` triangular filters evenly spaced on the mel scale."""
        def mel(hz: np.ndarray) -> np.ndarray:
            return 2595 * np.log10(1 + hz / 700)

        def hz(mels: np.ndarray) -> np.ndarray:
            return 700 * (10 ** (mels / 2595) - 1)

        edges = hz(np.linspace(0, mel(np.array(self.sample_rate / 2)), self.n_mels + 2))
        bins = np.linspace(0, self.sample_rate / 2, self.n_fft // 2 + 1)
        lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
        rising = (bins[None, :] - lower) / (centre - lower)
        falling = (upper - bins[None, :]) / (upper - centre)
        return np.maximum(0, np.minimum(rising, falling)).T.astype(np.float32)

    def __call__(self, waveforms: Sequence[np.ndarray]) -> torch.Tensor:
        """`(batch, frames, n_mels)` log-mel features of mono float waveforms."""
        import torch

        window = torch.hann_window(self.n_fft)
        filters = torch.from_numpy(self.filterbank())
        batch = torch.zeros(len(waveforms), self.frames, self.n_mels)
        for index, samples in enumerate(waveforms):
            signal = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
            if signal.numel() < self.n_fft:
                signal = torch.nn.functional.pad(signal, (0, self.n_fft - signal.numel()))
            spectrum = torch.stft(signal, self.n_fft, self.hop, window=window, return_complex=True)
            features = torch.log(spectrum.abs().pow(2).T @ filters + 1e-6)[: self.frames]
            batch[index, : features.shape[0]] = features
            batch[index, features.shape[0]:] = float(np.log(1e-6))
        return batch
