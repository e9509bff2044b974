//! The README's quick start, run as written: its marked shell blocks, in order, against the
//! built binary, in an empty directory, with the default ports swapped for free ones.
//!
//! Markers are HTML comments on the line before a block, invisible on the rendered page:
//! `<!-- quickstart: server -->` and `<!-- quickstart: agent -->` mark a command a person
//! leaves running in a terminal of its own (started in the background here, and waited for by
//! its banner); `<!-- quickstart -->` marks commands run to completion, which must succeed.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use crate::support::Process;

/// A block of the quick start and how it runs.
#[derive(Debug)]
struct Block {
    kind: Kind,
    script: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Left running; ready once its banner ends with a line starting so.
    Background(&'static str),
    /// Run to completion.
    Run,
}

/// The marked blocks of `readme`, in order.
fn quick_start_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let kind = match line.trim() {
            "<!-- quickstart -->" => Kind::Run,
            "<!-- quickstart: server -->" => Kind::Background("Sync worker"),
            "<!-- quickstart: agent -->" => Kind::Background("Cloud Sync panel"),
            _ => continue,
        };
        let fence = lines.next().expect("a block follows its marker");
        assert_eq!(
            fence.trim(),
            "```sh",
            "a marker is followed by a shell block"
        );
        let script: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(Block {
            kind,
            script: script.join("\n"),
        });
    }
    blocks
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `bash` in `dir`, with the test's `ferry` first on `PATH` and the listen addresses set.
fn shell(dir: &Path, server: u16, agent: u16) -> Command {
    let binary = Path::new(env!("CARGO_BIN_EXE_ferry"));
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .current_dir(dir)
        .env("PATH", path)
        .env("FERRY_LISTEN", format!("127.0.0.1:{server}"))
        .env("FERRY_AGENT_LISTEN", format!("127.0.0.1:{agent}"))
        .env_remove("FERRY_DATABASE_URL")
        .env_remove("FERRY_DB")
        .env_remove("FERRY_AGENT_INTERVAL")
        .kill_on_drop(true)
        .stdin(Stdio::null());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("the README reads");
    let blocks = quick_start_blocks(&readme);
    let kinds: Vec<Kind> = blocks.iter().map(|b| b.kind).collect();
    assert!(
        kinds.contains(&Kind::Background("Sync worker"))
            && kinds.contains(&Kind::Background("Cloud Sync panel"))
            && kinds.iter().filter(|k| **k == Kind::Run).count() >= 3,
        "the quick start's markers are missing: {kinds:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (server, agent) = (free_port(), free_port());
    let mut running = Vec::new();
    let mut printed = String::new();
    for block in &blocks {
        let script = block
            .script
            .replace("127.0.0.1:7300", &format!("127.0.0.1:{server}"))
            .replace("127.0.0.1:7301", &format!("127.0.0.1:{agent}"));
        match block.kind {
            Kind::Background(ready) => {
                // `exec`: the process is bash itself, so dropping it stops the command.
                let command = shell(dir.path(), server, agent);
                let exec = format!("exec {script}");
                running.push(Process::start(command, &["-c", &exec], ready).await);
            }
            Kind::Run => {
                let output = shell(dir.path(), server, agent)
                    .args(["-euo", "pipefail", "-c", &script])
                    .output()
                    .await
                    .unwrap();
                let stdout = String::from_utf8_lossy(&output.stdout);
                assert!(
                    output.status.success(),
                    "the block\n{script}\nfailed: {}\n{stdout}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
                printed.push_str(&stdout);
            }
        }
    }

    // What the comments beside the commands promise.
    assert!(
        printed.contains("Ada"),
        "the row reached b.sqlite: {printed}"
    );
    assert!(printed.contains(r#""state":"synced""#), "{printed}");
    for name in ["Desktop A", "Tablet B"] {
        assert!(printed.contains(name), "the admin sees {name}: {printed}");
    }
}

#[test]
fn blocks_are_read_with_their_markers() {
    let readme = "text\n<!-- quickstart: server -->\n```sh\nferry serve\n```\n\
                  ```sh\nnot marked\n```\n<!-- quickstart -->\n```sh\na\nb\n```\n";
    let blocks = quick_start_blocks(readme);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].kind, Kind::Background("Sync worker"));
    assert_eq!(blocks[0].script, "ferry serve");
    assert_eq!(blocks[1].kind, Kind::Run);
    assert_eq!(blocks[1].script, "a\nb");
}
