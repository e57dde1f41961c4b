"""Localization: is refusal written by a small set of components that a patching run can find?

Attribution patching ranks every attention head and MLP over the post-instruction span on the
matched (harmful, harmless) test pairs; the top candidates are confirmed by exact patching, and
the top five form the circuit. Patching the circuit's activations from the harmful run into the
harmless one should restore most of the refusal (a circuit that explains the behaviour), and the
same components should come out on resampled pairs (a finding, not noise).
"""

import pytest

from refusal_probe.errors import PatchingError

pytestmark = pytest.mark.localization


@pytest.fixture(scope="session")
def circuit(findings):
    """The localized circuit, computed once per run (and kept in the disk cache)."""
    try:
        return findings.circuit()
    except PatchingError as exc:
        pytest.skip(f"the circuit could not be localized: {exc}")


def test_circuit_restores(audit, circuit):
    """Share of the refusal gap restored by patching the top components together."""
    threshold = audit.threshold("localization.circuit_restores")
    audit.check(
        "localization.circuit_restores",
        circuit.restored,
        figures=[circuit.figure(threshold)],
        details={
            "components": list(circuit.components),
            "alone": [e.value for e in circuit.effects],
            "curve": list(circuit.restored_curve),
            "n_pairs": circuit.n_pairs,
        },
    )


def test_rank_stability(audit, circuit):
    """Overlap (Jaccard) of the circuit found on resampled pairs with the full sample's."""
    audit.check(
        "localization.rank_stability",
        circuit.stability,
        details={"components": list(circuit.components), "n_pairs": circuit.n_pairs},
    )
