"""Pruning under torch.distributed (issue 17): 2 CPU ranks with gloo, compared with one process on all the data.

The ranks run every scenario in one spawned job (``rank_results``); each test then checks one
scenario against a single-process reference computed here.
"""

from __future__ import annotations

import copy
import math
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning_core as tp
from pruning_core.testing.distributed import RankFailure, run_ranks

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORLD = 2
BATCH = 8  # global batch; each rank gets BATCH // WORLD


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def make_data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, 8, 8, generator=generator), torch.randint(0, 4, (BATCH,), generator=generator)


def local(rank: int, world: int):
    """This rank's share of the global batch (all of it for the single-process reference)."""
    x, y = make_data()
    per = BATCH // world
    return x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def summary(model: nn.Module, pruner) -> dict:
    return {"history": pruner.pruning_history(),
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}


# -- scenarios: run on each rank (rank, world) or once in this process (0, 1) -------------------------------------
def taylor(rank: int, world: int) -> dict:
    model = make_model()
    x, y = local(rank, world)
    F.cross_entropy(model(x), y).backward()
    pruner = tp.pruner.BasePruner(model, x[:1], importance=tp.importance.GroupTaylorImportance(), pruning_ratio=0.5)
    pruner.step()
    return summary(model, pruner)


def activation(rank: int, world: int) -> dict:
    model = make_model().eval()
    imp = tp.importance.ActivationImportance()
    x, _ = local(rank, world)
    with imp.record(model):
        for batch in x.split(2):
            model(batch)
    pruner = tp.pruner.BasePruner(model, x[:1], importance=imp, pruning_ratio=0.5)
    pruner.step()
    return {**summary(model, pruner), "batches": imp.batches}


def hessian(rank: int, world: int) -> dict:
    model = make_model()
    imp = tp.importance.GroupHessianImportance()
    x, y = local(rank, world)
    for i in range(x.shape[0]):
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        imp.accumulate_grad(model)
    pruner = tp.pruner.BasePruner(model, x[:1], importance=imp, pruning_ratio=0.5)
    pruner.step()
    return summary(model, pruner)


def calibrated(rank: int, world: int, importance: str, compensation: str) -> dict:
    """Calibration statistics (moments and Gram matrices) from this rank's share of the data."""
    model = make_model().eval()
    x, _ = local(rank, world)
    pruner = tp.pruner.BasePruner(model, x[:1], importance=importance, compensation=compensation,
                                  calibration=list(x.split(2)), pruning_ratio=0.5)
    pruner.step()
    return summary(model, pruner)


def wanda_lstsq(rank: int, world: int) -> dict:
    return calibrated(rank, world, "wanda", "lstsq")


def obs_bias(rank: int, world: int) -> dict:
    return calibrated(rank, world, "obs", "bias")


def divergent(rank: int, world: int) -> dict:
    out = {}
    for flag in (True, False):
        model = make_model()
        before = sum(p.numel() for p in model.parameters())
        pruner = tp.pruner.BasePruner(model, torch.randn(1, 3, 8, 8), pruning_ratio=0.5, distributed=flag,
                                      importance=tp.importance.RandomImportance(seed=rank))
        try:
            pruner.step()
            out[flag] = ("pruned", pruner.pruning_history())
        except tp.PlanMismatchError as exc:
            out[flag] = ("mismatch", str(exc), before == sum(p.numel() for p in model.parameters()))
    pruner = tp.pruner.BasePruner(make_model(), torch.randn(1, 3, 8, 8), pruning_ratio=0.5,
                                  importance=tp.importance.RandomImportance(seed=rank))
    try:
        pruner.step(interactive=True)  # the plan is checked before the first group is handed out
        out["interactive"] = None
    except tp.PlanMismatchError as exc:
        out["interactive"] = str(exc)
    model = make_model()
    imp = tp.importance.ActivationImportance()
    if rank == 0:  # rank 1 feeds no calibration data
        with imp.record(model):
            model(torch.randn(2, 3, 8, 8))
    try:
        tp.pruner.BasePruner(model, torch.randn(1, 3, 8, 8), importance=imp, pruning_ratio=0.5).step()
        out["no_data"] = None
    except tp.DistributedError as exc:
        out["no_data"] = (str(exc), sum(p.numel() for p in model.parameters()))
    # Replicas pruned differently (distributed=False) cannot be wrapped together again.
    from torch.nn.parallel import DistributedDataParallel

    from pruning_core.distributed import rewrap

    wrapped = DistributedDataParallel(make_model())
    tp.pruner.BasePruner(wrapped.module, torch.randn(1, 3, 8, 8), pruning_ratio=0.5, distributed=False,
                         importance=tp.importance.RandomImportance(seed=rank)).step()
    try:
        rewrap(wrapped)
        out["rewrap"] = None
    except tp.DistributedError as exc:
        out["rewrap"] = str(exc)
    return out


