"""Separation: exact against a brute-force double loop; chunking changes nothing; bad input is rejected clearly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lipaudit.errors import DataError, UsageError
from lipaudit.types import Norm
from proofs.separation import largest_eps_message, measure_separation, nearest_other_class


def _brute(x: np.ndarray, y: np.ndarray, p: float) -> float:
    best = math.inf
    for i in range(len(x)):
        for j in range(len(x)):
            if y[i] != y[j]:
                best = min(best, float(np.linalg.norm(x[i].astype(np.float64) - x[j].astype(np.float64), ord=p)))
    return best


@given(
    n=st.integers(2, 25), d=st.integers(1, 6), k=st.integers(2, 4), seed=st.integers(0, 10_000),
    norm=st.sampled_from([Norm.LINF, Norm.L2]), chunk=st.integers(1, 7),
)
def test_separation_matches_brute_force(n: int, d: int, k: int, seed: int, norm: Norm, chunk: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.random((n, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    y[0], y[1] = 0, 1  # at least two classes
    sep = measure_separation(torch.from_numpy(x), torch.from_numpy(y), norm, chunk=chunk)
    expected = _brute(x, y, norm.p)
    assert sep.distance == pytest.approx(expected, rel=1e-12, abs=1e-12)
    i, j = sep.pair
    assert y[i] != y[j]
    assert float(np.linalg.norm(x[i].astype(np.float64) - x[j].astype(np.float64), ord=norm.p)) == pytest.approx(
        expected, rel=1e-12
    )
    assert sep.max_eps == pytest.approx(expected / 2)
    assert sep.allows(0.49 * expected) and not sep.allows(0.5 * expected)


def test_nearest_other_class_per_point_and_reference() -> None:
    x = torch.tensor([[0.0, 0.0], [0.0, 0.2], [1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 1, 1])
    d, i = nearest_other_class(x, y, "2")
    assert d.tolist() == pytest.approx([1.0, math.hypot(1.0, 0.2), 1.0, 2.8])
    assert i.tolist() == [2, 2, 0, 1]
    d2, _ = nearest_other_class(x[:2], y[:2], "inf", reference=(x[2:], y[2:]))
    assert d2.tolist() == pytest.approx([1.0, 1.0])


def test_images_are_flattened() -> None:
    x = torch.zeros(3, 1, 2, 2)
    x[1, 0, 1, 1] = 0.5
    x[2] = 1.0
    sep = measure_separation(x, torch.tensor([0, 1, 1]), Norm.LINF)
    assert sep.distance == 0.5 and sep.pair == (0, 1)
    assert sep.to_dict()["max_eps"] == 0.25


@pytest.mark.parametrize(
    ("x", "y", "error", "text"),
    [
        (torch.zeros(3, 2), torch.tensor([1, 1, 1]), DataError, "two classes"),
        (torch.zeros(3, 2), torch.tensor([0, 1]), UsageError, "(3, 2)"),
        (torch.tensor([[0.0], [math.nan]]), torch.tensor([0, 1]), DataError, "NaN"),
    ],
)
def test_bad_input(x: torch.Tensor, y: torch.Tensor, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        measure_separation(x, y, "inf")


def test_unknown_norm_and_message() -> None:
    with pytest.raises(UsageError, match="'3'"):
        measure_separation(torch.zeros(2, 1), torch.tensor([0, 1]), "3")
    sep = measure_separation(torch.tensor([[0.0], [0.5]]), torch.tensor([0, 1]), "inf")
    msg = largest_eps_message(sep, 0.3)
    assert "measured separation 0.5" in msg and "ε < 0.25" in msg and "\n" not in msg
