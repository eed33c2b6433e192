//! The command line an operator uses, end to end, against real clusters:
//!
//! - `helixflow up --nodes 3` starts a local cluster and prints its key; `status`, `keys
//!   create|list|revoke` and `models list` work against it through any node; SIGTERM stops it
//!   cleanly (exit 0) and leaves no node process behind; `up` again on the same directory
//!   brings back the same key and the same keys (the revoked one still revoked).
//! - `helixflow join` adds a running node listed in the cluster file: it becomes a voter, `up`,
//!   and serves.

use std::time::{Duration, Instant};

use helixflow_chaos_tests::{
    ChaosRng, Client, Cluster, ClusterOptions, UpProcess, helixflow, wait_for,
};
use serde_json::{Value, json};

/// The model `up` writes and serves.
const UP_MODEL: &str = "demo-llama";
/// From `up` starting to its banner: write the demo model and certificates, start three nodes,
/// elect, place, load.
const BANNER_DEADLINE: Duration = Duration::from_secs(45);
/// SIGTERM to exit: the nodes drain (the generated config's default grace) and stop.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

fn chat(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hello from the command line"}],
        "temperature": 0,
        "max_tokens": 4,
    })
}

/// The rows of `helixflow status`'s node table: NODE, REGION, ZONE, STATUS, ROLE, ….
fn node_rows(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .filter(|line| line.starts_with("node-"))
        .map(|line| line.split_whitespace().collect())
        .collect()
}

/// The row of `name` in a table whose first column is a name.
fn row<'a>(table: &'a str, name: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
}

/// The key `keys create` printed (`key: hf-…`).
fn created_key(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("key:"))
        .map(|key| key.trim().to_owned())
        .unwrap_or_else(|| panic!("no `key:` line in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_three_nodes_then_operate_and_stop() {
    const TEST: &str = "cli_up";
    let mut rng = ChaosRng::from_env(TEST);
    let started = Instant::now();
    let mut up = UpProcess::start(TEST, 3);
    let key = up.wait_banner(BANNER_DEADLINE).await;
    assert!(key.starts_with("hf-"), "the banner's key: {key:?}");
    let stderr = up.stderr();
    assert!(
        stderr.contains(&format!("curl {}/v1/chat/completions", up.url(1))),
        "the banner shows a request to paste:\n{stderr}"
    );
    let urls: Vec<String> = (1..=3).map(|i| up.url(i)).collect();
    let admin =
        |url: &str| -> Vec<String> { ["--url", url, "--key", &key].map(str::to_owned).to_vec() };

    // `status` through any node: a leader, three nodes up.
    let via = rng.pick(&urls);
    let (table, settled) = wait_for(
        Duration::from_secs(15),
        "`helixflow status` to show a leader and three nodes up",
        || {
            let args = [vec!["status".to_owned()], admin(&via)].concat();
            async move {
                let out = helixflow(&args, &[]).await;
                if !out.status.success() {
                    return Err(out.to_string());
                }
                let rows = node_rows(&out.stdout);
                let up_rows = rows.iter().filter(|r| r.get(3) == Some(&"up")).count();
                if !out.stdout.contains("leader node-") || rows.len() != 3 || up_rows != 3 {
                    return Err(out.stdout);
                }
                Ok(out.stdout)
            }
        },
    )
    .await;
    let leaders = node_rows(&table)
        .iter()
        .filter(|r| r.get(4) == Some(&"leader"))
        .count();
    assert_eq!(leaders, 1, "one leader row:\n{table}");
    eprintln!("[chaos] {TEST}: status via {via} ({settled:?} after the banner):\n{table}");

    // `keys create` through node 1; the key works through node 2.
    let create = [
        vec!["keys".to_owned(), "create".to_owned()],
        admin(&urls[0]),
        ["--name", "cli-user", "--role", "user"]
            .map(str::to_owned)
            .to_vec(),
    ]
    .concat();
    let user_key = created_key(helixflow(&create, &[]).await.success());
    let client = Client::new(&key);
    let reply = client
        .chat(&urls[1], &user_key, &chat(UP_MODEL))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "the new key via node 2: {}", reply.body);

    // `keys list` through node 3: the key, active.
    let list = [vec!["keys".to_owned(), "list".to_owned()], admin(&urls[2])].concat();
    let listed = helixflow(&list, &[]).await;
    let cells = row(listed.success(), "cli-user")
        .unwrap_or_else(|| panic!("cli-user in `keys list`:\n{}", listed.stdout));
    assert_eq!(cells.get(1), Some(&"user"), "{}", listed.stdout);
    assert_eq!(cells.last(), Some(&"active"), "{}", listed.stdout);

    // `keys revoke` through node 2: refused everywhere at once.
    let revoke = [
        vec!["keys".to_owned(), "revoke".to_owned()],
        admin(&urls[1]),
        vec!["cli-user".to_owned()],
    ]
    .concat();
    helixflow(&revoke, &[]).await.success();
    for url in &urls {
        let reply = client.chat(url, &user_key, &chat(UP_MODEL)).await.unwrap();
        assert_eq!(
            reply.status, 401,
            "the revoked key via {url}: {}",
            reply.body
        );
    }
    let listed = helixflow(&list, &[]).await;
    let cells = row(listed.success(), "cli-user").expect("a revoked key is still listed");
    assert_eq!(cells.last(), Some(&"revoked"), "{}", listed.stdout);

    // `models list`, with the URL and key from the environment this time.
    let models = helixflow(
        ["models", "list"],
        &[
            ("HELIXFLOW_URL", urls[2].as_str()),
            ("HELIXFLOW_API_KEY", key.as_str()),
        ],
    )
    .await;
    let cells = row(models.success(), UP_MODEL)
        .unwrap_or_else(|| panic!("{UP_MODEL} in `models list`:\n{}", models.stdout));
    assert_eq!(cells.get(1), Some(&"2/2"), "{}", models.stdout);

    stop(TEST, &mut up, &client, &urls).await;

    // `up` again on the same directory: the same key, and the cluster as it was left.
    up.start_again();
    let again = up.wait_banner(BANNER_DEADLINE).await;
    assert_eq!(again, key, "a second run of up prints the key of the first");
    for url in &urls {
        let reply = client.chat(url, &user_key, &chat(UP_MODEL)).await.unwrap();
        assert_eq!(
            reply.status, 401,
            "the key revoked before the restart via {url}: {}",
            reply.body
        );
        let reply = client.chat(url, &key, &chat(UP_MODEL)).await.unwrap();
        assert_eq!(reply.status, 200, "the demo key via {url}: {}", reply.body);
    }
    let listed = helixflow(&list, &[]).await;
    let cells = row(listed.success(), "cli-user").expect("the revoked key is still listed");
    assert_eq!(cells.last(), Some(&"revoked"), "{}", listed.stdout);
    stop(TEST, &mut up, &client, &urls).await;
    eprintln!("[chaos] {TEST}: whole run {:?}", started.elapsed());
}

