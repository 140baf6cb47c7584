"""The claims, as the papers state them: what each claims and what runs checking it needs.

Every :class:`Claim` names the paper's method, what it is compared with, the quantity, the kind
of test, the **kind of problem the paper ran** (``task``: a claim is only checked on problems of
that kind) and **where the paper states it** (``source``). A claim can be made across data
fractions (``fraction``): GDSolver's "highest accuracy using 50% of the training data" compares
GDSolver's runs at ``train_fraction`` 0.5 with the baselines' at 1.0, so the suite also runs
what :func:`fraction_runs` lists. Checking a claim against stored results (the verdicts) is
:mod:`beyondsgd.bench.analysis.claims`.

>>> [c.id for c in CLAIMS if c.fraction < 1]
['gdsolver_data']
>>> fraction_runs()
[('gdsolver', 0.5, 'classification')]
"""

from __future__ import annotations

from dataclasses import dataclass

#: ``train_loss_auc``: the mean training loss over epochs 1..E (the area under the training-loss
#: curve), for claims about speed per epoch: decided on the curve, not on its converged last point.
QUANTITIES = ("test_metric", "train_loss", "train_loss_auc", "seconds_to_target")
KINDS = ("better", "matches")


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    text: str
    method: str
    versus: tuple[str, ...]
    quantity: str  # one of QUANTITIES
    kind: str  # better | matches
    task: str  # the kind of problem the paper ran: classification | regression
    source: str  # where the paper states the claim
    paper_numbers: str = ""
    fraction: float = 1.0  # train fraction of ``method``'s runs (the comparisons run at 1.0)


_BPGRAD = "Zhang, Wu, Wang, CVPR 2018 (arXiv 1711.06959): abstract, experiments"
_GDS = "Ashok et al., IJCAI 2022 (arXiv 2207.03264): abstract"

CLAIMS: tuple[Claim, ...] = (
    Claim("bpgrad_accuracy", "BPGrad (CVPR 2018)", "beats Adagrad, Adadelta, RMSProp and Adam "
          "in test accuracy at equal epochs", "bpgrad", ("adagrad", "adadelta", "rmsprop", "adam"),
          "test_metric", "better", "classification", _BPGRAD,
          "DFW paper, CIFAR-10 WRN: BPGrad 88.62 vs Adam 84.86, Adagrad 86.07"),
    Claim("bpgrad_loss", "BPGrad (CVPR 2018)", "reaches a lower training loss than Adagrad, "
          "Adadelta, RMSProp and Adam at equal epochs", "bpgrad",
          ("adagrad", "adadelta", "rmsprop", "adam"), "train_loss", "better", "classification",
          _BPGRAD + " (training-loss curves)", "figures only"),
    Claim("proxprop_loss", "ProxProp (ICLR 2018)", "lowers the training loss faster per epoch "
          "than BackProp (both with Adam)", "proxprop", ("adam",), "train_loss_auc", "better",
          "classification", "Frerix et al., ICLR 2018: §5.3, Fig. 3 (CIFAR-10 ConvNet)",
          "faster per-epoch decrease (figure)"),
    Claim("proxprop_test", "ProxProp (ICLR 2018)", "generalises at least as well as BackProp "
          "(both with Adam)", "proxprop", ("adam",), "test_metric", "matches", "classification",
          "Frerix et al., ICLR 2018: §5.3 (test accuracy after 50 epochs), §5.1 Fig. 2 caption",
          "test 70.7% vs 69.6% (§5.3); MLP ~56% vs ~54% (§5.1)"),
    Claim("slbi_accuracy", "DessiLBI (ICML 2020)", "test accuracy comparable to SGD and Adam",
          "slbi", ("momentum", "adam"), "test_metric", "matches", "classification",
          "Fu et al., ICML 2020 (arXiv 2007.02010): abstract, Table 1",
          "Table 1 (not confirmed): DessiLBI Mom-Wd ~= SGD Mom-Wd"),
    Claim("gdsolver_mse", "GDSolver (IJCAI 2022)", "lower regression test MSE than SGD and Adam",
          "gdsolver", ("sgd", "adam"), "test_metric", "better", "regression", _GDS,
          "31.5% lower MSE"),
    Claim("gdsolver_time", "GDSolver (IJCAI 2022)", "reaches the target in less time than SGD "
          "and Adam on regression", "gdsolver", ("sgd", "adam"), "seconds_to_target", "better",
          "regression", _GDS, "48% less time"),
    Claim("gdsolver_data", "GDSolver (IJCAI 2022)", "with 50% of the training data, test "
          "accuracy at least the best of SGD and Adam with all of it", "gdsolver",
          ("sgd", "adam"), "test_metric", "matches", "classification",
          _GDS + ", data-efficiency experiments",
          "official logs: MNIST 10k hybrid 96.25 vs SGD 93.11 (20k)", fraction=0.5),
    Claim("pht_speed", "PHT alternation (arXiv 2017)", "substantially faster convergence than "
          "SGD: less time to the target than SGD and SGD+momentum", "pht_alt",
          ("sgd", "momentum"), "seconds_to_target", "better", "classification",
          "Huang, Kong, Lucey, arXiv 1712.02501: abstract (ImageNet and standard benchmarks)",
          "no numbers published"),
    Claim("pht_accuracy", "PHT alternation (arXiv 2017)", "test accuracy at least that of the "
          "ReLU network trained by Adam at the same budget", "pht_alt", ("adam",), "test_metric",
          "matches", "classification",
          "Huang, Kong, Lucey, arXiv 1712.02501: abstract ('state-of-the-art accuracy'; on "
          "ImageNet, which is not tested here: protocol/coverage.py)", "no numbers published"),
)


def fraction_runs(claims: tuple[Claim, ...] = CLAIMS) -> list[tuple[str, float, str]]:
    """(method, train fraction, task) of the runs below 100% of the data that claims need."""
    return sorted({(c.method, c.fraction, c.task) for c in claims if c.fraction < 1.0})
