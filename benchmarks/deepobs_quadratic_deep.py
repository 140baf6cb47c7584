"""SGD, Adam, BPGrad and SLBI under DeepOBS 1.1.2's PyTorch runner on ``quadratic_deep``.

Every setting runs once (seed 42, batch 128) with the Hessian generator reset before each run
(DeepOBS draws the rotation from a module-level generator seeded once at import, so runs in one
process would otherwise see different problems). Prints the initial and final train loss and the
final test loss per setting; the table is in docs/integrations/deepobs.md.

DeepOBS 1.1.2 imports TensorFlow and torchvision when it is imported. ``--stand-ins`` writes
import-only stand-ins for whichever of the two is missing into a temporary directory (nothing in
them works; ``quadratic_deep`` uses neither).

    python benchmarks/deepobs_quadratic_deep.py --epochs 100 --stand-ins
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

STAND_IN = '''"""Import-only stand-in (benchmarks/deepobs_quadratic_deep.py): inert."""


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Stub

    def __call__(cls, *args, **kwargs):
        return Stub


class Stub(metaclass=_Meta):
    pass


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return Stub
'''


def stand_ins(root: Path) -> None:
    for pkg in ("tensorflow", "torchvision"):
        if importlib.util.find_spec(pkg) is None:
            (root / pkg).mkdir()
            (root / pkg / "__init__.py").write_text(STAND_IN)
            if pkg == "torchvision":
                for sub in ("datasets", "transforms"):
                    (root / pkg / f"{sub}.py").write_text(STAND_IN)
    sys.path.insert(0, str(root))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--stand-ins", action="store_true")
    ap.add_argument("--out", default=None, help="DeepOBS output folder (default: a temp dir)")
    args = ap.parse_args()
    sys.argv = sys.argv[:1]  # DeepOBS parses the command line for run arguments left None
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="deepobs_quadratic_"))
    if args.stand_ins:
        stand_ins(tmp)
    from deepobs.pytorch.runners import StandardRunner

    from beyondsgd.integrations.deepobs import hyperparameter_spec, make_runner
    from beyondsgd.methods.slbi import SLBI

    module = sys.modules["deepobs.pytorch.testproblems.quadratic_deep"]
    out_dir = args.out or str(tmp / "results")
    sgd = StandardRunner(torch.optim.SGD, {"lr": {"type": float},
                                           "momentum": {"type": float, "default": 0.9}})
    adam = StandardRunner(torch.optim.Adam, {"lr": {"type": float}})
    slbi = StandardRunner(SLBI, hyperparameter_spec("SLBI"))
    plan = ([("SGD momentum 0.9", sgd, {"lr": lr}) for lr in (0.003, 0.01, 0.03)]
            + [("Adam", adam, {"lr": lr}) for lr in (0.01, 0.03, 0.1)]
            + [("BPGrad", make_runner("bpgrad"), {"lipschitz": L})
               for L in (100.0, 300.0, 1000.0, 3000.0)]
            + [("BPGrad bound 50", make_runner("bpgrad"),
                {"lipschitz": L, "loss_lower_bound": 50.0}) for L in (100.0, 300.0, 1000.0)]
            + [("BPGrad bound 200 (wrong)", make_runner("bpgrad"),
                {"lipschitz": 100.0, "loss_lower_bound": 200.0})]
            + [("SLBI auto", slbi, {"lr": lr}) for lr in (0.003, 0.01, 0.03)])
    for label, runner, hp in plan:
        module.rng = np.random.RandomState(42)
        with warnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("always")
            res = runner.run(testproblem="quadratic_deep", hyperparams=hp,
                             num_epochs=args.epochs, random_seed=42, batch_size=128,
                             output_dir=out_dir, weight_decay=None, data_dir=str(tmp / "data"),
                             train_log_interval=10, print_train_iter=False, tb_log=False,
                             tb_log_dir="none")
        notes = sorted({str(w.message)[:70] for w in caught
                        if any(k in str(w.message) for k in ("SLBI", "BPGrad", "Breaking"))})
        print(f"{label:26s} {json.dumps(hp):46s} train {res['train_losses'][0]:7.2f} -> "
              f"{res['train_losses'][-1]:7.3f}  test {res['test_losses'][-1]:7.3f}  {notes}",
              flush=True)


if __name__ == "__main__":
    main()
