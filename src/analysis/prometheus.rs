//! One instant query against Prometheus' HTTP API (`GET /api/v1/query`), read as one number.
//!
//! The answer must be a scalar or a vector of exactly one series: a query that matches
//! several series is ambiguous (aggregate it with `sum`, `max`, ...), one that matches
//! none says nothing. Both are inconclusive, as are errors, timeouts and answers that are
//! not Prometheus' JSON; an answer is read up to [`MAX_ANSWER`] bytes.

use std::time::Duration;

use serde_json::Value;

/// The largest answer read.
pub const MAX_ANSWER: usize = 1 << 20;

/// Why a query gave no number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoValue(pub String);

/// Runs `promql` at `address` (`http://host:9090`, a path prefix allowed) within `timeout`.
pub async fn query(
    client: &reqwest::Client,
    address: &str,
    promql: &str,
    timeout: Duration,
) -> Result<f64, NoValue> {
    let url = format!("{}/api/v1/query", address.trim_end_matches('/'));
    let fail = |m: String| NoValue(m);
    let mut resp = client
        .get(&url)
        .query(&[("query", promql)])
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| fail(format!("{url}: {}", chain(&e))))?;
    let status = resp.status();
    if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err(fail(format!(
            "{url}: the answer is over {MAX_ANSWER} bytes"
        )));
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER {
                    return Err(fail(format!(
                        "{url}: the answer is over {MAX_ANSWER} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(fail(format!("{url}: {}", chain(&e)))),
        }
    }
    read_answer(status.as_u16(), &body).map_err(|m| fail(format!("{url}: {m}")))
}

/// An error and its causes, one line ("error sending request: connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Reads Prometheus' answer (status code and body) as one number.
pub fn read_answer(status: u16, body: &[u8]) -> Result<f64, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| format!("HTTP {status}: not Prometheus' JSON answer"))?;
    if v["status"] != "success" {
        return Err(format!(
            "HTTP {status}: {} ({})",
            v["error"].as_str().unwrap_or("no error text"),
            v["errorType"].as_str().unwrap_or("no error type")
        ));
    }
    let data = &v["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let series = data["result"].as_array().map(Vec::len).unwrap_or(0);
            match series {
                0 => return Err("the query matched no series".into()),
                1 => &data["result"][0]["value"],
                n => {
                    return Err(format!(
                        "the query matched {n} series: aggregate it to one (sum, max, ...)"
                    ))
                }
            }
        }
        other => {
            return Err(format!(
                "a {} result: the query must give a scalar or one series",
                other.unwrap_or("missing")
            ))
        }
    };
    // A sample is [unix time, "value"]; Prometheus writes the value as a string
    // ("NaN", "+Inf" included).
    let text = sample[1]
        .as_str()
        .ok_or_else(|| "a sample without a value".to_string())?;
    let value: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if !value.is_finite() {
        return Err(format!("the value is {text}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_one_number_or_a_reason() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"app"},"value":[1700000000.5,"0.25"]}]}}"#;
        assert_eq!(read_answer(200, vector), Ok(0.25));
        let scalar =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"3"]}}"#;
        assert_eq!(read_answer(200, scalar), Ok(3.0));
        for (body, says) in [
            (&br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#[..], "no series"),
            (br#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#, "2 series"),
            (br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#, "a matrix result"),
            (br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#, "NaN"),
            (br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#, "parse error at char 5 (bad_data)"),
            (b"<html>proxy error</html>", "not Prometheus' JSON"),
            (br#"{"status":"success","data":{"resultType":"scalar","result":[1,"x"]}}"#, "'x' is not a number"),
        ] {
            let e = read_answer(400, body).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
