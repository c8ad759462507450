"""An OCPP 2.0.1 charger (mobilityhouse ocpp.v201.ChargePoint) against a standalone local-controller."""

import pytest
from ocpp.v201 import call

from peerlib import http_get_json, now_iso, wait_for_transaction

pytestmark = pytest.mark.timeout(90)

CP_ID = "CP-V201-1"
TX_ID = "TX-PEER-201-1"


def energy(wh: float, context: str = "Sample.Periodic") -> list:
    return [{
        "timestamp": now_iso(),
        "sampledValue": [{
            "value": wh,
            "measurand": "Energy.Active.Import.Register",
            "context": context,
            "unitOfMeasure": {"unit": "Wh"},
        }],
    }]


async def test_v201_charger_session(node, charger):
    cp = await charger(node.charger_url, CP_ID, "ocpp2.0.1")

    boot = await cp.call(call.BootNotification(
        charging_station={"model": "PeerModel", "vendor_name": "PeerVendor", "firmware_version": "1.0"},
        reason="PowerUp"), suppress=False)
    assert boot.status == "Accepted", boot
    assert isinstance(boot.interval, int) and boot.interval > 0, boot

    hb = await cp.call(call.Heartbeat(), suppress=False)
    assert hb.current_time, hb

    ok = await cp.call(call.Authorize(id_token={"id_token": "TAG-OK", "type": "ISO14443"}), suppress=False)
    assert ok.id_token_info["status"] == "Accepted", ok
    unknown = await cp.call(call.Authorize(id_token={"id_token": "TAG-NOT-LISTED", "type": "ISO14443"}),
                            suppress=False)
    assert unknown.id_token_info["status"] == "Invalid", (
        f"config says unknown_id_tag = \"Invalid\"; got {unknown}")

    await cp.call(call.StatusNotification(timestamp=now_iso(), connector_status="Available",
                                          evse_id=1, connector_id=1), suppress=False)
    await cp.call(call.StatusNotification(timestamp=now_iso(), connector_status="Occupied",
                                          evse_id=1, connector_id=1), suppress=False)

    started = await cp.call(call.TransactionEvent(
        event_type="Started", timestamp=now_iso(), trigger_reason="Authorized", seq_no=0,
        transaction_info={"transaction_id": TX_ID, "charging_state": "Charging"},
        id_token={"id_token": "TAG-OK", "type": "ISO14443"},
        evse={"id": 1, "connector_id": 1},
        meter_value=energy(100, "Transaction.Begin")), suppress=False)
    assert started.id_token_info is not None, f"Started with an idToken must get idTokenInfo: {started}"
    assert started.id_token_info["status"] == "Accepted", started

    active = wait_for_transaction(node.admin_url, CP_ID, TX_ID)
    assert active["status"] in ("Active", "Ended"), active

    await cp.call(call.TransactionEvent(
        event_type="Updated", timestamp=now_iso(), trigger_reason="MeterValuePeriodic", seq_no=1,
        transaction_info={"transaction_id": TX_ID, "charging_state": "Charging"},
        meter_value=energy(800)), suppress=False)

    await cp.call(call.MeterValues(evse_id=1, meter_value=energy(900)), suppress=False)

    await cp.call(call.TransactionEvent(
        event_type="Ended", timestamp=now_iso(), trigger_reason="StopAuthorized", seq_no=2,
        transaction_info={"transaction_id": TX_ID, "charging_state": "Idle", "stopped_reason": "Local"},
        id_token={"id_token": "TAG-OK", "type": "ISO14443"},
        meter_value=energy(1500, "Transaction.End")), suppress=False)

    await cp.call(call.NotifyEvent(generated_at=now_iso(), seq_no=0, event_data=[{
        "event_id": 1,
        "timestamp": now_iso(),
        "trigger": "Delta",
        "actual_value": "Available",
        "event_notification_type": "HardWiredNotification",
        "component": {"name": "Connector", "evse": {"id": 1, "connector_id": 1}},
        "variable": {"name": "AvailabilityState"},
    }]), suppress=False)

    ended = wait_for_transaction(node.admin_url, CP_ID, TX_ID, status="Ended")
    assert ended["ocppVersion"] == "ocpp2.0.1", ended
    assert ended["idTag"] == "TAG-OK", ended
    assert ended["connectorId"] == 1, f"connectorId is the evse id for 2.x: {ended}"

    status = http_get_json(f"{node.admin_url}/api/status")
    chargers = {c.get("id"): c for c in status.get("chargers", [])}
    assert CP_ID in chargers, f"{CP_ID} missing from /api/status: {status}"
    assert chargers[CP_ID].get("ocppVersion") == "ocpp2.0.1", chargers[CP_ID]
