"""Data parallelism: W=2 gloo processes on 127.0.0.1 vs one process on the same global batch.

The two processes are spawned once per module; each runs every method (and the direction
functions of ProxProp and the collectives) and saves its results, which the tests compare with
single-process runs in this process. The global batch is the problem's batch (64 for digits_mlp:
1079 training rows give 16 full batches and a last one of 55, split 28/27 between the ranks, so
the uneven-split loss scaling is exercised)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from beyondsgd import distributed as D
from beyondsgd.bench.runner import run_trial
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

# every registered method at its defaults, plus variants that take other distributed paths
PLAN: dict[str, tuple[str, dict]] = {m: (m, {}) for m in METHODS}
PLAN.update({
    "gdsolver": ("gdsolver", {"solve_every": 1, "n_points": 24, "keep_worse": True,
                              "time_limit": 10.0}),
    "gdsolver_random": ("gdsolver", {"solve_every": 1, "n_points": 24, "selection": "random",
                                     "keep_worse": True, "time_limit": 10.0}),
    "proxprop_exact": ("proxprop", {"solver": "exact"}),
    "proxprop_mean": ("proxprop", {"gram": "mean", "cg_block": "layer"}),
    "bpgrad_running_mean": ("bpgrad", {"loss_estimate": "running_mean"}),
    "pht_alt_step": ("pht_alt", {"exact_on": "step", "damping": 1e-2}),
    "pht_alt_epoch_refresh": ("pht_alt", {"refresh": "epoch", "exact": "none"}),
})


# Methods whose result moves by much more than float round-off when their input moves by
# float round-off, in one process: multiplying the training inputs by (1 + 6e-8 N(0,1)) changes
# the parameters after 2 epochs by 4e-5 .. 5.2e-3 (pht_alt: 20 L-BFGS iterations with a line
# search, far from convergence, branch differently), 8.0e-4 (proxprop exact: the sum-Gram system
# is ill-conditioned; the one-process solver also takes the Woodbury form) and 7.7e-4 (pht_alt
# exact_on=step: lstsq on each minibatch); 1 vs 2 torch threads moves them as much. Everything
# else stays within 1e-4 (measured 1e-8 .. 1e-6).
TOLERANCE = {"pht_alt": 1e-2, "proxprop_exact": 2e-3, "pht_alt_step": 2e-3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _directions(seed: int = 0) -> dict[str, torch.Tensor]:
    """ProxProp directions for fixed random layers: the global-batch inputs are generated on
    every rank from the same seed; each rank passes its half with distributed=True."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    x = torch.randn(10, 6, generator=g, dtype=torch.float64)
    go = torch.randn(10, 4, generator=g, dtype=torch.float64)
    xc = torch.randn(5, 4, 7, 7, generator=g, dtype=torch.float64)
    gc = torch.randn(6, 2 * 9 + 1, generator=g, dtype=torch.float64)  # groups=2: 2 in-ch/group
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


def _worker(rank: int, out_dir: str, data_dir: str, plan: dict) -> None:
    """Runs in each of the WORLD processes (process group initialised by launch_local)."""
    os.environ["BEYONDSGD_DATA"] = data_dir
    assert dist.get_world_size() == WORLD and D.active()
    results: dict = {"directions": _directions(),
                     "gathered": D.all_gather_rows(torch.arange(3 + rank) + 10 * rank),
                     "summed": D.all_reduce_sum(torch.tensor([1.0 + rank]))}
    # independent runs under an initialised group: no method may communicate
    results["independent"] = {
        m: run_trial(PROBLEM, m, {}, seed=rank, epochs=1, distributed=False).evals
        for m in ("bpgrad", "proxprop", "pht_alt")}
    for name, (method, hp) in plan.items():
        res = run_trial(PROBLEM, method, hp, seed=1, epochs=EPOCHS, distributed=True)
        results[name] = {"status": res.status, "evals": res.evals, "events": res.events,
                         "params": {k: v.detach().clone()
                                    for k, v in res.model.state_dict().items()}}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def run_two_process(out_dir, plan: dict = PLAN) -> list[dict]:
    D.launch_local(_worker, WORLD, str(out_dir), os.environ["BEYONDSGD_DATA"], plan)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False)
            for r in range(WORLD)]


