"""Subprotocol negotiation at the HTTP upgrade (ARCHITECTURE §6.2)."""

import pytest
import websockets
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.timeout(60)


async def test_unknown_subprotocol_is_refused_with_400(node):
    url = f"{node.charger_url}/CP-BADPROTO"
    try:
        ws = await websockets.connect(url, subprotocols=["ocpp9.9"], open_timeout=10)
    except InvalidStatus as e:
        assert e.response.status_code == 400, (
            f"offer of only 'ocpp9.9' must be refused with HTTP 400, got {e.response.status_code}")
        return
    try:
        pytest.fail(f"the node accepted a WebSocket offering only 'ocpp9.9' "
                    f"(answered subprotocol {ws.subprotocol!r}); want HTTP 400 at the upgrade")
    finally:
        await ws.close()


async def test_known_subprotocol_still_accepted_after_refusal(node):
    """A refused upgrade must not disturb the listener: a good offer right after it works."""
    with pytest.raises(InvalidStatus):
        await websockets.connect(f"{node.charger_url}/CP-BADPROTO-2", subprotocols=["ocpp9.9"],
                                 open_timeout=10)
    async with websockets.connect(f"{node.charger_url}/CP-GOODPROTO", subprotocols=["ocpp9.9", "ocpp1.6"],
                                  open_timeout=10) as ws:
        assert ws.subprotocol == "ocpp1.6", ws.subprotocol
