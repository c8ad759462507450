//! `ocpp-sim site` as a load manager sees its meter: a Modbus TCP server with the SDM630 layout
//! whose currents follow the base-load script, and which goes away when told to.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Proc, parse_json};
use tokio_modbus::client::{Context, Reader as _, tcp};

/// float32 values from high-word-first register pairs.
fn floats(regs: &[u16]) -> Vec<f32> {
    regs.chunks(2)
        .map(|w| f32::from_bits((u32::from(w[0]) << 16) | u32::from(w[1])))
        .collect()
}

async fn currents(ctx: &mut Context) -> Vec<f32> {
    let regs = ctx.read_input_registers(0x0006, 6).await.unwrap().unwrap();
    floats(&regs)
}

fn meter_addr(sim: &Proc) -> SocketAddr {
    sim.first_listening("meter").parse().unwrap()
}

#[tokio::test]
async fn meter_serves_the_base_load_script() {
    let sim = Proc::sim(&["site", "--chargers", "0", "--base", "0:10,2:25"]);
    let addr = meter_addr(&sim);
    let mut ctx = tcp::connect(addr).await.unwrap();

    let input = ctx
        .read_input_registers(0x0000, 0x12)
        .await
        .unwrap()
        .unwrap();
    let values = floats(&input);
    assert_eq!(&values[0..3], &[230.0, 230.0, 230.0], "voltages");
    assert_eq!(&values[3..6], &[10.0, 10.0, 10.0], "currents");
    assert_eq!(&values[6..9], &[2300.0, 2300.0, 2300.0], "powers");
    let holding = ctx
        .read_holding_registers(0x0000, 0x12)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        floats(&holding)[3..6],
        values[3..6],
        "FC3 serves the same image"
    );
    let total = ctx.read_input_registers(0x0034, 2).await.unwrap().unwrap();
    assert_eq!(floats(&total), [6900.0]);

    // The step at 2 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = currents(&mut ctx).await;
        if now == [25.0, 25.0, 25.0] {
            break;
        }
        assert_eq!(now, [10.0, 10.0, 10.0], "only the scripted values appear");
        assert!(Instant::now() < deadline, "the base never stepped to 25 A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kwh = |regs: Vec<u16>| floats(&regs)[0];
    let first = kwh(ctx.read_input_registers(0x0048, 2).await.unwrap().unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = kwh(ctx.read_input_registers(0x0048, 2).await.unwrap().unwrap());
    assert!(first > 0.0 && later > first, "energy {first} then {later}");

    // The report lines carry the same base.
    let report = parse_json(&sim.line());
    assert!(report["t"].as_f64().is_some(), "{report}");
    assert!(
        report["chargers"].as_object().unwrap().is_empty(),
        "{report}"
    );
}

#[tokio::test]
async fn meter_stops_answering_when_told() {
    let mut sim = Proc::sim(&[
        "site",
        "--chargers",
        "0",
        "--base",
        "0:7",
        "--meter-stop-after-s",
        "1",
        "--duration-s",
        "2",
    ]);
    let addr = meter_addr(&sim);
    let mut ctx = tcp::connect(addr).await.unwrap();
    assert_eq!(currents(&mut ctx).await, [7.0, 7.0, 7.0]);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let read = tokio::time::timeout(Duration::from_secs(2), ctx.read_input_registers(6, 2)).await;
    assert!(
        !matches!(read, Ok(Ok(Ok(_)))),
        "the meter still answered: {read:?}"
    );
    assert!(
        tcp::connect(addr).await.is_err(),
        "the listener is still open"
    );
    let summary = loop {
        let line = parse_json(&sim.line());
        if line.get("summary").is_some() {
            break line;
        }
    };
    assert_eq!(summary["summary"]["meter_up"], false, "{summary}");
    assert!(sim.wait().success());
}
