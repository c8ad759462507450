"""The frame validator itself, on known-good and known-bad frames: proof that it can fail.

No node is needed here.
"""

import json

import pytest

from peerlib import FrameLog, get_validator, validate_payload

pytestmark = pytest.mark.timeout(30)

NOW = "2025-01-01T12:00:00Z"


def log_with(version, sent, received, expected_errors=()):
    log = FrameLog(version, label="unit")
    for s in sent:
        log.record_to_node(json.dumps(s))
    for r in received:
        log.record_from_node(r if isinstance(r, (str, bytes)) else json.dumps(r))
    for e in expected_errors:
        log.expect_call_error(e)
    return log


def test_schemas_are_found_for_both_versions():
    assert get_validator("ocpp1.6", "BootNotification", response=False) is not None
    assert get_validator("ocpp1.6", "BootNotification", response=True) is not None
    assert get_validator("ocpp2.0.1", "TransactionEvent", response=False) is not None
    assert get_validator("ocpp2.0.1", "TransactionEvent", response=True) is not None
    assert get_validator("ocpp1.6", "NoSuchAction", response=True) is None


def test_good_v16_exchange_has_no_problems():
    log = log_with("ocpp1.6",
                   sent=[[2, "a1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}],
                         [2, "a2", "Heartbeat", {}]],
                   received=[[3, "a1", {"status": "Accepted", "currentTime": NOW, "interval": 300}],
                             [3, "a2", {"currentTime": "2025-01-01T12:00:00.123+01:00"}],
                             [2, "n1", "GetConfiguration", {"key": ["HeartbeatInterval"]}]])
    assert log.problems() == []


def test_good_v201_exchange_has_no_problems():
    log = log_with("ocpp2.0.1",
                   sent=[[2, "b1", "BootNotification",
                          {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}]],
                   received=['[3,"b1",{"status":"Accepted","currentTime":"2025-01-01T12:00:00Z","interval":60.0}]'])
    assert log.problems() == []


@pytest.mark.parametrize("version,sent,received,needle", [
    # missing required field
    ("ocpp1.6", [2, "x", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}],
     [3, "x", {"status": "Accepted", "currentTime": NOW}], "'interval' is a required property"),
    # bad enum
    ("ocpp1.6", [2, "x", "Authorize", {"idTag": "T"}],
     [3, "x", {"idTagInfo": {"status": "Fine"}}], "'Fine' is not one of"),
    # unknown property (additionalProperties false)
    ("ocpp1.6", [2, "x", "Heartbeat", {}],
     [3, "x", {"currentTime": NOW, "extra": 1}], "Additional properties"),
    # wrong type
    ("ocpp1.6", [2, "x", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": NOW}],
     [3, "x", {"transactionId": "1", "idTagInfo": {"status": "Accepted"}}], "is not of type 'integer'"),
    # a float is not an integer in draft-04
    ("ocpp1.6", [2, "x", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}],
     [3, "x", {"status": "Accepted", "currentTime": NOW, "interval": 300.0}], "is not of type 'integer'"),
    # date-time format is checked
    ("ocpp1.6", [2, "x", "Heartbeat", {}],
     [3, "x", {"currentTime": "yesterday"}], "is not a 'date-time'"),
    ("ocpp2.0.1", [2, "x", "Heartbeat", {}],
     [3, "x", {"currentTime": "2025-01-01 12:00:00"}], "is not a 'date-time'"),
    # 2.0.1 response schema (draft-06): missing idTokenInfo.status
    ("ocpp2.0.1", [2, "x", "Authorize", {"idToken": {"idToken": "T", "type": "ISO14443"}}],
     [3, "x", {"idTokenInfo": {}}], "'status' is a required property"),
    # a result for an id the peer never used
    ("ocpp1.6", [2, "x", "Heartbeat", {}], [3, "y", {"currentTime": NOW}], "never sent as a CALL"),
    # a CALLERROR nobody expected
    ("ocpp1.6", [2, "x", "Heartbeat", {}], [4, "x", "InternalError", "boom", {}], "unexpected CALLERROR"),
    # the 2.x spelling on a 1.6 connection
    ("ocpp1.6", [2, "x", "Heartbeat", {}], [4, "x", "FormatViolation", "", {}], "is not a ocpp1.6 error code"),
    # the 1.6 spelling on a 2.0.1 connection
    ("ocpp2.0.1", [2, "x", "Heartbeat", {}], [4, "x", "FormationViolation", "", {}],
     "is not a ocpp2.0.1 error code"),
    # message types of 2.1 only
    ("ocpp2.0.1", [2, "x", "Heartbeat", {}], [6, "z", "NotifyPeriodicEventStream", {}], "only in OCPP 2.1"),
    ("ocpp1.6", [2, "x", "Heartbeat", {}], [5, "x", "InternalError", "", {}], "only in OCPP 2.1"),
    # overlay form leaking to a plain charger
    ("ocpp1.6", [2, "x", "Heartbeat", {}], [3, "CSMS", "lc", "x", {"currentTime": NOW}], "want 3"),
    # not JSON / binary
    ("ocpp1.6", [2, "x", "Heartbeat", {}], "[3,\"x\",", "not JSON"),
    ("ocpp1.6", [2, "x", "Heartbeat", {}], b"\x00\x01", "binary frame"),
    # a CALL from the node with an invalid payload
    ("ocpp1.6", [2, "x", "Heartbeat", {}], [2, "n", "RemoteStartTransaction", {}], "'idTag' is a required"),
    # an action with no schema
    ("ocpp2.0.1", [2, "x", "Heartbeat", {}], [2, "n", "MadeUp", {}], "no OCA ocpp2.0.1 schema"),
    # a numeric id
    ("ocpp1.6", [2, "x", "Heartbeat", {}], [3, 7, {"currentTime": NOW}], "is not a string"),
])
def test_bad_frames_are_caught(version, sent, received, needle):
    log = log_with(version, sent=[sent], received=[received])
    problems = log.problems()
    assert problems, f"validator accepted a bad frame: {received!r}"
    assert any(needle in p for p in problems), problems


def test_expected_call_error_is_allowed_but_second_reply_is_not():
    log = log_with("ocpp1.6", sent=[[2, "x", "Heartbeat", {}]],
                   received=[[4, "x", "NotImplemented", "", {}]], expected_errors=["x"])
    assert log.problems() == []
    log.record_from_node(json.dumps([3, "x", {"currentTime": NOW}]))
    assert any("second reply" in p for p in log.problems())


def test_decimal_multiple_of_does_not_reject_valid_floats():
    # SetChargingProfile limits are multipleOf 0.1 in 1.6; 21.4 / 0.1 is not exact in binary floats.
    payload = json.loads(
        '{"connectorId":1,"csChargingProfiles":{"chargingProfileId":1,"stackLevel":0,'
        '"chargingProfilePurpose":"TxDefaultProfile","chargingProfileKind":"Absolute",'
        '"chargingSchedule":{"chargingRateUnit":"A","chargingSchedulePeriod":'
        '[{"startPeriod":0,"limit":21.4}]}}}')
    assert validate_payload("ocpp1.6", "SetChargingProfile", payload, response=False) == []
    payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 21.45
    assert validate_payload("ocpp1.6", "SetChargingProfile", payload, response=False) != []
