"""Data-parallel training on CPU with gloo: helpers, one stage exactly as in one process, and
whole `torchrun` runs (two processes) against a one-process run, resume, a rank that dies or hangs.

Tolerance of the whole-run comparison (two processes vs one, same seed and global batch): the runs
see the same global batches, but a rank draws its own augmentations and dropout masks and, on the
CPU (no SyncBatchNorm there), takes BatchNorm statistics over its half-batch; so they are two
equally valid trainings, not the same numbers. Required (6 epochs on 200 generated cells, where
both runs converge): validation weighted F1 within 0.05 of the one-process run for the combined
model and the ensemble, within 0.10 for model-A and model-B; the first epoch's validation loss of
each stage-1 model (same start, same global batches) within 10 %; every stage's last validation
loss within 0.05 (chance is 0.69). Measured here (one process / two): first-epoch losses
0.685/0.684 (A) and 0.676/0.683 (B); last 0.136/0.143, 0.068/0.050 and 0.000/0.000 (stage 2);
F1 1.00/1.00 for combined and ensemble, 0.985/1.00 and 1.00/1.00 for model-A and model-B. These
tiny runs are chaotic: the one-process run alone, on 2 threads instead of 1, moves model-B's
weights by up to 0.54 and its F1 from 0.866 to 0.895 (4 epochs). Where the sources of difference
are absent (`test_one_stage_...`: no BatchNorm, dropout or augmentation) two processes, and four
in two groups of two, give the one-process weights and history to 1e-6; and with
--parallel-models on two processes model-A and model-B are the one-process run's to 1e-6.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from napari_allbag.cli.main import build_parser, main
from napari_allbag.cli.train import argv_from_args
from napari_allbag.data.synthetic import write_annotated_folder
from napari_allbag.model.bundle import load_bundle
from napari_allbag.progress import drive
from napari_allbag.training import distributed
from napari_allbag.training.batches import FeatureBatches, batch_positions
from napari_allbag.training.build import stage1_skeleton, without_sync_batchnorm
from napari_allbag.training.config import TrainingError
from napari_allbag.training.distributed import (
    Distributed,
    DistributedError,
    ForwardedError,
    fault_point,
    launch_env,
    local_batch_size,
    process_device,
    torchrun_command,
)
from napari_allbag.training.loop import EpochRandom, StageSettings, StageSpec, fit_stage, order_seed
from napari_allbag.training.resources import use_sync_batchnorm

#: A hang guard for the subprocess runs (not a speed target).
RUN_LIMIT_S = 300
#: The whole-run tolerances (see the module doc).
F1_TOLERANCE = {"model-A": 0.10, "model-B": 0.10, "combined": 0.05, "ensemble": 0.05}
FIRST_VAL_LOSS_RTOL = 0.10
LAST_VAL_LOSS_ATOL = 0.05
EPOCHS = 6


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    env.pop(distributed.FAULT_ENV, None)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", distributed.GPUS_ENV):
        env.pop(name, None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------------------- helpers alone


def test_launch_env_reads_torchruns_variables():
    assert launch_env({}) is None
    env = launch_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    with pytest.raises(DistributedError, match="whole numbers"):
        launch_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="RANK=2, WORLD_SIZE=2"):
        launch_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_each_process_gets_its_device():
    env = launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert process_device("cpu", env) == torch.device("cpu")
    with pytest.raises(DistributedError, match="cuda .*or cpu"):
        process_device("mps", env)
    with pytest.raises(DistributedError, match="CUDA_VISIBLE_DEVICES"):
        process_device("cuda:1", env)
    if not torch.cuda.is_available():
        with pytest.raises(DistributedError, match="has no GPU"):
            process_device("cuda", env)


def test_the_batch_size_is_global():
    assert local_batch_size(32, 1) == 32
    assert local_batch_size(32, 2) == 16
    with pytest.raises(TrainingError, match="--batch-size 32 or --batch-size 34"):
        local_batch_size(33, 2)
    with pytest.raises(TrainingError, match="--batch-size 8"):
        local_batch_size(4, 4)


def test_samplers_of_two_ranks_make_up_the_global_batches_of_one():
    """With a local batch of B/2, ranks 0 and 1 together train on one process's batches of B."""
    n, global_batch, seed = 90, 10, order_seed(0, "stage1-A")
    one = Distributed().sampler(n, seed)
    shares = [Distributed(rank=r, world_size=2).sampler(n, seed) for r in range(2)]
    for epoch in (1, 2):
        random = EpochRandom.for_epoch(0, "stage1-A", epoch, torch.device("cpu"))
        from napari_allbag.training.batches import epoch_order

        single = batch_positions(n, global_batch, epoch_order(n, random, one))
        per_rank = [
            batch_positions(45, global_batch // 2, epoch_order(n, random, share))
            for share in shares
        ]
        assert len(per_rank[0]) == len(per_rank[1]) == len(single)
        for whole, part0, part1 in zip(single, *per_rank, strict=True):
            assert sorted(part0 + part1) == sorted(whole)
        if epoch == 1:
            first = single
    assert first != single  # set_epoch reshuffles


def test_single_process_helpers_do_nothing():
    single = Distributed.single()
    assert not single.is_distributed and single.is_main
    assert single.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    assert single.broadcast_json({"a": 1}) == {"a": 1}
    rows = torch.arange(6).reshape(3, 2)
    assert torch.equal(single.gather_interleaved(rows), rows)
    assert single.share(lambda: 7) == 7
    assert list(single.shard(np.arange(5))) == [0, 1, 2, 3, 4]
    assert list(Distributed(rank=1, world_size=2).shard(np.arange(5))) == [1, 3]


def test_failures_of_the_process_group_are_recognised():
    assert distributed.is_distributed_failure(RuntimeError("[gloo] Connection reset by peer"))
    assert distributed.is_distributed_failure(RuntimeError("Timed out waiting 5000ms for recv"))
    assert not distributed.is_distributed_failure(RuntimeError("mat1 and mat2 shapes differ"))
    assert not distributed.is_distributed_failure(ValueError("timeout"))
    message = str(distributed.lost_contact(RuntimeError("boom"), "stage1-A", 1, 30))
    assert "Process 1" in message and "stage1-A" in message and "--resume" in message


def test_fault_hook():
    fault_point("stage1-A", 1, 0, {})
    fault_point("stage1-A", 1, 0, {distributed.FAULT_ENV: "exit:1:stage1-A:1"})  # not rank 0
    with pytest.raises(KeyboardInterrupt):
        fault_point("stage1-B", 2, 1, {distributed.FAULT_ENV: "interrupt:stage1-B:2"})
    with pytest.raises(TrainingError, match="not understood"):
        fault_point("stage1-A", 1, 0, {distributed.FAULT_ENV: "explode"})


def test_gpus_shortcut_builds_the_torchrun_command_with_the_same_arguments(tmp_path, capsys):
    argv = ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--backbone", "test_resnet"]
    argv += ["--epochs", "3", "--no-pretrained", "--gpus", "2", "--device", "cpu", "--seed", "4"]
    args = build_parser().parse_args(argv)
    forwarded = argv_from_args(args.train_parser, args, leave_out=("gpus",))
    again = build_parser().parse_args(["train", *forwarded])
    for key, value in vars(args).items():
        if key not in ("func", "train_parser", "gpus"):
            assert getattr(again, key) == value, key
    assert again.gpus is None
    command = torchrun_command(2, forwarded)
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone"] + [
        "--nproc_per_node=2",
        "-m",
    ]
    assert command[6:8] == ["napari_allbag", "train"]


