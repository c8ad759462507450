#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the config_parse corpus (named seed-*; libFuzzer's finds
are named by their SHA-1). Re-run after changing a seed or node/default.toml; it never touches the
other files.

The seeds: node/default.toml (whole, and without its comments), the config snippets of the unit
tests in node/src/config.rs, the README examples, and the configs the peer tests
(tests/peers/peerlib.py, overlaylib.py), sim/tests/sim_e2e.rs and bench/run write. There are no
*.toml files under deploy/ or tests/."""

import pathlib

FUZZ = pathlib.Path(__file__).resolve().parent
NODE = FUZZ.parent
ROOT = FUZZ / "corpus" / "config_parse"

# A syntactically valid argon2id PHC string (node/src/config.rs tests).
HASH = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"


def strip_comments(text):
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


DEFAULT = (NODE / "default.toml").read_text()

SEEDS = {
    "default-toml": DEFAULT,
    "default-stripped": strip_comments(DEFAULT),
    "empty": "",
    # --- node/src/config.rs unit tests ---
    "full-valid": f"""
[node]
id = "site-7"
role = "local-controller"
data_dir = "/var/lib/ocpp-node"

[[listener]]
name = "plain"
bind = "127.0.0.1:0"
path = "/"
security_profile = 0
subprotocols = ["ocpp2.1", "ocpp1.6"]
missing_subprotocol = "refuse"
max_frame_bytes = 2048
upgrade_timeout_s = 300

[[listener]]
name = "basic"
bind = "[::1]:9001"
security_profile = 1

[admin]
bind = "127.0.0.1:0"
enabled = false

[local_csms]
heartbeat_interval_s = 60

[auth]
unknown_id_tag = "Blocked"
[auth.local_list]
"TAG-1" = "Accepted"
"TAG 2" = "Expired"

[chargers."CP-1"]
password_hash = "{HASH}"
[chargers."CP 2"]
""",
    "type-errors": """
[node]
colour = "blue"

[[listener]]
security_profile = "one"
bind = "not-an-address"
""",
    "bad-enums": """
bogus = 1
[node]
role = "router"
[listener_extra]
x = 1
[[listener]]
missing_subprotocol = "guess"
subprotocols = ["ocpp1.6", "ocpp9", "ocpp2.1", 5]
[auth]
unknown_id_tag = "Maybe"
[auth.local_list]
"TAG-1" = "Accepted"
"TAG-2" = "Sure"
[chargers."CP-1"]
password = "x"
""",
    "removed-array-entries": """
listener = [5, { name = "a", max_frame_bytes = "big" }, { name = "a", path = "x" }]
""",
    "listener-table": '[listener]\nname = "x"\n',
    "syntax-error": "[node]\nid = \n",
    "heartbeat": "[local_csms]\nheartbeat_interval_s = 42\n",
    "node-id-colon": '[node]\nid = "a:b"\n',
    "node-id-reserved": '[node]\nid = "CSMS"\n',
    "node-id-48": '[node]\nid = "' + "x" * 48 + '"\n',
    "role-edge-alone": '[node]\nrole = "edge"\n',
    "role-hub-alone": '[node]\nrole = "hub"\n',
    "role-edge-with-hub": '[node]\nrole = "edge"\n[[uplink]]\nname = "h"\nurl = "ws://h:1/o"\n'
    '[hub]\ncsms_url = "ws://c/o"\n',
    "edge-valid": """
[node]
id = "edge1"
role = "edge"
[overlay]
request_timeout_s = 5
reconnect_initial_ms = 100
reconnect_max_ms = 1000
[[uplink]]
name = "hub1"
url = "ws://127.0.0.1:9100/ocpp"
[[uplink]]
name = "hub2"
url = "ws://127.0.0.1:9200/ocpp"
priority = 1
[node_peers.edge0]
allow = ["CP-*"]
""",
    "hub-valid": '[node]\nid = "hub"\nrole = "hub"\n[hub]\ncsms_url = "wss://csms.example:443/ocpp"\n',
    "overlay-mistakes": """
