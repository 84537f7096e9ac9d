"""Data-parallel training of the embedding network (``pbi train --nproc N``).

The seed paper's plan for large training sets: torch ``DistributedDataParallel`` over N
local processes, ``gloo`` on CPU, ``nccl`` when there is one CUDA device per process.

Every rank rebuilds the same training state from files in a private temporary folder
(curves as an ``allow_pickle=False`` npz, the initial weights as safetensors, settings as
JSON, the model's kind and input encoding by name: nothing is unpickled, no class is sent),
builds the kind's :class:`~.training.Trainer` (:data:`~.training.TRAINERS`), draws the
same synthetic negatives and batch order from an identically seeded generator, trains on
its 1/N share of each batch, and DDP averages the gradients, so one optimisation step sees
the whole batch as in one process. Rank 0 writes the trained weights back as safetensors.
Only the network is trained in parallel; the one-class models, subspaces and calibration
are fitted afterwards in the calling process (:func:`~.fitting.fit_model`).

The result is not bit-identical to one process (triplets are mined within each rank's
share of a batch, and float sums are reduced in another order); ``benchmarks/bench_ddp.py``
measures the difference in detection on the same split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from pbi_bluesky.infra.ports import free_port
from pbi_bluesky.models.fitted import FittedModel
from pbi_bluesky.models.network import NetworkConfig
from pbi_bluesky.models.representation import QGrid
from pbi_bluesky.models.settings import TrainingConfig
from pbi_bluesky.models.training import TRAINERS, Trainer

__all__ = ["train_network_ddp"]

logger = logging.getLogger(__name__)


def _backend(nproc: int) -> str:
    if torch.cuda.is_available() and torch.cuda.device_count() >= nproc:
        return "nccl"
    return "gloo"


def _state_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_network_ddp(trainer: Trainer, intensity: NDArray, sigma: NDArray, labels: NDArray,
                      seed: int, nproc: int, progress: bool) -> dict[str, Any]:
    """Train ``trainer.model.network`` in ``nproc`` processes.

    The trained weights and the epoch losses are loaded back into the model.

    Parameters
    ----------
    trainer
        The :class:`~.training.Trainer` of a model whose references are fitted and whose
        network holds its initial weights.
    intensity, sigma, labels
        The training normals on the model grid and their recipe indices.
    seed
        Seed of the generator every rank draws negatives and batch order from.
    nproc
        Number of processes (>= 2).
    progress
        Show rank 0's epoch progress bar.

    Returns
    -------
    dict
        ``processes``, ``backend``, ``device``, ``history`` (epoch losses averaged over the
        ranks) and ``rank_weights_sha256`` (one per rank: equal when the ranks stayed in
        step).

    Raises
    ------
    RuntimeError
        If a training process fails (its error is in the message).
    """
    from safetensors.torch import load_file, save_file
    from torch import multiprocessing as mp

    if nproc < 2:
        raise ValueError(f"nproc must be >= 2 for data-parallel training, got {nproc}")
    backend = _backend(nproc)
    model = trainer.model
    with tempfile.TemporaryDirectory(prefix="pbi-ddp-") as tmp:
        root = Path(tmp)
        np.savez(root / "data.npz", intensity=intensity, sigma=sigma, labels=labels)
        save_file({k: v.contiguous() for k, v in model.network.state_dict().items()},
                  str(root / "initial.safetensors"))
        grid = model.grid
        spec = {
            "nproc": nproc, "backend": backend, "port": free_port(), "seed": int(seed),
            "progress": bool(progress), "recipes": list(model.recipes),
            "trainer": trainer.name, "encoding": model.encoding,
            "threads": max(1, torch.get_num_threads() // nproc),
            "grid": {"q_min": grid.q_min, "q_max": grid.q_max, "npt": grid.npt,
                     "min_coverage": grid.min_coverage},
            "network": model.network.config.to_dict(),
            "training": model.training.to_dict(),
        }
        (root / "spec.json").write_text(json.dumps(spec))
        env_ifname = os.environ.get("GLOO_SOCKET_IFNAME")
        if backend == "gloo" and env_ifname is None and sys.platform.startswith("linux"):
            os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only: nothing leaves here
        logger.info("training the network in %d processes (%s)", nproc, backend)
        try:
            mp.start_processes(_rank_main, args=(str(root),), nprocs=nproc, join=True,
                               start_method="spawn")
        except Exception as exc:  # ProcessRaisedException / ProcessExitedException
            raise RuntimeError(f"data-parallel training failed: {exc}") from exc
        finally:
            if env_ifname is None:
                os.environ.pop("GLOO_SOCKET_IFNAME", None)
        state = load_file(str(root / "trained.safetensors"))
        model.network.load_state_dict(state)
        result = json.loads((root / "result.json").read_text())
        result["rank_weights_sha256"] = [
            json.loads((root / f"rank{r}.json").read_text())["weights_sha256"]
            for r in range(nproc)]
    model.history = list(result["history"])
    return result


def _rank_main(rank: int, folder: str) -> None:
    """One training process (spawned): rebuild, train its share, write the result."""
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file
    from torch.nn.parallel import DistributedDataParallel

    root = Path(folder)
    spec = json.loads((root / "spec.json").read_text())
    torch.set_num_threads(int(spec["threads"]))
    world = int(spec["nproc"])
    backend = spec["backend"]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{spec['port']}",
                            rank=rank, world_size=world)
    try:
        with np.load(root / "data.npz", allow_pickle=False) as data:
            intensity, sigma = data["intensity"], data["sigma"]
            labels = data["labels"]
        model = FittedModel(QGrid(**spec["grid"]), NetworkConfig.from_dict(spec["network"]),
                            TrainingConfig(**spec["training"]), encoding=spec["encoding"])
        model.recipes = list(spec["recipes"])
        trainer = TRAINERS[spec["trainer"]](model)
        trainer.fit_references(intensity, sigma, labels)
        model.network.load_state_dict(load_file(str(root / "initial.safetensors")))
        device = torch.device(f"cuda:{rank}") if backend == "nccl" else None
        if device is not None:
            model.network.to(device)
        net = DistributedDataParallel(model.network,
                                      device_ids=None if device is None else [rank])

        def mean_loss(value: float) -> float:
            t = torch.tensor([value], dtype=torch.float64,
                             device=device if device is not None else "cpu")
            dist.all_reduce(t)
            return float(t.item()) / world

        rng = np.random.default_rng(int(spec["seed"]))
        trainer.train_network(intensity, sigma, labels, rng,
                              bool(spec["progress"]) and rank == 0, network=net,
                              shard=(rank, world), device=device, mean_loss=mean_loss)
        state = {k: v.detach().cpu().contiguous()
                 for k, v in model.network.state_dict().items()}
        (root / f"rank{rank}.json").write_text(
            json.dumps({"weights_sha256": _state_sha256(state)}))
        if rank == 0:
            save_file(state, str(root / "trained.safetensors"))
            (root / "result.json").write_text(json.dumps({
                "processes": world, "backend": backend,
                "device": "cpu" if device is None else "cuda",
                "history": model.history}))
        dist.barrier()
    finally:
        dist.destroy_process_group()
