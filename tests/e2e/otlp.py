"""Reading what an OTLP/HTTP exporter sent: the protobuf ``ExportTraceServiceRequest`` bodies recorded by a
:class:`~tests.provider_agents.loopback.LoopbackServer` standing in for a collector, decoded with the
``opentelemetry-proto`` package into flat :class:`Received` spans."""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.provider_agents.loopback import Recorded


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


@dataclass(frozen=True)
class Received:
    """One span as a collector received it (ids in hex), with its resource's attributes."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    start_ns: int
    end_ns: int

    @property
    def process(self) -> str:
        """The node id of the process that sent it (``service.instance.id``)."""
        return str(self.resource.get("service.instance.id", ""))


def decode(requests: Iterable[Recorded]) -> list[Received]:
    """Every span in the recorded ``POST /v1/traces`` bodies (gzip or not)."""
    out: list[Received] = []
    for r in requests:
        if r.method != "POST" or not r.path.endswith("/v1/traces"):
            continue
        body = gzip.decompress(r.body) if r.headers.get("content-encoding") == "gzip" else r.body
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append(Received(
                        name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), kind=s.kind,
                        attributes={a.key: _value(a.value) for a in s.attributes}, resource=resource,
                        start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano))
    return out
