"""Running users' Flower ClientApps in this process: a Grid without a SuperLink, and without Ray.

Flower's own simulation engine needs Ray. An audit needs much less: deliver each message to the
node's ``ClientApp`` and collect the reply. :class:`InProcessGrid` does that with Flower's real
``Message``, ``Context`` and ``ClientApp`` objects, so any strategy's ``start(grid=...)`` runs a
real federation on one machine. Each message is copied on delivery, as the network would, so a
ClientApp cannot change what the server holds.
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from gradleak.errors import GradleakError

__all__ = ["InProcessGrid", "run_client_app"]

logger = logging.getLogger(__name__)

#: Flower's node id of the server side (the SuperLink); client nodes never use it.
SERVER_NODE_ID = 1
#: Flower's error code for a ClientApp that raised.
CLIENT_APP_RAISED_EXCEPTION = 2


class InProcessGrid(Grid):
    """A Flower ``Grid`` whose nodes are ClientApps called in this process.

    Args:
        client_apps: One ClientApp per node, or ``{node_id: ClientApp}``. Listed apps get node ids
            101, 102, ... and the node config Flower's simulation gives: ``partition-id`` (0, 1,
            ...) and ``num-partitions``.
        node_configs: Per-node config overrides, by node id.
        run_config: The run config every node's Context carries (as ``flwr run --run-config``).
        run_id: The run id written into messages.
    """

    def __init__(
        self,
        client_apps: Sequence[ClientApp] | Mapping[int, ClientApp],
        *,
        node_configs: Mapping[int, Mapping[str, Any]] | None = None,
        run_config: Mapping[str, Any] | None = None,
        run_id: int = 1,
    ) -> None:
        if not isinstance(client_apps, Mapping):
            client_apps = {101 + i: app for i, app in enumerate(client_apps)}
        if not client_apps or SERVER_NODE_ID in client_apps:
            raise GradleakError(
                f"give at least one ClientApp, with node ids other than {SERVER_NODE_ID} "
                "(Flower's server node)."
            )
        self.apps = dict(client_apps)
        count = len(self.apps)
        self.contexts = {
            node: Context(
                run_id=run_id,
                node_id=node,
                node_config={
                    "partition-id": i,
                    "num-partitions": count,
                    **dict((node_configs or {}).get(node, {})),
                },
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i, node in enumerate(self.apps)
        }
        self._run_id = run_id
        self._run: Any = None
        self._replies: dict[str, Message] = {}
        _act_as_server(run_id)

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delivers each message to its node's ClientApp now; the replies wait to be pulled."""
        ids = []
        for message in messages:
            message_id = str(uuid.uuid4())
            message.metadata.__dict__["_message_id"] = message_id  # as Flower's own grids do
            self._replies[message_id] = self._deliver(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        if node not in self.apps:
            raise GradleakError(f"a message was addressed to node {node}, which this grid lacks.")
        delivered = copy.deepcopy(message)
        delivered.metadata.delivered_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            reply = self.apps[node](delivered, self.contexts[node])
        except Exception as err:  # noqa: BLE001 - a real SuperNode turns any crash into an error reply
            logger.warning("ClientApp of node %d raised: %s", node, err)
            reason = "".join(traceback.format_exception_only(type(err), err)).strip()
            return Message(
                Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=delivered
            )
        return copy.deepcopy(reply)


def run_client_app(
    client_app: ClientApp,
    arrays: ArrayRecord,
    config: Mapping[str, Any] | None = None,
    *,
    message_type: str = "train",
    node_id: int = 101,
    node_config: Mapping[str, Any] | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> Message:
    """Runs ``client_app`` on one message carrying ``arrays`` and ``config``; returns its reply.

    The message is what Flower's strategies send (``{"arrays": ..., "config": ...}``), so the
    reply holds what that client would return to a server: for training, its new weights and
    metrics. Raises GradleakError if the ClientApp failed.
    """
    grid = InProcessGrid(
        {node_id: client_app},
        node_configs={node_id: dict(node_config or {})},
        run_config=run_config,
    )
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(dict(config or {}))})
    (reply,) = grid.send_and_receive([Message(content, node_id, message_type)])
    if reply.has_error():
        raise GradleakError(
            f"the ClientApp failed on the {message_type} message: {reply.error.reason}"
        )
    return reply


def _act_as_server(run_id: int) -> None:
    """Gives this process the server's task identity, which new Messages read (flwr >= 1.40)."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:  # older flwr: messages take no identity from the process
        return
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SERVER_NODE_ID
