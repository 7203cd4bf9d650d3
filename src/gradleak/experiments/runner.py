"""Running an attack over sampled batches, one record per batch, resumable after any crash.

Per batch the three parties of the threat model act in turn, and only these lines let them meet:

1. the **client** (victim side) computes its update from its private batch
   (:func:`gradleak.client.simulate_update`, as ``config.client`` says: FedSGD or FedAvg, LoRA,
   frozen parts, defences); under secure aggregation the batch is split among ``clients``
   simulated clients and the server sees the sum of their updates;
2. the **server** runs the attack on the public model of the round and that update alone
   (``attack.reconstruct(public, update)``); it is never given the batch. With LoRA the public
   model is the adapter-wrapped one the server sent (:func:`gradleak.client.prepare_model`);
3. **scoring** (:func:`gradleak.scoring.score_batch`) is the only place where the batch's texts
   meet the reconstruction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gradleak.attacks import Attack, create_attack
from gradleak.client import prepare_model, simulate_update
from gradleak.client.defences import secure_aggregate
from gradleak.client.exposure import Exposure
from gradleak.client.fedavg import sub_batch
from gradleak.client.settings import ClientSettings
from gradleak.data import Batch, load_texts, sample_batches
from gradleak.errors import GradleakError, UnknownSpecError
from gradleak.experiments.config import RunConfig
from gradleak.experiments.environment import environment
from gradleak.experiments.records import (
    describe_update,
    jsonable,
    reconstruction_fields,
    score_fields,
)
from gradleak.experiments.rundir import (
    SUMMARY_FILE,
    append_record,
    check_run_dir,
    check_writable,
    lock_run_dir,
    open_run_dir,
    write_json_atomic,
)
from gradleak.experiments.summary import summarize_run
from gradleak.models import PublicModel, load_model
from gradleak.update import ClientUpdate

__all__ = ["RunEvent", "run_experiment"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunEvent:
    """Progress of a run, for progress bars and logs.

    Attributes:
        kind: ``prepared`` (resume point known), ``loaded`` (data and model ready),
            ``batch_started``, ``batch_done`` or ``finished``.
        done: Batches completed so far (resumed ones included).
        total: Batches planned.
        record: The batch's record, for ``batch_done``.
    """

    kind: str
    done: int
    total: int
    record: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class _Prepared:
    """What every batch of a run needs, built before anything is written."""

    attack: Attack
    batches: list[Batch]
    public: PublicModel


def run_experiment(
    config: RunConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    on_event: Callable[[RunEvent], None] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the experiment ``config`` in directory ``out`` and returns its summary.

    Writes ``out/config.yaml``, appends one line per batch to ``out/records.jsonl`` as soon as
    the batch is scored, and rewrites ``out/summary.json`` after each batch. Batches already in
    the records are skipped, so rerunning after an interruption finishes the same run.

    Every check that can fail (the run directory, the output location, the attack options, the
    data and the batches it yields, the model, the exposure and the client's settings) runs
    before anything is written, so a corrected command is never refused as another config.

    Args:
        config: The run's settings; ``auto`` values are resolved first.
        out: The run directory.
        overwrite: Delete results of an earlier run in ``out`` instead of refusing them.
        on_event: Called with a :class:`RunEvent` at each step.

    Raises:
        RunDirError: ``out`` holds results of another config (and not ``overwrite``).
        OutputError: Nothing can be written in ``out``.
        GradleakError: The data, model or attack cannot be set up as configured.
    """
    config = config.resolved()
    out = Path(out)
    emit = on_event or (lambda event: None)
    attack = _create_attack(config)  # the cheap checks first: a typo is named as such
    settings = config.client_settings()
    done = check_run_dir(out, config, overwrite=overwrite)
    check_writable(out, option="--out directory")
    prepared = _prepare(config, attack, settings) if done < config.batches else None
    with lock_run_dir(out):
        records = open_run_dir(out, config, overwrite=overwrite)
        env = environment(config.device)
        emit(RunEvent("prepared", len(records), config.batches))
        if len(records) < config.batches:
            prepared = prepared or _prepare(config, attack, settings)  # records vanished meanwhile
            _run_remaining(config, out, prepared, records, env, emit)
        summary = summarize_run(config, records, environment=env)
        write_json_atomic(out / SUMMARY_FILE, summary)
    emit(RunEvent("finished", len(records), config.batches))
    return summary


def _prepare(config: RunConfig, attack: Attack, settings: ClientSettings) -> _Prepared:
    """Returns the attack, the sampled batches and the round's public model, checked to fit."""
    batches = _sample(config)
    # The round's public model: with LoRA, the adapter-wrapped copy the server sent.
    public = prepare_model(_load_public_model(config), settings)
    if not settings.uses_lora:  # adapters are shared whatever the exposure says
        Exposure.parse(settings.expose).select(public.family)
    return _Prepared(attack, batches, public)


