"""`analyze(BASE, adapter=DIR)`: each adapted matrix analysed as its effective weight W + ΔW,
read from the adapter's files, equal to analysing PEFT's merged model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import FAST, byte_tokenizer, code_data, tiny_gpt2, tiny_llama, trained_adapters
from peft import LoraConfig

import alphasel
import alphasel.cli
from alphasel.errors import SourceError
from alphasel.planner import make_plan
from alphasel.training import TrainConfig, train

CASES = {
    "lora": (tiny_llama, dict(target_modules=["q_proj", "v_proj", "down_proj"])),
    "rslora-patterns": (tiny_llama, dict(
        target_modules=["q_proj", "down_proj"], use_rslora=True,
        rank_pattern={r"model\.layers\.1\.mlp\.down_proj": 2},
        alpha_pattern={r"model\.layers\.0\.self_attn\.q_proj": 3})),
    "dora": (tiny_llama, dict(target_modules=["q_proj", "up_proj"], use_dora=True)),
    "gpt2-conv1d": (tiny_gpt2, dict(target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_adapted_rows_equal_the_merged_model(tmp_path, case):
    make, options = CASES[case]
    base = make()
    base.save_pretrained(tmp_path / "base")
    peft_model = trained_adapters(make(), LoraConfig(r=4, lora_alpha=8, **options))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = copy.deepcopy(peft_model).merge_and_unload()

    with_adapter = alphasel.analyze(str(tmp_path / "base"), adapter=tmp_path / "adapter",
                                    progress=False).set_index("name")
    reference = alphasel.analyze(merged, progress=False).set_index("name")
    plain = alphasel.analyze(str(tmp_path / "base"), progress=False).set_index("name")
    adapted = with_adapter.index[with_adapter["adapted"]]
    peft_names = {name.removeprefix("base_model.model.") for name, module in
                  peft_model.named_modules() if hasattr(module, "lora_A") and module.lora_A}
    assert set(adapted) == peft_names and len(adapted) >= 3
    np.testing.assert_allclose(with_adapter.loc[adapted, "alpha"],
                               reference.loc[adapted, "alpha"], rtol=1e-5)
    assert (with_adapter.loc[adapted, "alpha"] != plain.loc[adapted, "alpha"]).all()
    untouched = with_adapter.index[~with_adapter["adapted"]]
    np.testing.assert_array_equal(with_adapter.loc[untouched, "alpha"].fillna(-1),
                                  plain.loc[untouched, "alpha"].fillna(-1))
    assert with_adapter.attrs["alphasel"]["adapter"] == str(tmp_path / "adapter")


def test_a_training_runs_adapter_gives_its_final_alpha_history(tmp_path):
    tokenizer = byte_tokenizer(pad_is_eos=True)
    tiny_llama().save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    table = alphasel.analyze(str(tmp_path / "base"), progress=False)
    plan = make_plan(table, "blora", 1)
    record = train(str(tmp_path / "base"), plan, code_data(tokenizer),
                   TrainConfig(max_steps=3, lr=1e-2, generate=False, **FAST),
                   out=tmp_path / "run", progress=False)
    import pandas as pd

    history = pd.read_csv(record.path / "alpha_history.csv")
    last = history[history["step"] == 3].set_index("name")["alpha"]
    analysed = alphasel.analyze(str(tmp_path / "base"), adapter=record.path / "adapter",
                                progress=False).set_index("name")
    np.testing.assert_allclose(analysed.loc[last.index, "alpha"], last, rtol=1e-9)


def test_bad_adapters_are_one_line_errors(tmp_path, capsys):
    tiny_llama(layers=2).save_pretrained(tmp_path / "base")
    trained_adapters(tiny_llama(layers=4), LoraConfig(
        r=4, target_modules=["q_proj"], layers_to_transform=[3])).save_pretrained(
        tmp_path / "deeper")
    with pytest.raises(SourceError, match="model.layers.3.self_attn.q_proj, which the base"):
        alphasel.analyze(str(tmp_path / "base"), adapter=tmp_path / "deeper", progress=False)
    (tmp_path / "not-peft").mkdir()
    capsys.readouterr()  # what saving the models printed
    status = alphasel.cli.main(["analyze", str(tmp_path / "base"), "--adapter",
                                str(tmp_path / "not-peft"), "--quiet", "--out",
                                str(tmp_path / "t.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "not a PEFT adapter" in err[0]
    assert not (tmp_path / "t.csv").exists()
