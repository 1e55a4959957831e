//! The `dialogue` fuzz target: upstream messages through captures, rules and the opening gate.

/// The dialogue on upstream messages: captures, rules and the opening gate take whatever the
/// upstream sends without panicking, and a captured value goes into a frame escaped, so a
/// reply built from it stays valid JSON holding exactly what was captured.
pub fn dialogue(messages: &[&[u8]]) {
    use crate::config::{CaptureConfig, Condition, RuleConfig, StepConfig};
    use crate::dialogue::capture::Captures;
    use crate::dialogue::matching::Message;
    use crate::dialogue::{Dialogue, Script};
    let Ok(mut cfg) = crate::config::load_str(
        "[endpoints.f]\nurl = \"ws://127.0.0.1:1/\"\n",
        std::path::Path::new("fuzz.toml"),
        &std::collections::HashMap::new(),
    ) else {
        return;
    };
    let Some(ep) = cfg.endpoints.get_mut("f") else {
        return;
    };
    let equals = |p: &str, v: serde_json::Value| Condition::Equals {
        pointer: p.into(),
        value: v,
    };
    ep.captures = vec![
        CaptureConfig {
            name: "v".into(),
            pointer: "/v".into(),
            matches: vec![],
            default: None,
            persist: false,
        },
        CaptureConfig {
            name: "deep".into(),
            pointer: "/a/0/b".into(),
            matches: vec![equals("/t", serde_json::json!("x"))],
            default: None,
            persist: false,
        },
    ];
    ep.rules = vec![
        RuleConfig {
            matches: vec![Condition::Present {
                pointer: "/v".into(),
            }],
            reply: Some(r#"{"echo":"{{capture.v}}","n":{{counter}}}"#.into()),
            drop: true,
            action: None,
        },
        RuleConfig {
            matches: vec![Condition::Text("ping".into())],
            reply: Some("pong".into()),
            drop: true,
            action: None,
        },
    ];
    ep.on_connect = vec![StepConfig {
        send: Some(r#"{"deep":"{{capture.deep}}"}"#.into()),
        expect: vec![equals("/t", serde_json::json!("ok"))],
        ..StepConfig::frame("")
    }];
    let script = Script::new(ep);
    let mut captures = Captures::default();
    let mut d = Dialogue::new(&script, None);
    let now = std::time::Instant::now();
    let _ = d.start(now, None, &captures);
    for data in messages {
        let doc = serde_json::from_slice::<serde_json::Value>(data).ok();
        let m = Message {
            text: std::str::from_utf8(data).ok(),
            doc: doc.as_ref(),
        };
        let r = d.inbound(m, &mut captures, None, now);
        let Some(v) = doc.as_ref().and_then(|d| d.pointer("/v")) else {
            continue;
        };
        let frame = r.send.iter().find(|f| f.expose().starts_with("{\"echo\""));
        if crate::filter::json_len(v) > crate::dialogue::capture::MAX_VALUE {
            continue;
        }
        let Some(frame) = frame else {
            panic!("no reply for a message with /v: {:?}", r.send.len());
        };
        let reply: serde_json::Value =
            serde_json::from_str(frame.expose()).expect("a reply with a captured value is JSON");
        let want = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(reply["echo"], serde_json::Value::String(want));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dialogue_on_its_seeds() {
        super::dialogue(&[
            br#"{"v":"a\"b\\c\u0001</script>"}"#,
            br#"{"v":{"k":[1,"x"]}}"#,
            br#"{"t":"x","a":[{"b":"q\"uote"}]}"#,
            br#"{"t":"ok"}"#,
            b"ping",
            b"\xff\xfe not utf-8",
            br#"{"v":12.5}"#,
        ]);
    }
}
