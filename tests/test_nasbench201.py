"""NAS-Bench-201: its cell space (architecture strings, derivation), its search network (wiring,
size, fused vs plain per-edge ops), the search on it end to end, and the benchmark lookup."""
import bz2
import json
import pickle
import random
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from ndarts.errors import NdartsError
from ndarts.genotype import GenotypeError, load_genotype
from ndarts.mixed_op import FusedMixedOp, MixedOp
from ndarts.nasbench201 import (EDGES, Nb201Genotype, Nb201SearchCell, Nb201SearchNetwork, derive_nb201_genotype,
                                load_nb201_genotype, lookup, open_benchmark)
from ndarts.nasbench201.__main__ import main as nb201_main
from ndarts.noise import NoiseConfig
from ndarts.operations import NAS_BENCH_201_PRIMITIVES as OPS
from ndarts.searcher import SearchConfig, Searcher
from test_search import _killed_before_epoch

NO_NOISE = NoiseConfig(kind="none")


def random_genotype(rng) -> Nb201Genotype:
    return Nb201Genotype(tuple(rng.choice(OPS) for _ in EDGES))


# ----------------------------------------------------------------------------- the space
def test_edges_are_the_benchmarks_order():
    assert EDGES == ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


def test_arch_strings_round_trip(fresh_seed):
    rng = random.Random(fresh_seed)
    for _ in range(50):
        g = random_genotype(rng)
        text = g.arch_string()
        groups = text.split("+")
        assert [len(grp.strip("|").split("|")) for grp in groups] == [1, 2, 3]
        for (to, i), op in zip(EDGES, g.ops):
            assert f"|{op}~{i}|" in groups[to - 1] or f"{op}~{i}|" in groups[to - 1]
        assert Nb201Genotype.from_arch_string(text) == g
        assert Nb201Genotype.from_dict(json.loads(g.to_json())) == g


@pytest.mark.parametrize("text, message", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|", "3 '+'-separated"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~1|avg_pool_3x3~1|+|none~0|none~1|none~2|", "must be 'op~0'"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|none~0|none~1|none~2|", "must have 2 edge(s)"),
    ("|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown NAS-Bench-201 op"),
    ("nor_conv_3x3~0+|none~0|none~1|+|none~0|none~1|none~2|", "must be written |op~input|"),
])
def test_bad_arch_strings_are_named(text, message):
    with pytest.raises(GenotypeError, match=re.escape(message)):
        Nb201Genotype.from_arch_string(text)


def test_derivation_takes_each_edges_argmax_none_included(fresh_seed):
    w = torch.softmax(torch.randn(len(EDGES), len(OPS)), dim=-1)
    e = int(torch.randint(len(EDGES), ()))
    w[e, OPS.index("none")] = 2.0  # `none` may win an edge: that is how a cell drops it
    g = derive_nb201_genotype(w)
    assert g.ops == tuple(OPS[int(torch.argmax(row))] for row in w)
    assert g.ops[e] == "none"
    assert g.skip_counts() == (sum(op == "skip_connect" for op in g.ops), None)
    with pytest.raises(ValueError, match=r"\[6, 5\]"):
        derive_nb201_genotype(w[:5])


def test_a_darts_loader_names_a_nas_bench_201_cell(tmp_path):
    path = tmp_path / "genotype.json"
    path.write_text(random_genotype(random.Random(0)).to_json())
    with pytest.raises(GenotypeError, match="NAS-Bench-201 cell, not a DARTS-space genotype"):
        load_genotype(str(path))


# ----------------------------------------------------------------------------- the network
def _cell_by_hand(cell, x, w):
    """node j = Σ_{i<j} Σ_k w[e, k]·op_k(node i), with the edge index e written out."""
    def edge(e, h):
        mixed = cell.edges[e]
        return sum(w[e, k] * mixed._ops[k](h) for k in range(len(OPS)) if OPS[k] != "none")
    n1 = edge(0, x)
    n2 = edge(1, x) + edge(2, n1)
    return edge(3, x) + edge(4, n1) + edge(5, n2)


