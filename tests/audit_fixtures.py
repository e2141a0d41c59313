"""A hand-built audit result for testing the report renderer and the JSON round trip without running an audit."""

from __future__ import annotations

from lipaudit.audit.result import AccuracyRow, AuditResult, Flag, SampleRecord, eps_key


def synthetic_result(n: int = 6, eps: tuple[float, ...] = (0.05, 0.1)) -> AuditResult:
    """A small, internally consistent audit result: radii ordered, certified ⇒ not attacked."""
    samples = []
    for i in range(n):
        lip, cert, att = 0.01 * (i + 1), 0.03 * (i + 1), 0.06 * (i + 1)
        samples.append(SampleRecord(
            index=i, label=i % 3, prediction=i % 3, radius_lipschitz=lip, radius_certified={"CROWN": cert},
            radius_attack=att,
            certified_at={eps_key(e): cert >= e for e in eps}, attacked_at={eps_key(e): att <= e for e in eps},
            certified_method_at={eps_key(e): "CROWN" if cert >= e else None for e in eps},
        ))
    rows = []
    for e in eps:
        cert = sum(s.certified_at[eps_key(e)] for s in samples) / n
        lipc = sum((s.radius_lipschitz or 0) >= e for s in samples) / n
        rob = sum(not s.attacked_at[eps_key(e)] for s in samples) / n
        rows.append(AccuracyRow(eps=e, clean=1.0, certified={"CROWN": cert, "Lipschitz": lipc},
                                robust={"PGD": rob, "APGD-CE": rob}, worst_case=rob))
    image = [[[((r * 7 + c * 3) % 10) / 10 for c in range(8)] for r in range(8)]]
    adv = [[[min(1.0, v + 0.05) for v in row] for row in image[0]]]
    return AuditResult(
        model={"path": "model.pt", "sha256": "0" * 64, "format": "state_dict", "arch": "lipaudit.zoo:mlp",
               "num_parameters": 1234, "input_shape": [1, 8, 8], "num_classes": 3, "mean": None, "std": None},
        threat_model={"norm": "inf", "eps": list(eps), "n": n, "data": "digits", "split": "test", "seed": 0},
        layers=[{"name": "1", "type": "Linear", "input_shape": [64], "output_shape": [3], "l1": 2.0, "linf": 3.0,
                 "l2_lower": 1.5, "l2_upper": 1.5001, "l1_method": "exact", "linf_method": "exact",
                 "l2_method": "svd"}],
        lipschitz={"norm": "inf", "upper_product": 3.0, "upper_graph": 3.0, "margin_upper": 4.0,
                   "empirical_lower": 1.0, "looseness": 3.0},
        accuracy=rows, samples=samples,
        flags=[Flag(code="example-flag", severity="warning", message="An example flag.")],
        timing={"norms": 0.1, "attacks": 1.0},
        certification={"methods": ["CROWN"], "outcomes": []}, attacks={"names": ["PGD", "APGD-CE"]},
        examples=[{"index": 0, "eps": 0.05, "label": 0, "adv_prediction": 1, "clean": image, "adv": adv}],
        environment={"lipaudit": "0.1.0", "torch": "2.x", "device": "cpu"}, command="lipaudit check model.pt",
    )
