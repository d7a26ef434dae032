"""torchrun ranks (two gloo processes on this machine): a folder they do not share, different image sets, a
failing rank — each refused or stopped with the fix, on every rank."""

from __future__ import annotations

import datetime
import multiprocessing as mp
import socket
from pathlib import Path
from typing import Any

from hetpure.distributed import DistContext
from hetpure.errors import HetpureError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_worker(rank: int, port: int, folders: list[str], scenario: str, results: Any) -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                             timeout=datetime.timedelta(seconds=60))
    ctx = DistContext(rank=rank, world_size=2, owns_group=True)
    try:
        if scenario == "folders":
            ctx.check_shared_folder(Path(folders[rank]))
        elif scenario.startswith("images"):  # "images-same": both ranks [3, 5]; "images-differ": rank 1 also 9
            ctx.check_same_images([3, 5] + ([9] if scenario == "images-differ" and rank == 1 else []))
        elif rank == 1:  # "failure": rank 1 fails before the barrier rank 0 waits at
            ctx.report_failure()
        else:
            ctx.barrier()
        results[rank] = "ok"
    except HetpureError as exc:
        results[rank] = str(exc)
    finally:
        ctx.close()


def _two_ranks(folders: list[str], scenario: str) -> dict[int, str]:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        port = _free_port()
        procs = [ctx.Process(target=_rank_worker, args=(r, port, folders, scenario, results)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        return dict(results)


def test_ranks_refuse_a_folder_they_do_not_share(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    assert _two_ranks([str(shared), str(shared)], "folders") == {0: "ok", 1: "ok"}
    (tmp_path / "node0").mkdir()
    (tmp_path / "node1").mkdir()
    results = _two_ranks([str(tmp_path / "node0"), str(tmp_path / "node1")], "folders")
    assert set(results) == {0, 1} and all("not shared by all ranks" in m for m in results.values())


def test_ranks_refuse_to_evaluate_different_images() -> None:
    assert _two_ranks([], "images-same") == {0: "ok", 1: "ok"}
    results = _two_ranks([], "images-differ")
    assert set(results) == {0, 1} and all("chose different images" in m for m in results.values())
    DistContext().check_same_images([1, 2])  # one process: nothing to check


def test_a_failing_rank_stops_the_others_at_their_barrier(tmp_path: Path) -> None:
    results = _two_ranks([], "failure")
    assert results[1] == "ok" and "another rank failed" in results[0]