@pytest.mark.parametrize("fused", [False, True])
def test_a_cell_is_the_benchmarks_dag(fresh_seed, fused):
    make = (lambda c: FusedMixedOp(c, 1, OPS, NO_NOISE, backend="torch", pool_norm=False)) if fused else \
        (lambda c: MixedOp(c, 1, OPS, NO_NOISE, pool_norm=False))
    cell = Nb201SearchCell(5, make).train()
    x = torch.randn(3, 5, 7, 6)
    skip = torch.zeros(len(EDGES), len(OPS))
    skip[:, OPS.index("skip_connect")] = 1.0
    # all skips: node1 = x, node2 = x + node1, node3 = x + node1 + node2 = 4x
    torch.testing.assert_close(cell(x, skip), 4 * x)
    w = torch.softmax(torch.randn(len(EDGES), len(OPS)), dim=-1)
    torch.testing.assert_close(cell(x, w), _cell_by_hand(cell, x, w), atol=1e-5, rtol=1e-5)
    for mixed in cell.edges:  # the pool is bare, as the benchmark's search cell has it
        pool = mixed._ops[OPS.index("avg_pool_3x3")]
        assert isinstance(pool, torch.nn.AvgPool2d) and not pool.count_include_pad


def test_the_benchmarks_network_size():
    C, N, classes = 16, 5, 10
    net = Nb201SearchNetwork(C, classes, N)
    cells = sum(10 * c * c * len(EDGES) * N for c in (C, 2 * C, 4 * C))  # nor_conv_1x1 + nor_conv_3x3 per edge
    blocks = sum(9 * c * 2 * c + 2 * 2 * c + 9 * 4 * c * c + 2 * 2 * c + c * 2 * c for c in (C, 2 * C))
    rest = 3 * 9 * C + 2 * C + 2 * 4 * C + 4 * C * classes + classes  # stem, last BatchNorm, classifier
    assert sum(p.numel() for p in net.weight_parameters()) == cells + blocks + rest
    assert [a.shape for a in net.arch_parameters()] == [(len(EDGES), len(OPS))]
    assert len([m for m in net.cells if isinstance(m, Nb201SearchCell)]) == 3 * N


