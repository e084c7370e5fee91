//! `busbridge top` in a pseudo-terminal (portable-pty), its screen read back through a
//! terminal emulator (vt100): a bridged bus and its topic appear with their counts, `q` quits
//! with exit 0 and the terminal leaves the alternate screen.

#![cfg(feature = "cli")]

mod common;

use busbridge::bridge::BridgeBuilder;
use busbridge::phase::Phase;
use common::procs;
use portable_pty::{native_pty_system, CommandBuilder, PtySize};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ROWS: u16 = 30;
const COLS: u16 = 150;

/// Feeds the emulator what the program wrote until `ready` holds for the screen (bounded).
fn screen_until(
    parser: &mut vt100::Parser,
    bytes: &mpsc::Receiver<Vec<u8>>,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let screen = parser.screen().contents();
        if ready(&screen) {
            return screen;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match bytes.recv_timeout(left) {
            Ok(b) => parser.process(&b),
            Err(e) => panic!("screen never ready ({e}):\n{screen}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_buses_and_topics_live_and_quits_on_q() {
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let uri = format!("ipc://{}", socket.display());
    let _broker = procs::broker(&socket, &[]);
    let bridged = BridgeBuilder::new()
        .phase(Phase::BusrtOnly)
        .connect(&uri)
        .name("top-probe")
        .build()
        .await
        .unwrap();
    let bus = bridged.event_bus(Default::default());
    for i in 0..100 {
        bus.publish(common::process(i), "c".into()).await.unwrap();
    }

    let pty = native_pty_system()
        .openpty(PtySize {
            rows: ROWS,
            cols: COLS,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut cmd = CommandBuilder::new(procs::BIN);
    cmd.args(["top", "--connect", &uri, "--interval", "300ms"]);
    cmd.env("RUST_LOG", "error");
    let mut child = pty.slave.spawn_command(cmd).unwrap();
    drop(pty.slave);
    let mut reader = pty.master.try_clone_reader().unwrap();
    let mut keys = pty.master.take_writer().unwrap();
    let (tx, bytes) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });

    let mut parser = vt100::Parser::new(ROWS, COLS, 0);
    let screen = screen_until(&mut parser, &bytes, |s| {
        s.lines()
            .any(|l| l.contains("top-probe") && l.contains("Connected"))
            && s.lines()
                .any(|l| l.contains("events.process.new") && l.contains("100"))
    });
    assert!(parser.screen().alternate_screen(), "full screen");
    assert!(
        screen.contains("buses") && screen.contains("topics"),
        "{screen}"
    );

    std::io::Write::write_all(&mut keys, b"q").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(20)); // polling an exit, not synchronising
    };
    assert!(status.success(), "{status:?}");
    while let Ok(b) = bytes.recv_timeout(Duration::from_millis(200)) {
        parser.process(&b);
    }
    assert!(!parser.screen().alternate_screen(), "terminal restored");
    bridged.shutdown().await;
}
