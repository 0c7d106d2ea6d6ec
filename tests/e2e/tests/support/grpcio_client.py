"""A stock Python grpcio client of fleetkeyd, generated at test time from the
project's proto/ with grpcio-tools (both from PyPI). Run by
tests/e2e/tests/service.rs:

    python grpcio_client.py PROTO_DIR OUT_DIR SOCKET ADD_USER_CODE AUTHORITY

AUTHORITY is the :authority the channel sends ("" for grpcio's default).
Prints one JSON document of what it saw; exits non-zero on any surprise.
"""

import hashlib
import json
import os
import sys

from grpc_tools import protoc

proto_dir, out_dir, socket, code, authority = sys.argv[1:6]

# google.rpc.Status and google.rpc.ErrorInfo, as published by Google
# (field numbers from googleapis), to read a failure's reason from the
# grpc-status-details-bin trailer.
RPC_PROTO = """
syntax = "proto3";
package google.rpc;
import "google/protobuf/any.proto";
message Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
"""
os.makedirs(os.path.join(out_dir, "rpc"), exist_ok=True)
with open(os.path.join(out_dir, "rpc", "google_rpc.proto"), "w") as f:
    f.write(RPC_PROTO)
well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
for args in (
    ["-I", proto_dir, "fleetkey/v1/daemon.proto"],
    ["-I", os.path.join(out_dir, "rpc"), "-I", well_known, "google_rpc.proto"],
):
    rc = protoc.main(
        ["grpc_tools.protoc", "-I", well_known, f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
        + args
    )
    if rc != 0:
        sys.exit(f"protoc failed on {args[-1]}")
sys.path.insert(0, out_dir)

import grpc  # noqa: E402
from fleetkey.v1 import daemon_pb2, daemon_pb2_grpc  # noqa: E402
import google_rpc_pb2  # noqa: E402

options = [("grpc.default_authority", authority)] if authority else []
channel = grpc.insecure_channel(f"unix:{socket}", options=options)
stub = daemon_pb2_grpc.FleetkeyStub(channel)
seen = {"grpcio": grpc.__version__}


def error_info(error):
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = google_rpc_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.type_url.endswith("/google.rpc.ErrorInfo"):
                    info = google_rpc_pb2.ErrorInfo.FromString(detail.value)
                    return {"reason": info.reason, "domain": info.domain, "metadata": dict(info.metadata)}
    return None


try:
    status = stub.GetStatus(daemon_pb2.GetStatusRequest(), timeout=30)
except grpc.RpcError as e:
    seen["status_error"] = f"{e.code()}: {e.details()}"
    print(json.dumps(seen))
    sys.exit(3)
seen["version"] = status.version
seen["activated"] = status.activated

user = stub.AddUser(daemon_pb2.AddUserRequest(code=code, pin="1234", backend="soft"), timeout=60)
seen["added"] = user.name

digest = hashlib.sha256(b"signed by python").digest()
signed = stub.Sign(daemon_pb2.SignRequest(user=user.name, pin="1234", digest=digest), timeout=60)
seen["signature_der"] = signed.signature_der.hex()
seen["public_key_pem"] = signed.public_key_pem

try:
    stub.Sign(daemon_pb2.SignRequest(user=user.name, pin="9999", digest=digest), timeout=60)
    seen["wrong_pin"] = "accepted"
except grpc.RpcError as e:
    seen["wrong_pin"] = {"code": str(e.code()), "error_info": error_info(e)}

# grpc.health.v1 and server reflection, called without their generated
# stubs: HealthCheckRequest{} is empty, and the answer's field 1 is the
# serving status (1 = SERVING); ServerReflectionRequest{list_services: ""}
# is field 7, an empty string.
identity = lambda b: b  # noqa: E731
health = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=identity, response_deserializer=identity)
seen["health"] = health(b"", timeout=30).hex()
reflect = channel.stream_stream(
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    request_serializer=identity,
    response_deserializer=identity,
)
answers = list(reflect(iter([b"\x3a\x00"]), timeout=30))
seen["reflection_lists_fleetkey"] = any(b"fleetkey.v1.Fleetkey" in a for a in answers)
print(json.dumps(seen))
