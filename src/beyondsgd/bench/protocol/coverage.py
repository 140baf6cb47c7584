"""The papers' claims that have **no verdict row**, each with the reason and where it is measured.

The claims table (:mod:`.claims`) and ``beyondsgd reproduce`` give a verdict where the stored
trials can decide one. A claim below is left out of both on purpose: it needs data or hardware
this project cannot use (ImageNet, a GPU), or a one-off measurement that is not a comparison
between seeds (solver cost against problem size). Each entry says why and where a number is,
so a reader never has to wonder whether a claim was forgotten. The reports list them under
"Claims without a verdict row".

>>> len({g.paper for g in UNCHECKED})
4
>>> all(g.reason and g.evidence for g in UNCHECKED)
True
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Unchecked:
    """A claim with no verdict row: what the paper says, where, why no row, what we measured."""

    paper: str
    claim: str
    source: str      # where the paper states it
    reason: str      # why there is no verdict row
    evidence: str    # where a related measurement is (command, file), with its number


UNCHECKED: tuple[Unchecked, ...] = (
    Unchecked(
        "DessiLBI (ICML 2020)",
        "winning tickets: the support of Γ at an early epoch, applied to the initial weights and "
        "retrained, reaches the accuracy of the fully trained dense net",
        "Fu et al., ICML 2020: abstract, §5 (ResNet-56 / VGG16 on CIFAR-10, mask of epoch 35, "
        "160 epochs of retraining)",
        "the retraining stage is not part of `reproduce dessilbi_lenet` yet; at the paper's "
        "budget (two 160-epoch CIFAR-10 trainings per seed) it needs a GPU",
        "`python benchmarks/slbi_tickets.py` (Fashion-MNIST, 6 retraining epochs, "
        "docs/methods/slbi.md): at 24-48 % of the parameters the tickets come within 1-2 points "
        "of dense SGD, and random and magnitude masks of the same per-layer sizes do as well"),
    Unchecked(
        "ProxProp (ICLR 2018)",
        "the exact prox solve and CG solves cost a runtime comparable to BackProp (exact solve "
        "competitive on a GPU)",
        "Frerix et al., ICLR 2018: §5.1, Fig. 2",
        "a cost ratio, not a comparison of seeds; the GPU half cannot be measured here (no GPU)",
        "`python benchmarks/speed.py` (README, 'What we measured'): cg3 / BackProp per step "
        "1.55x on the paper's 784-4000-1000-4000-10 MLP at batch 500, 2.2x on the paper's "
        "ConvNet at batch 128 (1 CPU thread)"),
    Unchecked(
        "GDSolver (IJCAI 2022)",
        "the solver step scales: its size and time depend on the last layer's width and the "
        "batch of points, not on the network's depth",
        "Ashok et al., IJCAI 2022: §4 (the MILP over the last layer)",
        "a property of the formulation (the MILP's variables are the head's weights and the "
        "points' indicators), measured as solve time against size rather than between seeds",
        "`python benchmarks/gdsolver_milp_scaling.py` (docs/methods/gdsolver.md): MILP "
        "0.06-1.3 s for 16-256 points on a 128->10 head, 0.10-12 s on a 256->10 head; the "
        "MILP is built from the last hidden layer's features only, so depth does not enter"),
    Unchecked(
        "PHT alternation (arXiv 2017)",
        "state-of-the-art accuracy on ImageNet and standard benchmarks",
        "Huang, Kong, Lucey, arXiv 1712.02501: abstract",
        "ImageNet cannot be used here and the paper gives no number to compare with; on our "
        "classification problems the claim is the row `pht_accuracy` (pht_alt matches Adam's "
        "test accuracy at the same budget)",
        "`beyondsgd suite --budget small` (README, benchmark results): `pht_accuracy` on digits, "
        "mnist1d and Fashion-MNIST"),
)


def unchecked_markdown(items: tuple[Unchecked, ...] = UNCHECKED) -> str:
    """The list as a Markdown section body: one bullet per claim."""
    return "\n".join(
        f"- **{g.paper}**: {g.claim} ({g.source}). No row: {g.reason}. Measured: {g.evidence}."
        for g in items) + "\n"
