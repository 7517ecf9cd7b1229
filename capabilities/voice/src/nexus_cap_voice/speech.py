"""Speech teachers of the common transformers classes behind one interface.

`SpeechEncoder.of(model, folder)` reads a loaded teacher with the feature extractor saved in
its folder (`AutoFeatureExtractor`), audio resampled from `data.SAMPLE_RATE` to the
extractor's rate. The utterance embedding the student matches is the encoder's last hidden
state, mean-pooled over the utterance's real frames (`describe()` records layer and pooling):

- `whisper` (`WhisperForConditionalGeneration`, `WhisperModel`): the encoder alone. Whisper
  pads every input to 30 s; here its position table is cut to the batch's longest utterance
  (`window="trimmed"`, the default), measured on the 150 FSDD test files with whisper-tiny.en:
  1.2 s against 55.7 s for `window="full"`, centroid accuracy 0.993 against 1.000.
- `wav2vec2`, `hubert`, `wavlm` (any head, e.g. `...ForCTC`): the base model on the raw
  waveform; frames counted with the model's own `_get_feat_extract_output_lengths`.
- `audio-spectrogram-transformer`: its pooled output (the CLS and distillation tokens), as the
  classifier reads it. The demo teacher carries its own log-mel settings in its config
  (`FEATURES_KEY`) and has no extractor.

Any other class is a `SpeechTeacherError` naming it and the supported ones. Padded frames are
left out of the mean, but only a model with an attention mask and a layer-normed convolutional
front end (`feat_extract_norm="layer"`, the large Wav2Vec2/HuBERT/WavLM) ignores the padding
altogether; Whisper and the group-normed base models read it, so an utterance's embedding moves
a little with the batch's longest one (batches follow the data order, so a run repeats).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nexus_cap_voice.data import SAMPLE_RATE, resample
from nexus_cap_voice.features import LogMel
from nexus_kernel.errors import NexusError

FEATURES_KEY = "nexus_log_mel"
"""The config attribute that holds a demo teacher's own log-mel settings."""
WAVEFORM_FAMILIES = ("wav2vec2", "hubert", "wavlm")
FAMILIES = ("whisper", *WAVEFORM_FAMILIES, "audio-spectrogram-transformer")
WINDOWS = ("trimmed", "full")
_WHISPER_SAMPLES_PER_FRAME = 320  # hop 160, then the encoder's stride-2 convolution


class SpeechTeacherError(NexusError):
    """A teacher the voice plugin cannot read (its class, or its folder's extractor)."""


@dataclass
class SpeechBatch:
    """Model inputs for a batch of utterances, each one's real frames at the encoder's output and
    the padded output length (None: every output position counts, as for AST's fixed input)."""

    inputs: dict[str, Any]
    frames: Any | None = None
    length: int | None = None

    @property
    def size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def mask(self) -> Any | None:
        """`(batch, length)` ones on real frames at the encoder's output, or None."""
        import torch

        if self.frames is None or self.length is None:
            return None
        return (torch.arange(self.length)[None, :] < self.frames[:, None]).long()


def _model_type(model: Any) -> str:
    return str(getattr(model.config, "model_type", type(model).__name__))


