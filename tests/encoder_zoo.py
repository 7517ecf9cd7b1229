"""Tiny random-init speech and image encoders of the common transformers classes, each saved
with its own feature extractor or image processor, as a user's teacher folder would be.

`save_encoder(folder, kind)` writes one `save_pretrained` folder (safetensors weights) for a
`kind` of `SPEECH_KINDS` (Whisper, Wav2Vec2, HuBERT, WavLM, AST with its extractor) or
`IMAGE_KINDS` (ViT, DINOv2, CLIP's and SigLIP's image towers, the whole CLIP model); every
model has hidden size 16 and two blocks. The voice and vision plugin tests and the encoder
matrix (`test_encoder_matrix.py`) share them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPEECH_KINDS = ("whisper", "wav2vec2", "hubert", "wavlm", "ast")
IMAGE_KINDS = ("vit", "dinov2", "clip_vision_model", "siglip_vision_model", "clip")
WIDTH = 16
IMAGE_SIZE = 28

_SMALL = {"hidden_size": WIDTH, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}


def tiny_speech(kind: str) -> tuple[Any, Any]:
    """A random-init speech model of `kind` and its feature extractor."""
    import transformers as t

    waveform = {**_SMALL, "conv_dim": (16, 16), "conv_kernel": (10, 3), "conv_stride": (5, 2),
                "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "vocab_size": 12}
    if kind == "whisper":
        config = t.WhisperConfig(d_model=WIDTH, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                                 decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=60,
                                 max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                 decoder_start_token_id=1)
        return t.WhisperForConditionalGeneration(config), t.WhisperFeatureExtractor()
    if kind == "ast":
        config = t.ASTConfig(**_SMALL, num_mel_bins=16, max_length=64, num_labels=3)
        return t.ASTForAudioClassification(config), t.ASTFeatureExtractor(num_mel_bins=16, max_length=64)
    extractor = t.Wav2Vec2FeatureExtractor(return_attention_mask=kind != "wav2vec2")
    models = {"wav2vec2": (t.Wav2Vec2Config, t.Wav2Vec2ForCTC), "hubert": (t.HubertConfig, t.HubertModel),
              "wavlm": (t.WavLMConfig, t.WavLMForCTC)}
    config_class, model_class = models[kind]
    norm = "layer" if kind == "wavlm" else "group"  # both kinds of convolutional front end
    return model_class(config_class(**waveform, feat_extract_norm=norm)), extractor


def tiny_image(kind: str) -> tuple[Any, Any]:
    """A random-init image model of `kind` (28 px input, 7 px patches) and its image processor."""
    import transformers as t

    vision = {**_SMALL, "image_size": IMAGE_SIZE, "patch_size": 7}
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if kind == "vit":
        return t.ViTModel(t.ViTConfig(**vision)), t.ViTImageProcessor(size=square)
    if kind == "dinov2":
        return t.Dinov2Model(t.Dinov2Config(**vision)), t.BitImageProcessor(size={"shortest_edge": 32}, crop_size=square)
    if kind == "clip_vision_model":
        return (t.CLIPVisionModel(t.CLIPVisionConfig(**vision)),
                t.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=square))
    if kind == "siglip_vision_model":
        return t.SiglipVisionModel(t.SiglipVisionConfig(**vision)), t.SiglipImageProcessor(size=square)
    text = {**_SMALL, "num_hidden_layers": 1, "vocab_size": 50}
    return (t.CLIPModel(t.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)),
            t.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=square))


def save_encoder(folder: Path, kind: str, seed: int = 0) -> Path:
    """Write a tiny `kind` model (seeded) and its extractor or processor to `folder`."""
    import torch

    torch.manual_seed(seed)
    model, processor = tiny_speech(kind) if kind in SPEECH_KINDS else tiny_image(kind)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def check_embedding_probe(model: Any, plan: Any, n_probe: int) -> None:
    """What stage 2 needs of an embedding teacher's cosine probe: the kernel's conformance
    checks (`check_probe_plan`) pass, the unablated loss is 0 (the probe's own embeddings) and
    zeroing the first block moves the embedding."""
    import pytest
    import torch

    from nexus_kernel.kit.testing import check_probe_plan

    check_probe_plan(model, plan, n_probe, stream_samples=4)
    with torch.no_grad():
        assert float(plan.loss(model, plan.batches[0])) == pytest.approx(0, abs=1e-5)
        block = model.get_submodule(plan.candidate_layers[0])
        handle = block.register_forward_hook(lambda _m, _i, output: (output[0] * 0, *output[1:])
                                             if isinstance(output, tuple) else output * 0)
        try:
            assert float(plan.loss(model, plan.batches[0])) > 1e-3
        finally:
            handle.remove()
    streamed = next(plan.stream(4, 2))
    assert streamed[1] is None and plan.samples_of(streamed) == 2