def test_gpus_shortcut_clear_errors(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    base = ["train", str(data), "--out", str(tmp_path / "run")]
    if not torch.cuda.is_available():
        assert main([*base, "--gpus", "2"]) == 2
        assert "--device cpu" in capsys.readouterr().err
    assert main([*base, "--gpus", "2", "--device", "cuda:1"]) == 2
    assert "CUDA_VISIBLE_DEVICES" in capsys.readouterr().err
    assert main([*base, "--gpus", "0", "--device", "cpu"]) == 2
    assert "at least 1" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep")
    assert main(["train", str(data), "--out", str(busy), "--gpus", "2", "--device", "cpu"]) == 2
    assert "never overwritten" in capsys.readouterr().err


# ----------------------------------------------------------------------------- one stage, exactly

N_TRAIN, N_VAL, FEATURES, GLOBAL_BATCH = 90, 30, 6, 10


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=generator) < 0.6).long()
    points = torch.randn(n, FEATURES, generator=generator) + labels[:, None] * 1.5
    return points, labels


def _fit_small_stage(context: Distributed, checkpoint_dir: Path):
    """A class-weighted stage on feature vectors with a model without BatchNorm or dropout."""
    train_x, train_y = _blobs(N_TRAIN, 1)
    val_x, val_y = _blobs(N_VAL, 2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 8), nn.ReLU(), nn.Linear(8, 2))
    wrapped = model
    if context.is_distributed:
        wrapped = nn.parallel.DistributedDataParallel(model)
    half = FEATURES // 2
    batches = FeatureBatches(
        train_x[:, :half],
        train_x[:, half:],
        train_y,
        local_batch_size(GLOBAL_BATCH, context.world_size),
        torch.device("cpu"),
        sampler=context.sampler(N_TRAIN, order_seed(0, "small")),
    )
    share = torch.as_tensor(context.shard(np.arange(N_VAL)))
    val = FeatureBatches(
        val_x[share, :half],
        val_x[share, half:],
        val_y[share],
        7,
        torch.device("cpu"),
    )
    spec = StageSpec(
        name="small",
        model=model,
        train_batches=lambda epoch, random: batches.batches(random),
        val_batches=val.batches,
        n_train_batches=batches.n_batches,
        forward=lambda m, x: wrapped(torch.cat(x, dim=1)),
        eval_forward=lambda m, x: m(torch.cat(x, dim=1)),
        class_weights=torch.tensor([1.0, 2.5]),
    )
    settings = StageSettings(
        epochs=6,
        lr=0.05,
        patience_lr=1,
        patience_stop=4,
        seed=0,
        device=torch.device("cpu"),
        checkpoint_dir=checkpoint_dir,
        is_main_process=context.is_main,
        dist=context,
    )
    outcome = drive(fit_stage(spec, settings))
    return outcome, {k: v.clone() for k, v in model.state_dict().items()}


