"""Distributed training under torchrun (docs/distributed.md), on this machine's CPU with gloo: `--nproc-per-node 2`,
torchrun itself, two "nodes" on localhost, the embedded broker started by rank 0 alone, resume after SIGKILL of
the whole torchrun group, a killed rank (one `error:` line, no hang), the checksum across ranks, and one process
computing exactly what it computed before."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from host_trainer import distributed
from host_trainer.distributed import DistributedError, World

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "mlp", "--dataset", "digits", "--epochs", "1", "--gen0-epochs", "3", "--final-epochs", "0",
        "--env-factor", "0.7", "--max-accuracy-drop", "100", "--bench-min-seconds", "0.1",
        "--bench-min-iterations", "20", "--allocation", "magnitude"]
FAST = [*TINY, "--no-mqtt", "--generations", "3"]
DETERMINISTIC = ("generation", "parent", "attempt", "seed", "alpha", "synapses", "clusters", "params", "macs",
                 "accuracy", "val_accuracy", "model_sha256", "accepted", "reject_reason")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
EVOLVE = ["-m", "host_trainer", "evolve"]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _evolve(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return _run([sys.executable, *EVOLVE, *args], cwd, timeout)


def _run_dir(parent: Path) -> Path:
    (run,) = [p for p in parent.iterdir() if p.is_dir()]
    return run


def _rows(run: Path) -> list[dict]:
    path = run / "generations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _essential(run: Path) -> list[dict]:
    return [{k: r.get(k) for k in DETERMINISTIC} for r in _rows(run)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _children(pid: int) -> dict[int, str]:
    """{pid: RANK} of the processes whose parent is `pid` (torchrun's ranks)."""
    found = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
            if int(ppid.split()[1]) == pid:
                environ = (status.parent / "environ").read_bytes().split(b"\0")
                rank = next((e[5:].decode() for e in environ if e.startswith(b"RANK=")), "")
                found[int(status.parent.name)] = rank
        except (OSError, StopIteration, ValueError):
            continue
    return found


def _wait_for(predicate, seconds: float) -> bool:  # noqa: ANN001
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _landed(parent: Path, generation: int) -> bool:
    runs = [p for p in parent.iterdir() if p.is_dir()]
    return bool(runs) and any(r["generation"] == generation for r in _rows(runs[0]))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """`--nproc-per-node 2`, 3 generations, measured in-process: the reference of several tests."""
    parent = tmp_path_factory.mktemp("two")
    proc = _evolve([*FAST, "--nproc-per-node", "2", "--run-dir", str(parent)], parent)
    assert proc.returncode == 0, proc.stderr
    return _run_dir(parent), proc


# ---- the pieces ------------------------------------------------------------------------------------------------
def test_one_process_is_the_single_world_and_every_helper_a_no_op():
    assert not distributed.launched() and distributed.world() == distributed.SINGLE
    order = torch.randperm(10)
    assert torch.equal(distributed.shard(order), order)
    assert distributed.mean(torch.tensor(0.25)) == 0.25 and distributed.agree(0.5) == 0.5
    model = nn.Linear(3, 2)
    assert distributed.wrap(model) is model
    distributed.check_identical(model, {}, "nothing to compare")


def test_shard_splits_a_global_batch_as_distributed_sampler_does():
    batch = torch.arange(10, 17)  # 7 images on 2 ranks: padded with the first, then strided
    shares = [distributed.shard(batch, World(rank=r, size=2)) for r in range(2)]
    assert shares[0].tolist() == [10, 12, 14, 16] and shares[1].tolist() == [11, 13, 15, 10]
    full = torch.arange(128)
    parts = [distributed.shard(full, World(rank=r, size=4)) for r in range(4)]
    assert all(len(p) == 32 for p in parts) and sorted(torch.cat(parts).tolist()) == full.tolist()


def test_a_checksum_mismatch_names_the_ranks():
    distributed.compare(["a", "a", "a"], "generation 1")
    with pytest.raises(DistributedError, match=r"generation 4: ranks 1, 3 hold a different network than rank 0"):
        distributed.compare(["a", "b", "a", "c"], "generation 4")
    model, masks = nn.Linear(3, 2), {"weight": torch.ones(2, 3, dtype=torch.bool)}
    before = distributed.digest(model, masks)
    masks["weight"][0, 0] = False
    assert distributed.digest(model, masks) != before


def _mismatch_rank(rank: int, port: int, queue) -> None:  # noqa: ANN001
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    distributed.init(30)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    masks = {"weight": torch.ones(2, 4, dtype=torch.bool)}
    shared = distributed.share(distributed.tensor_spec(distributed.network(model, masks)),
                               distributed.network(model, masks) if rank == 0 else None)
    distributed.check_identical(model, distributed.load_network(model, shared), "after share")  # the same
    if rank == 1:
        with torch.no_grad():
            model.weight[0, 0] += 1e-6
    try:
        distributed.check_identical(model, masks, "generation 7")
        queue.put((rank, "no error"))
    except DistributedError as exc:
        queue.put((rank, str(exc)))
    distributed.teardown()


def test_a_checksum_mismatch_across_two_real_ranks_stops_both():
    ctx = multiprocessing.get_context("spawn")
    queue, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_mismatch_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert set(results) == {0, 1}
    assert all("generation 7: ranks 1 hold a different network than rank 0" in m for m in results.values()), results


# ---- end to end --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_nproc_per_node_2_trains_on_two_ranks_and_rank_0_alone_writes(two_ranks):
    run, proc = two_ranks
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    rows = _rows(run)
    assert [r["generation"] for r in rows if r["accepted"]] == [0, 1, 2, 3]
    assert rows[-1]["synapses"] < rows[0]["synapses"]
    assert proc.stdout.count("done: ") == 1 and proc.stdout.count("run directory:") == 1  # rank 1 prints nothing
    assert not _errors(proc.stderr)


@pytest.mark.slow
def test_torchrun_itself_gives_the_same_run(two_ranks, tmp_path):
    proc = _run([*TORCHRUN, "--standalone", "--nproc-per-node", "2", *EVOLVE, *FAST, "--run-dir", str(tmp_path)],
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _essential(_run_dir(tmp_path)) == _essential(two_ranks[0])  # seeded: the same on the same world size


@pytest.mark.slow
def test_two_nodes_on_localhost_give_the_same_run(two_ranks, tmp_path):
    """Two torchrun agents (--nnodes 2, one process each, static rendezvous): global ranks 0 and 1 as above, with
    one thread each as above (a node of one rank would take every core: other thread counts, other float sums)."""
    port = _free_port()
    node = [*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port",
            str(port)]
    procs = [subprocess.Popen([*node, "--node-rank", str(n), *EVOLVE, *FAST, "--run-dir", str(tmp_path)],
                              cwd=tmp_path, env={**_env(), "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for n in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "done: " in outputs[0][0] and "done: " not in outputs[1][0]
    run = _run_dir(tmp_path)
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert _essential(run) == _essential(two_ranks[0])


@pytest.mark.slow
def test_rank_0_alone_starts_the_embedded_broker_and_daemon(tmp_path):
    proc = _evolve([*TINY, "--generations", "1", "--nproc-per-node", "2", "--run-dir", str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("embedded broker: mqtt://127.0.0.1:") == 1
    rows = _rows(_run_dir(tmp_path))
    assert [r["generation"] for r in rows] == [0, 1]
    assert all(r["device_id"] == "local" and r["fps"] > 0 for r in rows)


@pytest.mark.slow
def test_resume_after_sigkill_of_the_torchrun_group(two_ranks, tmp_path):
    cmd = [sys.executable, *EVOLVE, *FAST, "--nproc-per-node", "2", "--run-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert _wait_for(lambda: _landed(tmp_path, 1), 120)
    ranks = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its group; the ranks live in sessions of their own
    proc.wait()
    assert ranks and _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in ranks), 30), \
        "a rank outlived torchrun"
    run = _run_dir(tmp_path)
    assert max(r["generation"] for r in _rows(run)) < 3
    resumed = _evolve(["--resume", str(run), "--nproc-per-node", "2"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _essential(run) == _essential(two_ranks[0])
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_with_one_error_line(tmp_path):
    cmd = [sys.executable, *EVOLVE, *TINY, "--no-mqtt", "--generations", "50", "--nproc-per-node", "2",
           "--dist-timeout-s", "30", "--run-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: _landed(tmp_path, 1), 120)
    (follower,) = [pid for pid, rank in _children(proc.pid).items() if rank == "1"]
    os.kill(follower, signal.SIGKILL)
    _out, err = proc.communicate(timeout=90)  # no hang: TimeoutExpired fails the test
    assert proc.returncode not in (0, None)
    errors = _errors(err)
    assert len(errors) == 1 and "rank" in errors[0], err
    assert max(r["generation"] for r in _rows(_run_dir(tmp_path))) < 50


@pytest.mark.slow
def test_torchrun_with_one_process_is_the_plain_run(tmp_path):
    """WORLD_SIZE=1 under torchrun takes the one-process path: the very same generations as without it."""
    plain, launched = tmp_path / "plain", tmp_path / "torchrun"
    args = [*TINY, "--no-mqtt", "--generations", "1", "--final-epochs", "1"]
    assert _evolve([*args, "--run-dir", str(plain)], tmp_path).returncode == 0
    proc = _run([*TORCHRUN, "--standalone", "--nproc-per-node", "1", *EVOLVE, *args, "--run-dir", str(launched)],
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _essential(_run_dir(launched)) == _essential(_run_dir(plain))
    assert json.loads((_run_dir(plain) / "config.json").read_text())["world_size"] == 1


def test_bad_launch_options_are_one_line():
    proc = _evolve(["--nproc-per-node", "0"], ROOT, timeout=120)
    assert proc.returncode == 2 and _errors(proc.stderr) == ["error: --nproc-per-node must be >= 1 and "
                                                             "--dist-timeout-s > 0"]
