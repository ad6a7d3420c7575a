//! Unit tests of the users API's bodies and views.
use super::*;

fn id() -> CloudId {
    CloudId::parse("00ce69").unwrap()
}

fn status(r: Result<User, ApiError>) -> u16 {
    r.unwrap_err().status().as_u16()
}

#[test]
fn body_takes_the_id_from_the_path() {
    let u = user_from_body(id(), br#"{"user_email": "a@b.org", "user_pw": "x"}"#).unwrap();
    assert_eq!(u.cloud_id, id());
    assert!(u.active);
    let u = user_from_body(
        id(),
        br#"{"cloud_id": "00CE69", "user_email": "a@b.org", "user_pw": "x", "active": false}"#,
    )
    .unwrap();
    assert!(!u.active);
}

#[test]
fn malformed_json_is_400_and_bad_fields_are_422() {
    assert_eq!(status(user_from_body(id(), b"{\"user_email\": ")), 400);
    assert_eq!(status(user_from_body(id(), b"")), 400);
    assert_eq!(status(user_from_body(id(), b"[1]")), 422);
    for body in [
        r#"{"user_email": "a@b.org", "user_pw": "x", "actve": false}"#,
        r#"{"user_email": "a@b.org", "user_pw": "x", "total_events_logged": 5}"#,
        r#"{"user_email": "a@b.org", "user_pw": "x", "cloud_id": "00ce6a"}"#,
        r#"{"user_email": "nope", "user_pw": "x"}"#,
        r#"{"user_email": "a@b.org"}"#,
    ] {
        assert_eq!(status(user_from_body(id(), body.as_bytes())), 422, "{body}");
    }
}

#[test]
fn errors_never_quote_the_password() {
    for body in [
        r#"{"user_email": "a@b.org", "user_pw": ["hunter2"]}"#,
        r#"{"user_email": "a@b.org", "user_pw": "hunter2", "local": "hunter2"}"#,
        r#"{"user_email": "a@b.org", "user_pw": "hunter2"#,
    ] {
        let e = user_from_body(id(), body.as_bytes()).unwrap_err();
        assert!(!e.problem().detail.contains("hunter2"), "{e}");
    }
}

#[test]
fn view_never_carries_secrets() {
    let u = user_from_body(
        id(),
        br#"{"user_email": "a@b.org", "user_pw": "hunter2", "local": {"host": "10.0.0.2", "install_code": "s3cret"}}"#,
    )
    .unwrap();
    let text = serde_json::to_string(&UserView::new(&u, None, Scope::Admin)).unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("s3cret"),
        "{text}"
    );
    assert!(text.contains("\"has_password\":true"), "{text}");
}

#[test]
fn read_tokens_see_masked_emails_and_writers_see_them_whole() {
    let u = user_from_body(
        id(),
        br#"{"user_email": "someone@example.org", "user_pw": "x"}"#,
    )
    .unwrap();
    let email = |scope| UserView::new(&u, None, scope).user_email;
    assert_eq!(email(Scope::Read), "s*****e@example.org");
    assert_eq!(email(Scope::Write), "someone@example.org");
    assert_eq!(email(Scope::Admin), "someone@example.org");
    assert_eq!(mask_email("ab@x.org"), "a*****@x.org");
    assert_eq!(mask_email("no-at-sign"), "n*****n");
    assert_eq!(mask_email("@x.org"), "*****@x.org");
}

#[test]
fn cadences_round_trip_and_bad_ones_are_refused_by_name() {
    let u = user_from_body(
        id(),
        br#"{"user_email": "a@b.org", "user_pw": "x", "summation_interval": 30, "price_interval": 0}"#,
    )
    .unwrap();
    assert_eq!(u.cadence.summation_s, Some(30));
    assert_eq!(u.cadence.price_s, Some(0));
    let view = serde_json::to_value(UserView::new(&u, None, Scope::Admin)).unwrap();
    assert_eq!(view["summation_interval"], 30);
    assert_eq!(view["price_interval"], 0);
    for (body, field) in [
        (
            &br#"{"user_email": "a@b.org", "user_pw": "x", "summation_interval": -1}"#[..],
            "summation_interval",
        ),
        (
            br#"{"user_email": "a@b.org", "user_pw": "x", "price_interval": "15m"}"#,
            "price_interval",
        ),
        (
            br#"{"user_email": "a@b.org", "user_pw": "x", "price_interval": 100000}"#,
            "price_interval",
        ),
    ] {
        let Err(ApiError::Invalid(e)) = user_from_body(id(), body) else {
            panic!("accepted {}", String::from_utf8_lossy(body));
        };
        assert_eq!(e.field, field);
    }
}

#[test]
fn documented_body_fields_are_the_accepted_ones() {
    let schema = serde_json::to_value(<UserBody as utoipa::PartialSchema>::schema()).unwrap();
    let mut props: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    props.sort();
    assert_eq!(
        props,
        [
            "active",
            "cloud_id",
            "local",
            "price_interval",
            "summation_interval",
            "user_email",
            "user_pw"
        ]
    );
    assert_eq!(schema["additionalProperties"], false);
}
