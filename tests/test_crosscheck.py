"""Certificate/attack cross-checks against brute-force enumeration."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from lipaudit.audit.crosscheck import ordering_violations, soundness_violations


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=12))
def test_soundness_violations_are_exactly_the_doubly_marked_samples(pairs: list[tuple[bool, bool]]) -> None:
    cert = [c for c, _ in pairs]
    att = [a for _, a in pairs]
    found = soundness_violations({"0.1": {"CROWN": cert}}, {"0.1": {"PGD": att}})
    assert [v.index for v in found] == [i for i, (c, a) in enumerate(pairs) if c and a]
    assert all(v.eps == 0.1 and v.method == "CROWN" and v.attack == "PGD" for v in found)


def test_soundness_violations_cover_every_method_attack_pair() -> None:
    cert = {"0.1": {"IBP": [True, False], "CROWN": [True, True]}}
    att = {"0.1": {"PGD": [False, True], "APGD": [True, False]}}
    found = {(v.index, v.method, v.attack) for v in soundness_violations(cert, att)}
    brute = {(i, m, a) for m, c in cert["0.1"].items() for a, t in att["0.1"].items()
             for i in range(2) if c[i] and t[i]}
    assert found == brute == {(0, "IBP", "APGD"), (0, "CROWN", "APGD"), (1, "CROWN", "PGD")}


radius = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0))


@given(st.lists(st.tuples(radius, radius, radius), min_size=1, max_size=8))
def test_ordering_violations_match_pairwise_comparisons(rows: list[tuple[float | None, ...]]) -> None:
    lip = [r[0] for r in rows]
    cert = [r[1] for r in rows]
    att = [r[2] for r in rows]
    found = {(v.index, v.lower, v.upper) for v in ordering_violations(lip, {"CROWN": cert}, att)}
    names = ("Lipschitz", "CROWN", "attack")
    expected = set()
    for i, row in enumerate(rows):
        for (a, b) in itertools.combinations(range(3), 2):
            lo, hi = row[a], row[b]
            if lo is not None and hi is not None and lo > hi * (1 + 1e-6) + 1e-9:
                expected.add((i, names[a], names[b]))
    assert found == expected