def _small_stage_worker(rank: int, world: int, port: int, out_dir: str, teams: int) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        context = Distributed(rank=rank, world_size=world, backend="gloo", timeout_s=60)
        assert context.all_gather_json({"rank": rank}) == [{"rank": r} for r in range(world)]
        team = context.split(teams) if teams > 1 else context
        outcome, weights = _fit_small_stage(team, Path(out_dir) / f"checkpoints-{rank}")
    finally:
        torch_dist.destroy_process_group()
    if team.is_main:
        from safetensors.torch import save_file

        save_file(weights, str(Path(out_dir) / f"weights-{rank}.safetensors"))
        (Path(out_dir) / f"history-{rank}.json").write_text(json.dumps(outcome.history))


@pytest.mark.parametrize(
    ("world", "teams"),
    [(2, 1), (4, 2)],
    ids=["2 processes", "4 processes in 2 groups of 2 (as --parallel-models)"],
)
def test_one_stage_on_several_processes_gives_the_one_process_weights_and_history(
    tmp_path, world, teams
):
    from safetensors.torch import load_file

    single, single_weights = _fit_small_stage(Distributed.single(), tmp_path / "one")
    mp.spawn(
        _small_stage_worker,
        args=(world, free_port(), str(tmp_path), teams),
        nprocs=world,
        join=True,
    )
    leaders = list(range(0, world, world // teams))
    for leader in leaders:
        history = json.loads((tmp_path / f"history-{leader}.json").read_text())
        weights = load_file(str(tmp_path / f"weights-{leader}.safetensors"))
        assert [r["lr"] for r in history] == [r["lr"] for r in single.history]
        assert len({r["lr"] for r in history}) > 1  # the schedule acted, the same way
        for key in ("loss", "val_loss"):
            assert [r[key] for r in history] == pytest.approx(
                [r[key] for r in single.history], rel=1e-6
            )
        for key in ("accuracy", "val_accuracy"):
            assert [r[key] for r in history] == [r[key] for r in single.history]
        for key, value in single_weights.items():
            torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-6, msg=key)
    # only each group's main process writes checkpoints
    for rank in range(world):
        assert (tmp_path / f"checkpoints-{rank}").exists() == (rank in leaders)


# ----------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def annotated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("annotated")
    write_annotated_folder(root, n_all=130, n_hem=70, n_subjects=3, seed=0, size=128)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("crop_cache")


def train_args(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(data),
        "--out",
        str(out),
        "--backbone",
        "test_resnet",
        "--img-size",
        "64",
        "--crop-size",
        "64",
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "32",
        "--no-pretrained",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--cache-dir",
        str(cache),
        "--seed",
        "0",
        "--quiet",
        *extra,
    ]


def run_cli(argv: list[str], launcher: list[str] | None = None, **env: str):
    command = [*(launcher or [sys.executable, "-m", "napari_allbag"]), *argv]
    return subprocess.run(
        command, env=child_env(**env), capture_output=True, text=True, timeout=RUN_LIMIT_S
    )


def torchrun(nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone"] + [
        f"--nproc_per_node={nproc}",
        "-m",
        "napari_allbag",
    ]


@pytest.fixture(scope="module")
def one_process(annotated, cache, tmp_path_factory) -> Path:
    """The reference: one process with one thread, like each rank (the thread count alone
    changes these tiny runs' weights)."""
    out = tmp_path_factory.mktemp("runs") / "one"
    done = run_cli(train_args(annotated, out, cache))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_processes(annotated, cache, tmp_path_factory) -> Path:
    """`napari-allbag train --gpus 2 --device cpu`: the shortcut starts torchrun."""
    out = tmp_path_factory.mktemp("runs") / "two"
    done = run_cli(train_args(annotated, out, cache, "--gpus", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting 2 training processes" in done.stderr
    assert done.stdout.count("Model bundle:") == 1, done.stdout  # rank 0 alone reports
    return out


def log_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def bundle_tensors(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        f"{name}/{key}": value
        for name in ("model_a", "model_b", "combined")
        for key, value in load_file(str(run / "bundle" / f"{name}.safetensors")).items()
    }


def test_two_processes_write_one_bundle_that_matches_one_process(one_process, two_processes):
    config = json.loads((two_processes / "config.json").read_text())["config"]
    assert config["world_size"] == 2 and config["batch_size"] == 32
    assert [p.name for p in two_processes.iterdir() if p.name.startswith("bundle")] == ["bundle"]
    assert not list(two_processes.rglob("*.tmp"))
    loaded = load_bundle(two_processes / "bundle")
    assert loaded.meta["training"]["processes"] == 2

    one = json.loads((one_process / "report.json").read_text())
    two = json.loads((two_processes / "report.json").read_text())
    assert two["n_cells"] == one["n_cells"]
    assert [c["file"] for c in two["cells"]] == [c["file"] for c in one["cells"]]
    for name, tolerance in F1_TOLERANCE.items():
        assert two["weighted_f1"][name] == pytest.approx(one["weighted_f1"][name], abs=tolerance), (
            name,
            one["weighted_f1"],
            two["weighted_f1"],
        )
    rows_one, rows_two = log_rows(one_process), log_rows(two_processes)
    assert [(r["stage"], r["epoch"]) for r in rows_two] == [
        (r["stage"], r["epoch"]) for r in rows_one
    ]
    for stage in ("stage1-A", "stage1-B", "stage2"):
        losses_one = [float(r["val_loss"]) for r in rows_one if r["stage"] == stage]
        losses_two = [float(r["val_loss"]) for r in rows_two if r["stage"] == stage]
        if stage != "stage2":  # stage 2 starts from different stage-1 models
            assert losses_two[0] == pytest.approx(losses_one[0], rel=FIRST_VAL_LOSS_RTOL), stage
        assert losses_two[-1] == pytest.approx(losses_one[-1], abs=LAST_VAL_LOSS_ATOL), stage


def test_parallel_models_train_model_a_and_b_side_by_side_as_one_process_would(
    annotated, cache, one_process, tmp_path
):
    """Two processes, --parallel-models: each trains one stage-1 model alone (its rank-0
    random streams, the whole global batch), so model-A and model-B are the one-process
    run's; stage 2 then runs data-parallel on both."""
    out = tmp_path / "side_by_side"
    done = run_cli(train_args(annotated, out, cache, "--parallel-models"), torchrun())
    assert done.returncode == 0, done.stderr[-3000:]
    expected, found = bundle_tensors(one_process), bundle_tensors(out)
    for key, value in expected.items():
        if key.startswith(("model_a/", "model_b/")):
            torch.testing.assert_close(found[key], value, rtol=0, atol=1e-6, msg=key)
    for name in ("stage1-A", "stage1-B", "stage2"):
        assert json.loads((out / "checkpoints" / f"{name}.json").read_text())["state"]["finished"]
    rows = log_rows(out)
    assert [(r["stage"], r["epoch"]) for r in rows] == [
        (r["stage"], r["epoch"]) for r in log_rows(one_process)
    ]
    one = json.loads((one_process / "report.json").read_text())["weighted_f1"]
    two = json.loads((out / "report.json").read_text())["weighted_f1"]
    for name, tolerance in F1_TOLERANCE.items():
        assert two[name] == pytest.approx(one[name], abs=tolerance), name


def test_resume_across_ranks_gives_the_uninterrupted_runs_weights(
    annotated, cache, two_processes, tmp_path
):
    out = tmp_path / "interrupted"
    args = train_args(annotated, out, cache)
    stopped = run_cli(args, torchrun(), **{distributed.FAULT_ENV: "interrupt:stage1-B:2"})
    assert stopped.returncode != 0
    state = json.loads((out / "checkpoints" / "stage1-B.json").read_text())["state"]
    assert state["epoch"] == 2 and not state["finished"]
    assert not (out / "bundle").exists()

    resumed = run_cli([*args, "--resume"], torchrun())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, found = bundle_tensors(two_processes), bundle_tensors(out)
    assert expected.keys() == found.keys()
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, rtol=0, atol=1e-6, msg=key)


def start_rank(rank: int, argv: list[str], port: int, fault: str) -> subprocess.Popen:
    """One rank of a two-process run started by hand (no torchrun agent to stop the others)."""
    env = child_env(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        **{distributed.FAULT_ENV: fault},
    )
    return subprocess.Popen(
        [sys.executable, "-m", "napari_allbag", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("fault", ["exit", "hang"])
def test_a_rank_that_dies_or_hangs_stops_the_other_with_a_clear_error(
    annotated, cache, tmp_path, fault
):
    out = tmp_path / "run"
    argv = train_args(annotated, out, cache, "--dist-timeout", "5")
    port = free_port()
    ranks = [start_rank(r, argv, port, f"{fault}:1:stage1-A:1") for r in range(2)]
    try:
        _, err = ranks[0].communicate(timeout=RUN_LIMIT_S)  # a hang guard
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
            process.communicate()
    assert ranks[0].returncode == 2, err[-3000:]
    assert "Process 0 lost contact with the other training processes during stage1-A" in err
    assert "timeout of 5 s" in err and "--resume" in err
    if fault == "exit":
        assert ranks[1].returncode == distributed.FAULT_EXIT_STATUS
    state = json.loads((out / "checkpoints" / "stage1-A.json").read_text())["state"]
    assert state["epoch"] >= 1
    assert not (out / "bundle").exists()


def test_errors_of_rank_0_are_printed_once(tmp_path, cache):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_cli(train_args(empty, tmp_path / "run", cache), torchrun())
    assert done.returncode != 0
    assert done.stderr.count("No images") == 1, done.stderr[-3000:]


def test_sync_batchnorm_layers_are_swapped_back_after_training():
    from napari_allbag.model.networks import Stage1Model, create_backbone
    from napari_allbag.training.config import TrainConfig

    config = TrainConfig(data_dir=".", out_dir=".", backbone="test_resnet", pretrained=False)
    model = Stage1Model(create_backbone("test_resnet", pretrained=False))
    from timm.layers import convert_sync_batchnorm

    converted = convert_sync_batchnorm(model)
    assert converted is model
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)
    plain = without_sync_batchnorm(model, stage1_skeleton(config), torch.device("cpu"))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in plain.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value), key
    two_gpus = Distributed(rank=0, world_size=2, device=torch.device("cuda", 0))
    assert use_sync_batchnorm(config, two_gpus, two_gpus.device, 16)
    assert not use_sync_batchnorm(config, two_gpus, two_gpus.device, 64)
    two_cpus = Distributed(rank=0, world_size=2)
    assert not use_sync_batchnorm(config, two_cpus, two_cpus.device, 16)
    forced = TrainConfig(data_dir=".", out_dir=".", sync_batchnorm="on")
    with pytest.raises(TrainingError, match="needs GPUs"):
        use_sync_batchnorm(forced, two_cpus, two_cpus.device, 16)


def test_gpu_benchmark_ddp_section_runs_here_on_the_cpu(tmp_path):
    """`gpu_bench.py --smoke --sections ddp` (two gloo processes here)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_bench.py"
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--sections", "ddp", "--out", str(out)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["sections"]["ddp"]["rows"]
    assert [row["processes"] for row in rows] == [1, 2]
    assert all(row["images_per_s"] > 0 for row in rows)
    assert rows[1]["global_batch"] == 2 * rows[0]["global_batch"]
    assert "scaling_efficiency" in rows[1]


def test_forwarded_errors_are_training_errors():
    assert issubclass(ForwardedError, TrainingError)
    assert issubclass(DistributedError, TrainingError)
