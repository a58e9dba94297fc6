#!/usr/bin/env python3
"""Writes the checked-in seed corpora under fuzz/corpus/<target>/: a few small valid
inputs per target (the SAS test vector of agent/src/relay/sas_tests.rs, connection
strings, real upgrade requests as docs/relay.md "The wire protocol" describes them,
frames, configs, argv ...).

Run it again after changing an input shape in agent/src/fuzz_entry; files that already
exist with the same name are overwritten, others (e.g. crash regressions added by hand)
are kept. Shapes: see the doc comment of each entry point in agent/src/fuzz_entry.
"""

import base64
import hashlib
import hmac
import os
import struct
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# Must match agent/src/fuzz_entry/network.rs.
FUZZ_KEY_NAME = "fuzz-key"
FUZZ_KEY = "fuzz-secret"
FUZZ_EXPIRY = 4_102_444_800

DOC_KEY = "SGVsbG9Xb3JsZEtleUZvclRlc3RpbmdPbmx5IQ=="
DOC_TOKEN = (
    "SharedAccessSignature sr=http%3A%2F%2Fcontoso.servicebus.windows.net%2Fhyco%2F"
    "&sig=V2vY%2FGGpVAbOe3TOt%2BFANHiotMuW%2F1qhr7k4tXr1%2F3I%3D&se=1700000000"
    "&skn=RootManageSharedAccessKey"
)


def uri_component(text):
    """encodeURIComponent, as the agent's URI_COMPONENT set does."""
    return urllib.parse.quote(text, safe="-_.!~*'()")


