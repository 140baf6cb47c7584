"""Data parallelism: W=2 gloo processes on 127.0.0.1 vs one process on the same global batch.

The two processes are spawned once per module; each runs every method (and the direction
functions of ProxProp and the collectives) and saves its results, which the tests compare with
single-process runs in this process. The global batch is the problem's batch (64 for digits_mlp:
1079 training rows give 16 full batches and a last one of 55, split 28/27 between the ranks, so
the uneven-split loss scaling is exercised).

Tolerances are measured, not tuned: two processes sum each batch's gradient (and loss) in
another order than one process, so they may differ from it by what float round-off does to that
method -- from a few ulps (SGD) to 1e-2 (PHT alternation's line searches branch differently).
Each comparison therefore measures that round-off floor here, on this machine: the same
one-process run with every input moved by one ulp (:func:`_ulp_perturbed`), and asserts that the
1-vs-2-process difference is at most ``FLOOR_FACTOR`` times the largest difference such a
perturbation makes (plus a few-ulp absolute floor, for quantities round-off leaves unchanged).
Every process runs with one thread (set explicitly here and by ``launch_local``)."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist

from beyondsgd import distributed as D
from beyondsgd.bench.problems import get_problem
from beyondsgd.bench.run.runner import DATA_SPLIT_SEED, run_trial
from beyondsgd.bench.store import Store
from beyondsgd.methods import METHODS
from beyondsgd.methods.proxprop import (
    ProxConfig,
    conv2d_prox_direction,
    linear_prox_direction,
)

PROBLEM = "digits_mlp"
EPOCHS = 2
WORLD = 2
THREADS = 1  # every process, this one included: results depend on the thread count

# every registered method at its defaults, plus variants that take other distributed paths
PLAN: dict[str, tuple[str, dict]] = {m: (m, {}) for m in METHODS}
# (GDSolver's MILPs are bounded by its node limit, so their outcome does not depend on the
# machine's speed; they take 0.15 s here, and its default time limit, 30 s, is only a safety net)
PLAN.update({
    "gdsolver": ("gdsolver", {"solve_every": 1, "n_points": 24, "keep_worse": True}),
    "gdsolver_random": ("gdsolver", {"solve_every": 1, "n_points": 24, "selection": "random",
                                     "keep_worse": True}),
    "proxprop_exact": ("proxprop", {"solver": "exact"}),
    "proxprop_mean": ("proxprop", {"gram": "mean", "cg_block": "layer"}),
    "bpgrad_running_mean": ("bpgrad", {"loss_estimate": "running_mean"}),
    "pht_alt_step": ("pht_alt", {"layer_solve_on": "step", "damping": 1e-2}),
    "pht_alt_epoch_refresh": ("pht_alt", {"refresh": "epoch", "layer_solve": "none"}),
})

# The round-off floor. One-ulp input perturbations of the one-process run, measured on digits_mlp
# (2 epochs, 16 perturbations each, 1 thread): SGD, momentum, SLBI, BPGrad, GDSolver, PHT-SGD move
# the parameters by 1e-8 .. 4e-7, Adam(W)/Adagrad/ProxProp-CG by up to 2e-6, RMSprop and PHT-Adam
# by 4e-6 .. 2e-5; and some runs branch: a ReLU unit at its kink turns on or off in one of the
# runs (Adadelta: 5e-4 in 15 of 16 perturbations, else 7e-8; ProxProp: 8e-4 in 2 of 16;
# ProxProp exact: 1e-3 in 11 of 16, else 1e-5), and PHT alternation's L-BFGS line searches and
# per-step least squares go other ways (1e-5 .. 2e-2). The two-process run is one more such
# draw, so a method's floor is the largest difference over several perturbations. Perturbed runs
# are drawn one at a time until the floor covers the observed difference, at most MAX_DRAWS:
# a passing method costs 1-3 extra one-process runs (0.02-0.4 s each), a rare branch (ProxProp,
# 1 in 8) is found within MAX_DRAWS with probability 1 - (7/8)^MAX_DRAWS > 0.998.
FLOOR_FACTOR = 4.0
MAX_DRAWS = 48
EPS32 = torch.finfo(torch.float32).eps
ABS_FLOOR = 8 * EPS32  # relative differences of parameters and losses that are always round-off
LOSSES = ("train_loss", "val_loss", "test_loss")
_ENV_AT_IMPORT = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    """The one-process references run with THREADS threads, as the spawned processes do."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ulp_perturbed(t: torch.Tensor, seed: int) -> torch.Tensor:
    """``t`` with every non-zero entry moved by one ulp, up or down at random (zeros stay: their
    neighbours are subnormal, which would only slow the arithmetic down)."""
    g = torch.Generator().manual_seed(seed)
    up = torch.randint(0, 2, t.shape, generator=g).bool()
    inf = torch.full_like(t, math.inf)
    moved = torch.nextafter(t, torch.where(up, inf, -inf))
    return torch.where(t == 0, t, moved)


