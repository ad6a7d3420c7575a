//! `GET /api/fleet` and the owner column of `/api/status`, over the real
//! server and real Redis, with members joining through the library's own
//! heartbeat ([`Fleet::membership`]); and the record's `slot`, which
//! on-demand reads leave out.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rainforest::cloud_id::CloudId;
use rainforest::fleet::{Fleet, MembershipOptions};
use rainforest::registry::Registry;
use rainforest::simulator::{self, SimulateArgs};
use support::process::wait_for;
use support::server::{ADMIN, Backend, TestServer};
use support::spool::spool_lines;
use tokio_util::sync::CancellationToken;

const OPTS: MembershipOptions = MembershipOptions {
    heartbeat: Duration::from_millis(200),
    ttl: Duration::from_millis(1000),
};

fn join(s: &TestServer, stop: &CancellationToken) -> Fleet {
    let Registry::Redis(r) = &s.registry else {
        panic!("a Redis test server");
    };
    Fleet::membership(r.db().clone(), r.keys().clone(), OPTS, stop.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_fleet_lists_members_with_heartbeats_and_pages_each_meters_owner() {
    let Some(s) = TestServer::redis().await else {
        return;
    };
    for i in 0..30 {
        s.registry
            .put(&support::meters::sim_user(i))
            .await
            .expect("put user");
    }
    let stop = CancellationToken::new();
    let a = join(&s, &stop);
    a.set_owned(17);
    let b = join(&s, &stop);
    wait_for("two members announced", async || {
        s.get("/api/fleet", Some(ADMIN)).await.json()["members"]
            .as_array()
            .is_some_and(|m| m.len() == 2 && m.iter().any(|m| m["meters"] == 17))
    })
    .await;
    // Let b's activation instant pass, so both own their shares.
    tokio::time::sleep(OPTS.heartbeat * 3).await;

    let f = s.get("/api/fleet?per_page=20", Some(ADMIN)).await.json();
    assert_eq!(f["mode"], "membership");
    assert_eq!(f["meters_total"], 30);
    assert_eq!(
        (f["page"].as_u64(), f["pages"].as_u64()),
        (Some(1), Some(2))
    );
    let ids: Vec<String> = f["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let hb = m["last_heartbeat"].as_str().expect("last_heartbeat");
            chrono::DateTime::parse_from_rfc3339(hb).expect("RFC 3339 heartbeat");
            assert!(hb.ends_with('Z') && hb.len() == 24, "{hb}");
            m["id"].as_str().expect("id").to_string()
        })
        .collect();
    assert_eq!(
        ids,
        [a.view().borrow().me.clone(), b.view().borrow().me.clone()]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    // Owners agree with what each member's own view says it polls.
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for page in 1..=2 {
        let f = s
            .get(&format!("/api/fleet?per_page=20&page={page}"), Some(ADMIN))
            .await
            .json();
        for o in f["owners"].as_array().expect("owners") {
            owners.insert(
                o["cloud_id"].as_str().expect("id").into(),
                o["owner"].as_str().expect("an owner").into(),
            );
        }
    }
    assert_eq!(owners.len(), 30);
    let now = rainforest::fleet::membership::now_ms();
    for (id, owner) in &owners {
        let id = CloudId::parse(id).expect("cloud id");
        let mine = [&a, &b]
            .iter()
            .find(|f| f.view().borrow().owns(id, now))
            .map(|f| f.view().borrow().me.clone());
        assert_eq!(mine.as_ref(), Some(owner), "{id}");
    }
    assert!(owners.values().any(|o| *o == ids[0]) && owners.values().any(|o| *o == ids[1]));
    // One meter at a time, and the status page's owner column.
    let one = simulator::meter_cloud_id(3);
    let f = s
        .get(&format!("/api/fleet?meter={one}"), Some(ADMIN))
        .await
        .json();
    assert_eq!(
        f["owners"][0]["owner"].as_str(),
        owners.get(one.as_str()).map(String::as_str)
    );
    assert_eq!(f["owners"].as_array().map(Vec::len), Some(1));
    let st = s.get("/api/status?per_page=1000", Some(ADMIN)).await.json();
    for row in st["meters"].as_array().expect("rows") {
        let id = row["cloud_id"].as_str().expect("id");
        assert_eq!(
            row["owner"].as_str(),
            owners.get(id).map(String::as_str),
            "{id}"
        );
    }
    // Bad queries are 400s; no token is a 401.
    for q in [
        "meter=xyz",
        "meter=",
        "page=0",
        "per_page=0",
        "per_page=1001",
        "other=1",
    ] {
        s.get(&format!("/api/fleet?{q}"), Some(ADMIN))
            .await
            .problem(400);
    }
    s.get("/api/fleet", None).await.problem(401);

    // A clean stop leaves at once: one member, owning everything.
    stop.cancel();
    a.stopped().await;
    b.stopped().await;
    let f = s.get("/api/fleet", Some(ADMIN)).await.json();
    assert_eq!(f["members"].as_array().map(Vec::len), Some(0));
    assert!(
        f["owners"]
            .as_array()
            .expect("owners")
            .iter()
            .all(|o| o["owner"].is_null())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_users_file_the_fleet_is_single_and_on_demand_reads_carry_no_slot() {
    let Some(s) = TestServer::start(Backend::UsersFile, SimulateArgs::default(), |_| {}).await
    else {
        return;
    };
    s.registry
        .put(&support::meters::sim_user(1))
        .await
        .expect("put user");
    let f = s.get("/api/fleet", Some(ADMIN)).await.json();
    assert_eq!(f["mode"], "single");
    assert_eq!(f["members"].as_array().map(Vec::len), Some(0));
    // An on-demand read has no schedule: its line has no slot, so the
    // merge's dedupe by (cloud_id, slot) can never drop it.
    let id = simulator::meter_cloud_id(1);
    let a = s.post_empty(&format!("/api/event/{id}"), Some(ADMIN)).await;
    assert!(a.status.is_success(), "{}", a.body);
    wait_for("the on-demand line in the spool", async || {
        !spool_lines(&s.data).is_empty()
    })
    .await;
    for (_, v) in spool_lines(&s.data) {
        assert_eq!(v["cloud_id"], id.as_str());
        assert!(v.get("slot").is_none(), "{v}");
        assert!(v["polled_at"].is_string());
    }
}
