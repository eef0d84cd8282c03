use super::*;

#[test]
fn buckets_cover_values_in_order() {
    let mut last = 0;
    for v in [
        0u64,
        1,
        15,
        16,
        17,
        31,
        32,
        100,
        1_000,
        65_535,
        1 << 30,
        u64::MAX,
    ] {
        let b = bucket_of(v);
        assert!(b >= last, "bucket of {v} went backwards");
        assert!(b < BUCKETS);
        last = b;
        if v < (1 << 36) {
            let (lo, hi) = bucket_range(b);
            assert!(lo <= v && v < hi, "{v} not in [{lo},{hi})");
        }
    }
}

#[test]
fn bucket_error_is_small() {
    for v in (17..2_000_000u64).step_by(997) {
        let (lo, hi) = bucket_range(bucket_of(v));
        let mid = (lo + hi) as f64 / 2.0;
        assert!(
            ((mid - v as f64) / v as f64).abs() < 0.035,
            "{v}: {lo}..{hi}"
        );
    }
}

#[test]
fn quantiles_of_a_known_distribution() {
    let origin = Instant::now();
    let s = ArmStats::with_origin(Duration::from_secs(10), origin);
    for ms in 1..=100u64 {
        s.record_at(origin, StatusClass::Success, Duration::from_millis(ms));
    }
    let snap = s.snapshot_at(origin);
    assert_eq!(snap.requests(), 100);
    let p50 = snap.quantile_ms(0.5).unwrap();
    let p95 = snap.quantile_ms(0.95).unwrap();
    let p99 = snap.quantile_ms(0.99).unwrap();
    assert!((p50 - 50.0).abs() / 50.0 < 0.04, "p50 {p50}");
    assert!((p95 - 95.0).abs() / 95.0 < 0.04, "p95 {p95}");
    assert!((p99 - 99.0).abs() / 99.0 < 0.04, "p99 {p99}");
}

#[test]
fn old_slots_leave_the_window() {
    let origin = Instant::now();
    let s = ArmStats::with_origin(Duration::from_secs(10), origin);
    s.record_at(origin, StatusClass::ServerError, Duration::from_millis(5));
    let later = origin + Duration::from_secs(5);
    s.record_at(later, StatusClass::Success, Duration::from_millis(5));
    assert_eq!(s.snapshot_at(later).requests(), 2);
    let much_later = origin + Duration::from_millis(10_500);
    let snap = s.snapshot_at(much_later);
    assert_eq!(snap.requests(), 1);
    assert_eq!(snap.failures(), 0);
    // After a full turn of the ring (32 slots of 334 ms) slot 0's place is reused.
    let turn = origin + Duration::from_millis(32 * 334);
    s.record_at(turn, StatusClass::Success, Duration::from_millis(1));
    let snap = s.snapshot_at(turn);
    assert_eq!(snap.requests(), 2);
    assert_eq!(snap.failures(), 0);
}

#[test]
fn maintain_prepares_the_next_slot() {
    let origin = Instant::now();
    let s = ArmStats::with_origin(Duration::from_secs(3), origin);
    for i in 0..20u64 {
        let t = origin + Duration::from_millis(i * 100);
        s.maintain_at(t);
        s.record_at(t, StatusClass::Success, Duration::from_micros(10));
    }
    // window of 3 s, 20 samples over 2 s: all in.
    assert_eq!(
        s.snapshot_at(origin + Duration::from_millis(1900))
            .requests(),
        20
    );
}

#[test]
fn completed_slots_are_merged_once() {
    let origin = Instant::now();
    let s = ArmStats::with_origin(Duration::from_secs(30), origin);
    let mut total = WindowSnapshot::empty(s.window());
    let mut last = None;
    for sec in 0..100u64 {
        let at = origin + Duration::from_millis(sec * 1000 + 500);
        s.maintain_at(at);
        s.record_at(at, StatusClass::Success, Duration::from_millis(1));
        s.record_at(at, StatusClass::Success, Duration::from_millis(1));
        // Sample every 3 s, as a controller tick might.
        if sec % 3 == 0 {
            last = s.merge_completed(last, at, &mut total);
        }
    }
    last = s.merge_completed(last, origin + Duration::from_secs(101), &mut total);
    assert_eq!(last, Some(100));
    assert_eq!(total.requests(), 200, "every request exactly once");
}

