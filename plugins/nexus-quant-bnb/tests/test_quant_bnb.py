import pytest
import torch

import nexus_quant_bnb
from nexus_kernel.testing import plugin_set_of


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
        plugin_set = plugin_set_of(("quant-bnb", nexus_quant_bnb))
        quantized = plugin_set.manager.hook.quantize(module=model, scheme=scheme)
        output = quantized(inputs)
    assert [type(m).__name__ for m in quantized] == [layer, "ReLU", layer]
    assert quantized[0].weight.dtype == dtype
    relative_error = float((output - reference).norm() / reference.norm())
    assert relative_error < tolerance


def test_unknown_scheme_is_declined() -> None:
    plugin_set = plugin_set_of(("quant-bnb", nexus_quant_bnb))
    assert plugin_set.manager.hook.quantize(module=_mlp(), scheme="fp8") is None
    with pytest.raises(ValueError, match="unknown scheme 'fp8'; quant-bnb supports nf4, int8"):
        nexus_quant_bnb.quantize_linears(_mlp(), "fp8")
