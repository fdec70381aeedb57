#!/usr/bin/env python3
"""A gRPC client not written here (Python grpcio) discovers chatd's API through server
reflection and calls it: lists the services, resolves chat.v1.Chat's descriptors, builds a
RegisterRequest from them dynamically and calls Register. Exits non-zero on any failure.

Usage: grpc_reflection_check.py HOST:PORT HANDLE
"""
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    addr, handle = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(addr)
    db = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(db.get_services())
    print("services:", " ".join(services))
    if "chat.v1.Chat" not in services:
        print("chat.v1.Chat is not listed", file=sys.stderr)
        return 1
    pool = descriptor_pool.DescriptorPool(db)
    service = pool.FindServiceByName("chat.v1.Chat")
    method = service.methods_by_name["Register"]
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/chat.v1.Chat/Register",
        request_serializer=request_class.SerializeToString,
        response_deserializer=reply_class.FromString,
    )
    reply = call(request_class(handle=handle, device_id=1, secret="s" * 40), timeout=10)
    print(f"Register: user_id={reply.user_id} device_id={reply.device_id}")
    if reply.user_id == 0 or not reply.token.startswith(f"{reply.user_id}.1."):
        print("unexpected reply", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