/// SIGTERM to `up`: it stops its nodes, exits 0, and nothing of it is left running or
/// answering.
async fn stop(test: &str, up: &mut UpProcess, client: &Client, urls: &[String]) {
    let running = up.processes();
    let nodes = running
        .iter()
        .filter(|(_, cmdline)| cmdline.contains(" node "))
        .count();
    assert_eq!(nodes, 3, "up runs three nodes: {running:?}");
    let stopping = Instant::now();
    let status = up.terminate(STOP_DEADLINE);
    let stopped = stopping.elapsed();
    assert!(
        status.success(),
        "up exited with {status} on SIGTERM:\n{}",
        up.stderr()
    );
    let left = up.processes();
    assert!(left.is_empty(), "processes left after up exited: {left:?}");
    for url in urls {
        assert!(
            !client.ready(url, Duration::from_secs(1)).await,
            "{url} still answers after up exited"
        );
    }
    eprintln!(
        "[chaos] {test}: up stopped in {stopped:?} (exit 0), pids {:?} gone",
        running.iter().map(|(pid, _)| pid).collect::<Vec<_>>(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_adds_a_listed_node_as_a_voter() {
    const TEST: &str = "cli_join";
    const NEWCOMER: u64 = 4;
    let mut rng = ChaosRng::from_env(TEST);
    let options = ClusterOptions {
        listed_non_voters: 1,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(TEST, &rng, options).await;
    let members = [1, 2, 3];
    cluster.start_node(NEWCOMER);
    // It runs (it serves HTTP) before anyone is asked to add it.
    let (client, url) = (cluster.client.clone(), cluster.url(NEWCOMER));
    wait_for(Duration::from_secs(30), "node 4 to serve /metrics", || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .metrics(&url)
                .await
                .map(drop)
                .map_err(|e| format!("{e:#}"))
        }
    })
    .await;

    let via = rng.pick(&members);
    let config = cluster.config_path().display().to_string();
    let asked = Instant::now();
    let out = helixflow(
        [
            "join",
            "--url",
            &cluster.url(via),
            "--key",
            cluster.client.admin_key(),
            "--config",
            &config,
            "--id",
            &NEWCOMER.to_string(),
        ],
        &[],
    )
    .await;
    let joined = asked.elapsed();
    assert!(out.status.success(), "helixflow join via node-{via}: {out}");
    assert!(
        out.stdout.contains("joined the cluster as a voter"),
        "{out}"
    );

    // Every node, the newcomer too, sees it as an up voter.
    let all = [1, 2, 3, NEWCOMER];
    let (_, settled) = wait_for(
        Duration::from_secs(15),
        "every node to see node 4 as an up voter",
        || async {
            for &id in &all {
                let status = cluster
                    .client
                    .cluster_status_within(&cluster.url(id), Duration::from_secs(2))
                    .await
                    .map_err(|e| format!("node-{id}: {e:#}"))?;
                let entry = status
                    .nodes
                    .iter()
                    .find(|n| n.id == NEWCOMER)
                    .ok_or_else(|| format!("node-{id} does not list node 4"))?;
                if !entry.voter || entry.status != "up" {
                    return Err(format!("node-{id} sees node 4 as {entry:?}"));
                }
            }
            Ok(())
        },
    )
    .await;
    // And so does `helixflow status`.
    let out = helixflow(
        [
            "status",
            "--url",
            &cluster.url(NEWCOMER),
            "--key",
            cluster.client.admin_key(),
        ],
        &[],
    )
    .await;
    let cells = row(out.success(), "node-4")
        .unwrap_or_else(|| panic!("node-4 in `helixflow status`:\n{}", out.stdout));
    assert_eq!(cells.get(3), Some(&"up"), "{}", out.stdout);
    assert!(
        matches!(cells.get(4), Some(&"voter" | &"leader")),
        "node-4 votes:\n{}",
        out.stdout
    );
    cluster
        .wait_ready(&[NEWCOMER], Duration::from_secs(15))
        .await;
    cluster
        .wait_serving(&[NEWCOMER], Duration::from_secs(15))
        .await;
    eprintln!(
        "[chaos] {TEST}: join via node-{via} returned in {joined:?}; all nodes saw node 4 up \
         and voting {settled:?} later"
    );
}
