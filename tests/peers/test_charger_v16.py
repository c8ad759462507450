"""An OCPP 1.6 charger (mobilityhouse ocpp.v16.ChargePoint) against a standalone local-controller."""

import pytest
from ocpp.v16 import call
from ocpp.v16.enums import ChargePointErrorCode, ChargePointStatus, Reason

from peerlib import http_get_json, now_iso, wait_for_transaction

pytestmark = pytest.mark.timeout(90)

CP_ID = "CP-V16-1"


async def test_v16_charger_session(node, charger):
    cp = await charger(node.charger_url, CP_ID, "ocpp1.6")

    boot = await cp.call(call.BootNotification(charge_point_model="PeerModel",
                                               charge_point_vendor="PeerVendor",
                                               firmware_version="1.0"), suppress=False)
    assert boot.status == "Accepted", boot
    assert isinstance(boot.interval, int) and boot.interval > 0, boot

    hb = await cp.call(call.Heartbeat(), suppress=False)
    assert hb.current_time, hb

    ok = await cp.call(call.Authorize(id_tag="TAG-OK"), suppress=False)
    assert ok.id_tag_info["status"] == "Accepted", ok
    blocked = await cp.call(call.Authorize(id_tag="TAG-BLOCKED"), suppress=False)
    assert blocked.id_tag_info["status"] == "Blocked", blocked
    unknown = await cp.call(call.Authorize(id_tag="TAG-NOT-LISTED"), suppress=False)
    assert unknown.id_tag_info["status"] == "Invalid", (
        f"config says unknown_id_tag = \"Invalid\"; got {unknown}")

    await cp.call(call.StatusNotification(connector_id=1, error_code=ChargePointErrorCode.no_error,
                                          status=ChargePointStatus.available, timestamp=now_iso()),
                  suppress=False)
    await cp.call(call.StatusNotification(connector_id=1, error_code=ChargePointErrorCode.no_error,
                                          status=ChargePointStatus.preparing), suppress=False)

    start = await cp.call(call.StartTransaction(connector_id=1, id_tag="TAG-OK", meter_start=100,
                                                timestamp=now_iso()), suppress=False)
    assert isinstance(start.transaction_id, int) and not isinstance(start.transaction_id, bool), start
    assert start.id_tag_info["status"] == "Accepted", start
    tx = start.transaction_id

    await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
        "timestamp": now_iso(),
        "sampledValue": [
            {"value": "800", "measurand": "Energy.Active.Import.Register", "unit": "Wh",
             "context": "Sample.Periodic"},
            {"value": "7360", "measurand": "Power.Active.Import", "unit": "W"},
        ],
    }]), suppress=False)

    # While charging, the API lists it as Active.
    active = wait_for_transaction(node.admin_url, CP_ID, str(tx))
    assert active["status"] in ("Active", "Ended"), active

    stop = await cp.call(call.StopTransaction(meter_stop=1500, timestamp=now_iso(), transaction_id=tx,
                                              reason=Reason.local, id_tag="TAG-OK"), suppress=False)
    if stop.id_tag_info is not None:
        assert stop.id_tag_info["status"] == "Accepted", stop

    dt = await cp.call(call.DataTransfer(vendor_id="org.example.peer-test", message_id="Ping",
                                         data="hello"), suppress=False)
    assert dt.status == "UnknownVendorId", dt

    ended = wait_for_transaction(node.admin_url, CP_ID, str(tx), status="Ended")
    assert ended["ocppVersion"] == "ocpp1.6", ended
    assert ended["idTag"] == "TAG-OK", ended
    assert ended["connectorId"] == 1, ended
    assert ended["meterStart"] == 100, ended
    assert ended["meterStop"] == 1500, ended
    assert ended["meterValueCount"] >= 1, ended
    assert ended.get("startTime") and ended.get("stopTime"), ended

    status = http_get_json(f"{node.admin_url}/api/status")
    chargers = {c.get("id"): c for c in status.get("chargers", [])}
    assert CP_ID in chargers, f"{CP_ID} missing from /api/status: {status}"
    assert chargers[CP_ID].get("ocppVersion") == "ocpp1.6", chargers[CP_ID]


async def test_v16_transaction_ids_are_distinct(node, charger):
    """Two chargers, one transaction each: the node hands out different integer ids."""
    ids = []
    for n in (1, 2):
        cp = await charger(node.charger_url, f"CP-V16-T{n}", "ocpp1.6")
        boot = await cp.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"),
                             suppress=False)
        assert boot.status == "Accepted", boot
        start = await cp.call(call.StartTransaction(connector_id=1, id_tag="TAG-OK", meter_start=0,
                                                    timestamp=now_iso()), suppress=False)
        ids.append(start.transaction_id)
    assert ids[0] != ids[1], ids
    for n, tx in zip((1, 2), ids):
        got = wait_for_transaction(node.admin_url, f"CP-V16-T{n}", str(tx))
        assert got["status"] == "Active", got
