//! What a host says about its NATS connection (`src/cluster/node.rs`): status names the
//! servers and the cause when NATS cannot be reached or refuses, and a follower stops calling
//! itself `connected` the moment its connection drops.

use std::time::Duration;

use ws_sidecar::cluster::slot::Role;
use ws_sidecar::endpoint::State;

use crate::support::daemon::TestDaemon;
use crate::support::nats::NatsServer;
use crate::support::upstream::FakeUpstream;

const WAIT: Duration = Duration::from_secs(20);

/// A daemon named `name` with `ticks` clustered, `[cluster]` as the test gives it.
async fn host(up: &FakeUpstream, cluster: &str) -> TestDaemon {
    let toml = format!(
        "{cluster}\n[endpoints.ticks]\nurl = \"{}\"\ncluster = true\n",
        up.url("/feed")
    );
    crate::support::daemon::start_with(crate::support::daemon::parse_config(&toml)).await
}

/// With a 10 s lease (a follower re-checks every 5 s), a follower whose NATS goes away says
/// so at once, and follows again once NATS is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_says_at_once_that_it_lost_nats() {
    let Some(mut server) = NatsServer::start("a_follower_says_at_once").await else {
        return;
    };
    let up = FakeUpstream::start_ticking(Default::default()).await;
    let section = |name: &str| {
        format!(
            "[cluster]\nnats = \"{}\"\nname = \"{name}\"\nlease_ttl = \"10s\"\n",
            server.url()
        )
    };
    let a = host(&up, &section("host-a")).await;
    crate::wait_role(&a, "ticks", Role::Leader).await;
    let b = host(&up, &section("host-b")).await;
    crate::wait_role(&b, "ticks", Role::Follower).await;
    b.wait_state("ticks", State::Connected, WAIT).await;
    server.stop().await;
    let lost = b
        .wait_state("ticks", State::Connecting, Duration::from_secs(3))
        .await;
    assert!(
        lost.reason.contains("lost NATS") && lost.reason.contains(&server.url()),
        "{}",
        lost.reason
    );
    server.restart().await;
    let back = b.wait_state("ticks", State::Connected, WAIT).await;
    assert!(back.reason.starts_with("following "), "{}", back.reason);
    a.stop().await;
    b.stop().await;
}

/// A password the server refuses: status says `authorization violation` and where, and never
/// shows the password.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_password_is_named_in_status_without_the_password() {
    let args = ["--user", "sidecar", "--pass", "the-right-one"].map(str::to_owned);
    let Some(server) = NatsServer::start_with("a_refused_password", args.to_vec()).await else {
        return;
    };
    let up = FakeUpstream::start_ticking(Default::default()).await;
    let d = host(
        &up,
        &format!(
            "[cluster]\nnats = \"{}\"\nuser = \"sidecar\"\npassword = \"not-the-password\"\n",
            server.url()
        ),
    )
    .await;
    let ep = d.endpoint("ticks");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = ep.state();
        if st.reason.contains("authorization violation") {
            assert!(st.reason.contains(&server.url()), "{}", st.reason);
            assert!(!st.reason.contains("not-the-password"), "{}", st.reason);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never named the cause: {:?}",
            st
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.stop().await;
}

/// A host whose lease ttl differs from the fleet's is told so, not that NATS is unreachable.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_ttl_other_hosts_do_not_share_is_named_in_status() {
    let Some(server) = NatsServer::start("a_lease_ttl_other_hosts").await else {
        return;
    };
    let up = FakeUpstream::start_ticking(Default::default()).await;
    let section = |name: &str, ttl: &str| {
        format!(
            "[cluster]\nnats = \"{}\"\nname = \"{name}\"\nlease_ttl = \"{ttl}\"\n",
            server.url()
        )
    };
    let a = host(&up, &section("host-a", "1s")).await;
    crate::wait_role(&a, "ticks", Role::Leader).await;
    let b = host(&up, &section("host-b", "2s")).await;
    let ep = b.endpoint("ticks");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = ep.state();
        if st.reason.contains("same lease ttl") {
            assert!(
                st.reason.starts_with("cannot join the fleet: "),
                "{}",
                st.reason
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never said so: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
    b.stop().await;
}
