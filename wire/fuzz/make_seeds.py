#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz corpora (named seed-*; libFuzzer's finds are named
by their SHA-1). Re-run after changing a seed; it never touches the other files."""

import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"

PLAIN = {
    "call-boot": '[2,"19223201","BootNotification",{"chargePointVendor":"VendorX","chargePointModel":"SingleSocketCharger"}]',
    "call-heartbeat": '[2,"1","Heartbeat",{}]',
    "result": '[3,"19223201",{"status":"Accepted","currentTime":"2024-01-01T00:00:00Z","interval":300}]',
    "error": '[4,"162376037","NotSupported","SetDisplayMessageRequest not implemented",{}]',
    "result-error": '[5,"7","GenericError","",{"detail":[1,2.50,null]}]',
    "send": '[6,"9","NotifyPeriodicEventStream",{"id":1,"pending":0,"basetime":"x","data":[]}]',
    "escaped-id": '[3,"a\\"b\\\\c\\u0001\\b\\f\\n\\/",{}]',
    "unicode": '[2,"\\u00e9\u20ac\U0001F50C","DataTransfer",{"vendorId":"\u00fc","data":"\\ud83d\\udd0c"}]',
    "whitespace": ' [ 2 , "w" , "Authorize" ,\n\t{ "idTag" : "TAG" } ] ',
    "wrong-length": '[2,"id7","Heartbeat"]',
    "unknown-type": '[9,"id9",{}]',
    "not-json": '[2,"1","A",{]',
    "id-unreadable": '[2,5,"A",{}]',
    "type-float": '[2.0,"1","A",{}]',
    "extra-elements": '[2,"1","A",{},0,0,0,0,0,0]',
}

OVERLAY = {
    "call-csms": '[2,"CSMS","CP1","u1","Heartbeat",{}]',
    "call-path": '[2,"CSMS",["CP1","edge-1"],"u1","BootNotification",{"reason":"PowerUp"}]',
    "source-route": '[2,["edge-1","CP7"],"hub","42","Reset",{"type":"Hard"}]',
    "result": '[3,"CP1",["hub","edge-1"],"u1",{"currentTime":"2024-01-01T00:00:00Z"}]',
    "error": '[4,"CP1","hub","u2","NotImplemented","",{}]',
    "result-error": '[5,["a"],["b"],"u3","InternalError","d",{"x":null}]',
    "broadcast": '[6,"*","lc","s1","NotifyNetworkTopology",{"networkTopologyInformation":{"routingNode":"lc","routes":[{"destinationId":"CP1","priority":0}]}}]',
    "escaped-route": '[3,"\\u0043SMS",["\\"q\\"","\\u00e9\\n"],"x",{}]',
    "max-hops": '[3,"CSMS",[' + ",".join(f'"n{i}"' for i in range(16)) + '],"h",{}]',
    "too-many-hops": '[3,"CSMS",[' + ",".join(f'"n{i}"' for i in range(17)) + '],"h",{}]',
    "empty-dest": '[3,[],"CP1","e",{}]',
    "empty-id-in-path": '[3,"CSMS",["CP1",""],"e",{}]',
    "plain-shaped": '[2,"1","Heartbeat",{}]',
    "number-dest": '[3,7,"CP1","e",{}]',
}


def s16(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def route(ids):
    return bytes([len(ids)]) + b"".join(s16(i) for i in ids)


def binary(t, dest, path, mid, action, meta, body):
    out = bytes([t]) + route(dest) + route(path) + s16(mid)
    if action is not None:
        out += s16(action)
    m = meta.encode() if isinstance(meta, str) else meta
    return out + struct.pack(">I", len(m)) + m + struct.pack(">Q", len(body)) + body


SEND_FILE = json.dumps({"fileName": "fw.bin", "offset": 0, "sha256": "00" * 32})

BINARY = {
    "call-sendfile": binary(2, ["CSMS"], ["CP1"], "1", "SendFile", SEND_FILE, b"\x00\x01chunk\xff"),
    "result": binary(3, ["CP1"], ["hub", "edge"], "1", None, '{"status":"Accepted"}', b""),
    "error": binary(4, ["CP1"], ["hub"], "2", None, '{"code":"GenericError","description":"x"}', b""),
    "result-error": binary(5, ["a"], ["b"], "3", None, "{}", b""),
    "send": binary(6, ["*"], ["lc"], "4", "GetFile", '{"fileName":"f","offset":1024}', bytes(range(64))),
    "unicode": binary(3, ["\u00e9\U0001F50C"], ["\"q\"", "\n"], "\u20ac", None, '{"k":"\\u00e9"}', b"\xc3\x28"),
    "meta-whitespace": binary(3, ["CSMS"], ["CP1"], "5", None, ' {"a": [1, 2.50]} ', b""),
    "max-hops": binary(3, ["CSMS"], [f"n{i}" for i in range(16)], "6", None, "{}", b""),
    "too-many-hops": binary(3, ["CSMS"], [f"n{i}" for i in range(17)], "7", None, "{}", b""),
    "body-len-max": binary(3, ["CSMS"], ["CP1"], "8", None, "{}", b"")[:-8] + b"\xff" * 8 + b"ab",
    "meta-len-huge": binary(3, ["CSMS"], ["CP1"], "9", None, "{}", b"")[:-14] + b"\xff\xff\xff\xff{}" + b"\0" * 8,
    "meta-array": binary(3, ["CSMS"], ["CP1"], "10", None, "[]", b""),
    "trailing": binary(4, ["CSMS"], ["CP1"], "11", None, "{}", b"") + b"zz",
    "call-no-action": binary(3, ["CSMS"], ["CP1"], "12", None, "{}", b"")[:1].replace(b"\x03", b"\x02")
    + binary(3, ["CSMS"], ["CP1"], "12", None, "{}", b"")[1:],
    "zero-dest": bytes([2, 0]),
}


# translate: the first byte picks the direction (even: a plain charger frame goes up; odd: an
# overlay frame comes down to a plain peer), the rest is the frame.
TRANSLATE = {f"up-{k}": b"\x00" + v.encode() for k, v in PLAIN.items()}
TRANSLATE.update({f"down-{k}": b"\x01" + v.encode() for k, v in OVERLAY.items()})


def main():
    for target, seeds in [("decode_plain", PLAIN), ("decode_overlay", OVERLAY), ("decode_binary", BINARY),
                          ("translate", TRANSLATE)]:
        d = ROOT / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (d / f"seed-{name}").write_bytes(data.encode() if isinstance(data, str) else data)


if __name__ == "__main__":
    main()
