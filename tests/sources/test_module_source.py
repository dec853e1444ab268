"""In-memory modules the analyzer is handed as they are loaded in practice: 4-bit quantized
(bitsandbytes, as for QLoRA) and offloaded to the meta device (accelerate's device_map)."""

import numpy as np
import pytest
import torch

from alphasel import analyze
from alphasel.columns import STATUS_OK
from alphasel.errors import SourceError
from alphasel.sources import open_source


@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16])
def test_four_bit_layers_are_dequantized_and_analysed(storage):
    """A quantized Params4bit packs two entries a byte into a column (uint8, or floating-point
    ``quant_storage``); the analyzer fits the dequantized matrix of the layer's own shape."""
    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import dequantize_4bit

    torch.manual_seed(0)
    model = torch.nn.Sequential(bnb.nn.Linear4bit(64, 48, bias=False, quant_storage=storage),
                                torch.nn.Linear(48, 40))
    model = model.to("cpu")  # quantizes the 4-bit layer
    weight = model[0].weight
    assert weight.bnb_quantized and weight.shape != (48, 64)
    dequantized = dequantize_4bit(weight.data, weight.quant_state)
    table = analyze(model, progress=False, cache=False).set_index("name")
    assert list(table.index) == ["0", "1"]
    assert (table.loc["0", "rows"], table.loc["0", "cols"]) == (48, 64)
    assert table.loc["0", "status"] == STATUS_OK
    plain = torch.nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        plain.weight.copy_(dequantized)
    expected = analyze(torch.nn.Sequential(plain), progress=False)["alpha"].iloc[0]
    np.testing.assert_allclose(table.loc["0", "alpha"], expected, rtol=1e-12)
    with open_source(model) as source:
        ref = source.matrices()[0]
        stored = source.load_stored(ref)
        assert stored.shape == (48, 64) and stored.dtype == weight.quant_state.dtype
        assert source.load(ref).dtype == np.float32


def test_meta_weights_are_refused_in_one_line():
    with torch.device("meta"):
        offloaded = torch.nn.Linear(30, 20)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), offloaded)
    with pytest.raises(SourceError, match=r"module '1' of Sequential .* meta device") as caught:
        analyze(model, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "device_map" in message and "checkpoint path" in message
    with torch.device("meta"):
        everything = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Linear(30, 20))
    with pytest.raises(SourceError, match=r"module '0' and 1 more of Sequential"):
        open_source(everything)