def ddp(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    from pruning_core.distributed import rewrap

    model = make_model()
    wrapped = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.05, momentum=0.9)
    x, y = local(rank, world)
    losses = []

    def train(net):
        for _ in range(3):
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())

    train(wrapped)
    try:
        tp.pruner.BasePruner(wrapped, x[:1])
        refused = None
    except tp.ConfigurationError as exc:
        refused = str(exc)
    pruner = tp.pruner.MagnitudePruner(wrapped.module, x[:1], pruning_ratio=0.5)
    pruner.step()
    replaced = tp.utils.prune_optimizer_state(optimizer, wrapped.module)
    wrapped = rewrap(wrapped)
    train(wrapped)
    return {"losses": losses, "refused": refused, "replaced": replaced,
            "params": sum(p.numel() for p in model.parameters()),
            "state": {k: v.detach().clone() for k, v in wrapped.module.state_dict().items()}}


def group_norm(rank: int, world: int) -> dict:
    model = make_model()
    pruner = tp.pruner.GroupNormPruner(model, torch.randn(1, 3, 8, 8), pruning_ratio=0.5, reg=1e-2)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = local(rank, world)
    grads = []
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        pruner.regularize(model)
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        optimizer.step()
    return {"grads": grads}


def growing_reg(rank: int, world: int) -> dict:
    """No DDP: each rank's Taylor gradients are its own until update_regularizer() reduces them."""
    model = make_model()
    pruner = tp.pruner.GrowingRegPruner(model, torch.randn(1, 3, 8, 8), pruning_ratio=0.5, reg=1e-3,
                                        delta_reg=1e-1, importance=tp.importance.GroupTaylorImportance())
    x, y = local(rank, world)
    F.cross_entropy(model(x), y).backward()
    pruner.update_regularizer()  # grows the penalty of the same channels on every rank
    pruner.regularize(model)
    return {"grads": [{n: p.grad.detach().clone() for n, p in model.named_parameters()}]}


def fsdp(rank: int, world: int) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from pruning_core.distributed import unsharded_copy

    model = make_model()
    fully_shard(model)
    try:
        tp.pruner.BasePruner(model, torch.randn(1, 3, 8, 8))
        error = None
    except tp.UnsupportedModelError as exc:
        error = str(exc)
    # The recipe: gather the full weights, prune an unsharded copy on every rank, shard again.
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    plain = unsharded_copy(model, lambda: make_model().to("meta"))
    same = all(torch.equal(plain.state_dict()[k], v) for k, v in full.items())
    tp.pruner.MagnitudePruner(plain, torch.randn(1, 3, 8, 8), pruning_ratio=0.5).step()
    fully_shard(plain)
    out = plain(local(rank, world)[0])
    return {"error": error, "finite": bool(torch.isfinite(out).all()), "shape": tuple(out.shape), "same": same}


SCENARIOS = {f.__name__: f for f in (taylor, activation, hessian, wanda_lstsq, obs_bias, divergent, ddp, group_norm, growing_reg, fsdp)}


