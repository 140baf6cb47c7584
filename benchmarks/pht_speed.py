"""Cost of the PHT alternation (issue 26): seconds per epoch of ``pht_alt`` against ``sgd``, and
the damped against the undamped hidden-layer least-squares solve.

``measure(rounds=3) -> dict`` (importable, e.g. by ``benchmarks/speed.py``):

* ``"epoch"``: for digits_mlp (MLP 64-128-128-10) and mnist1d_mlp (MLP 40-256-256-10), the
  runner's ``pht_alt`` with its defaults (K = 5 Adam steps per support step, last-layer L-BFGS
  solve after each epoch) and ``sgd`` with its defaults, ``epochs`` epochs each through
  ``run_trial`` (``train_seconds``: steps and end-of-epoch hooks, evaluation excluded), the two
  methods interleaved in every round; ``ratio`` is the median over rounds of the per-round
  ratio of seconds per epoch (the issue's goal: at most K + 1 = 6).
* ``"solve"``: on diabetes_mlp (MLP 10-64-64-1, 266 training rows), one lstsq solve of the
  second hidden layer (64 x 65 = 4160 unknowns) under the supports of the untrained PHT network
  (seed 0), with the default damping 1e-3 and undamped, interleaved; ``ratio`` damped/undamped
  (goal: at most 2).

One torch thread; ``load_average`` is the 1-minute load when measuring starts and ends.

    OMP_NUM_THREADS=1 python benchmarks/pht_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from beyondsgd.bench.problems import PROBLEMS
from beyondsgd.bench.run.runner import DATA_SPLIT_SEED, run_trial
from beyondsgd.methods.pht import pht, record_support, solvable_layers, solve_layer

EPOCH_PROBLEMS = ("digits_mlp", "mnist1d_mlp")


def _epoch_ratio(problem: str, rounds: int, epochs: int) -> dict:
    seconds: dict[str, list[float]] = {"pht_alt": [], "sgd": []}
    run_trial(problem, "sgd", epochs=1)  # data loaded and cached, code warmed up
    for _ in range(rounds):
        for method in ("pht_alt", "sgd"):
            res = run_trial(problem, method, epochs=epochs, seed=0)
            seconds[method].append(res.evals[-1]["train_seconds"] / epochs)
    ratios = [a / b for a, b in zip(seconds["pht_alt"], seconds["sgd"], strict=True)]
    return {"pht_alt_s_per_epoch": statistics.median(seconds["pht_alt"]),
            "sgd_s_per_epoch": statistics.median(seconds["sgd"]),
            "ratio": statistics.median(ratios), "ratios": ratios}


def _solve_ratio(rounds: int) -> dict:
    prob = PROBLEMS["diabetes_mlp"]
    data = prob.load(DATA_SPLIT_SEED)
    net = pht(prob.build_model(data, "relu", 0))
    x, y = data.x_train, data.y_train
    index = solvable_layers(net)[1]  # the second hidden layer, 64 -> 64
    start = {k: v.clone() for k, v in net.state_dict().items()}
    _, masks = record_support(net, x)
    seconds: dict[str, list[float]] = {"damped": [], "undamped": []}
    for _ in range(rounds):
        for key, damping in (("damped", 1e-3), ("undamped", 0.0)):
            net.load_state_dict(start)
            t = time.perf_counter()
            solve_layer(net, index, x, y, "mse", masks, solver="lstsq", damping=damping)
            seconds[key].append(time.perf_counter() - t)
    ratios = [a / b for a, b in zip(seconds["damped"], seconds["undamped"], strict=True)]
    return {"problem": "diabetes_mlp", "layer": index, "rows": int(x.shape[0]),
            "unknowns": int(net[index].weight.numel() + net[index].bias.numel()),
            "damped_s": statistics.median(seconds["damped"]),
            "undamped_s": statistics.median(seconds["undamped"]),
            "ratio": statistics.median(ratios), "ratios": ratios}


def measure(rounds: int = 3, epochs: int = 3, solve_rounds: int | None = None,
            problems: tuple[str, ...] = EPOCH_PROBLEMS) -> dict:
    """The ratios above; one torch thread while measuring (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict = {"load_average": [os.getloadavg()[0]], "torch_threads": 1, "rounds": rounds,
                     "epochs": epochs}
        out["epoch"] = {p: _epoch_ratio(p, rounds, epochs) for p in problems}
        out["solve"] = _solve_ratio(rounds if solve_rounds is None else solve_rounds)
        out["load_average"].append(os.getloadavg()[0])
        return out
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--solve-rounds", type=int, default=None)
    args = ap.parse_args()
    print(json.dumps(measure(args.rounds, args.epochs, args.solve_rounds), indent=1))


if __name__ == "__main__":
    main()
