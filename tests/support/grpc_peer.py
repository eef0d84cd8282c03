"""A real gRPC server and client (grpcio) for the gate's tests, without generated code: one
unary method, /sluice.Echo/Say, on raw bytes.

  grpc_peer.py server NAME MODE [CERT KEY]   listens on 127.0.0.1:0 (h2c, or TLS with CERT
      and KEY), prints "ready PORT", answers NAME:request (MODE ok) or UNAVAILABLE
      (MODE unavailable); stops when stdin closes.
  grpc_peer.py client TARGET COUNT [--ca CA] [--authority NAME]   calls COUNT times (h2c,
      or TLS trusting CA; NAME as :authority and TLS name), prints one JSON line per call.
"""
import json
import sys
from concurrent import futures

import grpc

METHOD = "/sluice.Echo/Say"


def serve(name, mode, cert=None, key=None):
    def say(request, context):
        if mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "canary is down")
        return name.encode() + b":" + request

    handler = grpc.method_handlers_generic_handler(
        "sluice.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"ready {port}", flush=True)
    sys.stdin.read()
    server.stop(0)


def call(target, count, ca=None, authority=None):
    options = [("grpc.default_authority", authority)] if authority else []
    if ca:
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        if authority:
            options.append(("grpc.ssl_target_name_override", authority))
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    say = channel.unary_unary(METHOD)
    for i in range(count):
        try:
            reply = say(f"hello{i}".encode(), timeout=30)
            print(json.dumps({"ok": True, "reply": reply.decode()}), flush=True)
        except grpc.RpcError as e:
            print(json.dumps({"ok": False, "code": e.code().name, "detail": e.details()}),
                  flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(*sys.argv[2:])
    else:
        flags = dict(zip(sys.argv[4::2], sys.argv[5::2]))
        call(sys.argv[2], int(sys.argv[3]), flags.get("--ca"), flags.get("--authority"))