@pytest.mark.parametrize("size", [(8, 8), (9, 7)])
@pytest.mark.parametrize("fused", [False, True])
def test_network_equals_the_plain_per_edge_network(fresh_seed, size, fused):
    """Training mode, noise off: the network with node sharing and batched node convs, in channels_last,
    with the reference or the fused ops (torch backend), gives the per-edge MixedOp network's logits,
    the same gradients of α and every weight and the same BatchNorm statistics (so the same logits
    in eval mode after it), on even and odd image sizes."""
    plain = Nb201SearchNetwork(4, 7, 1, NO_NOISE, in_channels=2, channels_last=False, share_node_ops=False)
    fused = Nb201SearchNetwork(4, 7, 1, NO_NOISE, fused=fused, in_channels=2, backend="torch", channels_last=True)
    fused.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.alphas_cell.normal_()
        fused.alphas_cell.copy_(plain.alphas_cell)
    x = torch.randn(5, 2, *size)
    grads = []
    for net in (plain, fused):
        out = net(x)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(fresh_seed)))
        grads.append((out, [p.grad for p in net.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=2e-5, rtol=1e-4)
    for g_fused, g_plain in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(g_fused, g_plain, atol=5e-5, rtol=1e-3)
    buffers = dict(plain.named_buffers())  # (the fused ops' own index buffers aside)
    for name, b in fused.state_dict().items():
        if name in buffers:
            torch.testing.assert_close(b, buffers[name], atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    assert sum(name.endswith("running_var") for name in buffers) == 3 * len(EDGES) * 2 + 2 * 2 + 2  # all compared
    plain.eval(), fused.eval()
    torch.testing.assert_close(fused(x), plain(x), atol=2e-5, rtol=1e-4)


def test_node_sharing_keeps_the_noise(fresh_seed):
    """With noise: the fused network with node sharing (the node's std(h) once for its skip edges)
    draws the same noise as per-edge sums (each edge its seed of the pass's block, in edge order)."""
    nets = [Nb201SearchNetwork(4, 3, 2, NoiseConfig(), fused=True, backend="torch", share_node_ops=share)
            for share in (False, True)]
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.randn(4, 3, 6, 6)
    results = []
    for net in nets:
        torch.manual_seed(fresh_seed)
        out = net(x)
        out.square().sum().backward()
        results.append((out, [p.grad for p in net.parameters()]))
    # the batched node convs round differently (test_network_equals_the_plain_per_edge_network's bounds);
    # other noise would be ~0.2·std(h) off
    torch.testing.assert_close(results[1][0], results[0][0], atol=2e-5, rtol=1e-4)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-3)


def test_triton_kernels_run_the_network(fresh_seed):
    """The Triton kernels (interpreted on a CPU) in the network: the torch backend's results. The same
    network otherwise (node sharing, stacked node convs): only the sums' kernels differ. 8×8 images,
    3 of them: the last stage's BatchNorms see 12 values per channel (at 2 images of 4×4, 2 values
    amplified rounding into a 2.5 % difference of one α gradient)."""
    ref = Nb201SearchNetwork(3, 4, 1, NO_NOISE, fused=True, backend="torch", channels_last=False)
    tri = Nb201SearchNetwork(3, 4, 1, NO_NOISE, fused=True, backend="triton", channels_last=False)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(3, 3, 8, 8)
    outs = []
    for net in (ref, tri):
        out = net(x)
        out.sum().backward()
        outs.append((out, net.alphas_cell.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("fused", [False, True])
def test_the_skip_connection_is_noisy_in_training_only(fresh_seed, fused):
    net = Nb201SearchNetwork(4, 3, 1, NoiseConfig(), fused=fused, backend="torch")
    quiet = Nb201SearchNetwork(4, 3, 1, NO_NOISE, fused=fused, backend="torch")
    quiet.load_state_dict(net.state_dict())
    x = torch.randn(4, 3, 6, 6)
    net.eval(), quiet.eval()  # first: a training pass moves the BatchNorms' running statistics
    torch.testing.assert_close(net(x), quiet(x))
    net.train(), quiet.train()
    assert not torch.allclose(net(x), quiet(x), atol=1e-4)


def test_bad_network_arguments():
    with pytest.raises(ValueError, match="cells_per_stage"):
        Nb201SearchNetwork(16, 10, 0)
    with pytest.raises(ValueError, match=r"images \[N, C, H, W\]"):
        Nb201SearchNetwork(4, 3, 1)(torch.randn(3, 8, 8))


# ----------------------------------------------------------------------------- the search
def _cfg(out, **kw):
    base = dict(dataset="digits", space="nas-bench-201", cells_per_stage=1, init_channels=4, batch_size=16,
                max_steps=3, epochs=2, report_freq=0, out=str(out))
    base.update(kw)
    return SearchConfig(**base)


@pytest.mark.slow
def test_search_and_resume_on_the_benchmarks_space(tmp_path, monkeypatch):
    """A fused search writes a NAS-Bench-201 genotype and α per epoch; stopped after epoch 1 and
    resumed it ends exactly where the uninterrupted run does."""
    full = Searcher(_cfg(tmp_path / "full", fused=True))
    g_full = full.run_search()
    assert load_nb201_genotype(str(tmp_path / "full")) == g_full
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [len(r["alphas_cell"]) for r in records] == [len(EDGES)] * 2
    assert records[-1]["skip_reduce"] is None and records[-1]["genotype"] == g_full.to_dict()
    from ndarts import plots

    written = {p.name for p in plots.main([str(tmp_path / "full")])}
    assert written == {"alphas.png", "skips.png", "curves.png", "cell.png", "cell.svg"}  # one cell, no DARTS pair

    with _killed_before_epoch(monkeypatch):
        Searcher(_cfg(tmp_path / "cut", fused=True)).run_search()
    resumed = Searcher(_cfg(tmp_path / "cut", fused=True, resume=True))
    assert resumed.start_epoch == 1
    assert resumed.run_search() == g_full
    assert torch.equal(resumed.model.alphas_cell, full.model.alphas_cell)
    with pytest.raises(NdartsError, match="--cells-per-stage: checkpoint"):
        Searcher(_cfg(tmp_path / "cut", fused=True, resume=True, cells_per_stage=2))
    Searcher(_cfg(tmp_path / "cut", fused=True, resume=True, epochs=3, layers=7))  # --layers: not its network's


def test_options_of_the_darts_space_are_refused(tmp_path):
    with pytest.raises(NdartsError, match="nas-bench-201 space has none"):
        Searcher(_cfg(tmp_path / "run", triton_convs="depthwise"))


@pytest.mark.parametrize("argv,named", [
    (["--space", "nas-bench-201", "--layers", "3"], ["--layers"]),  # was silently ignored
    (["--space", "nas-bench-201", "--no-batch-edge-convs", "--noise-position", "input"],
     ["--batch-edge-convs", "--noise-position"]),
    (["--space", "darts", "--cells-per-stage", "2"], ["--cells-per-stage"]),
])
def test_search_cli_refuses_the_flags_a_space_does_not_use(tmp_path, capsys, argv, named):
    """One line naming each flag, before the run directory is made; the resumed run's space counts."""
    from ndarts import search

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        search.main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert all(flag in err for flag in named) and not out.exists(), err


@pytest.mark.parametrize("argv,named", [
    (["--space", "nas-bench-201", "--noise-position", "input"], "--noise-position"),
    (["--space", "nas-bench-201", "--no-batch-edge-convs"], "--batch-edge-convs"),
    (["--space", "nas-bench-201", "--layers", "5"], "--layers"),
    (["--space", "darts", "--cells-per-stage", "2"], "--cells-per-stage")])
def test_parsed_flags_without_the_command_line_are_checked_too(argv, named):
    """config_from_args(args) with no explicit_flags answer (a caller's parsed namespace): the flags
    whose value is not the parser's default count as given, whatever that default is."""
    from ndarts.errors import NdartsError
    from ndarts.search import build_parser, config_from_args

    with pytest.raises(NdartsError, match=f"does not use {named}"):
        config_from_args(build_parser().parse_args([*argv, "--out", "x"]))
    config_from_args(build_parser().parse_args([argv[0], argv[1], "--out", "x"]))  # the space alone is fine


def test_a_resumed_nas_bench_201_run_refuses_layers(tmp_path, capsys):
    from ndarts import search

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(_cfg(out).to_dict()))
    with pytest.raises(SystemExit):
        search.main(["--out", str(out), "--resume", "--layers", "3"])
    assert "nas-bench-201 space does not use --layers" in capsys.readouterr().err


def _parsed(argv):
    """The search's config of a command line, as ndarts.search's main resolves it."""
    from ndarts.rundir import explicit_flags
    from ndarts.search import build_parser, config_from_args

    parser = build_parser()
    return config_from_args(parser.parse_args(argv), explicit_flags(parser, argv))


# NAS-Bench-201's DARTS search protocol (AutoDL-Projects' configs/nas-benchmark/algos/DARTS.config)
PROTOCOL = dict(learning_rate=0.025, learning_rate_min=0.001, momentum=0.9, nesterov=True, weight_decay=5e-4,
                batch_size=64, epochs=50, arch_learning_rate=3e-4, arch_weight_decay=1e-3, grad_clip=5.0)


def _settings(cfg, keys=PROTOCOL) -> dict:
    return {k: getattr(cfg, k) for k in keys}


def test_the_nas_bench_201_space_searches_with_its_protocol(tmp_path):
    """--space nas-bench-201 takes the benchmark's DARTS recipe, not NoisyDARTS's DARTS-space one (SGD
    0.05, wd 3e-4, batch 128, no Nesterov); the built Searcher's optimizers are the protocol's."""
    assert _settings(_parsed(["--space", "nas-bench-201", "--dataset", "cifar10", "--out", "x"])) == PROTOCOL
    tiny = ["--cells-per-stage", "1", "--init-channels", "4", "--max-steps", "1", "--report-freq", "0"]
    searcher = Searcher(_parsed(["--space", "nas-bench-201", *tiny, "--out", str(tmp_path / "run")]))
    (w,), (a,) = searcher.w_opt.param_groups, searcher.a_opt.param_groups
    assert (w["lr"], w["momentum"], w["nesterov"], w["weight_decay"]) == (0.025, 0.9, True, 5e-4)
    assert (a["lr"], a["betas"], a["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)
    assert searcher.train_stream.batch_size == searcher.val_stream.batch_size == 64


def test_explicit_flags_win_over_the_nas_bench_201_preset():
    argv = ["--space", "nas-bench-201", "--dataset", "cifar10", "--learning-rate", "0.05", "--weight-decay", "3e-4",
            "--no-nesterov", "--batch-size", "128", "--out", "x"]
    assert _settings(_parsed(argv)) == {**PROTOCOL, "learning_rate": 0.05, "weight_decay": 3e-4, "nesterov": False,
                                        "batch_size": 128}


def test_digits_scales_the_nas_bench_201_protocol_down():
    """--space nas-bench-201 on the embedded digits (the bare command's dataset): the digits preset's
    epochs and network first (a minutes-long run), the protocol's optimizer for the rest."""
    cfg = _parsed(["--space", "nas-bench-201", "--out", "x"])
    assert _settings(cfg) == {**PROTOCOL, "epochs": 10} and cfg.init_channels == 8
    assert _parsed(["--space", "nas-bench-201", "--epochs", "3", "--out", "x"]).epochs == 3


def test_a_resume_keeps_the_runs_own_optimizer_settings(tmp_path):
    """A bare --resume takes every setting from the run's config.json, the preset none: a run of the
    nas-bench-201 space from before --nesterov (no such key) goes on without Nesterov momentum and
    at its own learning rate, as it ran; a flag given now wins."""
    saved = {**_cfg(tmp_path).to_dict(), "learning_rate": 0.05, "weight_decay": 3e-4, "batch_size": 16}
    del saved["nesterov"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg = _parsed(["--out", str(tmp_path), "--resume"])
    assert (cfg.space, cfg.nesterov, cfg.learning_rate, cfg.weight_decay, cfg.batch_size) == \
        ("nas-bench-201", False, 0.05, 3e-4, 16)
    assert _parsed(["--out", str(tmp_path), "--resume", "--nesterov"]).nesterov is True


# ----------------------------------------------------------------------------- the benchmark lookup
class FakeBenchmark:
    """The two calls of NATS-Bench's / NAS-Bench-201's API that lookup makes."""

    def __init__(self, archs, old_api=False):
        self.archs = archs
        self.old_api = old_api
        self.asked = []

    def query_index_by_arch(self, arch):
        return self.archs.index(arch) if arch in self.archs else -1

    def get_more_info(self, index, dataset, iepoch=None, **kw):
        if self.old_api and "hp" in kw:
            raise TypeError("get_more_info() got an unexpected keyword argument 'hp'")
        self.asked.append((index, dataset, kw))
        return {"test-accuracy": 90.0 + index, "test-loss": 0.5, "comment": "x"}


@pytest.mark.parametrize("old_api", [False, True])
def test_lookup_asks_the_benchmark_for_the_200_epoch_record(fresh_seed, old_api):
    rng = random.Random(fresh_seed)
    cells = list({random_genotype(rng).arch_string() for _ in range(20)})
    api = FakeBenchmark(cells, old_api)
    pick = rng.randrange(len(cells))
    record = lookup(Nb201Genotype.from_arch_string(cells[pick]), api, "cifar100")
    assert record["index"] == pick and record["test-accuracy"] == 90.0 + pick
    assert api.asked[-1][1] == "cifar100"
    assert api.asked[-1][2] == ({"use_12epochs_result": False, "is_random": False} if old_api
                                else {"hp": "200", "is_random": False})
    missing = next(g for g in (random_genotype(rng) for _ in range(1000)) if g.arch_string() not in cells)
    with pytest.raises(NdartsError, match="no record"):
        lookup(missing, api)
    with pytest.raises(NdartsError, match="unknown benchmark dataset"):
        lookup(missing, api, "imagenet")


class ArchRecord:
    """An object of a class of its own in a pickled benchmark (NAS-Bench-201's .pth holds such
    records): torch.load's weights_only mode, torch's default since 2.6, refuses it."""


class BrokenBenchmark(FakeBenchmark):
    """A benchmark whose records fail to load when asked (NATS-Bench's fast mode reads a cell's
    DIR/NNNNNN.pickle.pbz2 in get_more_info)."""

    def __init__(self, archs, error):
        super().__init__(archs)
        self.error = error

    def get_more_info(self, *args, **kwargs):
        raise self.error


def _install_apis(monkeypatch, archs=(), query_error=None):
    """Stand-ins for NATS-Bench's `create` and NAS-Bench-201's `NASBench201API`, in sys.modules: each
    records its call and reads the path as the real API does (NATS-Bench's fast mode a directory's
    meta.pickle.pbz2, its full mode one bz2 pickle, NAS-Bench-201 torch.load without weights_only),
    raising what the real one raises on a file it cannot read. Their API object is a FakeBenchmark,
    a BrokenBenchmark raising `query_error` where one is given."""
    calls = []

    def api(records):
        for key in ("meta_archs",):  # both APIs check the records' keys: NATS-Bench raises, NAS-Bench-201 asserts
            if key not in records:
                raise ValueError(f"Can not find key[{key}] in the dict")
        return BrokenBenchmark(list(archs), query_error) if query_error else FakeBenchmark(list(archs))

    def create(path, space, fast_mode=False, verbose=True):
        calls.append(("nats_bench.create", path, space, fast_mode))
        if fast_mode != Path(path).is_dir():
            raise ValueError(f"fast_mode={fast_mode} must feed the path for {'directory' if fast_mode else 'file'}")
        with bz2.BZ2File(f"{path}/meta.pickle.pbz2" if fast_mode else path, "rb") as f:
            return api(pickle.load(f))

    def nb201_api(path, verbose=True):
        calls.append(("nas_201_api.NASBench201API", path))
        assert Path(path).is_file(), f"invalid path : {path}"
        records = torch.load(path, map_location="cpu")
        assert isinstance(records, dict), f"It should be a dict instead of {type(records)}"
        return api(records)

    monkeypatch.setitem(sys.modules, "nats_bench", types.SimpleNamespace(create=create))
    monkeypatch.setitem(sys.modules, "nas_201_api", types.SimpleNamespace(NASBench201API=nb201_api))
    return calls


def _benchmark_files(root):
    """A NATS-Bench topology directory, its single file and NAS-Bench-201's .pth, each readable."""
    (root / "NATS-tss-v1_0-3ffb9-simple").mkdir()
    for file in (root / "NATS-tss-v1_0-3ffb9-simple" / "meta.pickle.pbz2", root / "NATS-tss-v1_0-3ffb9.pickle.pbz2"):
        with bz2.BZ2File(file, "wb") as f:
            pickle.dump({"meta_archs": []}, f)
    torch.save({"meta_archs": [], "arch2infos": {0: ArchRecord()}}, root / "NAS-Bench-201-v1_1-096897.pth")
    return (root / "NATS-tss-v1_0-3ffb9-simple", root / "NATS-tss-v1_0-3ffb9.pickle.pbz2",
            root / "NAS-Bench-201-v1_1-096897.pth")


def test_each_benchmark_file_is_opened_with_its_own_api(tmp_path, monkeypatch):
    """A directory with NATS-Bench's fast mode, its .pickle.pbz2 with its full mode, NAS-Bench-201's
    .pth with NAS-Bench-201's API: not NATS-Bench's fast mode whenever it is installed, which
    refuses anything but a directory (the .pth could never be opened)."""
    directory, nats_file, pth = _benchmark_files(tmp_path)
    calls = _install_apis(monkeypatch)
    open_benchmark(directory)
    open_benchmark(nats_file)
    with pytest.raises(NdartsError, match="NAS-Bench-201's API could not load .*weights_only.*nats_bench"):
        open_benchmark(pth)  # the stand-in, as the real API, calls torch.load as torch >= 2.6 reads it
    assert calls == [("nats_bench.create", str(directory), "tss", True),
                     ("nats_bench.create", str(nats_file), "tss", False),
                     ("nas_201_api.NASBench201API", str(pth))]
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # the way out the message names
    with pytest.warns(UserWarning, match="forcing weights_only=False"):
        assert open_benchmark(pth).api.query_index_by_arch("|none~0|") == -1


def test_opening_the_benchmark_names_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(NdartsError, match="does not exist"):
        open_benchmark(tmp_path / "NAS-Bench-201-v1_1-096897.pth")
    directory, nats_file, pth = _benchmark_files(tmp_path)
    monkeypatch.setitem(sys.modules, "nats_bench", None)  # neither API installed
    monkeypatch.setitem(sys.modules, "nas_201_api", None)
    for path, package in ((directory, "nats_bench"), (nats_file, "nats_bench"), (pth, "nas-bench-201")):
        with pytest.raises(NdartsError, match=f"pip install {package}"):
            open_benchmark(path)
    _install_apis(monkeypatch)
    monkeypatch.setitem(sys.modules, "nas_201_api", None)  # NATS-Bench alone does not read the .pth
    with pytest.raises(NdartsError, match="NAS-Bench-201's file .*pip install nas-bench-201"):
        open_benchmark(pth)
    (tmp_path / "records.json").write_text("{}")
    with pytest.raises(NdartsError, match="records.json is neither NATS-Bench's topology directory"):
        open_benchmark(tmp_path / "records.json")


NATS_FILE, NB201_FILE = "NATS-tss-v1_0-3ffb9.pickle.pbz2", "NAS-Bench-201-v1_1-096897.pth"


@pytest.mark.parametrize("name,content,expected", [
    ("NATS-tss-v1_0-3ffb9-simple", None, "NATS-Bench's topology directory"),  # no meta.pickle.pbz2: OSError
    (NATS_FILE, b"not bz2", "NATS-Bench's topology file"),  # OSError
    (NATS_FILE, bz2.compress(pickle.dumps({"meta_archs": []}))[:30], "NATS-Bench's topology file"),  # cut: EOFError
    (NATS_FILE, bz2.compress(b"\x80\x05junk"), "NATS-Bench's topology file"),  # UnpicklingError
    (NATS_FILE, bz2.compress(pickle.dumps({})), "NATS-Bench's topology file"),  # ValueError
    (NB201_FILE, b"PK\x03\x04 cut", "NAS-Bench-201's file"),  # RuntimeError
    (NB201_FILE, "list", "NAS-Bench-201's file"),  # AssertionError
], ids=["dir-without-meta", "pbz2-not-bz2", "pbz2-cut", "pbz2-not-a-pickle", "pbz2-no-records", "pth-cut",
        "pth-not-a-dict"])
def test_a_file_the_api_cannot_read_is_named_in_one_line(tmp_path, monkeypatch, capsys, name, content, expected):
    """The APIs' own exceptions on a wrong or broken file (ValueError, AssertionError, OSError,
    EOFError, UnpicklingError, RuntimeError) are one line naming the file and the kind expected,
    not a traceback from inside the API."""
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif content == "list":
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    _install_apis(monkeypatch)
    with pytest.raises(NdartsError, match=f"cannot read the benchmark {re.escape(str(path))} "
                                          f"\\(expected {re.escape(expected)}"):
        open_benchmark(path)
    with pytest.raises(SystemExit) as exit_:
        nb201_main(["|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "--benchmark", str(path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and "\n" not in err and str(path) in err


@pytest.mark.parametrize("error", [FileNotFoundError(2, "No such file or directory"), ValueError("bad index"),
                                   AssertionError("invalid data path"), EOFError("Compressed file ended")])
def test_a_query_failing_on_the_benchmark_names_the_file(tmp_path, monkeypatch, error):
    """NATS-Bench's fast mode reads a cell's record (DIR/NNNNNN.pickle.pbz2) only when asked: a
    missing or broken one fails in the query, named as the opening is."""
    directory, _, _ = _benchmark_files(tmp_path)
    g = random_genotype(random.Random(0))
    _install_apis(monkeypatch, archs=[g.arch_string()], query_error=error)
    with pytest.raises(NdartsError, match=f"cannot read the benchmark {re.escape(str(directory))} "
                                          f"\\(expected NATS-Bench's topology directory"):
        lookup(g, open_benchmark(directory), "cifar100")


def _search_run(root, dataset, g) -> str:
    """A search run's directory as the search leaves it: its config.json and genotype.json."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps(SearchConfig(dataset=dataset, space="nas-bench-201").to_dict()))
    (root / "genotype.json").write_text(g.to_json())
    return str(root)


@pytest.mark.parametrize("searched,expected", [("cifar10", "cifar10"), ("cifar100", "cifar100"),
                                               ("imagenet16-120", "ImageNet16-120")])
def test_a_run_is_looked_up_on_the_dataset_it_searched(tmp_path, monkeypatch, capsys, searched, expected):
    """Without --dataset, a run directory's record is that of its own dataset (config.json), the
    search's imagenet16-120 being the benchmark's ImageNet16-120; an arch string's is cifar10's."""
    g = random_genotype(random.Random(1))
    directory, _, _ = _benchmark_files(tmp_path)
    _install_apis(monkeypatch, archs=[g.arch_string()])
    run = _search_run(tmp_path / "run", searched, g)
    nb201_main([run, "--benchmark", str(directory), "--json"])
    assert json.loads(capsys.readouterr().out)["dataset"] == expected
    nb201_main([g.arch_string(), "--benchmark", str(directory), "--json"])
    assert json.loads(capsys.readouterr().out)["dataset"] == "cifar10"
    nb201_main([run, "--benchmark", str(directory), "--json", "--dataset", "cifar10-valid"])  # given: it wins
    assert json.loads(capsys.readouterr().out)["dataset"] == "cifar10-valid"


@pytest.mark.parametrize("spelling", ["imagenet16-120", "IMAGENET16-120", "ImageNet16-120"])
def test_the_benchmark_dataset_in_any_case(tmp_path, monkeypatch, capsys, spelling):
    g = random_genotype(random.Random(2))
    directory, _, _ = _benchmark_files(tmp_path)
    _install_apis(monkeypatch, archs=[g.arch_string()])
    nb201_main([g.arch_string(), "--benchmark", str(directory), "--json", "--dataset", spelling])
    assert json.loads(capsys.readouterr().out)["dataset"] == "ImageNet16-120"
    assert lookup(g, open_benchmark(directory), spelling)["dataset"] == "ImageNet16-120"
    with pytest.raises(SystemExit):
        nb201_main([g.arch_string(), "--benchmark", str(directory), "--dataset", "imagenet"])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


@pytest.mark.parametrize("searched", ["digits", "imagefolder", "mydata"])
def test_a_run_on_data_the_benchmark_lacks_needs_dataset(tmp_path, monkeypatch, capsys, searched):
    """A run on digits, an image folder or a caller's data: the benchmark has no records of it, and
    looking its cell up on CIFAR-10 unasked would pass one dataset's record off as another's."""
    g = random_genotype(random.Random(3))
    directory, _, _ = _benchmark_files(tmp_path)
    _install_apis(monkeypatch, archs=[g.arch_string()])
    run = _search_run(tmp_path / "run", searched, g)
    with pytest.raises(SystemExit) as exit_:
        nb201_main([run, "--benchmark", str(directory)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert f"was searched on {searched!r}, which the benchmark has no records of: pass --dataset" in err
    nb201_main([run, "--benchmark", str(directory), "--json", "--dataset", "cifar100"])
    assert json.loads(capsys.readouterr().out)["dataset"] == "cifar100"
    nb201_main([run, "--json"])  # the cell alone needs no dataset
    assert json.loads(capsys.readouterr().out) == g.to_dict()


def test_cli_prints_the_cell_and_names_bad_input(tmp_path, capsys, fresh_seed):
    g = random_genotype(random.Random(fresh_seed))
    (tmp_path / "genotype.json").write_text(g.to_json())
    for spec in (g.arch_string(), g.to_json(), str(tmp_path), str(tmp_path / "genotype.json")):
        nb201_main([spec, "--json"])
        assert json.loads(capsys.readouterr().out) == g.to_dict()
    nb201_main([g.arch_string(), "--draw", str(tmp_path / "figs" / "cell")])
    out = capsys.readouterr().out
    assert f"node 3 = {g.ops[3]}(node 0) + {g.ops[4]}(node 1) + {g.ops[5]}(node 2)" in out
    png = tmp_path / "figs" / "cell.png"
    assert str(png) in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00{")
    for bad, message in (("|none~0|", "3 '+'-separated"), (str(tmp_path / "nothing"), "neither"),
                         ("x" * 5000, "neither"), (str(tmp_path / "binary.json"), "cannot read genotype file"),
                         ('{"normal": []}', "not a NAS-Bench-201 genotype")):
        with pytest.raises(SystemExit) as exit_:
            nb201_main([bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    # --dataset picks the benchmark's record: without --benchmark it would be ignored
    with pytest.raises(SystemExit) as exit_:
        nb201_main([g.arch_string(), "--dataset", "cifar100"])
    assert exit_.value.code == 2 and "needs --benchmark" in capsys.readouterr().err
