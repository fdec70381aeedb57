#!/usr/bin/env python3
"""A device client written from chatd's .proto files alone, with Python's grpcio.

It compiles proto/proto/{chat,gateway}.proto with grpcio-tools at start (nothing generated is
checked in), then plays two users against a running node: registers alice and bob, alice opens a
direct chat with bob, both open their device streams (Connect), alice sends a message, gets its
SendAck, bob receives it live, acknowledges it, and reads it back with History. Exits non-zero on
any failure. See docs/protocol.md for what each frame means.

Usage: chat_example.py HOST:PORT            (pip install grpcio grpcio-tools)
"""
import os
import queue
import secrets
import sys
import tempfile

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "..", "proto", "proto")


def load_stubs():
    """Generate the Python modules for chat.proto and gateway.proto into a temp dir."""
    import grpc_tools
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="chat-stubs-")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "chat.proto",
        "gateway.proto",
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    import chat_pb2  # noqa: F401  (gateway_pb2 needs it importable)
    import gateway_pb2
    import gateway_pb2_grpc

    return gateway_pb2, gateway_pb2_grpc


pb, rpc = load_stubs()


class Device:
    """One registered device: its token, unary calls with it, and its stream."""

    def __init__(self, stub, handle):
        secret = secrets.token_urlsafe(32)
        reply = stub.Register(pb.RegisterRequest(handle=handle, device_id=1, secret=secret), timeout=10)
        self.stub = stub
        self.user_id = reply.user_id
        self.token = reply.token
        self.auth = [("authorization", f"Bearer {self.token}")]
        self.outbox = queue.Queue()
        self.frames = None

    def call(self, method, request):
        return getattr(self.stub, method)(request, metadata=self.auth, timeout=10)

    def connect(self):
        """Open the stream: Hello first, then whatever is put in the outbox."""
        self.outbox.put(pb.ClientFrame(hello=pb.Hello(token=self.token)))

        def frames_out():
            while True:
                frame = self.outbox.get()
                if frame is None:
                    return
                yield frame

        self.frames = self.stub.Connect(frames_out())
        return self.next_frame("welcome")

    def next_frame(self, kind):
        """Read frames until one of `kind` (others are fine to skip here)."""
        for frame in self.frames:
            if frame.WhichOneof("kind") == kind:
                return getattr(frame, kind)
            if frame.WhichOneof("kind") in ("error", "send_error"):
                sys.exit(f"server refused a frame: {frame}")
        sys.exit(f"the stream ended before a {kind} frame")

    def close(self):
        self.outbox.put(None)


def main() -> int:
    addr = sys.argv[1]
    stub = rpc.ChatStub(grpc.insecure_channel(addr))
    run = secrets.token_hex(4)
    alice = Device(stub, f"alice-{run}")
    bob = Device(stub, f"bob-{run}")
    chat = alice.call("CreateDirect", pb.CreateDirectRequest(with_handle=f"bob-{run}"))
    print(f"chat {chat.chat_id} between {list(chat.member_handles)}")

    for device in (alice, bob):
        welcome = device.connect()
        device.next_frame("sync_complete")
        print(f"user {welcome.user_id} connected to node {welcome.node_id}")

    alice.outbox.put(
        pb.ClientFrame(send=pb.SendFrame(client_msg_id="py-1", chat_id=chat.chat_id, payload=b"hello from python"))
    )
    ack = alice.next_frame("send_ack")
    print(f"sent: seq {ack.ack.seq}")

    message = bob.next_frame("message")
    if message.payload != b"hello from python" or message.sender_user != alice.user_id:
        print(f"bob got {message}", file=sys.stderr)
        return 1
    bob.outbox.put(pb.ClientFrame(ack=pb.AckFrame(chat_id=chat.chat_id, up_to_seq=message.seq)))
    print(f"bob received seq {message.seq}: {message.payload.decode()}")

    page = bob.call("History", pb.HistoryPageRequest(chat_id=chat.chat_id))
    if [m.payload for m in page.messages] != [b"hello from python"]:
        print(f"history: {page}", file=sys.stderr)
        return 1
    print(f"history: {len(page.messages)} message(s), last seq {page.last_seq}")
    for device in (alice, bob):
        device.close()
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