[node]
id = "edge1"
role = "edge"
secrets_file = "/nonexistent/secrets.toml"
[overlay]
request_timeout_s = 0
reconnect_initial_ms = 5000
reconnect_max_ms = 1000
hop_limit = 17
[[uplink]]
name = "a"
url = "http://x/ocpp"
[[uplink]]
name = "a"
url = "ws://x/ocpp/"
tls_ca_file = "ca.pem"
[node_peers.edge1]
allow = [""]
[node_peers."CS:MS"]
password_hash = "nope"
""",
    "charger-ids": """
[node]
id = "site"
[chargers."CP:1"]
[chargers.CSMS]
[chargers.site]
[chargers."a/b"]
[chargers.ok]
""",
    "password-not-phc": '[chargers.CP-1]\npassword_hash = "secret"\n',
    "listener-path": '[[listener]]\npath = "/ocpp?x"\n',
    "listener-profile-4": "[[listener]]\nsecurity_profile = 4\n",
    "listener-subprotocols-twice": '[[listener]]\nsubprotocols = ["ocpp1.6", "ocpp1.6"]\n',
    "listener-bounds": "[[listener]]\nmax_frame_bytes = 1023\nupgrade_timeout_s = 301\n"
    "max_connections = 0\nmax_pending_calls = 0\nping_interval_s = 3601\nwrite_timeout_s = 0\n"
    "ip_connect_rate = 0\nauth_block_s = 60\nauth_block_max_s = 10\n",
    "listener-name-space": '[[listener]]\nname = "a b"\nbind = "127.0.0.1:9800"\n',
    "profile-2-no-files": "[[listener]]\nsecurity_profile = 2\n",
    "profile-3-one-file": '[[listener]]\nsecurity_profile = 3\ntls_cert_file = "/nonexistent.pem"\n',
    "profile-0-with-files": '[[listener]]\ntls_cert_file = "c.pem"\ncpo_name = "X"\n',
    "profile-1-valid": "[[listener]]\nsecurity_profile = 1\nmax_frame_bytes = 67108864\n"
    f'upgrade_timeout_s = 1\n[chargers.CP-1]\npassword_hash = "{HASH}"\n',
    "admin-off": '[admin]\nenabled = false\nbind = "0.0.0.0:9000"\n',
    "listener-collisions": """
[[listener]]
name = "a"
bind = "0.0.0.0:9000"
[[listener]]
name = "a"
bind = "127.0.0.1:9001"
[[listener]]
name = "b"
bind = "127.0.0.1:9000"
[[listener]]
name = "c"
bind = "127.0.0.1:0"
[[listener]]
name = "d"
bind = "127.0.0.1:0"
[[listener]]
name = "e"
bind = "[::1]:9000"
[[listener]]
name = "f"
bind = "[::]:9002"
""",
    "listener-empty-array": "listener = []\n",
    "local-list-bad-tags": "[auth.local_list]\n" + "T" * 37 + ' = "Accepted"\n"" = "Blocked"\n',
    "data-dir-empty": '[node]\ndata_dir = ""\n',
    "audit": "[audit]\nreport_interval_s = 86401\n[audit.extra]\n",
    "identity-key-file": '[node]\nidentity_key_file = "/nonexistent/node-identity.pk8"\n',
    # --- README.md examples ---
    "readme-profile-1": f"""[node]
id = "garage-7"

[[listener]]
name = "chargers"
bind = "0.0.0.0:9000"
security_profile = 1

[auth.local_list]
"04A2B3C4D5" = "Accepted"

[chargers."CP-0001"]
password_hash = "{HASH}"   # echo -n 'secret' | ocpp-node hash-password
""",
    "readme-profile-3": """[[listener]]
name = "chargers-tls"
bind = "0.0.0.0:9443"
security_profile = 3
tls_cert_file = "/etc/ocpp-node/server-chain.pem"
tls_key_file = "/etc/ocpp-node/server-key.pem"
tls_client_ca_file = "/etc/ocpp-node/charger-ca.pem"
cpo_name = "Example CPO"
""",
    "readme-hub": f"""# hub.toml