def sign(resource, key_name=FUZZ_KEY_NAME, key=FUZZ_KEY, expiry=FUZZ_EXPIRY):
    sr = uri_component(resource)
    mac = hmac.new(key.encode(), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    sig = uri_component(base64.b64encode(mac).decode())
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={key_name}"


def client_frame(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04"):
    """A masked client-to-server frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n <= 0xFFFF:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def server_frame(opcode, payload, fin=True):
    """An unmasked server-to-client frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n <= 0xFFFF:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


def upgrade_request(target, extra=""):
    return (
        f"GET {target} HTTP/1.1\r\nHost: relay.test:9000\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def records(pairs, names):
    """NUL-separated `index-byte value` records (see env_from_records)."""
    return b"\0".join(bytes([names.index(n)]) + v.encode() for n, v in pairs)


CONFIG_VARS = [
    "AMLX_DEBUG", "AMLX_RANKS", "AMLX_MAX_TARGETS_PER_NODE", "AMLX_PORT_RANGE",
    "AMLX_LOCK_DIR", "AMLX_NODE_IP", "AMLX_DEBUG_MODE", "AMLX_ON_DEBUG_FAILURE",
    "AMLX_ATTACH_TIMEOUT", "AMLX_INJECT", "AMLX_WAIT_FOR_CLIENT", "AMLX_LOG_FORMAT",
    "AMLX_RELAY_CONNECTION_STRING", "AMLX_RELAY_HC", "AMLX_RELAY_CA_FILE",
    "AMLX_RELAY_INSECURE_WS", "AMLX_STATE_DIR",
]
ROLE_VARS = [
    "AMLX_AGENT_ACTIVE", "AMLX_RANK", "AMLX_LOCAL_RANK", "AMLX_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID", "GROUP_RANK", "RANK", "LOCAL_RANK", "WORLD_SIZE",
    "LOCAL_WORLD_SIZE", "NODE_RANK", "PET_NNODES", "PET_NODE_RANK", "HOROVOD_RANK",
    "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE", "HOROVOD_CROSS_RANK",
    "CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE", "K_MPI_JOB_ROLE", "KUBERNETES_SERVICE_HOST",
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_RANK", "PMI_SIZE", "PMI_ID", "PMI_LOCAL_RANK",
    "PMI_LOCAL_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "PALS_RANKID",
    "PALS_LOCAL_RANKID", "PALS_NODEID", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE", "PMIX_RANK",
    "PMIX_NAMESPACE", "SLURM_JOB_ID", "SLURM_JOBID", "SLURM_STEP_ID", "SLURM_STEPID",
    "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS", "SLURM_NPROCS",
    "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURMD_NODENAME",
    "AZ_BATCH_IS_CURRENT_NODE_MASTER", "AZ_BATCH_MASTER_NODE", "AZ_BATCH_HOST_LIST",
]


def main():
    token = sign("http://relay.test/fuzz/")
    query_token = urllib.parse.quote(token, safe="")

    # HC request targets.
    write("hc_request_target", "listen", "/$hc/fuzz?sb-hc-action=listen&sb-hc-id=abc")
    write("hc_request_target", "connect_suffix_app_query",
          "/$hc/fuzz/sub%20path?app=1&sb-hc-action=connect&sb-hc-id=abc&x=%C3%A9")
    write("hc_request_target", "reject",
          "/%24hc/fuzz?sb-hc-action=accept&sb-hc-id=abc&sb-hc-statusCode=404"
          "&sb-hc-statusDescription=no+such+port")
    write("hc_request_target", "token", f"/$hc/fuzz?sb-hc-action=listen&sb-hc-token={query_token}")

    # Upgrade requests to relay serve (first byte: read chunk size).
    write("serve_upgrade_request", "listen_header_token",
          b"\xff" + upgrade_request("/$hc/fuzz?sb-hc-action=listen&sb-hc-id=1",
                                    f"ServiceBusAuthorization: {token}\r\n"))
    write("serve_upgrade_request", "connect_query_token",
          b"\x00" + upgrade_request(f"/$hc/fuzz/x?a=b&sb-hc-action=connect&sb-hc-token={query_token}"))
    write("serve_upgrade_request", "status",
          b"\x10GET /$status HTTP/1.1\r\nHost: relay.test\r\n\r\n")
    write("serve_upgrade_request", "reject",
          b"\x20" + upgrade_request("/$hc/fuzz?sb-hc-action=accept&sb-hc-id=1"
                                    "&sb-hc-statusCode=503&sb-hc-statusDescription=busy"))

    # SAS tokens (first byte: 0 = parse and verify; 1 = resource NUL key name NUL path).
    write("sas_token", "doc_vector", b"\x00" + DOC_TOKEN.encode())
    write("sas_token", "fuzz_key_valid", b"\x00" + token.encode())
    write("sas_token", "hyco_ws_audience", b"\x00" + sign("wss://relay.test:443/fuzz").encode())
    write("sas_token", "sign_roundtrip",
          b"\x01http://contoso.servicebus.windows.net/hyco/\0RootManageSharedAccessKey\0hyco/a")

    # Connection strings (the format docs/relay.md describes).
    write("connection_string", "azure",
          "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=name;SharedAccessKey=key;EntityPath=hc")
    write("connection_string", "self_hosted_port",
          f"Endpoint=sb://127.0.0.1:9443/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={DOC_KEY}")
    write("connection_string", "signature_timeout",
          f"endpoint=wss://[::1]:9000/;SharedAccessSignature={DOC_TOKEN};OperationTimeout=1.00:00:30.5")

    # Client frame reader (first byte: handshake leftover x3 in the high nibble, read size).
    frames = (server_frame(0x2, b"hello") + server_frame(0x9, b"ping")
              + server_frame(0x1, b"x" * 200) + server_frame(0x2, b"frag", fin=False)
              + server_frame(0x0, b"ment") + server_frame(0x8, struct.pack(">H", 1000) + "bye é".encode()))
    write("client_frame_reader", "mixed", b"\x23" + frames)
    write("client_frame_reader", "close_only", b"\x00" + server_frame(0x8, struct.pack(">H", 1001)))

    # Server frame relay (split byte, chunk byte, sender frames then listener frames).
    sender = client_frame(0x2, b"from sender") + client_frame(0x9, b"p") + client_frame(0x8, struct.pack(">H", 1000))
    listener = client_frame(0x2, b"from listener" * 20) + client_frame(0xA, b"") + client_frame(0x8, struct.pack(">H", 1000) + b"done")
    split = len(sender) * 255 // (len(sender) + len(listener))
    write("server_frame_relay", "both_close", bytes([split + 1, 3]) + sender + listener)
    write("server_frame_relay", "fragmented", bytes([128, 0]) + client_frame(0x2, b"ab", fin=False)
          + client_frame(0x0, b"cd") + client_frame(0x8, b""))

    # Control messages.
    accept = ('{"accept":{"address":"wss://relay.test:9000/$hc/fuzz?sb-hc-action=accept&sb-hc-id=1",'
              '"id":"1","connectHeaders":{"Host":"relay.test","Sec-WebSocket-Key":"k","Sec-WebSocket-Version":"13"},'
              '"remoteEndpoint":{"address":"127.0.0.1","port":50123}}}')
    renew = '{"renewToken":{"token":"%s"}}' % token
    write("control_message", "accept", accept)
    write("control_message", "renew", renew)
    write("control_message", "unknown", '{"someFutureCommand":{"x":[1,2,{"y":null}]}}')
    write("control_message", "request", '{"request":{"address":"x","id":"2","method":"GET"}}')

    # relay serve's control channel (first byte bit 0: 0 = text of one frame, 1 = raw frames).
    write("serve_control_channel", "renew_valid", b"\x00" + renew.encode())
    write("serve_control_channel", "renew_bad_signature",
          b"\x00" + ('{"renewToken":{"token":"SharedAccessSignature sr=x&sig=AAAA&se=4102444800&skn=%s"}}' % FUZZ_KEY_NAME).encode())
    write("serve_control_channel", "renew_unknown_key",
          b"\x00" + '{"renewToken":{"token":"SharedAccessSignature sr=x&sig=AAAA&se=4102444800&skn=other-käy"}}'.encode())
    write("serve_control_channel", "raw_frames", b"\x01" + client_frame(0x9, b"hi") + client_frame(0x1, b"{}")
          + client_frame(0x8, struct.pack(">H", 1000)))

    # Upgrade responses (first byte: read chunk size and role).
    write("upgrade_response", "not_found",
          b"\x01HTTP/1.1 404 There are no listeners connected for the endpoint.\r\nContent-Length: 13\r\n\r\nno listeners.")
    write("upgrade_response", "chunked",
          b"\x02HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    write("upgrade_response", "switching",
          b"\x00HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n" + server_frame(0x2, b"x"))

    # azbridge preamble (first byte: bit0 raw frames, bit1 sender side, bit2 named forwards, bits3+ frame size).
    write("bridge_preamble", "tcp_5678", bytes([0x08 * 3]) + bytes([1, 0, 0, 4]) + b"5678" + b"payload")
    write("bridge_preamble", "named_debug", bytes([0x04]) + bytes([1, 0, 0, 5]) + b"debug")
    write("bridge_preamble", "udp", bytes([0x00]) + bytes([1, 0, 1, 4]) + b"5678")
    write("bridge_preamble", "sender_ok", bytes([0x02]) + bytes([1, 0, 0]))
    write("bridge_preamble", "forward_spec", bytes([0x00]) + b"debug=[::1]:5678")

    # Config file, NUL, then AMLX_* records.
    toml_text = open(os.path.join(HERE, "..", "config.example.toml"), encoding="utf-8").read()
    write("config", "example", toml_text)
    write("config", "small_with_env",
          b'[debug]\nenabled = true\nranks = "0,3,5-7"\nattach_timeout = "10m"\n[ports]\nrange = "5678-5777"\n'
          b'[relay.server]\nlisten = "127.0.0.1:9000"\n[[relay.server.keys]]\nname = "k"\nkey = "s"\n'
          b'rights = ["listen", "send"]\npaths = ["*"]\n\0'
          + records([("AMLX_RANKS", "all"), ("AMLX_ATTACH_TIMEOUT", "1h 30m"), ("AMLX_PORT_RANGE", "6000-6010"),
                     ("AMLX_NODE_IP", "10.0.0.4"), ("AMLX_DEBUG_MODE", "listen")], CONFIG_VARS))

    # The same target also reads its text as a project's .amlx/targets.toml.
    write("config", "targets",
          b'[targets.vm]\nkind = "ssh"\nhost = "me@[fd00::4]:2222"\nuser = "azureuser"\nport = 22\n'
          b'identity_file = "~/.ssh/id"\nssh_config = "cfg"\nremote_dir = "~/x y"\nimage = "img:1"\n'
          b'env = { EPOCHS = "2", PATH = "/bin" }\nranks_count = 4\nranks = "all"\n\n'
          b'[targets.box]\nkind = "docker"\nimage = "x"\nbuild = "Dockerfile"\n')

    # Rank specs.
    for name, spec in [("zero", "0"), ("list", "0,3,5-7"), ("all", "all"), ("master", "master"),
                       ("local0", "local0"), ("spaces", " 1 , 2-4 ")]:
        write("rank_spec", name, spec)

    # launch.json (first byte: mode and number of targets).
    write("launch_json", "empty", b"\x00")
    write("launch_json", "jsonc_with_comments",
          b"\x41// my configs\n{\n  \"version\": \"0.2.0\", /* block */\n  \"configurations\": [\n"
          b"    {\"name\": \"mine\", \"type\": \"python\",},\n    {\"name\": \"amlx: rank 0 (port 5678)\"}\n  ],\n"
          b"  \"compounds\": [],\n}\n")
    write("launch_json", "tabs_crlf", b"\x82{\r\n\t\"configurations\": []\r\n}\r\n")

    # Step argv (first byte: inject mode / debugpy running / options).
    for name, shape, argv in [
        ("script", 0, ["python", "train.py", "--lr", "0.1"]),
        ("module", 0x1a, ["/usr/bin/python3.11", "-u", "-X", "dev", "-m", "torch.distributed.run", "x.py"]),
        ("code", 2, ["env", "A=1", "python3", "-c", "print(1)"]),
        ("prior_art", 0, ["python", "step.py", "--is-debug", "true", "--debug-port", "5679",
                          "--debug-relay-connection-name", "hc"]),
        ("not_python", 4, ["bash", "-c", "true"]),
        ("spawn", 0, ["/opt/conda/bin/python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()",
                      "--multiprocessing-fork"]),
    ]:
        write("python_argv", name, bytes([shape]) + b"\0".join(a.encode() for a in argv))

    # Launcher environments (first byte: host named, overrides).
    for name, pairs in [
        ("openmpi", [("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_SIZE", "4"),
                     ("OMPI_COMM_WORLD_LOCAL_RANK", "1"), ("OMPI_COMM_WORLD_LOCAL_SIZE", "2")]),
        ("torchrun", [("TORCHELASTIC_RUN_ID", "x"), ("RANK", "0"), ("WORLD_SIZE", "8"),
                      ("LOCAL_RANK", "0"), ("GROUP_RANK", "1"), ("LOCAL_WORLD_SIZE", "4")]),
        ("slurm", [("SLURM_JOB_ID", "12"), ("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8"),
                   ("SLURM_LOCALID", "1"), ("SLURM_NODEID", "0"), ("SLURM_STEP_NODELIST", "node-[0-3,7],gpu[01-02]"),
                   ("SLURMD_NODENAME", "node-0")]),
        ("azure_batch", [("AZ_BATCH_IS_CURRENT_NODE_MASTER", "false"), ("AZ_BATCH_MASTER_NODE", "10.0.0.4:6000"),
                         ("AZ_BATCH_HOST_LIST", "10.0.0.4,10.0.0.5"), ("PMI_RANK", "-1"), ("PMI_SIZE", "")]),
        ("kubeflow", [("K_MPI_JOB_ROLE", "worker"), ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                      ("PMIX_RANK", "2"), ("PMIX_NAMESPACE", "ns")]),
    ]:
        write("role_env", name, b"\x00" + records(pairs, ROLE_VARS))

    # Durations.
    for name, text in [("seconds", "30s"), ("compound", "1h 30m"), ("ms", "500ms"), ("huge", "18446744073709551615s")]:
        write("duration", name, text)

    # Lock-file records, status records, /proc lines.
    write("lock_records", "holder",
          '{"pid":1234,"start_time":5678,"rank":0,"command":"python train.py","since":1700000000}')
    write("lock_records", "status",
          '{"pid":1234,"start_time":5678,"pid_ns":4026531836,"rank":0,"local_rank":0,"port":5678,'
          '"mode":"connect","endpoint":"127.0.0.1:5678","state":"waiting-for-debugger","reason":null,'
          '"since":1700000000,"started":1700000000,"updated":1700000001}')
    write("lock_records", "proc_stat",
          "1234 (python (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50")
    write("lock_records", "ns_link", "pid:[4026531836]")

    # MLflow: tracking URI NUL error body.
    write("mlflow_response", "azureml",
          b"azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/r/providers/"
          b"Microsoft.MachineLearningServices/workspaces/w\0"
          b'{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"Run \'x\' not found"}')
    write("mlflow_response", "http", b"http://127.0.0.1:5000\0<html>Bad Gateway</html>")

    # The post-mortem hook's crash line, and another rank's slot record.
    write("post_mortem_crash", "crash_line",
          '{"type":"ValueError","message":"loss is nan at scale 42 (\\u00e9)","thread":"MainThread",'
          '"where":"/w/crash.py:19","spawn_worker":false}\n')
    write("post_mortem_crash", "slot_record",
          '{"pid":4242,"rank":2,"exception":"ValueError: bad","since":1796375559}\n')

    # The DAP gate: a selector byte (read size - 1), then the developer's stream.
    def dap(body):
        return b"Content-Length: %d\r\n\r\n" % len(body) + body
    setup = b"".join(dap(body) for body in [
        b'{"seq":1,"type":"request","command":"initialize"}',
        b'{"seq":2,"type":"request","command":"attach"}',
        b'{"seq":3,"type":"request","command":"configurationDone"}'])
    write("dap_gate", "setup_then_terminate", bytes([7]) + setup + dap(
        b'{"seq":4,"type":"request","command":"disconnect","arguments":{"terminateDebuggee":true}}'))
    write("dap_gate", "setup_then_detach",
          bytes([200]) + setup + dap(b'{"seq":4,"type":"request","command":"disconnect"}'))
    write("dap_gate", "terminate_request",
          bytes([0]) + setup + dap(b'{"type":"request","command":"terminate"}'))
    write("dap_gate", "big_body", bytes([63]) + setup + dap(
        b'{"type":"request","command":"evaluate","x":"' + b"y" * 5000 + b'"}'))
    write("dap_gate", "not_dap", bytes([3]) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


if __name__ == "__main__":
    main()
