"""Auditing a Flower federation: what an honest-but-curious server reads out of each client's reply.

- :class:`AuditingStrategy` wraps any message-API strategy (``flwr.serverapp.strategy.FedAvg``
  and the others): before the wrapped strategy aggregates a round, it hands every client's reply
  to a :class:`FlowerAuditor`, which turns the returned weights into a :class:`ClientUpdate`,
  attacks it and writes the same run records and report as ``gradleak run``. Aggregation is the
  wrapped strategy's, untouched.
- :class:`InProcessGrid` runs users' ``ClientApp`` objects in this process, without a SuperLink
  or Ray, so a whole federation (and its audit) runs on one machine and in tests;
  :func:`run_client_app` runs one ``ClientApp`` on one message.

Needs the ``flower`` extra: ``pip install 'gradleak[flower]'``.
"""

from gradleak.integrations.flower._require import require_flwr

require_flwr()

from gradleak.integrations.flower.auditor import ClientReply, FlowerAuditor
from gradleak.integrations.flower.inprocess import InProcessGrid, run_client_app
from gradleak.integrations.flower.strategy import AuditingStrategy
from gradleak.integrations.flower.weights import update_from_weights

__all__ = [
    "AuditingStrategy",
    "ClientReply",
    "FlowerAuditor",
    "InProcessGrid",
    "run_client_app",
    "update_from_weights",
]
