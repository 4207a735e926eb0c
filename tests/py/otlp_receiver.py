"""A minimal OTLP/HTTP trace receiver, decoding with the official `opentelemetry-proto` package.

Usage: otlp_receiver.py OUT_FILE
Listens on 127.0.0.1 (a free port, printed alone on the first stdout line), accepts
POST /v1/traces with protobuf (application/x-protobuf) or OTLP JSON (application/json) bodies,
and appends every span to OUT_FILE as one JSON line:
{"trace_id", "span_id", "parent_span_id" (hex, "" for a root), "name", "kind", "service",
 "attributes" {key: value}, "start_ns", "end_ns", "status" {"code", "message"}}.
Runs until killed.
"""
import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

out_path = sys.argv[1]
lock = threading.Lock()


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def hex_ids_to_base64(obj):
    """OTLP JSON writes ids as hex; protobuf's JSON mapping expects base64 for bytes."""
    if isinstance(obj, dict):
        return {
            k: (
                base64.b64encode(bytes.fromhex(v)).decode()
                if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
                else hex_ids_to_base64(v)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [hex_ids_to_base64(x) for x in obj]
    return obj


def spans(req):
    for rs in req.resource_spans:
        res = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "service": res.get("service.name"),
                    "scope": ss.scope.name,
                    "attributes": attrs(s.attributes),
                    "start_ns": s.start_time_unix_nano,
                    "end_ns": s.end_time_unix_nano,
                    "status": {"code": s.status.code, "message": s.status.message},
                }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, code, ctype, body):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces":
            return self.reply(404, "text/plain", b"not found")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        req = ExportTraceServiceRequest()
        try:
            if ctype == "application/x-protobuf":
                req.ParseFromString(body)
            elif ctype == "application/json":
                json_format.ParseDict(hex_ids_to_base64(json.loads(body)), req)
            else:
                return self.reply(415, "text/plain", b"unsupported content type")
        except Exception as e:  # a malformed export is the sender's bug: say so
            return self.reply(400, "text/plain", str(e).encode())
        lines = [json.dumps(s) + "\n" for s in spans(req)]
        with lock, open(out_path, "a") as f:
            f.writelines(lines)
        if ctype == "application/json":
            return self.reply(200, "application/json", b"{}")
        resp = ExportTraceServiceResponse().SerializeToString()
        return self.reply(200, "application/x-protobuf", resp)

    def log_message(self, fmt, *args):
        sys.stderr.write("otlp_receiver: " + (fmt % args) + "\n")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
