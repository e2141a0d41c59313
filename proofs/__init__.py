"""Theorem demonstrations for lipaudit: separation ⇒ robust ReLU networks with arbitrarily large Lipschitz constants.

Liang & Huang, *Large Norms of CNN Layers Do Not Hurt Adversarial Robustness*, AAAI 2021 (arXiv 2009.08435).
``proofs/README.md`` states each claim, its assumptions, and which code checks which step; ``lipaudit prove`` runs
everything (:func:`proofs.demo.run_proofs`) and writes the report (:func:`proofs.report.write_proofs`).
"""

from __future__ import annotations

from proofs.bounds import certify_ibp, interval_bounds
from proofs.demo import Claim, ProofOptions, ProofsResult, RobustDemo, SpikeRow, robust_demo, run_proofs, synthetic_2d
from proofs.rescale import RescalePair, RescaleResult, apply_scaling, find_pairs, rescale_to_factor
from proofs.robust_net import RobustNetwork, build_robust_network, cover_directions
from proofs.separation import Separation, largest_eps_message, measure_separation, nearest_other_class
from proofs.spike import LipschitzWitness, SpikedNetwork, add_spike, lipschitz_witness
from proofs.symbolic import SymbolicCheck, run_symbolic_checks

__all__ = [
    "Claim",
    "LipschitzWitness",
    "ProofOptions",
    "ProofsResult",
    "RescalePair",
    "RescaleResult",
    "RobustDemo",
    "RobustNetwork",
    "Separation",
    "SpikeRow",
    "SpikedNetwork",
    "SymbolicCheck",
    "add_spike",
    "apply_scaling",
    "build_robust_network",
    "certify_ibp",
    "cover_directions",
    "find_pairs",
    "interval_bounds",
    "largest_eps_message",
    "lipschitz_witness",
    "measure_separation",
    "nearest_other_class",
    "rescale_to_factor",
    "robust_demo",
    "run_proofs",
    "run_symbolic_checks",
    "synthetic_2d",
]