#[test]
fn consecutive_failures_reset_on_success() {
    let s = ArmStats::new(Duration::from_secs(1));
    s.record(StatusClass::ServerError, Duration::ZERO);
    s.record(StatusClass::NoResponse, Duration::ZERO);
    assert_eq!(s.consecutive_failures(), 2);
    s.record(StatusClass::ClientError, Duration::ZERO);
    assert_eq!(s.consecutive_failures(), 0);
}

#[test]
fn concurrent_records_are_all_counted() {
    let s = std::sync::Arc::new(ArmStats::new(Duration::from_secs(60)));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    s.record(StatusClass::Success, Duration::from_micros(300));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.totals()[1], 40_000);
    assert_eq!(s.snapshot().requests(), 40_000);
}

#[test]
fn the_latest_failed_requests_are_kept_oldest_first() {
    let s = ArmStats::new(Duration::from_secs(10));
    assert!(s.failed_requests().is_empty());
    for i in 0..7u64 {
        s.note_failed(FailedRequest {
            request_id: format!("r{i}"),
            request: "GET /".into(),
            status: Some(500),
            at_ms: i,
        });
    }
    let ids: Vec<String> = s
        .failed_requests()
        .into_iter()
        .map(|f| f.request_id)
        .collect();
    assert_eq!(ids, ["r2", "r3", "r4", "r5", "r6"]);
}

#[test]
fn a_run_of_failures_knows_when_it_began_and_another_arm_its_span() {
    let origin = Instant::now();
    let canary = ArmStats::with_origin(Duration::from_secs(30), origin);
    let stable = ArmStats::with_origin(Duration::from_secs(30), origin);
    let at = |ms: u64| origin + Duration::from_millis(ms);
    for i in 0..20 {
        stable.record_at(at(1_000 + i * 10), StatusClass::Success, Duration::ZERO);
    }
    canary.record_at(at(4_000), StatusClass::Success, Duration::ZERO);
    assert_eq!(canary.run_started(), None);
    canary.record_at(at(5_100), StatusClass::ServerError, Duration::ZERO);
    canary.record_at(at(5_600), StatusClass::NoResponse, Duration::ZERO);
    assert_eq!(canary.run_started(), Some(at(5_100)));
    for i in 0..10 {
        let class = if i < 3 {
            StatusClass::ServerError
        } else {
            StatusClass::Success
        };
        stable.record_at(at(5_000 + i * 10), class, Duration::ZERO);
    }
    // Over the run's span alone: stable's 10 requests of slot 5.
    let since = canary.run_started().unwrap();
    let r = stable.recent(at(5_700), since, 5);
    assert_eq!((r.requests, r.failures, r.span_ms), (10, 3, 1_000));
    // Widened back to hold 25 requests: slots 1 to 5.
    let r = stable.recent(at(5_700), since, 25);
    assert_eq!((r.requests, r.failures), (30, 3));
    assert_eq!(r.span_ms, 5_000);
    canary.record_at(at(5_800), StatusClass::Success, Duration::ZERO);
    assert_eq!(canary.run_started(), None);
}

#[test]
fn routes_are_counted_apart_and_bounded() {
    use crate::routes::Route;
    const MS: Duration = Duration::from_millis(1);
    let origin = Instant::now();
    let s = ArmStats::with_origin(Duration::from_secs(30), origin);
    let at = origin + Duration::from_millis(500);
    for i in 0..100u64 {
        let path = format!("/items/{i}");
        s.record_route_at(at, StatusClass::Success, MS, &Route::of("GET", &path, &[]));
    }
    s.record_route_at(
        at,
        StatusClass::ServerError,
        MS,
        &Route::of("POST", "/checkout", &[]),
    );
    // Far more distinct routes than it keeps: the rest share one place.
    for i in 0..100u64 {
        let path = format!("/r{i}");
        s.record_route_at(at, StatusClass::Success, MS, &Route::of("GET", &path, &[]));
    }
    let routes = s.routes_at(at);
    let find = |name: &str| routes.iter().find(|r| r.route == name).cloned();
    let items = find("GET /items/:id").unwrap();
    assert_eq!((items.requests, items.failures), (100, 0));
    let checkout = find("POST /checkout").unwrap();
    assert_eq!((checkout.requests, checkout.failures), (1, 1));
    assert!(routes.len() <= ROUTES_KEPT + 1, "{}", routes.len());
    let total: u64 = routes.iter().map(|r| r.requests).sum();
    assert_eq!(total, 201);
    assert!(find(OTHER_ROUTE).is_some_and(|o| o.requests > 0));
    // The window moves on: nothing left 40 s later.
    assert!(s.routes_at(origin + Duration::from_secs(40)).is_empty());
}
