//! The gateway against a real Modbus TCP server (tokio-modbus) on loopback: reads, exceptions,
//! writes and their echo checks, dead devices within the timeout, reconnects, the transfer
//! mapping and a meter poll.

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use modbus_tunnel::allow::AllowList;
use modbus_tunnel::gateway::{
    Device, GatewayError, ReadMeterError, Transport, WriteGrant, read_meter, serve_transfer,
    transfer,
};
use modbus_tunnel::map::{Map, MeterError};
use modbus_tunnel::pdu::{self, ReadData, ReadKind, ReadRequest, WriteRequest};
use modbus_tunnel::transfer::{Status, TransferRequest};
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

const TIMEOUT: Duration = Duration::from_millis(300);

/// A device holding fixed registers; unknown addresses are an illegal-address exception.
/// Writes are recorded (and answered with a wrong echo when `lie` is set).
#[derive(Default)]
struct Registers {
    holding: HashMap<u16, u16>,
    input: HashMap<u16, u16>,
    written: Arc<Mutex<Vec<Request<'static>>>>,
    lie: bool,
}

impl Registers {
    fn read(table: &HashMap<u16, u16>, addr: u16, cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        (0..cnt)
            .map(|i| {
                addr.checked_add(i)
                    .and_then(|a| table.get(&a).copied())
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect()
    }
}

impl tokio_modbus::server::Service for Registers {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        ready(match req.request {
            Request::ReadHoldingRegisters(addr, cnt) => {
                Self::read(&self.holding, addr, cnt).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(addr, cnt) => {
                Self::read(&self.input, addr, cnt).map(Response::ReadInputRegisters)
            }
            Request::ReadCoils(_, cnt) => {
                Ok(Response::ReadCoils((0..cnt).map(|i| i % 3 == 0).collect()))
            }
            ref w @ (Request::WriteSingleRegister(..)
            | Request::WriteSingleCoil(..)
            | Request::WriteMultipleRegisters(..)
            | Request::WriteMultipleCoils(..)) => {
                self.written.lock().unwrap().push(w.clone());
                let off = u16::from(self.lie);
                Ok(match w {
                    Request::WriteSingleRegister(a, v) => {
                        Response::WriteSingleRegister(*a, v.wrapping_add(off))
                    }
                    Request::WriteSingleCoil(a, v) => Response::WriteSingleCoil(*a, *v != self.lie),
                    Request::WriteMultipleRegisters(a, v) => {
                        Response::WriteMultipleRegisters(*a, v.len() as u16 + off)
                    }
                    Request::WriteMultipleCoils(a, v) => {
                        Response::WriteMultipleCoils(a.wrapping_add(off), v.len() as u16)
                    }
                    _ => unreachable!(),
                })
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// Serves `registers` on `listener`.
fn serve_on(listener: TcpListener, registers: Registers) {
    let service = Arc::new(registers);
    tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = move |stream, peer| {
            let service = Arc::clone(&service);
            async move { accept_tcp_connection(stream, peer, move |_| Ok(Some(Arc::clone(&service)))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
}

/// Serves `registers` on an ephemeral loopback port.
async fn serve(registers: Registers) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    serve_on(listener, registers);
    addr
}

fn device(addr: SocketAddr) -> Device {
    Device::new("grid-meter", Transport::Tcp(addr), TIMEOUT)
}

fn req(kind: ReadKind, address: u16, count: u16) -> ReadRequest {
    ReadRequest::new(kind, address, count).expect("valid request")
}

fn sample() -> Registers {
    let mut r = Registers::default();
    for a in 0..10 {
        r.holding.insert(a, 100 + a);
        r.input.insert(1000 + a, 2000 + a);
    }
    r
}

#[tokio::test]
async fn reads_holding_and_input_registers() {
    let dev = device(serve(sample()).await);
    assert_eq!(
        dev.read(1, &req(ReadKind::HoldingRegisters, 2, 3)).await,
        Ok(ReadData::Words(vec![102, 103, 104]))
    );
    assert_eq!(
        dev.read(1, &req(ReadKind::InputRegisters, 1000, 2)).await,
        Ok(ReadData::Words(vec![2000, 2001]))
    );
    assert_eq!(
        dev.read(7, &req(ReadKind::Coils, 0, 5)).await,
        Ok(ReadData::Bits(vec![true, false, false, true, false]))
    );
}

#[tokio::test]
async fn illegal_address_is_exception_2_and_connection_survives() {
    let dev = device(serve(sample()).await);
    assert_eq!(
        dev.read(1, &req(ReadKind::HoldingRegisters, 8, 5)).await,
        Err(GatewayError::Exception(2))
    );
    assert_eq!(
        dev.read(1, &req(ReadKind::HoldingRegisters, 9, 1)).await,
        Ok(ReadData::Words(vec![109]))
    );
}

#[tokio::test]
async fn refused_port_is_unreachable_quickly() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("local addr")
    };
    let dev = device(addr);
    let started = Instant::now();
    let err = dev
        .read(1, &req(ReadKind::HoldingRegisters, 0, 1))
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, GatewayError::Unreachable(_)), "{err:?}");
    assert!(started.elapsed() < TIMEOUT * 2, "{:?}", started.elapsed());
}

#[tokio::test]
async fn silent_device_times_out_within_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    // Accepts and holds connections, never answers.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let dev = device(addr);
    let started = Instant::now();
    assert_eq!(
        dev.read(1, &req(ReadKind::HoldingRegisters, 0, 1)).await,
        Err(GatewayError::Timeout)
    );
    let elapsed = started.elapsed();
    assert!(elapsed >= TIMEOUT && elapsed < TIMEOUT * 2, "{elapsed:?}");
}

#[tokio::test]
async fn reconnects_after_the_device_comes_back() {
    // Reserve a port, leave it closed, then serve on it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let dev = device(addr);
    assert!(matches!(
        dev.read(1, &req(ReadKind::HoldingRegisters, 0, 1)).await,
        Err(GatewayError::Unreachable(_))
    ));
    let listener = TcpListener::bind(addr).await.expect("rebind");
    serve_on(listener, sample());
    assert_eq!(
        dev.read(1, &req(ReadKind::HoldingRegisters, 0, 1)).await,
        Ok(ReadData::Words(vec![100]))
    );
}

#[tokio::test]
async fn transfer_maps_outcomes() {
    let dev = device(serve(sample()).await);
    let read = req(ReadKind::HoldingRegisters, 0, 2);
    let ok = transfer(&dev, 1, &pdu::encode_request(&read)).await;
    assert_eq!(ok.status, Status::Ok);
    assert_eq!(
        pdu::parse_response(&read, ok.pdu.as_deref().expect("pdu")),
        Ok(Ok(ReadData::Words(vec![100, 101])))
    );
    let exc = transfer(&dev, 1, &[3, 0, 50, 0, 1]).await;
    assert_eq!(exc.status, Status::Exception);
    assert_eq!(exc.exception_code, Some(2));
    assert_eq!(exc.pdu, Some(vec![0x83, 2]));
    let write = transfer(&dev, 1, &[6, 0, 0, 0, 1]).await;
    assert_eq!(write.status, Status::Refused);
    assert!(
        write
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("writes are refused")),
        "{write:?}"
    );
}

#[tokio::test]
async fn serve_transfer_applies_the_allow_list() {
    let dev = device(serve(sample()).await);
    let allow = AllowList::from_toml(
        "[[allow]]\npeer = \"csms-*\"\ntarget = \"grid-meter\"\nunits = [1]\nranges = [\"holding:0-4\"]\n",
    )
    .expect("allow-list");
    let request = |unit, pdu| TransferRequest::new("grid-meter", unit, pdu);
    let inside = pdu::encode_request(&req(ReadKind::HoldingRegisters, 0, 5));
    let outside = pdu::encode_request(&req(ReadKind::HoldingRegisters, 3, 5));
    let ok = serve_transfer(
        &allow,
        "csms-1",
        &dev,
        &request(1, inside.clone()),
        WriteGrant::None,
    )
    .await;
    assert_eq!(ok.status, Status::Ok, "{ok:?}");
    let range = serve_transfer(
        &allow,
        "csms-1",
        &dev,
        &request(1, outside),
        WriteGrant::None,
    )
    .await;
    assert_eq!(range.status, Status::Refused);
    assert!(
        range
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("registers 3..7")),
        "{range:?}"
    );
    let unit = serve_transfer(
        &allow,
        "csms-1",
        &dev,
        &request(2, inside.clone()),
        WriteGrant::None,
    )
    .await;
    assert_eq!(unit.status, Status::Refused);
    let peer = serve_transfer(
        &allow,
        "intruder",
        &dev,
        &request(1, inside.clone()),
        WriteGrant::None,
    )
    .await;
    assert_eq!(peer.status, Status::Refused);
    let other = TransferRequest::new("other-meter", 1, inside);
    assert_eq!(
        serve_transfer(&allow, "csms-1", &dev, &other, WriteGrant::None)
            .await
            .status,
        Status::Refused
    );
}

#[tokio::test]
async fn granted_writes_in_write_ranges_reach_the_device_and_echoes_are_checked() {
    let registers = sample();
    let written = registers.written.clone();
    let dev = device(serve(registers).await);
    let allow = AllowList::from_toml(
        "[[allow]]\npeer = \"hub\"\ntarget = \"grid-meter\"\nunits = [1]\n\
         ranges = [\"holding:0-9\"]\nwrite_ranges = [\"holding:5-6\", \"coils:0-3\"]\n",
    )
    .expect("allow-list");
    let request = |pdu: Vec<u8>| TransferRequest::new("grid-meter", 1, pdu);
    let fc6 = WriteRequest::SingleRegister {
        address: 5,
        value: 42,
    };
    // Without the grant nothing is written, even inside write_ranges.
    let refused = serve_transfer(
        &allow,
        "hub",
        &dev,
        &request(fc6.encode()),
        WriteGrant::None,
    )
    .await;
    assert_eq!(refused.status, Status::Refused);
    assert!(
        refused
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("ModbusWrite")),
        "{refused:?}"
    );
    assert!(written.lock().unwrap().is_empty());
    // Granted: FC 6, FC 16, FC 5 and FC 15 inside write_ranges; the reply is the echo.
    let fc16 = WriteRequest::MultipleRegisters {
        address: 5,
        values: vec![1, 2],
    };
    let fc5 = WriteRequest::SingleCoil {
        address: 3,
        value: true,
    };
    let fc15 = WriteRequest::MultipleCoils {
        address: 0,
        values: vec![true, false, true, true],
    };
    for w in [&fc6, &fc16, &fc5, &fc15] {
        let ok = serve_transfer(
            &allow,
            "hub",
            &dev,
            &request(w.encode()),
            WriteGrant::Granted,
        )
        .await;
        assert_eq!(ok.status, Status::Ok, "{w:?}: {ok:?}");
        assert_eq!(ok.pdu, Some(w.encode_response()), "{w:?}");
    }
    assert_eq!(
        *written.lock().unwrap(),
        vec![
            Request::WriteSingleRegister(5, 42),
            Request::WriteMultipleRegisters(5, vec![1, 2].into()),
            Request::WriteSingleCoil(3, true),
            Request::WriteMultipleCoils(0, vec![true, false, true, true].into()),
        ]
    );
    // Outside write_ranges (though readable), or a read-only kind: refused, not written.
    let outside = WriteRequest::SingleRegister {
        address: 4,
        value: 1,
    };
    let past = WriteRequest::MultipleRegisters {
        address: 6,
        values: vec![1, 2],
    };
    for w in [&outside, &past] {
        let r = serve_transfer(
            &allow,
            "hub",
            &dev,
            &request(w.encode()),
            WriteGrant::Granted,
        )
        .await;
        assert_eq!(r.status, Status::Refused, "{w:?}: {r:?}");
        assert!(
            r.reason
                .as_deref()
                .is_some_and(|r| r.contains("write_ranges")),
            "{r:?}"
        );
    }
    // A malformed write is refused before anything else.
    let bad = serve_transfer(
        &allow,
        "hub",
        &dev,
        &request(vec![5, 0, 3, 0, 1]),
        WriteGrant::Granted,
    )
    .await;
    assert_eq!(bad.status, Status::Refused, "{bad:?}");
    assert_eq!(written.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn a_write_reply_that_does_not_echo_is_a_bad_reply() {
    let registers = Registers {
        lie: true,
        ..sample()
    };
    let dev = device(serve(registers).await);
    for w in [
        WriteRequest::SingleRegister {
            address: 1,
            value: 7,
        },
        WriteRequest::SingleCoil {
            address: 1,
            value: true,
        },
        WriteRequest::MultipleRegisters {
            address: 1,
            values: vec![7, 8],
        },
        WriteRequest::MultipleCoils {
            address: 1,
            values: vec![true],
        },
    ] {
        assert!(
            matches!(dev.write(1, &w).await, Err(GatewayError::BadReply(_))),
            "{w:?}"
        );
    }
}

fn put_f32(table: &mut HashMap<u16, u16>, address: u16, v: f32) {
    let bits = v.to_bits();
    table.insert(address, (bits >> 16) as u16);
    table.insert(address + 1, bits as u16);
}

/// An SDM630 image: every register 0x00..0x50 defined (0.0), then the known values.
fn sdm630(voltage_l1: f32) -> Registers {
    let mut r = Registers::default();
    for a in 0..0x50 {
        r.input.insert(a, 0);
    }
    for (address, v) in [
        (0x00, voltage_l1),
        (0x02, 229.5),
        (0x04, 231.0),
        (0x06, 16.0),
        (0x08, 15.5),
        (0x0A, 14.25),
        (0x34, 10_800.0),
        (0x48, 12_345.5),
    ] {
        put_f32(&mut r.input, address, v);
    }
    r
}

#[tokio::test]
async fn read_meter_sdm630() {
    let dev = device(serve(sdm630(230.25)).await);
    let map = Map::builtin("sdm630").expect("builtin map");
    let reading = read_meter(&dev, 1, &map).await.expect("reading");
    assert_eq!(reading.voltage_v, [230.25, 229.5, 231.0]);
    assert_eq!(reading.current_a, [16.0, 15.5, 14.25]);
    assert_eq!(reading.power_w, 10_800.0);
    assert_eq!(reading.energy_wh, 12_345_500.0);
}

#[tokio::test]
async fn read_meter_reports_implausible_and_gateway_errors() {
    let dev = device(serve(sdm630(12.0)).await);
    let map = Map::builtin("sdm630").expect("builtin map");
    assert!(matches!(
        read_meter(&dev, 1, &map).await,
        Err(ReadMeterError::Meter(MeterError::Implausible { .. }))
    ));
    // The holding-register map against a device without holding registers.
    let generic = Map::builtin("generic").expect("builtin map");
    assert_eq!(
        read_meter(&dev, 1, &generic).await,
        Err(ReadMeterError::Gateway(GatewayError::Exception(2)))
    );
}