[node]
id = "hub"
role = "hub"
secrets_file = "hub-secrets.toml"
[[listener]]
name = "nodes"
bind = "0.0.0.0:9100"
security_profile = 1
[node_peers.edge1]
allow = ["CP-*"]
password_hash = "{HASH}"
[hub]
csms_url = "wss://csms.example/ocpp"
tls_ca_file = "ca.pem"
tls_cert_file = "client.pem"
tls_key_file = "client-key.pem"
""",
    "readme-edge": """# edge.toml
[node]
id = "edge1"
role = "edge"
secrets_file = "edge-secrets.toml"
[[listener]]
name = "chargers"
bind = "0.0.0.0:9000"
[[uplink]]
name = "hub"
url = "ws://hub.example:9100/ocpp"
[[uplink]]
name = "hub-standby"
url = "wss://hub2.example:9100/ocpp"
priority = 1
""",
    # --- tests/peers/peerlib.py (node_config), sim/tests/sim_e2e.rs, bench/run ---
    "peer-tests": """[node]
id = "lc-test"
role = "local-controller"
data_dir = "/tmp/ocpp-node-data"

[[listener]]
name = "chargers"
bind = "127.0.0.1:0"
path = "/ocpp"
security_profile = 2
tls_cert_file = "server.pem"
tls_key_file = "server-key.pem"

[admin]
bind = "127.0.0.1:0"

[local_csms]
heartbeat_interval_s = 300

[auth]
unknown_id_tag = "Invalid"
[auth.local_list]
"TAG-OK" = "Accepted"
"TAG-BLOCKED" = "Blocked"

[chargers."CP-1"]
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
""",
    "sim-e2e": """[node]
id = "lc"
data_dir = "data"

[[listener]]
name = "chargers"
bind = "127.0.0.1:0"

[admin]
bind = "127.0.0.1:0"

[auth.local_list]
"TAG-OK" = "Accepted"
""",
    "bench-edge": """[node]
id = "edge-0"
role = "edge"
data_dir = "data/edge-0"

[overlay]
request_timeout_s = 30
announce_ttl_s = 300
ping_interval_s = 20
connect_timeout_s = 10
reconnect_initial_ms = 500
reconnect_max_ms = 30000
hop_limit = 16
csms_grace_s = 30
allow_move = true

[[listener]]
name = "chargers"
bind = "127.0.0.1:0"
path = "/ocpp"
max_connections = 100000
ip_connect_rate = 100000
ip_connect_burst = 1000000

[admin]
bind = "127.0.0.1:0"

[[uplink]]
name = "hub"
url = "ws://127.0.0.1:9100/ocpp"
priority = 0
""",
    "bench-hub": """[node]
id = "hub"
role = "hub"

[[listener]]
name = "nodes"
bind = "127.0.0.1:0"
path = "/ocpp"

[admin]
bind = "127.0.0.1:0"

[node_peers."edge-0"]
allow = ["*"]

[hub]
csms_url = "ws://127.0.0.1:9300/ocpp"
""",
    # --- a few shapes of TOML the snippets above do not use ---
    "inline-and-dotted": 'node.id = "n1"\nnode.role = "local-controller"\n'
    'listener = [{ name = "a", bind = "127.0.0.1:0", subprotocols = ["ocpp2.0.1"] }]\n'
    'auth = { unknown_id_tag = "Accepted", local_list = { "T1" = "Blocked" } }\n',
    "literal-strings": "[node]\nid = 'lit'\n[[listener]]\npath = '''/ocpp'''\nname = \"\"\"multi\"\"\"\n",
    "quoted-file-key": '[node]\n"identity_key_file" = "/nonexistent/k.pk8"\n'
    '[[listener]]\n"tls_cert\\u005ffile" = "c.pem"\n',
    "numbers": "[overlay]\nhop_limit = 0x10\nreconnect_max_ms = 1_000\nrequest_timeout_s = -1\n"
    "announce_ttl_s = 1e3\n[listener]\n",
    "unicode-ids": '[node]\nid = "n\\u00e9\\u0007"\n[chargers."\\u00e9"]\n[node_peers."p\\n"]\nallow = ["[", "**"]\n',
}


def main():
    ROOT.mkdir(parents=True, exist_ok=True)
    for name, text in SEEDS.items():
        (ROOT / f"seed-{name}").write_text(text)


if __name__ == "__main__":
    main()
