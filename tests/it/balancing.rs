//! Named upstream pools and balancing policies, with real upstream servers.

use std::time::Duration;

use crate::support::{Client, Proto, TestServer, Upstream};

fn site(pool: &str) -> String {
    format!(
        "{pool}\n[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = \"app\"\n[[site.route]]\npath = \"/other/\"\nproxy = \"app\"\n"
    )
}

/// A named pool with weights, shared by two routes: round robin sends 3:1.
#[tokio::test]
async fn a_named_pool_with_weights() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let pool = format!(
        "[upstream.app]\nbalance = \"round_robin\"\nmembers = [{{ addr = \"{}\", weight = 3 }}, \"{}\"]\n",
        a.addr, b.addr
    );
    let usher = TestServer::start(&site(&pool)).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for i in 0..40 {
        let path = if i % 2 == 0 { "/x" } else { "/other/y" };
        assert_eq!(c.get("app.test", path).await.status, 200);
    }
    // both routes draw on the one pool: 30 and 10 over the 40 requests
    assert_eq!((a.seen().len(), b.seen().len()), (30, 10));
}

/// least_requests: with one member slow (200 ms per request) and two fast, under concurrent
/// load the slow one gets clearly less than a third of the requests.
#[tokio::test]
async fn least_requests_sends_less_to_a_slow_member() {
    let slow = Upstream::start_slow("slow", Duration::from_millis(200)).await;
    let (f1, f2) = (Upstream::start("f1").await, Upstream::start("f2").await);
    let pool = format!(
        "[upstream.app]\nbalance = \"least_requests\"\nmembers = [\"{}\", \"{}\", \"{}\"]\n",
        slow.addr, f1.addr, f2.addr
    );
    let usher = TestServer::start(&site(&pool)).await;
    // 8 concurrent clients, 15 requests each
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = usher.http;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::plain(addr, Proto::H1).await;
            for _ in 0..15 {
                assert_eq!(c.get("app.test", "/member-speed").await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 8 * 15;
    let share = slow.seen().len();
    assert_eq!(share + f1.seen().len() + f2.seen().len(), total);
    // a third would be 40; requests pile up on the slow member, so p2c steers away from it
    assert!(share < total / 6, "slow member got {share} of {total}");
}
