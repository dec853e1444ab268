"""Downsampling for fair alpha comparison across matrix shapes (DESIGN.md, "Fair comparison").

Alpha estimates depend on a matrix's aspect ratio and size; sampling submatrices of one shape
from every matrix (rows and columns drawn without replacement, seeded) and averaging their fits
puts q_proj, up_proj and a GQA k_proj on one footing (the FARMS idea).
Shapes are orientation-free: a target R×C is matched larger-to-larger, smaller-to-smaller, since
WᵀW and WWᵀ share their non-zero spectrum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alphasel.errors import AnalysisOptionError

MODES = ("none", "common", "fixed:RxC")
_FIXED = re.compile(r"^fixed:(\d+)x(\d+)$")


@dataclass(frozen=True)
class Downsampling:
    """How matrices are sampled before their spectra are fitted."""

    mode: str
    """``none``, ``common`` or ``fixed``."""
    shape: tuple[int, int] | None = None
    """(larger, smaller) side of the sampled submatrix; None for ``none`` and until ``common``
    is resolved against the analysed matrices."""
    samples: int = 1
    """Random draws per matrix; their fits are averaged."""
    seed: int = 0
    """Seed of the draws (each matrix's draws depend only on seed, name and draw number)."""

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def describe(self) -> dict:
        """As a table's metadata records it (see :meth:`from_description`)."""
        return {"mode": self.mode, "shape": list(self.shape) if self.shape else None,
                "samples": self.samples if self.active else None,
                "seed": self.seed if self.active else None}

    @classmethod
    def from_description(cls, described: object) -> Downsampling:
        """The downsampling a table's metadata describes (:meth:`describe`); none when it
        describes none or is not a description."""
        if not isinstance(described, dict) or described.get("mode") in (None, "none"):
            return NO_DOWNSAMPLING
        shape = described.get("shape")
        return cls(described["mode"], tuple(shape) if shape else None,
                   int(described.get("samples") or 1), int(described.get("seed") or 0))


#: Whole matrices, as WeightWatcher fits them (the default).
NO_DOWNSAMPLING = Downsampling("none")


def parse_downsampling(mode: str, samples: int = 1, seed: int = 0) -> Downsampling:
    """Check ``--downsample MODE --samples S --seed N``."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise AnalysisOptionError(f"--samples must be an integer ≥ 1, got {samples!r}")
    if mode in ("none", "common"):
        return Downsampling(mode, None, samples, seed)
    match = _FIXED.match(str(mode))
    if match is None:
        raise AnalysisOptionError(f"unknown downsampling mode '{mode}': choose one of "
                                  f"{', '.join(MODES)} (e.g. fixed:512x256)")
    sides = sorted((int(match.group(1)), int(match.group(2))), reverse=True)
    if sides[1] < 1:
        raise AnalysisOptionError(f"downsampling shape in '{mode}' must be at least 1x1")
    return Downsampling("fixed", (sides[0], sides[1]), samples, seed)


def resolve_shape(downsampling: Downsampling,
                  shapes: dict[str, tuple[int, int]]) -> Downsampling:
    """Fix the sampled shape against the analysed matrices (name → shape).

    ``common`` takes the smallest larger side and the smallest smaller side among them;
    ``fixed`` must fit inside every one of them.
    """
    if not downsampling.active or not shapes:
        return downsampling
    oriented = {name: (max(shape), min(shape)) for name, shape in shapes.items()}
    if downsampling.mode == "common":
        shape = (min(s[0] for s in oriented.values()), min(s[1] for s in oriented.values()))
        return Downsampling("common", shape, downsampling.samples, downsampling.seed)
    larger, smaller = downsampling.shape
    too_small = [f"{name} {shapes[name][0]}x{shapes[name][1]}"
                 for name, (big, small) in oriented.items() if big < larger or small < smaller]
    if too_small:
        listed = ", ".join(too_small[:3]) + (f" and {len(too_small) - 3} more"
                                             if len(too_small) > 3 else "")
        raise AnalysisOptionError(
            f"downsampling shape {larger}x{smaller} is larger than {listed}: choose a smaller "
            "fixed:RxC, use --downsample common, or leave those out with --exclude")
    return downsampling


def sample_shape_for(matrix_shape: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) to draw from a matrix so the sample has the target's sides."""
    rows, cols = matrix_shape
    larger, smaller = target
    return (larger, smaller) if rows >= cols else (smaller, larger)
