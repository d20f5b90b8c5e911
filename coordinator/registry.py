"""The coordinator's Registry gRPC service: latest adapter bundles and node status, from the store.

A node that rebooted, or missed a push, asks ``LatestAdapters`` for the bundles
newer than the versions it holds; it reports what it runs with ``ReportStatus``;
an operator reads it back with ``NodeStatus``. The service hands out the signed
bundles exactly as stored: nodes verify the signature themselves.

A request the service cannot answer gets a gRPC status with a message saying
why: ``INVALID_ARGUMENT`` (empty or malformed fields, a modality the node does
not hold), ``NOT_FOUND`` (a node never registered), ``RESOURCE_EXHAUSTED``
(a request above ``max_request_bytes``, refused by gRPC before it is parsed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from common.codec import CodecError, parse_message
from coordinator.store import CoordinatorStore, NodeStatus
from proto import edgebind_pb2 as pb
from proto import edgebind_pb2_grpc as pb_grpc

__all__ = ["MAX_REQUEST_BYTES", "MAX_REPLY_BYTES", "RegistryService", "serve"]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
MAX_REPLY_BYTES = 256 * 1024 * 1024
MAX_NAME = 256
MAX_MODALITIES = 64

R = TypeVar("R")


class _BadRequest(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _rpc(method: Callable[..., R]) -> Callable[..., R]:
    """Turn a bad request, or a store that refuses the input, into a status code with a message."""

    def wrapper(self: RegistryService, request: Any, context: grpc.ServicerContext) -> R:
        name = method.__name__
        try:
            return method(self, request, context)
        except _BadRequest as e:
            self.errors[e.code.name] = self.errors.get(e.code.name, 0) + 1
            log.warning("registry %s refused: %s: %s", name, e.code.name, e.message)
            _abort(context, e.code, e.message)
        except ValueError as e:  # the store's input checks
            self.errors["INVALID_ARGUMENT"] = self.errors.get("INVALID_ARGUMENT", 0) + 1
            log.warning("registry %s refused: %s", name, e)
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception as e:
            self.errors["INTERNAL"] = self.errors.get("INTERNAL", 0) + 1
            log.exception("registry %s failed", name)
            _abort(context, grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort raises


def _check_name(what: str, value: str) -> str:
    if not value:
        raise _BadRequest(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is empty")
    if len(value) > MAX_NAME:
        raise _BadRequest(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is longer than {MAX_NAME} characters")
    return value


class RegistryService(pb_grpc.RegistryServicer):
    """The Registry service over a CoordinatorStore. ``errors`` counts refusals by status code."""

    def __init__(self, store: CoordinatorStore, mutual_tls: bool = False) -> None:
        self.store = store
        self.mutual_tls = mutual_tls  # then every caller shows a certificate of the CA, and a node may only speak for itself
        self.errors: dict[str, int] = {}

    def _caller(self, context: grpc.ServicerContext) -> str:
        """The common name on the caller's client certificate ("" without mutual TLS)."""
        if not self.mutual_tls:
            return ""
        names = context.auth_context().get("x509_common_name", [])
        if not names:
            raise _BadRequest(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        return names[0].decode(errors="replace")

    def _as_node(self, node_id: str, context: grpc.ServicerContext) -> None:
        """With mutual TLS, a node's own request must come with that node's certificate."""
        caller = self._caller(context)
        if self.mutual_tls and caller != node_id:
            raise _BadRequest(grpc.StatusCode.PERMISSION_DENIED, f"the client certificate names {caller!r}, the request node {node_id!r}")

    def _node(self, node_id: str) -> NodeStatus:
        _check_name("node_id", node_id)
        status = self.store.node_status(node_id)
        if status is None:
            raise _BadRequest(grpc.StatusCode.NOT_FOUND, f"unknown node {node_id!r}: it has not registered with this coordinator")
        return status

    @staticmethod
    def _held(status: NodeStatus, modalities: list[str], what: str) -> None:
        if len(modalities) > MAX_MODALITIES:
            raise _BadRequest(grpc.StatusCode.INVALID_ARGUMENT, f"{len(modalities)} {what}; at most {MAX_MODALITIES}")
        for m in modalities:
            _check_name("modality", m)
            if m not in status.modalities:
                raise _BadRequest(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"unknown modality {m!r} for node {status.node_id!r} (it holds {', '.join(status.modalities) or 'none'})",
                )

    @_rpc
    def LatestAdapters(self, request: pb.LatestAdaptersRequest, context: grpc.ServicerContext) -> pb.LatestAdaptersReply:
        """The newest signed bundle of each requested modality (default: all the node holds) newer than it has."""
        self._as_node(request.node_id, context)
        status = self._node(request.node_id)
        mods = list(request.modalities) or status.modalities
        if len(set(mods)) != len(mods):
            raise _BadRequest(grpc.StatusCode.INVALID_ARGUMENT, f"modalities repeat: {mods}")
        self._held(status, mods, "modalities")
        self._held(status, list(request.known_versions), "known versions")
        reply = pb.LatestAdaptersReply()
        for m in mods:
            latest = self.store.latest_adapter(m)
            if latest is None or latest[0] <= request.known_versions.get(m, 0):
                continue
            try:
                reply.bundles.append(parse_message(latest[1], pb.AdapterBundle, MAX_REPLY_BYTES))
            except CodecError as e:  # a stored blob that does not parse is the coordinator's fault
                raise RuntimeError(f"stored adapter {m!r} v{latest[0]} does not parse: {e}") from e
        self.store.touch_node(status.node_id)
        log.info("registry: node %s asked for %s, sent %s", status.node_id, mods, {b.modality: b.version for b in reply.bundles})
        return reply

    @_rpc
    def NodeStatus(self, request: pb.NodeStatusRequest, context: grpc.ServicerContext) -> pb.NodeStatusReply:
        """What the store knows about a node: last seen, adapter versions in use, windows uploaded, state (with mutual TLS:
        asked by that node or by an operator's certificate)."""
        if self.mutual_tls and self._caller(context) != OPERATOR:
            self._as_node(request.node_id, context)
        s = self._node(request.node_id)
        return pb.NodeStatusReply(
            node_id=s.node_id, last_seen_ns=s.last_seen_ns, adapter_versions=s.adapter_versions,
            windows_uploaded=s.windows_uploaded, state=s.state,
        )  # fmt: skip

    @_rpc
    def ReportStatus(self, request: pb.NodeStatusReply, context: grpc.ServicerContext) -> pb.Ack:
        """A node reports its state and the adapter version it runs per modality."""
        self._as_node(request.node_id, context)
        status = self._node(request.node_id)
        self._held(status, list(request.adapter_versions), "adapter versions")
        if len(request.state) > MAX_NAME:
            raise _BadRequest(grpc.StatusCode.INVALID_ARGUMENT, f"state is longer than {MAX_NAME} characters")
        self.store.report_node_status(
            status.node_id, request.state, dict(request.adapter_versions), last_seen_ns=request.last_seen_ns or None
        )
        return pb.Ack(ok=True, message=f"status of {status.node_id} recorded")


OPERATOR = "edgebind operator"  # the common name of init-pki's operator certificate: may read any node's status


def serve(
    store: CoordinatorStore,
    host: str = "127.0.0.1",
    port: int = 0,
    max_workers: int = 4,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    tls: dict[str, str] | None = None,
) -> tuple[grpc.Server, int]:
    """Start the Registry service on ``host:port`` (0: a free port); return the server and its port.

    With ``tls`` (``ca``, ``cert``, ``key`` files, as ``coordinator.cli.tls_files`` gives them) it speaks mutual
    TLS: every caller shows a certificate the CA signed, and a node's certificate (its id as common name) lets it
    fetch and report for itself only. Stop it with ``server.stop(grace)``.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="registry"),
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", MAX_REPLY_BYTES),
        ],
    )
    pb_grpc.add_RegistryServicer_to_server(RegistryService(store, mutual_tls=tls is not None), server)
    if tls is not None:
        read = lambda k: Path(tls[k]).read_bytes()  # noqa: E731
        creds = grpc.ssl_server_credentials([(read("key"), read("cert"))], root_certificates=read("ca"), require_client_auth=True)
        bound = server.add_secure_port(f"{host}:{port}", creds)
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"registry: cannot listen on {host}:{port}")
    server.start()
    log.info("registry serving on %s:%d", host, bound)
    return server, bound

