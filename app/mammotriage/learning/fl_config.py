"""The federation's settings and the site's round log location (no torch: the CLI and the
Model panel read them)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FAULTS", "PROFILES", "SimConfig", "read_round_log", "round_log_path"]

#: The site's federation folder, beside its archive: the round log and the startup kit's
#: workspace live there.
FEDERATION_DIR = "federation"

#: Simulated site profiles (:mod:`mammotriage.learning.fl_sim`).
PROFILES = ("calc", "mass", "newscanner")
#: What a simulated attacker sends: NaN updates, or its honest update scaled 100x.
FAULTS = ("nan", "scale100")


@dataclass
class SimConfig:
    """A simulation's size (the defaults: the figures of docs/model.md)."""

    sites: int = 3
    seeds: tuple[int, ...] = (0, 1, 2)
    rounds: int = 5
    local_iterations: int = 60
    lr: float = 5e-3  # SGD momentum 0.9 (docs/model.md section 11); AdamW fine-tuning uses 3e-4
    optimizer: str = "sgd"  # each site's local optimiser (fl_site.OPTIMIZERS), baselines alike
    fedprox_mu: float = 0.0
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    method: str = "fedavg"
    server_lr: float = 1.0  # the server's step on the aggregated update (FedOpt's eta_g; 1: FedAvg)
    rows: int = 256
    columns: int = 208
    train_lesion_exams: int = 10  # per site
    train_normal_exams: int = 4
    val_lesion_exams: int = 6  # per site: the site's locked validation set
    val_normal_exams: int = 4
    parent_exams: int = 30
    parent_epochs: float = 3.0
    threads: int = 1
    malicious: str | None = None  # add a site that sends broken updates: "nan" or "scale100"
    extra: dict[str, Any] = field(default_factory=dict[str, Any])

    def job_params(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "local_iterations": self.local_iterations, "lr": self.lr,
                "fedprox_mu": self.fedprox_mu, "dp_clip": self.dp_clip, "dp_noise": self.dp_noise}


def round_log_path(archive_file: str | Path) -> Path:
    """Where a site's round log is kept (``federation/rounds.jsonl`` beside its archive):
    one JSON line per round, written by :class:`mammotriage.learning.fl_site.RoundLog`."""
    return Path(archive_file).parent / FEDERATION_DIR / "rounds.jsonl"


def read_round_log(path: str | Path, limit: int = 10_000) -> tuple[list[dict[str, Any]], int]:
    """A round log's entries (the last ``limit``) and how many lines were not readable
    (a line cut by a crash, or not an object); a missing file is an empty log."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], 0
    entries: list[dict[str, Any]] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(e, dict):
            entries.append(e)
        else:
            bad += 1
    return entries[-limit:], bad