def _directions(seed: int = 0, perturb: int | None = None) -> dict[str, torch.Tensor]:
    """ProxProp directions for fixed random layers: the global-batch inputs are generated on
    every rank from the same seed; each rank passes its half with distributed=True. ``perturb``:
    move every input by one ulp (:func:`_ulp_perturbed` with that seed; one process only)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    x = torch.randn(10, 6, generator=g, dtype=torch.float64)
    go = torch.randn(10, 4, generator=g, dtype=torch.float64)
    xc = torch.randn(5, 4, 7, 7, generator=g, dtype=torch.float64)
    gc = torch.randn(6, 2 * 9 + 1, generator=g, dtype=torch.float64)  # groups=2: 2 in-ch/group
    if perturb is not None:
        x, go, xc, gc = (_ulp_perturbed(t, 4 * perturb + j) for j, t in enumerate((x, go, xc, gc)))
    from beyondsgd.methods.proxprop import ConvGeometry
    geo = ConvGeometry((1, 1), (1, 1), (1, 1), 2)
    local = D.active()
    for solver in ("exact", "cg"):
        for gram in ("sum", "mean"):
            cfg = ProxConfig(tau_theta=0.7, solver=solver, cg_iters=4, cg_tol=0.0, gram=gram,
                             distributed=local if local else False)
            xs, gos = (D.local_rows(x), D.local_rows(go)) if local else (x, go)
            # each rank's gradient is that of its loss scaled as DDP expects (mean = global)
            gth = torch.cat([gos.T @ xs, gos.sum(0)[:, None]], 1) * (WORLD if local else 1)
            out[f"linear_{solver}_{gram}"] = linear_prox_direction(xs, gos, gth, True, cfg)
            xcs = D.local_rows(xc) if local else xc
            # the conv gradient is an input here; scale each rank's share like a loss gradient
            gcs = gc * (xcs.shape[0] / xc.shape[0]) * (WORLD if local else 1)
            out[f"conv_{solver}_{gram}"] = conv2d_prox_direction(
                xcs, gcs, torch.Size([6, 2, 3, 3]), True, geo, cfg)
    return out


def _summary(res) -> dict:
    return {"status": res.status, "evals": res.evals, "events": res.events,
            "params": {k: v.detach().clone() for k, v in res.model.state_dict().items()}}


def _worker(rank: int, out_dir: str, data_dir: str, plan: dict) -> None:
    """Runs in each of the WORLD processes (process group initialised by launch_local)."""
    os.environ["BEYONDSGD_DATA"] = data_dir
    assert dist.get_world_size() == WORLD and D.active()
    results: dict = {"directions": _directions(),
                     "gathered": D.all_gather_rows(torch.arange(3 + rank) + 10 * rank),
                     "summed": D.all_reduce_sum(torch.tensor([1.0 + rank])),
                     "threads": (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))}
    # independent runs under an initialised group: no method may communicate
    results["independent"] = {
        m: run_trial(PROBLEM, m, {}, seed=rank, epochs=1, distributed=False).evals
        for m in ("bpgrad", "proxprop", "pht_alt")}
    for name, (method, hp) in plan.items():
        results[name] = _summary(run_trial(PROBLEM, method, hp, seed=1, epochs=EPOCHS,
                                           distributed=True))
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def run_two_process(out_dir, plan: dict = PLAN) -> list[dict]:
    D.launch_local(_worker, WORLD, str(out_dir), os.environ["BEYONDSGD_DATA"], plan,
                   threads=THREADS)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False)
            for r in range(WORLD)]


@pytest.fixture(scope="module")
def two_process(tmp_path_factory):
    return run_two_process(tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def one_process():
    return {name: _summary(run_trial(PROBLEM, method, hp, seed=1, epochs=EPOCHS))
            for name, (method, hp) in PLAN.items()}


def _max_rel(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()
                     / max(1.0, float(b[k].double().abs().max()))) for k in b)


def perturbed_data(draw: int, problem: str = PROBLEM):
    """The problem's data with every input (train, validation, test) moved by one ulp."""
    data = get_problem(problem).load(DATA_SPLIT_SEED)
    return dataclasses.replace(data, **{k: _ulp_perturbed(getattr(data, k), 3 * draw + j)
                                        for j, k in enumerate(("x_train", "x_val", "x_test"))})