@dataclass
class SpeechEncoder:
    """A speech teacher (in eval mode) behind `embed(waveforms) -> (n, hidden) array`."""

    model: Any
    family: str
    encoder_name: str
    extractor: Any | None = None
    demo_features: LogMel | None = None
    window: str = "trimmed"
    batch_size: int = 64

    @classmethod
    def of(cls, model: Any, folder: str | Path | None, window: str = "trimmed") -> SpeechEncoder:
        """The encoder for a loaded teacher; `folder` holds its feature extractor."""
        family = _model_type(model)
        if family not in FAMILIES:
            raise SpeechTeacherError(f"voice: teacher class {type(model).__name__} (model_type {family!r}) is not a "
                                     f"speech encoder the voice plugin reads; supported model types: {', '.join(FAMILIES)}")
        if window not in WINDOWS:
            raise SpeechTeacherError(f"voice: unknown Whisper window {window!r}; choose one of {', '.join(WINDOWS)}")
        encoder_name = _encoder_name(model, family)
        demo = getattr(model.config, FEATURES_KEY, None)
        if demo is not None:
            return cls(model, family, encoder_name, demo_features=LogMel.from_json(demo), window=window)
        if folder is None:
            raise SpeechTeacherError(f"voice: a {type(model).__name__} teacher needs its folder's feature extractor")
        return cls(model, family, encoder_name, extractor=_extractor(Path(folder), type(model).__name__), window=window)

    @property
    def encoder(self) -> Any:
        return self.model.get_submodule(self.encoder_name) if self.encoder_name else self.model

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE if self.extractor is None else int(self.extractor.sampling_rate)

    def candidate_layers(self) -> list[str]:
        """The encoder's transformer blocks, as module names of the whole model (stage 2's
        candidates). A waveform model's are read from its `encoder`, never its convolutional
        feature extractor's list of layers (seven in Wav2Vec2-base, more than a small encoder has)."""
        from nexus_kernel.algorithms.profiling import repeated_blocks

        if self.family in WAVEFORM_FAMILIES:
            return repeated_blocks(self.encoder.encoder, ".".join(filter(None, (self.encoder_name, "encoder"))))
        return repeated_blocks(self.encoder, self.encoder_name)

    def describe(self) -> dict[str, Any]:
        """What the teacher's embedding is, for the logs and reports."""
        pooled = ("pooled output (CLS and distillation tokens)" if self.family == "audio-spectrogram-transformer"
                  else "mean over the utterance's real frames")
        described = {"class": type(self.model).__name__, "sample_rate": self.sample_rate,
                     "layer": f"{self.encoder_name or 'model'} last hidden state", "pooling": pooled,
                     "features": "own log-mel" if self.extractor is None else type(self.extractor).__name__}
        return described | ({"window": self.window} if self.family == "whisper" else {})

    def batch(self, waveforms: Sequence[np.ndarray]) -> SpeechBatch:
        """The model inputs of waveforms at `data.SAMPLE_RATE`."""
        import torch

        if self.demo_features is not None:
            return SpeechBatch({"input_values": self.demo_features(waveforms)})
        assert self.extractor is not None
        rate = self.sample_rate
        audio = [resample(np.asarray(samples, dtype=np.float32), SAMPLE_RATE, rate) for samples in waveforms]
        lengths = torch.tensor([len(samples) for samples in audio])
        if self.family == "whisper":
            padding = ({"padding": "longest", "pad_to_multiple_of": _WHISPER_SAMPLES_PER_FRAME}
                       if self.window == "trimmed" else {})
            features = self.extractor(audio, sampling_rate=rate, return_tensors="pt", **padding).input_features
            frames = torch.clamp(-(-lengths // _WHISPER_SAMPLES_PER_FRAME), min=1)
            return SpeechBatch({"input_features": features}, frames, features.shape[-1] // 2)
        if self.family in WAVEFORM_FAMILIES:
            encoded = self.extractor(audio, sampling_rate=rate, return_tensors="pt", padding=True,
                                     return_attention_mask=True)
            inputs = {"input_values": encoded.input_values}
            if getattr(self.extractor, "return_attention_mask", False):
                inputs["attention_mask"] = encoded.attention_mask
            frames = torch.as_tensor(self.encoder._get_feat_extract_output_lengths(lengths)).long()
            return SpeechBatch(inputs, frames, int(frames.max()))
        encoded = self.extractor(audio, sampling_rate=rate, return_tensors="pt")
        return SpeechBatch({"input_values": encoded.input_values})

    def forward(self, batch: SpeechBatch) -> Any:
        """The encoder's output on `batch` (hidden states of its blocks are what stage 2 and the
        anchors hook)."""
        import torch

        dtype = getattr(self.encoder, "dtype", torch.float32)
        inputs = {key: value.to(dtype) if value.is_floating_point() else value for key, value in batch.inputs.items()}
        if self.family != "whisper" or self.window == "full":
            return self.encoder(**inputs)
        assert batch.length is not None, "a Whisper batch knows its encoder length"
        with _whisper_positions(self.encoder, batch.length):
            return self.encoder(**inputs)

    def pooled(self, batch: SpeechBatch) -> Any:
        """`(batch, hidden)` float32 utterance embeddings (differentiable through the model)."""
        outputs = self.forward(batch)
        if self.family == "audio-spectrogram-transformer":
            return outputs.pooler_output.float()
        hidden = outputs.last_hidden_state.float()
        mask = batch.mask()
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """`(n, hidden)` float32 utterance embeddings of waveforms at `data.SAMPLE_RATE`, with no autograd."""
        from nexus_modalities.embedding_capability import embed_all

        return embed_all(self, waveforms, self.batch_size, int(self.model.config.hidden_size))


def _encoder_name(model: Any, family: str) -> str:
    """The module path of the model's encoder (`""`: the model is the encoder itself)."""
    if family == "whisper":
        target = model.get_encoder()
    else:
        target = getattr(model, "base_model", model)
    return next(name for name, module in model.named_modules() if module is target)


def _extractor(folder: Path, class_name: str) -> Any:
    from transformers import AutoFeatureExtractor

    try:
        return AutoFeatureExtractor.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise SpeechTeacherError(f"voice: teacher {class_name} in {folder} has no readable feature extractor "
                                 f"(preprocessor_config.json, as save_pretrained of its processor writes it): "
                                 f"{str(exc).splitlines()[0]}") from None


@contextmanager
def _whisper_positions(encoder: Any, positions: int) -> Iterator[None]:
    """Let a Whisper encoder read `positions` frames instead of 1,500 (30 s): its position table
    and the length it checks are cut for the duration, then restored."""
    import torch

    table, length = encoder.embed_positions, encoder.config.max_source_positions
    if positions > length:
        raise SpeechTeacherError(f"voice: an utterance longer than Whisper's {length * 2 // 100} s window")
    encoder.embed_positions = torch.nn.Embedding.from_pretrained(table.weight[:positions], freeze=True)
    encoder.config.max_source_positions = positions
    try:
        yield
    finally:
        encoder.embed_positions, encoder.config.max_source_positions = table, length
