"""How downsampling changes alpha and the ALoRA choice, on the packaged real models.

    python -m analysis.downsample_effect                 # SmolLM2 and MiniLM, 5 draws, seed 0
    python -m analysis.downsample_effect --samples 10 --k 24

For each model: mean alpha per kind without downsampling (`none`, WeightWatcher-exact) and with
`common` (every matrix sampled to the smallest shape among them), and how many of the ALoRA
top-k matrices (order high, all attention and MLP kinds) stay the same.
"""

from __future__ import annotations

import argparse

import pandas as pd

from alphasel import analyze, make_plan
from alphasel.columns import STATUS_OK
from alphasel.layout import KINDS


def compare(model: str, samples: int, seed: int, k: int) -> None:
    raw = analyze(model, progress=False)
    sampled = analyze(model, downsample="common", samples=samples, seed=seed, progress=False)
    shape = sampled.attrs["alphasel"]["downsample"]["shape"]
    means = pd.DataFrame({
        "none": raw[raw["status"] == STATUS_OK].groupby("kind")["alpha"].mean(),
        "common": sampled[sampled["status"] == STATUS_OK].groupby("kind")["alpha"].mean(),
        "common_std": sampled[sampled["status"] == STATUS_OK].groupby("kind")["alpha_std"].mean(),
    })
    means = means.reindex([kind for kind in KINDS if kind in means.index])
    print(f"\n## {raw.attrs['alphasel']['model_id']}: common shape {shape[0]}x{shape[1]}, "
          f"{samples} draws, seed {seed} ({raw.attrs['alphasel']['elapsed_s']:.1f} s none, "
          f"{sampled.attrs['alphasel']['elapsed_s']:.1f} s common)")
    print("| kind | mean alpha none | mean alpha common | mean draw std |")
    print("|---|---|---|---|")
    for kind, row in means.iterrows():
        print(f"| {kind} | {row['none']:.2f} | {row['common']:.2f} | {row['common_std']:.2f} |")
    chosen_raw = set(make_plan(raw, "alora", k).module_names)
    chosen_sampled = set(make_plan(sampled, "alora", k).module_names)
    kept = len(chosen_raw & chosen_sampled)
    print(f"ALoRA top-{k} (order high): {kept}/{k} matrices shared, "
          f"{k - kept} replaced (Jaccard {kept / len(chosen_raw | chosen_sampled):.2f})")
    kind_of_name = dict(zip(raw["name"], raw["kind"], strict=True))
    for label, names in (("none", chosen_raw), ("common", chosen_sampled)):
        counts = pd.Series([kind_of_name[name] for name in names]).value_counts()
        print(f"  kinds chosen, {label}: {counts.to_dict()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "minilm"])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=12)
    args = parser.parse_args()
    for model in args.models:
        compare(model, args.samples, args.seed, args.k)


if __name__ == "__main__":
    main()
