import nexus_cap_vision

from nexus_kernel.kit.testing import check_capability_plugin


def test_vision_plugin_conforms() -> None:
    capabilities = check_capability_plugin(nexus_cap_vision.plugin, distribution="nexus-cap-vision")
    assert [(c.name, c.modality, c.benchmarks) for c in capabilities] == [
        ("vision", "image", ("vision QA",))
    ]


def test_probe_plan_drives_ablation_and_profiling(tmp_path) -> None:
    import torch
    from nexus_cap_vision import teacher
    from nexus_cap_vision.data import TEMPLATE_WORDS
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    from nexus_kernel.kit.testing import check_probe_plan
    from nexus_kernel.student.decoding import build_tokenizer
    from nexus_kernel.teachers.loading import load_teacher_folder

    torch.manual_seed(0)
    tokenizer = build_tokenizer(TEMPLATE_WORDS)
    decoder = GPT2Config(vocab_size=len(tokenizer), add_cross_attention=True, is_decoder=True, **teacher.DECODER)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(**teacher.ENCODER), decoder)
    VisionEncoderDecoderModel(config=config).save_pretrained(tmp_path / "vision")
    tokenizer.save_pretrained(tmp_path / "vision")
    loaded = load_teacher_folder("tiny-vision", tmp_path / "vision", "fp32")
    plan = teacher.probe_plan(loaded, 20, {"train": "synthetic:any"})
    encoder_blocks, decoder_blocks = plan.candidate_layers[:2], plan.candidate_layers[2:]
    assert len(plan.candidate_layers) == 4
    assert all(name.startswith("encoder.") and name.endswith(str(i)) for i, name in enumerate(encoder_blocks))
    assert all(name.startswith("decoder.") and name.endswith(str(i)) for i, name in enumerate(decoder_blocks))
    states = check_probe_plan(loaded.model, plan, 20)
    assert states[encoder_blocks[0]].count == 24 * 17
    assert states[decoder_blocks[0]].count == sum(int(b[2][:, :-1].sum()) for b in plan.stream(24, 8))
