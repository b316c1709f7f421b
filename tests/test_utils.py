"""tp.utils: MACs and parameter counting, benchmarks, latency comparison, print_tool, plots."""

import sys

import pytest
import torch
import torchvision
from torch import nn

import pruning_core as tp
from pruning_core.utils.latency import LatencyComparison, Timing


def test_resnet18_macs_and_params_match_published_numbers():
    model = torchvision.models.resnet18().eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.randn(1, 3, 224, 224))
    assert params == 11_689_512
    assert abs(macs - 1.814e9) / 1.814e9 < 0.01


def test_counting_works_on_meta_tensors_and_per_layer():
    with torch.device("meta"):
        model = torchvision.models.resnet50()
        x = torch.randn(1, 3, 224, 224)
    macs, params, layer_macs, layer_params = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    assert abs(macs - 4.09e9) / 4.09e9 < 0.01
    assert params == 25_557_032
    assert layer_macs[model.conv1] == 118_013_952
    assert layer_params[model.conv1] == 64 * 3 * 7 * 7


def test_layer_wise_returns_torch_prunings_four_values_keyed_by_module():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 4), nn.Linear(4, 2)))
    result = tp.utils.count_ops_and_params(model, torch.randn(3, 8), layer_wise=True)
    assert len(result) == 4
    macs, params, layer_macs, layer_params = result
    assert set(layer_macs) == set(model.modules()) == set(layer_params)
    assert layer_macs[model[0]] == 3 * 8 * 16 and layer_macs[model[1]] == 0
    # A container counts its children; the root counts everything.
    assert layer_macs[model[2]] == 3 * 16 * 4 + 3 * 4 * 2 and layer_macs[model] == macs
    assert layer_params[model[2]] == 16 * 4 + 4 + 4 * 2 + 2 and layer_params[model] == params


