//! A full disk: the data dir is a small tmpfs (mounted by the test; CI runs as root). When a
//! commit cannot be written, `ratel serve` stops acknowledging and says so; when space comes
//! back, the NAS's retransmissions are processed and nothing is lost or charged twice.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_disk_stops_acknowledging_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6M", "tmpfs"])
        .arg(&data)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test mounts a 6 MiB tmpfs for the data dir and needs root (CI runs as root)"
    );
    let _mount = Mount(data.clone());
    let env = Env::with_dir(
        dir,
        "username,password,group,credit\nalice,pw,g,10\n",
        false,
    );
    let (server, radius, _api) = env.serve_all();
    let c = client();
    let gb = 1_000_000_000u64;
    assert!(send(&c, radius, &acct(1, 1, "alice", "d1", 0, 0, 0, None)).is_some());
    assert!(send(&c, radius, &acct(2, 3, "alice", "d1", 600, gb, 0, None)).is_some());

    // Fill the disk.
    let filler = data.join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=64k", "count=1000"])
        .stderr(std::process::Stdio::null())
        .status();
    let stop_pkt = acct(3, 2, "alice", "d1", 1200, 2 * gb, 0, Some(1));
    let q = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    q.set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    // A few more interims to be sure the WAL needs new space.
    let mut unanswered = false;
    for id in 10..40u8 {
        let p = acct(
            id,
            3,
            "alice",
            "d1",
            600 + id as u32,
            gb + id as u64,
            0,
            None,
        );
        if send(&q, radius, &p).is_none() {
            unanswered = true;
            break;
        }
    }
    assert!(unanswered, "serve kept acknowledging with a full disk");
    assert!(
        send(&q, radius, &stop_pkt).is_none(),
        "a Stop was acknowledged while the disk was full"
    );

    // Space comes back: the retransmitted Stop is processed.
    std::fs::remove_file(&filler).unwrap();
    let mut answered = false;
    for _ in 0..20 {
        if send(&c, radius, &stop_pkt).is_some() {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answered, "serve did not recover once space came back");
    stop(server);
    // 20 min * 0.01 + 2 GB * 0.5 = 1.2, taken once.
    assert_eq!(
        env.credits()[0],
        ("alice".to_string(), "8.8".parse().unwrap())
    );
    let x = xdrs(&env.data());
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].5, "1.2".parse().unwrap());
}