def every_scenario(rank: int, world: int) -> dict:
    results = {}
    for name, scenario in SCENARIOS.items():
        try:
            results[name] = ("ok", scenario(rank, world))
        except Exception as exc:  # reported per scenario; the ranks stay in step (both fail alike)
            results[name] = ("error", f"{type(exc).__name__}: {exc}")
    return results


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    """The 2-rank job, run once per test session: pytest-xdist workers share it through a locked file."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return run_ranks(every_scenario, world_size=WORLD, timeout=240)
    import fcntl
    import pickle

    shared = tmp_path_factory.getbasetemp().parent / "distributed_rank_results.pkl"
    with open(str(shared) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker runs the job, the others wait and read it
        try:
            if shared.exists():
                return pickle.loads(shared.read_bytes())
            results = run_ranks(every_scenario, world_size=WORLD, timeout=240)
            shared.write_bytes(pickle.dumps(results))
            return results
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def result(rank_results, name: str, rank: int):
    status, value = rank_results[rank][name]
    assert status == "ok", f"rank {rank}: {value}"
    return value


def assert_same_pruning(got: dict, want: dict, atol: float = 1e-6) -> None:
    assert got["history"] == want["history"]
    assert got["state"].keys() == want["state"].keys()
    for key, value in want["state"].items():
        assert got["state"][key].shape == value.shape, key
        torch.testing.assert_close(got["state"][key], value, atol=atol, rtol=0)


# -- tests -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["taylor", "activation", "hessian", "wanda_lstsq", "obs_bias"])
def test_scores_from_split_data_equal_one_process_on_all_data(rank_results, name):
    reference = SCENARIOS[name](0, 1)
    assert reference["history"], "the reference pruned nothing: the test would be vacuous"
    for rank in range(WORLD):
        assert_same_pruning(result(rank_results, name, rank), reference)
    if name == "activation":
        assert [result(rank_results, name, r)["batches"] for r in range(WORLD)] == [reference["batches"]] * WORLD


@pytest.mark.parametrize("name", ["taylor", "activation", "hessian", "wanda_lstsq", "obs_bias", "ddp"])
def test_both_ranks_end_with_identical_models(rank_results, name):
    first, second = (result(rank_results, name, rank)["state"] for rank in range(WORLD))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_a_divergent_plan_raises_on_both_ranks_and_removes_nothing(rank_results):
    for rank in range(WORLD):
        outcome = result(rank_results, "divergent", rank)
        kind, message, untouched = outcome[True]
        assert kind == "mismatch" and untouched
        assert "rooted at" in message and "rank 0" in message and "rank 1" in message
        assert outcome[False][0] == "pruned"  # distributed=False: no check, the ranks silently differ
    histories = [result(rank_results, "divergent", rank)[False][1] for rank in range(WORLD)]
    assert histories[0] != histories[1]
    for rank in range(WORLD):
        message, params = result(rank_results, "divergent", rank)["no_data"]
        assert "ActivationImportance statistics" in message and "rank 0 has 'count/0'" in message
        assert params == sum(p.numel() for p in make_model().parameters())
    for rank in range(WORLD):
        assert "rooted at" in result(rank_results, "divergent", rank)["interactive"]
        message = result(rank_results, "divergent", rank)["rewrap"]
        assert message is not None and "rank 0 has" in message and "rank 1 has" in message


def test_ddp_train_prune_rewrap_train(rank_results):
    for rank in range(WORLD):
        outcome = result(rank_results, "ddp", rank)
        assert len(outcome["losses"]) == 6 and all(math.isfinite(v) for v in outcome["losses"])
        assert "ddp_model.module" in outcome["refused"]
        assert outcome["replaced"] > 0
        assert outcome["params"] < sum(p.numel() for p in make_model().parameters())


@pytest.mark.parametrize("name", ["group_norm", "growing_reg"])
def test_regularized_gradients_equal_one_process_on_the_global_batch(rank_results, name):
    reference = SCENARIOS[name](0, 1)["grads"]
    for rank in range(WORLD):
        got = result(rank_results, name, rank)["grads"]
        for step, (mine, want) in enumerate(zip(got, reference)):
            for param in want:
                torch.testing.assert_close(mine[param], want[param], atol=1e-6, rtol=1e-5,
                                           msg=lambda m: f"step {step} {param}: {m}")


def test_fully_sharded_model_is_refused_with_the_recipe_that_works(rank_results):
    for rank in range(WORLD):
        outcome = result(rank_results, "fsdp", rank)
        assert "fully_shard" in outcome["error"] and "unsharded_copy" in outcome["error"]
        assert outcome["same"] and outcome["finite"] and outcome["shape"] == (BATCH // WORLD, 4)


# -- single process ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    lambda params: torch.optim.AdamW(params, lr=0.01),
], ids=["sgd_momentum", "adamw"])
def test_optimizer_keeps_its_state_for_the_kept_channels(make_optimizer):
    model = make_model()
    optimizer = make_optimizer(model.parameters())
    x, y = make_data()
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    before = {name: copy.deepcopy(optimizer.state[p]) for name, p in model.named_parameters()}
    pruner = tp.pruner.MagnitudePruner(model, x[:1], pruning_ratio=0.5, iterative_steps=2)
    pruner.step()
    pruner.step()  # two steps: the state follows both slicings
    assert tp.utils.prune_optimizer_state(optimizer, model) == 5  # every parameter but the classifier's bias
    kept_out = model[0]._pruning_record["kept"]["out"]
    kept_in = model[2]._pruning_record["kept"]["in"]
    kept_2 = model[2]._pruning_record["kept"]["out"]
    expected = {"0.weight": lambda t: t[kept_out], "0.bias": lambda t: t[kept_out],
                "2.weight": lambda t: t[kept_2][:, kept_in], "2.bias": lambda t: t[kept_2],
                "6.weight": lambda t: t[:, kept_2], "6.bias": lambda t: t}
    assert [group["params"] for group in optimizer.param_groups] == [list(model.parameters())]
    for name, param in model.named_parameters():
        state = optimizer.state[param]
        assert state.keys() == before[name].keys()
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                assert torch.equal(value, expected[name](before[name][key])), (name, key)
            else:
                assert value == before[name][key]
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # the optimizer runs on the pruned parameters


def test_distributed_true_without_a_process_group_is_a_configuration_error():
    model = make_model()
    pruner = tp.pruner.BasePruner(model, torch.randn(1, 3, 8, 8), distributed=True)
    with pytest.raises(tp.ConfigurationError, match="init_process_group"):
        pruner.step()
    with pytest.raises(tp.ConfigurationError, match="distributed must be"):
        tp.pruner.BasePruner(model, torch.randn(1, 3, 8, 8), distributed="yes")


def test_every_built_in_criterion_with_state_takes_part_in_the_reduction():
    from pruning_core.distributed import ReducibleState

    stateful = [tp.importance.GroupTaylorImportance(), tp.importance.GroupHessianImportance(),
                tp.importance.ActivationImportance()]
    assert all(isinstance(imp, ReducibleState) for imp in stateful)
    assert not isinstance(tp.importance.GroupMagnitudeImportance(), ReducibleState)  # weights only: no state


def test_run_ranks_reports_errors_of_each_rank():
    with pytest.raises(RankFailure) as info:
        run_ranks(_fail_on_rank_one, world_size=WORLD, timeout=60)
    assert set(info.value.errors) == {1} and info.value.errors[1][0] == "ValueError"
    assert info.value.results[0] == "fine"


def _fail_on_rank_one(rank: int, world: int) -> str:
    if rank == 1:
        raise ValueError("rank one fails")
    return "fine"


def test_the_readme_recipe_is_the_example_script():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Pruning in distributed training\n"):]
    section = section[:section.index("\n## ", 5)]
    block = section[section.index("```python\n") + 10:]
    block = block[:block.index("```")]
    script = (ROOT / "examples" / "distributed_pruning.py").read_text()
    assert block == script[script.index("import gc"):], "README block and examples/distributed_pruning.py differ"
    assert "torchrun --nproc_per_node=2 examples/distributed_pruning.py" in section


@pytest.mark.slow
def test_the_readme_recipe_runs_with_torchrun(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "examples" / "distributed_pruning.py")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               cwd=tmp_path, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and its workers: nothing is left running
        process.communicate()
        pytest.fail("torchrun did not finish within 120 s")
    assert process.returncode == 0, stdout[-2000:] + stderr[-4000:]
    assert "replicas identical: True" in stdout
