//! A voter of the cluster file that never started — no member ever heard from it — is never
//! reported `up` and gets no replica: status and placement follow what nodes report, not the
//! leader's own uptime.

use std::time::Duration;

use helixflow_chaos_tests::{ChaosRng, Cluster, ClusterOptions, hold_for};

const TEST: &str = "unheard_voter";
/// Past the failure detector's 1 s (suspect) and 3 s (down).
const WATCH: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_never_heard_from_is_never_up() {
    let rng = ChaosRng::from_env(TEST);
    let mut cluster = Cluster::prepare(TEST, &rng, ClusterOptions::default());
    // Node 3 stays down: nodes 1 and 2 are a quorum of the three voters.
    let (members, absent) = ([1, 2], 3);
    for id in members {
        cluster.start_node(id);
    }
    // Watched from the start (a member not answering yet is no failure) until well past the
    // failure detector's periods.
    let cluster_ref = &cluster;
    let checks = hold_for(WATCH, "node 3, never started, counted out", || async move {
        match cluster_ref.counted_in(&members, absent).await {
            Ok(Some(why)) => Err(why),
            Ok(None) | Err(_) => Ok(()),
        }
    })
    .await;
    // The watch saw a working cluster, not two nodes failing to start.
    cluster.wait_ready(&members, Duration::from_secs(5)).await;
    eprintln!("[chaos] {TEST}: node-{absent} counted out in all {checks} checks");
}