def _gaps(a: dict, b: dict) -> dict[str, float]:
    """How far run ``a`` is from the reference run ``b``, per compared quantity: the largest
    parameter difference relative to the parameters' scale, each evaluation's losses (relative)
    and test accuracy (absolute), each MILP's objective (relative)."""
    out = {"params": _max_rel(a["params"], b["params"])} if "params" in a else {}
    for i, (ea, eb) in enumerate(zip(a["evals"], b["evals"])):
        for k in LOSSES:
            out[f"{k}@{i}"] = abs(ea[k] - eb[k]) / max(abs(eb[k]), 1e-30)
        out[f"test_metric@{i}"] = abs(ea["test_metric"] - eb["test_metric"])
    milps = [[e for e in r.get("events", []) if e["kind"] == "milp"] for r in (a, b)]
    for j, (ea, eb) in enumerate(zip(*milps)):
        out[f"milp_objective@{j}"] = abs(ea["objective"] - eb["objective"]) \
            / max(abs(eb["objective"]), 1e-30)
    return out


def _abs_floor(quantity: str, n_test: int) -> float:
    """What any round-off may do to a quantity, whatever the measured floor: a few ulps of a
    relative difference, one test row of the accuracy."""
    return 1.0 / n_test if quantity.startswith("test_metric") else ABS_FLOOR


def assert_within_roundoff(what: str, gap: dict[str, float],
                           draws: Callable[[int], dict[str, float]], n_test: int = 1,
                           max_draws: int = MAX_DRAWS) -> None:
    """``gap`` (the 1-vs-2-process differences) within FLOOR_FACTOR times the round-off floor:
    the largest differences that one-ulp perturbations make, drawn with ``draws(k)`` one at a
    time until they cover ``gap`` or ``max_draws`` were drawn. A gap of a few ulps
    (:func:`_abs_floor`) needs no draw: any change of summation order may make it."""
    floor = dict.fromkeys(gap, 0.0)

    def beyond() -> dict[str, tuple[float, float]]:
        return {q: (g, floor[q]) for q, g in gap.items()
                if g > FLOOR_FACTOR * floor[q] + _abs_floor(q, n_test)}

    k = 0
    while beyond() and k < max_draws:
        d = draws(k)
        floor = {q: max(f, d.get(q, 0.0)) for q, f in floor.items()}
        k += 1
    assert not beyond(), (
        f"{what}: (difference, round-off floor of {k} one-ulp perturbations) beyond "
        f"{FLOOR_FACTOR:g} x floor + abs floor: {beyond()}")


def _trial_draws(method: str, hp: dict, ref: dict, seed: int = 1, epochs: int = EPOCHS,
                 ) -> Callable[[int], dict[str, float]]:
    def draw(k: int) -> dict[str, float]:
        res = run_trial(PROBLEM, method, hp, seed=seed, epochs=epochs, dataset=perturbed_data(k))
        return _gaps(_summary(res), ref)
    return draw


def _n_test() -> int:
    return len(get_problem(PROBLEM).load(DATA_SPLIT_SEED).y_test)


def test_collectives(two_process):
    for r, res in enumerate(two_process):
        assert res["gathered"].tolist() == [0, 1, 2, 10, 11, 12, 13], r
        assert res["summed"].tolist() == [3.0]


def test_spawned_processes_run_with_the_set_thread_count(two_process):
    for res in two_process:
        assert res["threads"] == (THREADS, str(THREADS))
    # launch_local set the children's environment, and left this process's as it was
    assert {k: os.environ.get(k) for k in _ENV_AT_IMPORT} == _ENV_AT_IMPORT


def test_launch_local_refuses_a_bad_thread_count():
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="threads"):
            D.launch_local(_worker, 2, threads=bad)


def test_ulp_perturbation_moves_every_nonzero_entry_by_one_ulp():
    t = torch.tensor([0.0, 1.0, -3.5, 1e-3, 7.0, -0.25] * 20)
    p = _ulp_perturbed(t, 0)
    assert p[t == 0].eq(0).all()
    nz = t != 0
    steps = (p[nz] - t[nz]).abs() / torch.finfo(t.dtype).eps / t[nz].abs()
    assert ((steps > 0.49) & (steps <= 1.0)).all()  # one ulp: between eps/2 and eps relative
    assert (p > t).any() and (p < t).any()


def test_distributed_false_runs_stay_independent(two_process):
    """run_trial(distributed=False) under an initialised group: each rank's trial equals the
    one-process trial of its seed (BPGrad, ProxProp, PHT do not average over the ranks).

    Equality is exact, and holds on any machine: the same code on the same inputs with the same
    thread count in processes of the same machine is deterministic; averaging anything over the
    ranks (which run other seeds) would change the numbers."""
    for rank, res in enumerate(two_process):
        for method, evals in res["independent"].items():
            ref = run_trial(PROBLEM, method, {}, seed=rank, epochs=1).evals
            assert [e["train_loss"] for e in evals] == [e["train_loss"] for e in ref], method


