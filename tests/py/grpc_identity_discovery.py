"""An outside gRPC client of meshd: Python grpcio with stubs generated from proto/mesh/v1.

Usage: grpc_identity_discovery.py STUBS_DIR ADDR BUNDLE TOKEN GOOD_CSR GOOD_KEY CN_CSR DNS_CSR

Prints one JSON object: what each call returned (gRPC status code names, certificates, the
first discovery response). The Rust test asserts on it.
"""
import json
import sys

stubs, addr, bundle_path, token, good_csr, good_key, cn_csr, dns_csr = sys.argv[1:9]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from mesh.v1 import discovery_pb2, discovery_pb2_grpc  # noqa: E402
from mesh.v1 import identity_pb2, identity_pb2_grpc  # noqa: E402


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


bundle = read(bundle_path, "rb")
# meshd's serving certificate names localhost and 127.0.0.1.
options = [("grpc.ssl_target_name_override", "localhost")]
out = {}


def sign(stub, csr_pem):
    request = identity_pb2.SignRequest(
        csr_pem=csr_pem,
        credential=identity_pb2.Credential(join_token=token),
    )
    try:
        response = stub.Sign(request, timeout=10)
        return {"code": "OK", "chain": response.cert_chain_pem, "bundle": response.trust_bundle_pem,
                "expires": response.expires_at_unix}
    except grpc.RpcError as e:
        return {"code": e.code().name, "message": e.details()}


with grpc.secure_channel(addr, grpc.ssl_channel_credentials(root_certificates=bundle), options) as ch:
    identity = identity_pb2_grpc.IdentityStub(ch)
    out["good"] = sign(identity, read(good_csr))
    out["common_name"] = sign(identity, read(cn_csr))
    out["dns_san"] = sign(identity, read(dns_csr))
    # A SignRequest whose csr_pem (field 1, a proto3 string) is not UTF-8: protobuf refuses to
    # build one, so it goes out as raw bytes through the same channel.
    raw_sign = ch.unary_unary(
        "/mesh.v1.Identity/Sign",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    body = b"\xff\xfe not utf-8 \xc3\x28"
    try:
        raw_sign(bytes([0x0A, len(body)]) + body, timeout=10)
        out["not_utf8"] = {"code": "OK"}
    except grpc.RpcError as e:
        out["not_utf8"] = {"code": e.code().name, "message": e.details()}

chain = out["good"].get("chain", "")
if chain:
    creds = grpc.ssl_channel_credentials(
        root_certificates=bundle,
        private_key=read(good_key, "rb"),
        certificate_chain=chain.encode(),
    )
    with grpc.secure_channel(addr, creds, options) as ch:
        discovery = discovery_pb2_grpc.DiscoveryStub(ch)
        node = discovery_pb2.Node(id="grpcio-1", workload="web", namespace="default",
                                  service="web", proxy_version="grpcio")
        first = discovery_pb2.DiscoveryRequest(node=node, type_url="type.mesh.v1/TrustBundle")
        call = discovery.Stream(iter([first]), timeout=15)
        try:
            response = next(call)
            out["discovery"] = {
                "code": "OK",
                "type_url": response.type_url,
                "resources": [r.name for r in response.resources],
                "nonce": response.nonce,
            }
        except grpc.RpcError as e:
            out["discovery"] = {"code": e.code().name, "message": e.details()}
        finally:
            call.cancel()

print(json.dumps(out))