@pytest.fixture(scope="module")
def two_process(tmp_path_factory):
    return run_two_process(tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def one_process():
    out = {}
    for name, (method, hp) in PLAN.items():
        res = run_trial(PROBLEM, method, hp, seed=1, epochs=EPOCHS)
        out[name] = {"status": res.status, "evals": res.evals, "events": res.events,
                     "params": res.model.state_dict()}
    return out


def _max_rel(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()
                     / max(1.0, float(b[k].double().abs().max()))) for k in b)


def test_collectives(two_process):
    for r, res in enumerate(two_process):
        assert res["gathered"].tolist() == [0, 1, 2, 10, 11, 12, 13], r
        assert res["summed"].tolist() == [3.0]


def test_distributed_false_runs_stay_independent(two_process):
    """run_trial(distributed=False) under an initialised group: each rank's trial equals the
    one-process trial of its seed (BPGrad, ProxProp, PHT do not average over the ranks)."""
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


def test_proxprop_directions_match_the_global_batch(two_process):
    ref = _directions()
    for res in two_process:
        for key, d in res["directions"].items():
            torch.testing.assert_close(d, ref[key], rtol=1e-9, atol=1e-10, msg=key)


@pytest.mark.parametrize("name", list(PLAN))
def test_two_processes_equal_one_process(two_process, one_process, name):
    ref = one_process[name]
    r0, r1 = two_process[0][name], two_process[1][name]
    assert r0["status"] == r1["status"] == ref["status"] == "finished"
    # the replicas stay bitwise identical (DDP plus each method's collectives)
    assert all(e["replica_max_diff"] == 0.0 for e in r0["evals"])
    torch.testing.assert_close(r0["params"], r1["params"], rtol=0, atol=0)
    # and equal the one-process run on the global batch up to float round-off
    tol = TOLERANCE.get(name, 1e-4)
    assert _max_rel(r0["params"], ref["params"]) < tol, _max_rel(r0["params"], ref["params"])
    for e2, e1 in zip(r0["evals"], ref["evals"], strict=True):
        for k in ("train_loss", "val_loss", "test_loss"):
            assert math.isclose(e2[k], e1[k], rel_tol=tol, abs_tol=1e-6), (k, e2, e1)
        assert abs(e2["test_metric"] - e1["test_metric"]) <= 2 / 359  # at most 2 test rows
        assert e2["step"] == e1["step"]
    assert [e["kind"] for e in r0["events"]] == [e["kind"] for e in ref["events"]]
    for e2, e1 in zip(r0["events"], ref["events"]):
        if e1["kind"] == "milp":  # the same points and the same solver outcome
            assert (e2["status"], e2["n_points"], e2["accepted"]) == \
                (e1["status"], e1["n_points"], e1["accepted"])
            assert math.isclose(e2["objective"], e1["objective"], rel_tol=1e-6)


def test_gdsolver_solved_in_every_epoch(one_process):
    milps = [e for e in one_process["gdsolver"]["events"] if e["kind"] == "milp"]
    assert len(milps) == EPOCHS and all(e["accepted"] for e in milps)


def test_distributed_true_without_a_group_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not initialised"):
        D.resolve(True)
    with pytest.raises(ValueError, match="distributed"):
        D.resolve("yes")
    assert D.resolve(None) is False and D.all_reduce_sum(torch.ones(2)).tolist() == [1.0, 1.0]


def test_torchrun_cli_train_writes_one_trial(tmp_path):
    """`beyondsgd train` under torchrun with two processes: rank 0 alone writes the store, and
    the numbers equal a one-process run of the same trial."""
    store = tmp_path / "ddp.db"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "beyondsgd.cli", "train", "--problem", PROBLEM, "--method", "bpgrad",
           "--epochs", "1", "--store", str(store), "--threads", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("status: finished") == 1  # rank 0 prints, rank 1 is quiet
    ref = run_trial(PROBLEM, "bpgrad", {}, seed=0, epochs=1)
    with Store(store) as st:
        (t,) = st.trials()
        assert t["env"]["world_size"] == 2
        evals = st.evals(t["id"])
    assert len(evals) == 2
    assert math.isclose(evals[-1]["train_loss"], ref.evals[-1]["train_loss"], rel_tol=1e-4)