def test_shard_bounds_cover_rows_once():
    for n in (0, 1, 5, 55, 64):
        for w in (1, 2, 3, 8):
            spans = [D.shard_bounds(n, w, r) for r in range(w)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1
    with pytest.raises(ValueError, match="rank"):
        D.shard_bounds(10, 2, 2)


def _direction_gaps(a: dict, b: dict) -> dict[str, float]:
    return {k: float((a[k] - b[k]).abs().max() / max(1.0, float(b[k].abs().max()))) for k in b}


def test_proxprop_directions_match_the_global_batch(two_process):
    ref = _directions()
    for r, res in enumerate(two_process):
        assert_within_roundoff(f"rank {r} directions", _direction_gaps(res["directions"], ref),
                               lambda k: _direction_gaps(_directions(perturb=k), ref))
    # the floor is float64 round-off (the systems are well conditioned), not a large tolerance
    assert max(_direction_gaps(_directions(perturb=0), ref).values()) < 1e-12


@pytest.mark.parametrize("name", list(PLAN))
def test_two_processes_equal_one_process(two_process, one_process, name):
    ref = one_process[name]
    r0, r1 = two_process[0][name], two_process[1][name]
    assert r0["status"] == r1["status"] == ref["status"] == "finished"
    # the replicas stay bitwise identical (DDP plus each method's collectives)
    assert all(e["replica_max_diff"] == 0.0 for e in r0["evals"])
    torch.testing.assert_close(r0["params"], r1["params"], rtol=0, atol=0)
    assert len(r0["evals"]) == len(ref["evals"])
    assert [e["step"] for e in r0["evals"]] == [e["step"] for e in ref["evals"]]
    assert [e["kind"] for e in r0["events"]] == [e["kind"] for e in ref["events"]]
    for e2, e1 in zip(r0["events"], ref["events"]):
        if e1["kind"] == "milp":  # the same points and the same solver outcome
            assert (e2["status"], e2["n_points"], e2["accepted"]) == \
                (e1["status"], e1["n_points"], e1["accepted"])
    # and equal the one-process run on the global batch up to float round-off: parameters,
    # losses, test accuracy and MILP objectives within FLOOR_FACTOR x the measured floor
    method, hp = PLAN[name]
    assert_within_roundoff(name, _gaps(r0, ref), _trial_draws(method, hp, ref), _n_test())


def test_gdsolver_solved_in_every_epoch(one_process):
    milps = [e for e in one_process["gdsolver"]["events"] if e["kind"] == "milp"]
    assert len(milps) == EPOCHS and all(e["accepted"] for e in milps)


def test_roundoff_check_catches_a_real_difference(one_process):
    """The floor-based comparison is not vacuous: SGD run with a learning rate 1e-3 larger (a
    bug of that size in the loss scaling, say) is far beyond SGD's round-off floor."""
    ref = one_process["sgd"]
    lr = {h.name: h.default for h in METHODS["sgd"].hparams}["lr"]
    off = _summary(run_trial(PROBLEM, "sgd", {"lr": lr * (1 + 1e-3)}, seed=1, epochs=EPOCHS))
    with pytest.raises(AssertionError, match="round-off floor"):
        assert_within_roundoff("sgd lr+1e-3", _gaps(off, ref), _trial_draws("sgd", {}, ref),
                               _n_test(), max_draws=8)


def test_distributed_true_without_a_group_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not initialised"):
        D.resolve(True)
    with pytest.raises(ValueError, match="distributed"):
        D.resolve("yes")
    assert D.resolve(None) is False and D.all_reduce_sum(torch.ones(2)).tolist() == [1.0, 1.0]


def test_torchrun_cli_train_writes_one_trial(tmp_path):
    """`beyondsgd train` under torchrun with two processes: rank 0 alone writes the store, and
    the numbers equal a one-process run of the same trial up to its round-off floor."""
    store = tmp_path / "ddp.db"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=str(THREADS),
               MKL_NUM_THREADS=str(THREADS))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "beyondsgd.cli", "train", "--problem", PROBLEM, "--method", "bpgrad",
           "--epochs", "1", "--store", str(store), "--threads", str(THREADS), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("status: finished") == 1  # rank 0 prints, rank 1 is quiet
    ref = _summary(run_trial(PROBLEM, "bpgrad", {}, seed=0, epochs=1))
    with Store(store) as st:
        (t,) = st.trials()
        assert t["env"]["world_size"] == 2
        evals = st.evals(t["id"])
    assert len(evals) == 2
    assert_within_roundoff("torchrun bpgrad", _gaps({"evals": evals}, ref),
                           _trial_draws("bpgrad", {}, ref, seed=0, epochs=1), _n_test())
