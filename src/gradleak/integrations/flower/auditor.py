"""The server-side audit: attack every client's reply of a round and write it down as a run.

Each audited round becomes a run directory ``OUT/round-NNN`` with the files ``gradleak run``
writes (``config.yaml``, ``records.jsonl`` with one record per client, ``summary.json``), so
``gradleak report OUT`` tables and plots a federation's rounds like any sweep. A record holds the
reconstructions, their certified flags and the attack's time; when the auditor is given the
clients' texts (a simulation), also ROUGE, exact matches and token accuracy against them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from gradleak.attacks import Attack, Cause, CauseKind, create_attack
from gradleak.attacks.verdict import render
from gradleak.client.settings import ClientSettings
from gradleak.errors import GradleakError, InvalidUpdateError
from gradleak.experiments import RunConfig, environment, summarize_run
from gradleak.experiments.records import (
    describe_update,
    jsonable,
    reconstruction_fields,
    score_fields,
)
from gradleak.experiments.rundir import (
    SUMMARY_FILE,
    append_record,
    open_run_dir,
    write_json_atomic,
)
from gradleak.integrations.flower.weights import rounding_noise, update_from_weights
from gradleak.models import PublicModel, load_model
from gradleak.update import ClientUpdate, save_update

__all__ = ["ClientReply", "FlowerAuditor", "GroundTruth"]

logger = logging.getLogger(__name__)

#: Rounding of the returned weights, relative to the delta, above which span tests lose the
#: gradient. Measured with examples/flower/README.md's lr commands on a float32 GPT-2 (d = 128):
#: exact and certified at 1.2e-5 (lr 0.01), saturated at 1.1e-4 (lr 0.001).
ROUNDING_WARNING = 1e-4

#: The clients' true texts, for scoring in a simulation: ``{node_id: texts}`` or
#: ``(server_round, node_id) -> texts`` (None where unknown).
GroundTruth = Mapping[int, Sequence[str]] | Callable[[int, int], Sequence[str] | None]


@dataclass(frozen=True)
class ClientReply:
    """What the server received from one client in one round.

    Attributes:
        node_id: The client's Flower node id.
        state: The returned weights, by ``state_dict`` name, or a function returning them (so a
            round's replies are converted one at a time: a model's weights per client add up).
        num_examples: The ``num-examples`` the client reported, if any.
        config: The training config the server sent it (learning rate, local steps, ...).
    """

    node_id: int
    state: Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor]]
    num_examples: int | None = None
    config: Mapping[str, Any] = field(default_factory=dict)

    def weights(self) -> Mapping[str, torch.Tensor]:
        """Returns the returned weights, converting them now if ``state`` is a loader."""
        return self.state() if callable(self.state) else self.state


class FlowerAuditor:
    """Attacks the replies of a federation's clients, round by round, and records what leaked.

    Args:
        model: The model the federation trains: a gradleak model spec (``smollm2-135m``,
            ``random:gpt2?...``, a folder or hub id) or a :class:`PublicModel`. Each round the
            auditor loads that round's global weights into it, as the server holds them.
        out: The folder for the round directories.
        attack: Attack name (``gradleak list attacks``), ``dager`` by default.
        attack_options: Options of the attack's config.
        task: ``seq_class``, ``next_token`` or ``seq2seq``, as the clients train (for a spec).
        num_labels: Classes of the classification head (for a spec).
        dtype: The auditor's model dtype (for a spec). Updates are differenced in float64 first.
        ground_truth: The clients' texts, when known (a simulation); records are then scored.
        lr_key: The training-config key holding the learning rate the server sets.
        steps_key: The training-config key holding the clients' local steps (1 is FedSGD).
        save_updates: Also write each ClientUpdate to ``round-NNN/updates/node-ID.safetensors``
            (for ``gradleak invert`` later).
        client: How the federation's clients train and defend themselves (exposure, LoRA,
            defences, ...), as far as the server knows; recorded in each round's config and
            records. The training config the server sends decides ``lr`` and ``algo`` (one local
            step is FedSGD, more are FedAvg).
    """

    def __init__(
        self,
        model: str | PublicModel,
        out: str | Path,
        *,
        attack: str = "dager",
        attack_options: Mapping[str, Any] | None = None,
        task: str = "seq_class",
        num_labels: int = 2,
        dtype: str = "float32",
        ground_truth: GroundTruth | None = None,
        lr_key: str = "lr",
        steps_key: str = "local-steps",
        save_updates: bool = False,
        client: ClientSettings | None = None,
    ) -> None:
        self.public = (
            model
            if isinstance(model, PublicModel)
            else load_model(model, task=task, num_labels=num_labels, dtype=getattr(torch, dtype))
        )
        self.out = Path(out)
        self.attack_name = attack
        self.attack_options = dict(attack_options or {})
        self.attack: Attack = create_attack(attack, **self.attack_options)
        self.ground_truth = ground_truth
        self.lr_key, self.steps_key = lr_key, steps_key
        self.save_updates = save_updates
        self.client = client or ClientSettings()
        self._environment = environment("cpu")

    def audit_round(
        self,
        server_round: int,
        global_state: Mapping[str, torch.Tensor],
        replies: Sequence[ClientReply],
    ) -> list[dict[str, Any]]:
        """Attacks each reply against the round's global weights; returns and writes the records.

        A reply that cannot be turned into an update (unchanged weights, other shapes, NaN) gets
        a record with its reason instead of a reconstruction; the round goes on.
        """
        if not replies:
            return []
        self._load_global(global_state)
        config = self._round_config(server_round, replies)
        run_dir = self._open_round(server_round, config)
        records = []
        for position, reply in enumerate(replies):
            record = self._audit_reply(position, server_round, global_state, reply, config, run_dir)
            append_record(run_dir, record)
            records.append(record)
            write_json_atomic(
                run_dir / SUMMARY_FILE,
                summarize_run(config, records, environment=self._environment),
            )
        return records

    def _audit_reply(
        self,
        position: int,
        server_round: int,
        global_state,
        reply: ClientReply,
        config: RunConfig,
        run_dir: Path,
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "batch": position,
            "config": config.fingerprint(),
            "source": "flower",
            "client": config.client.to_dict(),
            "flower": {
                "round": server_round,
                "node_id": reply.node_id,
                "num_examples": reply.num_examples,
            },
        }
        started = time.perf_counter()
        weights = reply.weights()
        try:
            update = self._update(global_state, weights, reply)
        except InvalidUpdateError as err:
            logger.warning("Round %d, node %d: %s", server_round, reply.node_id, err)
            return {
                **record,
                "reconstructions": [],
                "certified": [],
                "reason": str(err),
                "seconds": {"total": time.perf_counter() - started, "attack": 0.0},
            }
        if self.save_updates:
            save_update(update, run_dir / "updates" / f"node-{reply.node_id}.safetensors")
        converted = time.perf_counter()
        reconstruction = self.attack.reconstruct(self.public, update)
        attacked = time.perf_counter()
        record.update(reconstruction_fields(reconstruction))
        noise = rounding_noise(weights, update)
        record["update"] = {**describe_update(update), "rounding_noise": noise}
        if noise is not None and noise > ROUNDING_WARNING and not reconstruction.certified:
            causes = (*reconstruction.all_causes, _rounding_cause(noise, weights))
            record["causes"] = [c.to_dict() for c in causes]
            record["reason"] = render(causes)
        texts = self._texts(server_round, reply.node_id)
        if texts is not None:
            record.update(score_fields(texts, reconstruction, self.public.tokenizer))
        record["seconds"] = {
            "update": converted - started,
            "attack": attacked - converted,
            "total": time.perf_counter() - started,
            "attack_stages": jsonable(reconstruction.diagnostics.get("seconds", {})),
        }
        logger.info(
            "Round %d, node %d: %d sequences, %d certified, %.1f s",
            server_round,
            reply.node_id,
            len(reconstruction.sequences),
            sum(s.certified for s in reconstruction.sequences),
            attacked - converted,
        )
        return record

    def _update(self, global_state, weights, reply: ClientReply) -> ClientUpdate:
        lr = reply.config.get(self.lr_key)
        steps = reply.config.get(self.steps_key)
        return update_from_weights(
            self.public,
            global_state,
            weights,
            learning_rate=float(lr) if lr is not None else None,
            local_steps=int(steps) if steps is not None else None,
            batch_size=reply.num_examples,
        )

    def _load_global(self, global_state: Mapping[str, torch.Tensor]) -> None:
        """Puts the round's global weights into the public model, as the clients start from them."""
        model = self.public.model
        names = [name for name, _ in model.named_parameters()]
        missing = [name for name in names if name not in global_state]
        if missing:
            raise GradleakError(
                f"the round's global arrays lack {len(missing)} of the public model's parameters "
                f"(e.g. {missing[0]!r}); the audit needs the full weights the server sends, "
                "named as in the model's state_dict."
            )
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter.copy_(global_state[name].to(parameter.dtype))

    def _round_config(self, server_round: int, replies: Sequence[ClientReply]) -> RunConfig:
        """Returns the RunConfig that describes the round in its directory's files."""
        examples = [r.num_examples for r in replies if r.num_examples]
        return RunConfig(
            model=self.public.spec,
            dataset=f"flower:round-{server_round}",
            batch_size=max(examples, default=1),
            batches=len(replies),
            sampler="random",
            task=self.public.task,
            attack=self.attack_name,
            attack_options=self.attack_options,
            client=self._round_client(replies[0].config),
            dtype=str(self.public.model.dtype).removeprefix("torch."),
        )

    def _round_client(self, sent: Mapping[str, Any]) -> ClientSettings:
        """Returns the clients' settings with the learning rate and algorithm the server sent."""
        lr, steps = sent.get(self.lr_key), sent.get(self.steps_key)
        changes: dict[str, Any] = {}
        if lr is not None:
            changes["lr"] = float(lr)
        if steps is not None and int(steps) > 1:
            changes["algo"] = "fedavg"
        elif steps is not None or self.client.algo == "fedsgd":
            changes.update(algo="fedsgd", local_epochs=1, mini_batch=None)
        return replace(self.client, **changes)

    def _open_round(self, server_round: int, config: RunConfig) -> Path:
        run_dir = self.out / f"round-{server_round:03d}"
        open_run_dir(run_dir, config, overwrite=True)  # a round is audited once, in one go
        return run_dir

    def _texts(self, server_round: int, node_id: int) -> Sequence[str] | None:
        truth = self.ground_truth
        if truth is None:
            return None
        if callable(truth):
            return truth(server_round, node_id)
        return truth.get(node_id)


def _rounding_cause(noise: float, state: Mapping[str, torch.Tensor]) -> Cause:
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    return Cause(CauseKind.ROUNDING, detail=f"{noise:.1e} of the delta's size ({dtype})")
