import nexus_quant_bnb
import pytest
import torch

from nexus_kernel.kit.testing import plugin_set_of


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32))


@pytest.mark.parametrize(("scheme", "layer", "dtype", "tolerance"), [
    ("nf4", "Linear4bit", torch.uint8, 0.2),
    ("int8", "Linear8bitLt", torch.int8, 0.02),
])
def test_quantize_replaces_linears_and_keeps_outputs_close(
    scheme: str, layer: str, dtype: torch.dtype, tolerance: float
) -> None:
    model = _mlp()
    inputs = torch.randn(16, 64)
    with torch.no_grad():
        reference = model(inputs)
        plugin_set = plugin_set_of(("quant-bnb", nexus_quant_bnb), builtins=())  # no kernel fallback
        quantized = plugin_set.manager.hook.quantize(module=model, scheme=scheme)
        output = quantized(inputs)
    assert [type(m).__name__ for m in quantized] == [layer, "ReLU", layer]
    assert quantized[0].weight.dtype == dtype
    relative_error = float((output - reference).norm() / reference.norm())
    assert relative_error < tolerance


def test_unknown_scheme_is_declined() -> None:
    plugin_set = plugin_set_of(("quant-bnb", nexus_quant_bnb), builtins=())  # no kernel fallback
    assert plugin_set.manager.hook.quantize(module=_mlp(), scheme="fp8") is None
    with pytest.raises(ValueError, match="unknown scheme 'fp8'; quant-bnb supports nf4, int8"):
        nexus_quant_bnb.quantize_linears(_mlp(), "fp8")


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_the_quantized_state_loads_into_a_fresh_quantized_module(scheme: str) -> None:
    from safetensors.torch import load, save

    model = nexus_quant_bnb.quantize_linears(_mlp(), scheme).eval()
    inputs = torch.randn(4, 64)
    blob = save({key: value.detach().contiguous() for key, value in model.state_dict().items()})
    torch.manual_seed(7)  # other weights: the loaded state must replace them
    fresh = nexus_quant_bnb.quantize_linears(torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)), scheme).eval()
    fresh.load_state_dict(load(blob))
    with torch.no_grad():
        assert torch.equal(fresh(inputs), model(inputs))


def test_nf4_declines_shapes_the_cpu_kernel_cannot_run() -> None:
    odd = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 30))
    assert nexus_quant_bnb.unsupported_layers(odd, "nf4") == ["1"]
    assert nexus_quant_bnb.unsupported_layers(odd, "int8") == []
    plugin_set = plugin_set_of(("quant-bnb", nexus_quant_bnb), builtins=())  # no kernel fallback
    assert plugin_set.manager.hook.quantize(module=odd, scheme="nf4") is None