def test_counting_never_changes_the_model():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[3].eval()  # a mix of modes must come back as it was
    with torch.no_grad():
        model[1].running_mean.uniform_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    # A batch of one fails in a BatchNorm1d in train mode; counting runs in eval mode.
    macs, params = tp.utils.count_ops_and_params(model, torch.randn(1, 4))
    assert macs == 4 * 8 + 8 * 3 and params == sum(p.numel() for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats, num_batches_tracked


class _BufferWriter(nn.Module):
    """A module whose forward writes its buffer even in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("cache", torch.zeros(2))

    def forward(self, x):
        self.calls += 1
        self.cache = x[0, :2].detach().clone()  # replaces the buffer object
        return x * 2


def test_counting_restores_buffers_a_forward_writes():
    model = _BufferWriter()
    cache = model.cache
    tp.utils.count_ops_and_params(model, torch.randn(2, 3))
    assert model.cache is cache and torch.equal(model.cache, torch.zeros(2))
    assert model.calls.item() == 0


def test_counts_drop_after_pruning():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    macs0, params0 = tp.utils.count_ops_and_params(model, x)
    DG = tp.DependencyGraph().build_dependency(model, x)
    DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(32))).prune()
    macs1, params1 = tp.utils.count_ops_and_params(model, x)
    assert macs1 < macs0 and params1 < params0


# -- benchmark: Torch-Pruning's signatures -------------------------------------------------
def test_benchmark_accepts_torch_prunings_signatures():
    model = nn.Linear(16, 4)
    calls = []

    def run_fn(m, inputs):
        calls.append(inputs["x"].shape[0])
        return m(inputs["x"])

    inputs = {"x": torch.randn(5, 16)}
    mean, std = tp.utils.benchmark.measure_latency(model, inputs, repeat=4, warmup=2, run_fn=run_fn)
    assert mean > 0 and std >= 0 and len(calls) == 6
    assert tp.utils.benchmark.measure_fps(model, inputs, repeat=3, warmup=1, run_fn=run_fn) > 0
    throughput = tp.utils.benchmark.measure_throughput(model, torch.randn(5, 16), repeat=3, warmup=1)
    fps = tp.utils.benchmark.measure_fps(model, torch.randn(5, 16), repeat=3, warmup=1)
    assert throughput > fps  # five samples per call
    assert tp.utils.benchmark.measure_memory(model, inputs, device="cpu", run_fn=run_fn) >= 16 * 4 * 4
    # Positional order as in Torch-Pruning: (model, inputs, repeat, warmup, run_fn).
    tp.utils.benchmark.measure_latency(model, inputs, 2, 1, run_fn)
    with pytest.raises(tp.ConfigurationError, match="not both"):
        tp.utils.benchmark.measure_latency(model, inputs, run_fn=run_fn, forward_fn=lambda m, x: m(x["x"]))


# -- latency comparison ----------------------------------------------------------------------
def _comparison(original, pruned):
    return LatencyComparison(Timing(original, original), Timing(pruned, pruned), len(original), 1, 1, 1.0)


def test_latency_verdict_needs_the_ratio_spread_on_one_side_of_one():
    assert _comparison([10, 11, 10, 12, 10], [5, 6, 5, 5, 6]).verdict() == "faster"
    assert _comparison([10, 10, 10, 10], [14, 13, 15, 14]).verdict() == "slower"
    assert _comparison([10, 10, 10, 10, 10], [8, 12, 9, 11, 10]).verdict() == "inconclusive"
    assert _comparison([10, 10], [1, 1]).verdict() == "inconclusive"  # too few rounds
    summary = _comparison([10, 11, 10, 12, 10], [5, 6, 5, 5, 6]).as_dict()
    assert summary["original"]["wall_ms"] == 10 and summary["pruned"]["cpu_ms"] == 5
    assert summary["wall_ratio"] == 0.5 and summary["wall_verdict"] == "faster"


def test_compare_latency_interleaves_within_its_budget():
    torch.manual_seed(0)
    big = nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)]).eval()
    small = nn.Sequential(*[nn.Linear(512, 512) for _ in range(1)]).eval()
    order = []
    big.register_forward_pre_hook(lambda m, a: order.append("big"))
    small.register_forward_pre_hook(lambda m, a: order.append("small"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # idle OpenMP threads spin and bill CPU time when the machine is busy
    try:
        result = tp.utils.compare_latency(big, small, torch.randn(16, 512), budget_s=2.0, round_s=0.05)
    finally:
        torch.set_num_threads(threads)
    assert result.seconds < 2.0 + 1.0
    assert result.rounds >= 3 and len(result.original.wall_ms) == result.rounds
    timed = order[4:]  # after two warm-up calls each, rounds alternate which model goes first
    assert "big" in timed[:result.calls_per_round * 2] and "small" in timed[:result.calls_per_round * 2]
    assert result.verdict("cpu") == "faster"  # 8x fewer MACs


# -- print_tool, flatten_as_list -------------------------------------------------------------
def test_print_tool_marks_changed_lines(capsys):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    tp.utils.print_tool.before_pruning(model)
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 4))
    DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0, 1, 2]).prune()
    text = tp.utils.print_tool.after_pruning(model)
    assert capsys.readouterr().out.strip() == text.strip()
    lines = text.splitlines()
    assert "(0): Linear(in_features=4, out_features=8, bias=True) => (0): Linear(in_features=4, out_features=5" in lines[1]
    assert lines[2].strip() == "(1): ReLU()"
    assert "=> (2): Linear(in_features=5, out_features=2" in lines[3]
    with pytest.raises(tp.ConfigurationError, match="before_pruning"):
        tp.utils.print_tool.after_pruning(nn.Linear(1, 1), do_print=False)


def test_print_tool_shows_removed_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    tp.utils.print_tool.before_pruning(model)
    del model[1]
    text = tp.utils.print_tool.after_pruning(model, do_print=False)
    assert "(1): ReLU() => (removed)" in text


def test_flatten_as_list():
    a, b, c = torch.zeros(1), torch.ones(1), torch.ones(2)
    assert tp.utils.flatten_as_list(a) == [a]
    flat = tp.utils.flatten_as_list({"x": [a, (b, {"y": c})], "n": 3})
    assert len(flat) == 4 and flat[0] is a and flat[1] is b and flat[2] is c and flat[3] == 3


# -- plots -------------------------------------------------------------------------------------
def _graph():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    return model, tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 12, 12))


@pytest.mark.parametrize("name", ["draw_dependency_graph", "draw_groups", "draw_computational_graph"])
def test_draw_helpers_save_a_figure(name, tmp_path):
    pytest.importorskip("matplotlib")
    _, DG = _graph()
    path = tmp_path / f"{name}.png"
    figure, axes = getattr(tp.utils, name)(DG, str(path), title=name, figsize=(4, 4), dpi=50)
    assert path.stat().st_size > 1000 and axes.get_title() == name
    labels = [t.get_text() for t in axes.get_xticklabels()]
    if name == "draw_computational_graph":
        assert labels == ["0", "1", "3"]
        cells = axes.images[0].get_array()
        assert cells[0][1] == cells[1][0] == cells[1][2] == cells[2][1] == 1 and cells[0][2] == 0
    else:
        assert {"0 (out)", "1 (out)", "3 (in)"} <= set(labels)


def test_groups_and_edges_follow_the_graph():
    _, DG = _graph()
    assert tp.utils.draw.group_nodes(DG) == [[("0", "out"), ("1", "out"), ("3", "in")]]
    assert tp.utils.draw.dependency_edges(DG) == {(("0", "out"), ("1", "out")), (("1", "out"), ("3", "in"))}


def test_draw_without_matplotlib_names_the_install_command(monkeypatch):
    _, DG = _graph()
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ImportError, match="pip install matplotlib") as info:
        tp.utils.draw_groups(DG, None)
    assert isinstance(info.value, tp.PruningError)


def test_compare_latency_with_no_time_for_a_round_says_so():
    slow = nn.Sequential(*[nn.Linear(256, 256) for _ in range(4)]).eval()
    result = tp.utils.compare_latency(slow, slow, torch.randn(64, 256), budget_s=1e-4)
    assert result.rounds == 0 and result.verdict() == "inconclusive"
    summary = result.as_dict()
    assert summary["original"]["wall_ms"] is None and summary["wall_verdict"] == "inconclusive"
    assert result.warmup_s > 0 and "warmup_s" in summary
