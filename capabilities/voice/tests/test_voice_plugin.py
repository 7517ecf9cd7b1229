import nexus_cap_voice

from nexus_kernel.kit.testing import check_capability_plugin


def test_voice_plugin_conforms() -> None:
    capabilities = check_capability_plugin(nexus_cap_voice.plugin, distribution="nexus-cap-voice")
    assert [(c.name, c.modality, c.benchmarks) for c in capabilities] == [
        ("voice", "audio", ("voice centroid accuracy", "voice cosine"))
    ]


def test_probe_plan_drives_ablation_and_profiling(tmp_path) -> None:
    import torch
    from nexus_cap_voice import teacher
    from nexus_cap_voice.data import LABELS
    from nexus_cap_voice.features import LogMel
    from transformers import ASTConfig, ASTForAudioClassification

    from nexus_kernel.kit.testing import check_probe_plan
    from nexus_kernel.teachers.loading import load_teacher_folder

    torch.manual_seed(0)
    features = LogMel()
    config = ASTConfig(num_mel_bins=features.n_mels, max_length=features.frames, num_labels=len(LABELS),
                       id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
                       **teacher.MODEL)
    setattr(config, teacher.FEATURES_KEY, features.to_json())
    ASTForAudioClassification(config).save_pretrained(tmp_path / "voice")
    loaded = load_teacher_folder("tiny-voice", tmp_path / "voice", "fp32")
    plan = teacher.probe_plan(loaded, 20, {"train": "synthetic:any"})
    assert [name[-2:] for name in plan.candidate_layers] == [".0", ".1"]
    assert all(name.startswith("audio_spectrogram_transformer.") for name in plan.candidate_layers)
    assert plan.batches[0][0].shape == (20, features.frames, features.n_mels)
    states = check_probe_plan(loaded.model, plan, 20)
    assert states[plan.candidate_layers[0]].count == 24 * (loaded.model.config.max_length // 8 * 5 + 2)
