"""A Flower strategy wrapper that audits each client's reply before the wrapped strategy aggregates.

The wrapper remembers, per round and node, the arrays and config each training message carried
(``configure_train``), and in ``aggregate_train`` hands every successful reply to the auditor
before passing the very same replies on. Everything else is delegated, so the federation's
sampling, aggregation and evaluation are the wrapped strategy's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from gradleak.integrations.flower.auditor import ClientReply, FlowerAuditor

__all__ = ["AuditingStrategy"]

logger = logging.getLogger(__name__)


class AuditingStrategy(Strategy):
    """Wraps a message-API Flower strategy and audits every training reply.

    Args:
        strategy: The strategy that samples and aggregates (e.g. ``FedAvg(...)``).
        auditor: Attacks the replies and writes the records.
        arrays_key: The RecordDict key of the weights (Flower's strategies use ``"arrays"``).
        config_key: The RecordDict key of the training config (``"config"``).
        metrics_key: The RecordDict key of a reply's metrics (``"metrics"``).
        rounds: Audit only these rounds (None: every round).
    """

    def __init__(
        self,
        strategy: Strategy,
        auditor: FlowerAuditor,
        *,
        arrays_key: str = "arrays",
        config_key: str = "config",
        metrics_key: str = "metrics",
        rounds: Iterable[int] | None = None,
    ) -> None:
        self.strategy = strategy
        self.auditor = auditor
        self.arrays_key = getattr(strategy, "arrayrecord_key", arrays_key)
        self.config_key = getattr(strategy, "configrecord_key", config_key)
        self.metrics_key = metrics_key
        self.rounds = None if rounds is None else set(rounds)
        self._sent: dict[int, dict[int, tuple[ArrayRecord, ConfigRecord]]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegates, and remembers what each sampled node was sent."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if self._audits(server_round):
            self._sent[server_round] = {
                m.metadata.dst_node_id: (
                    m.content.array_records.get(self.arrays_key, arrays),
                    m.content.config_records.get(self.config_key, config),
                )
                for m in messages
            }
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Audits the round's successful replies, then lets the wrapped strategy aggregate them."""
        replies = list(replies)  # iterated twice: by the audit and by the aggregation
        sent = self._sent.pop(server_round, None)
        if sent:
            self._audit(server_round, replies, sent)
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()
        logger.info(
            "\t└──> Audited by gradleak (%s), records in %s",
            self.auditor.attack_name,
            self.auditor.out,
        )

    def __getattr__(self, name: str) -> Any:
        # Attributes the wrapped strategy has (fraction_train, weighted_by_key, ...) read through.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def _audits(self, server_round: int) -> bool:
        return self.rounds is None or server_round in self.rounds

    def _audit(self, server_round: int, replies: list[Message], sent) -> None:
        audited, global_state = [], None
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or node not in sent or self.arrays_key not in reply.content:
                continue
            arrays, config = sent[node]
            if global_state is None:
                global_state = arrays.to_torch_state_dict()
            audited.append(
                ClientReply(
                    node_id=node,
                    state=reply.content[self.arrays_key].to_torch_state_dict,  # one at a time
                    num_examples=_num_examples(reply, self.metrics_key),
                    config=dict(config),
                )
            )
        if audited:
            self.auditor.audit_round(server_round, global_state, audited)


def _num_examples(reply: Message, metrics_key: str) -> int | None:
    metrics = reply.content.metric_records.get(metrics_key)
    value = metrics.get("num-examples") if metrics is not None else None
    return int(value) if value is not None else None
