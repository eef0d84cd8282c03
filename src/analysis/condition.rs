//! `failure_condition`: when an analysis' measurement is a failure. A small language, read
//! once at validation and evaluated on every measurement:
//!
//! - values: `result` (the query with `{arm}` = canary; `result[0]` is the same), `canary`
//!   (the same), `stable` (the query with `{arm}` = stable, run only when a condition names
//!   it), numbers (`0.01`, `5`, `1e-3`);
//! - arithmetic `+ - * /` and parentheses, comparisons `< <= > >= == !=`, joined with `&&`
//!   (`and`) and `||` (`or`), `&&` binding tighter.
//!
//! `result > 0.01`, `canary > stable * 1.2 && canary - stable > 0.005`. A value that is not a
//! finite number (a division by zero, a NaN from the query) makes the measurement
//! inconclusive, never a pass or a failure.

use std::fmt;

/// Longest condition accepted.
pub const MAX_CONDITION_LEN: usize = 256;
/// Deepest nesting of parentheses accepted.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Var {
    Canary,
    Stable,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Num(f64),
    Var(Var),
    Neg(Box<Expr>),
    Bin(Box<Expr>, char, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Cmp(Expr, Cmp, Expr),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
}

/// A parsed `failure_condition`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    text: String,
    cond: Cond,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(&'static str),
    Open,
    Close,
}

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                i += 1;
                if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                    i += 1;
                }
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let s = &text[start..i];
            let n: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
            out.push(Tok::Num(n));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &text[start..i];
            // `result[0]`: the first (only) sample, as Argo Rollouts writes it.
            if text[i..].starts_with("[0]") {
                i += 3;
            }
            out.push(match word {
                "and" => Tok::Op("&&"),
                "or" => Tok::Op("||"),
                _ => Tok::Ident(word.to_string()),
            });
            continue;
        }
        let two = text.get(i..i + 2).unwrap_or("");
        let op = ["<=", ">=", "==", "!=", "&&", "||"]
            .into_iter()
            .find(|o| *o == two);
        if let Some(o) = op {
            out.push(Tok::Op(o));
            i += 2;
            continue;
        }
        let one = match c {
            b'<' => Tok::Op("<"),
            b'>' => Tok::Op(">"),
            b'+' => Tok::Op("+"),
            b'-' => Tok::Op("-"),
            b'*' => Tok::Op("*"),
            b'/' => Tok::Op("/"),
            b'(' => Tok::Open,
            b')' => Tok::Close,
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected '{ch}' at character {}", i + 1));
            }
        };
        out.push(one);
        i += 1;
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn eat_op(&mut self, ops: &[&str]) -> Option<&'static str> {
        match self.peek() {
            Some(Tok::Op(o)) if ops.contains(o) => {
                let o = *o;
                self.at += 1;
                Some(o)
            }
            _ => None,
        }
    }

    fn or(&mut self) -> Result<Cond, String> {
        let mut left = self.and()?;
        while self.eat_op(&["||"]).is_some() {
            left = Cond::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Cond, String> {
        let mut left = self.cmp()?;
        while self.eat_op(&["&&"]).is_some() {
            left = Cond::And(Box::new(left), Box::new(self.cmp()?));
        }
        Ok(left)
    }

    fn cmp(&mut self) -> Result<Cond, String> {
        let left = self.sum()?;
        let op = match self.eat_op(&["<", "<=", ">", ">=", "==", "!="]) {
            Some("<") => Cmp::Lt,
            Some("<=") => Cmp::Le,
            Some(">") => Cmp::Gt,
            Some(">=") => Cmp::Ge,
            Some("==") => Cmp::Eq,
            Some(_) => Cmp::Ne,
            None => {
                return Err(
                    "expected a comparison (<, <=, >, >=, ==, !=), as in 'result > 0.01'".into(),
                )
            }
        };
        Ok(Cond::Cmp(left, op, self.sum()?))
    }

    fn sum(&mut self) -> Result<Expr, String> {
        let mut left = self.product()?;
        while let Some(o) = self.eat_op(&["+", "-"]) {
            let op = if o == "+" { '+' } else { '-' };
            left = Expr::Bin(Box::new(left), op, Box::new(self.product()?));
        }
        Ok(left)
    }

    fn product(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while let Some(o) = self.eat_op(&["*", "/"]) {
            let op = if o == "*" { '*' } else { '/' };
            left = Expr::Bin(Box::new(left), op, Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat_op(&["-"]).is_some() {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        match self.toks.get(self.at).cloned() {
            Some(Tok::Num(n)) => {
                self.at += 1;
                Ok(Expr::Num(n))
            }
            Some(Tok::Ident(name)) => {
                self.at += 1;
                match name.as_str() {
                    "result" | "canary" => Ok(Expr::Var(Var::Canary)),
                    "stable" => Ok(Expr::Var(Var::Stable)),
                    other => Err(format!(
                        "'{other}' is not a value: use result (or canary), stable or a number"
                    )),
                }
            }
            Some(Tok::Open) => {
                self.at += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(format!("parentheses nested deeper than {MAX_DEPTH}"));
                }
                let e = self.sum()?;
                self.depth -= 1;
                match self.peek() {
                    Some(Tok::Close) => {
                        self.at += 1;
                        Ok(e)
                    }
                    _ => Err("a '(' is not closed".into()),
                }
            }
            Some(t) => Err(format!("unexpected {}", describe(&t))),
            None => Err("ends too early".into()),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(n) => format!("number {n}"),
        Tok::Ident(s) => format!("'{s}'"),
        Tok::Op(o) => format!("'{o}'"),
        Tok::Open => "'('".into(),
        Tok::Close => "')'".into(),
    }
}

impl Condition {
    /// Reads a condition; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("is empty".into());
        }
        if text.len() > MAX_CONDITION_LEN {
            return Err(format!("longer than {MAX_CONDITION_LEN} characters"));
        }
        let mut p = Parser {
            toks: lex(text)?,
            at: 0,
            depth: 0,
        };
        let cond = p.or()?;
        if let Some(t) = p.peek() {
            return Err(format!("unexpected {} after the condition", describe(t)));
        }
        Ok(Condition {
            text: text.to_string(),
            cond,
        })
    }

    /// Whether it reads stable's value (the query is then run for both arms).
    pub fn needs_stable(&self) -> bool {
        fn expr(e: &Expr) -> bool {
            match e {
                Expr::Num(_) => false,
                Expr::Var(v) => *v == Var::Stable,
                Expr::Neg(x) => expr(x),
                Expr::Bin(a, _, b) => expr(a) || expr(b),
            }
        }
        fn cond(c: &Cond) -> bool {
            match c {
                Cond::Cmp(a, _, b) => expr(a) || expr(b),
                Cond::And(a, b) | Cond::Or(a, b) => cond(a) || cond(b),
            }
        }
        cond(&self.cond)
    }

    /// Whether the measurement fails; `None` when a value it needs is missing or not a
    /// finite number (inconclusive).
    pub fn holds(&self, canary: f64, stable: Option<f64>) -> Option<bool> {
        fn value(e: &Expr, canary: f64, stable: Option<f64>) -> Option<f64> {
            let v = match e {
                Expr::Num(n) => *n,
                Expr::Var(Var::Canary) => canary,
                Expr::Var(Var::Stable) => stable?,
                Expr::Neg(x) => -value(x, canary, stable)?,
                Expr::Bin(a, op, b) => {
                    let (a, b) = (value(a, canary, stable)?, value(b, canary, stable)?);
                    match op {
                        '+' => a + b,
                        '-' => a - b,
                        '*' => a * b,
                        _ => a / b,
                    }
                }
            };
            v.is_finite().then_some(v)
        }
        fn cond(c: &Cond, canary: f64, stable: Option<f64>) -> Option<bool> {
            Some(match c {
                Cond::Cmp(a, op, b) => {
                    let (a, b) = (value(a, canary, stable)?, value(b, canary, stable)?);
                    match op {
                        Cmp::Lt => a < b,
                        Cmp::Le => a <= b,
                        Cmp::Gt => a > b,
                        Cmp::Ge => a >= b,
                        Cmp::Eq => a == b,
                        Cmp::Ne => a != b,
                    }
                }
                Cond::And(a, b) => cond(a, canary, stable)? && cond(b, canary, stable)?,
                Cond::Or(a, b) => cond(a, canary, stable)? || cond(b, canary, stable)?,
            })
        }
        cond(&self.cond, canary, stable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(text: &str, canary: f64, stable: Option<f64>) -> Option<bool> {
        Condition::parse(text).unwrap().holds(canary, stable)
    }

    #[test]
    fn conditions_compare_the_canary_with_numbers_and_with_stable() {
        assert_eq!(holds("result > 0.01", 0.02, None), Some(true));
        assert_eq!(holds("result[0] > 0.01", 0.005, None), Some(false));
        assert_eq!(holds("canary > stable * 1.2", 1.3, Some(1.0)), Some(true));
        assert_eq!(holds("canary > stable * 1.2", 1.1, Some(1.0)), Some(false));
        let both = "canary > stable * 1.2 && canary - stable > 0.005";
        assert_eq!(holds(both, 0.012, Some(0.009)), Some(false));
        assert_eq!(holds(both, 0.02, Some(0.009)), Some(true));
        assert_eq!(
            holds("result < 1 or result >= 100", 150.0, None),
            Some(true)
        );
        assert_eq!(holds("-result == -2", 2.0, None), Some(true));
        assert_eq!(holds("(result + 1) * 2 != 6", 2.0, None), Some(false));
        assert_eq!(holds("result >= 1e-3", 0.002, None), Some(true));
        // && binds tighter than ||.
        assert_eq!(
            holds("result > 5 || result > 1 && result < 2", 7.0, None),
            Some(true)
        );
        assert!(Condition::parse("canary > stable").unwrap().needs_stable());
        assert!(!Condition::parse("result > 1").unwrap().needs_stable());
    }

    #[test]
    fn what_cannot_be_computed_is_inconclusive() {
        assert_eq!(holds("result / stable > 2", 1.0, Some(0.0)), None);
        assert_eq!(holds("result > 1", f64::NAN, None), None);
        assert_eq!(holds("canary > stable", 1.0, None), None);
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        for (text, says) in [
            ("", "empty"),
            ("result", "expected a comparison"),
            ("result > ", "ends too early"),
            ("errors > 1", "'errors' is not a value"),
            ("result > 1 )", "unexpected ')'"),
            ("(result > 1", "not closed"),
            ("result >> 1", "unexpected '>'"),
            ("result > 1 ; drop", "unexpected ';'"),
            ("result > 1.2.3", "not a number"),
        ] {
            let e = Condition::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let deep = format!("{}result{} > 1", "(".repeat(40), ")".repeat(40));
        assert!(Condition::parse(&deep).unwrap_err().contains("nested"));
        assert!(Condition::parse(&"1 + ".repeat(100)).is_err());
    }
}
