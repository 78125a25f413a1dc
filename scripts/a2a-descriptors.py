"""Writes A2A's protobuf schema (lf.a2a.v1, `a2a.proto` and the files it imports) as a
FileDescriptorSet, from the a2a-sdk package the gRPC tests use (1.3.0), so that the gateway's
gRPC binding speaks exactly its messages without a protoc at build time:

    python3 scripts/a2a-descriptors.py dataplane/src/a2a_grpc.pb
"""
import sys

from a2a.types import a2a_pb2
from google.protobuf import descriptor_pb2

files, seen = [], set()


def add(file):
    if file.name in seen:
        return
    seen.add(file.name)
    for dependency in file.dependencies:
        add(dependency)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    files.append(proto)


add(a2a_pb2.DESCRIPTOR)
out = descriptor_pb2.FileDescriptorSet(file=files)
with open(sys.argv[1], "wb") as f:
    f.write(out.SerializeToString())
print(f"{sys.argv[1]}: {len(files)} files, {out.ByteSize()} bytes")
