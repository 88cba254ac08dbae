//! API keys end to end: keys created in Redis the way operators create them
//! (`switchyard_broker::apikeys`), checked by the api, with model permissions applied.

use std::time::Duration;

use serde_json::Value;
use switchyard_broker::apikeys::{ApiKeys, KeySpec};
use switchyard_tests::openai::{Endpoint, chat_request, check_completion};
use switchyard_tests::{Stack, assert_openai_error, eventually};

const CHAT: &str = "/v1/chat/completions";

async fn post_with_key(stack: &Stack, key: Option<&str>, model: &str) -> (u16, Value) {
    let mut request = stack.http().post(stack.api_url(CHAT)).json(&chat_request(model, "with a key"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn key_store(stack: &Stack) -> ApiKeys {
    ApiKeys::new(switchyard_broker::connect_redis(&stack.redis_url()).await.expect("redis"))
}

#[tokio::test]
async fn requests_need_a_valid_key() {
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["echo"]);
    stack.worker_id(&worker).await;
    let keys = key_store(&stack).await;
    let (secret, record) = keys.create(KeySpec { user: "tester".into(), ..Default::default() }).await.unwrap();

    for key in [None, Some("sy-not-a-real-key")] {
        let (status, body) = post_with_key(&stack, key, "echo").await;
        assert_eq!(status, 401, "key {key:?}: {body}");
        assert_eq!(assert_openai_error(&body)["code"], "invalid_api_key", "{body}");
    }

    let (status, body) = post_with_key(&stack, Some(&secret), "echo").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(check_completion(Endpoint::Chat, &body, "echo").0, ["with a key"]);

    // A revoked key stops working.
    let nats = stack.nats_client().await;
    assert!(keys.revoke(&record.id, Some(&nats)).await.unwrap(), "the key existed");
    eventually(Duration::from_secs(15), "the revoked key to be refused", || async {
        (post_with_key(&stack, Some(&secret), "echo").await.0 == 401).then_some(())
    })
    .await;
}

#[tokio::test]
async fn model_permissions_hide_models_from_other_users() {
    let stack = Stack::builder().with_auth().start().await;
    let worker = stack.worker(&["echo", "--permissions", "users: alice"]);
    stack.worker_id(&worker).await;
    let keys = key_store(&stack).await;
    let (alice, _) = keys.create(KeySpec { user: "alice".into(), ..Default::default() }).await.unwrap();
    let (bob, _) = keys.create(KeySpec { user: "bob".into(), ..Default::default() }).await.unwrap();

    let (status, body) = eventually(Duration::from_secs(30), "alice to be served", || async {
        let (status, body) = post_with_key(&stack, Some(&alice), "echo").await;
        (status != 404).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_with_key(&stack, Some(&bob), "echo").await;
    assert_eq!(status, 404, "a model bob may not use does not exist for him: {body}");
    assert_eq!(assert_openai_error(&body)["code"], "model_not_found");
}