def _run_remaining(
    config: RunConfig,
    out: Path,
    prepared: _Prepared,
    records: list[dict[str, Any]],
    env: Mapping[str, Any],
    emit: Callable[[RunEvent], None],
) -> None:
    """Runs the batches after the last recorded one, appending each record as soon as it is done."""
    emit(RunEvent("loaded", len(records), config.batches))
    for index in range(len(records), config.batches):
        emit(RunEvent("batch_started", index, config.batches))
        record = run_batch(index, prepared.batches[index], prepared.public, prepared.attack, config)
        append_record(out, record)
        records.append(record)
        write_json_atomic(out / SUMMARY_FILE, summarize_run(config, records, environment=env))
        emit(RunEvent("batch_done", len(records), config.batches, record))


def run_batch(
    index: int, batch: Batch, public: PublicModel, attack: Attack, config: RunConfig
) -> dict[str, Any]:
    """Returns the record of one batch: client update, attack on the update alone, then scoring.

    ``public`` is the round's public model (``prepare_model`` applied), which the client trains
    from and the attack receives.
    """
    started = time.perf_counter()
    # 1. Victim side: the client trains on its private batch and shares only the update.
    update, noise_seeds = client_update(index, batch, public, config)
    shared = time.perf_counter()
    # 2. Server side: the attack sees the public model and the update, never the batch.
    reconstruction = attack.reconstruct(public, update)
    attacked = time.perf_counter()
    # 3. Scoring: the only place where the ground truth meets the reconstruction.
    scoring = score_fields(
        batch.texts,
        reconstruction,
        public.tokenizer,
        max_length=config.max_length,
        matching=config.matching,
        keep_special_tokens=config.keep_special_tokens,
    )
    # A sequence-to-sequence update's targets are scored on their own, beside the sources.
    targets = (
        {
            **score_fields(
                batch.targets or batch.texts,
                reconstruction.targets,
                public.tokenizer,
                max_length=config.max_length,
                matching=config.matching,
                keep_special_tokens=config.keep_special_tokens,
            ),
            **reconstruction_fields(reconstruction.targets),
        }
        if reconstruction.targets is not None
        else None
    )
    scored = time.perf_counter()
    stages = dict(reconstruction.diagnostics.get("seconds", {}))
    record = {
        "batch": index,
        "config": config.fingerprint(),
        "source": batch.source,
        "indices": list(batch.indices) if batch.indices is not None else None,
        "labels": list(batch.labels) if batch.labels is not None else None,
        **scoring,
        **reconstruction_fields(reconstruction),
        "client": config.client.to_dict(),
        "update": describe_update(update, noise_seeds),
        "seconds": {
            "update": shared - started,
            "attack": attacked - shared,
            "score": scored - attacked,
            "total": scored - started,
            "attack_stages": jsonable(stages),
        },
    }
    if targets is not None:
        record["targets"] = targets
    return record


def client_update(
    index: int, batch: Batch, public: PublicModel, config: RunConfig
) -> tuple[ClientUpdate, list[int]]:
    """Returns the update the server receives for batch ``index``, and the noise seeds used.

    With ``clients`` K > 1 (secure aggregation) the batch is split into K consecutive parts of
    near-equal size, each part is one client's batch, and the server receives the sum. Every
    client of every batch draws its own noise: seed ``noise_seed + index * K + k``, so a resumed
    run repeats the same draws.
    """
    settings = config.client_settings()
    clients = config.clients
    seeds = [settings.noise_seed + index * clients + k for k in range(clients)]
    updates = [
        simulate_update(public, part, settings=replace(settings, noise_seed=seed))
        for part, seed in zip(split_batch(batch, clients), seeds, strict=True)
    ]
    return (updates[0] if clients == 1 else secure_aggregate(updates)), seeds


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    """Returns ``batch`` cut into ``parts`` consecutive batches whose sizes differ by at most
    one."""
    size, extra = divmod(len(batch), parts)
    out, start = [], 0
    for part in range(parts):
        stop = start + size + (part < extra)
        out.append(sub_batch(batch, slice(start, stop)))
        start = stop
    return out


def _sample(config: RunConfig) -> list[Batch]:
    source = load_texts(config.dataset, split=config.split, text_field=config.text_field)
    return sample_batches(
        source,
        protocol=config.sampler,
        batch_size=config.batch_size,
        n_batches=config.batches,
        seed=config.seed,
    )


def _load_public_model(config: RunConfig) -> PublicModel:
    import torch

    public = load_model(
        config.model, task=config.task, seed=config.seed, dtype=getattr(torch, config.dtype)
    )
    if config.device != "cpu":
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise GradleakError(
                f"device {config.device!r} was asked for but torch sees no CUDA GPU; use --device "
                "cpu."
            )
        public.model.to(config.device)
    return public


def _create_attack(config: RunConfig) -> Attack:
    try:
        return create_attack(config.attack, **config.attack_options)
    except (TypeError, ValueError) as err:
        if isinstance(err, GradleakError):
            raise
        raise UnknownSpecError(
            f"attack {config.attack!r} cannot be configured with "
            f"{dict(config.attack_options)}: {err}"
        ) from None
