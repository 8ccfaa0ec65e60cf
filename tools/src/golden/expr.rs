//! A small f64 expression evaluator for the `gradient` statements of golden path cases
//! (`t = y - x*x`, `df/dx = -2.0*(1.0 - x) - 400.0*x*t`, ...), evaluated left to right in
//! f64 exactly as Python does.

use std::collections::HashMap;

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A literal.
    Num(f64),
    /// A variable.
    Var(String),
    /// Unary minus.
    Neg(Box<Expr>),
    /// A binary operator: one of `+ - * / ^`.
    Bin(char, Box<Expr>, Box<Expr>),
    /// A function call.
    Call(String, Vec<Expr>),
}

impl Expr {
    /// Parse one expression.
    pub fn parse(text: &str) -> Result<Expr, String> {
        let tokens = tokenize(text)?;
        let mut p = Parser { tokens, pos: 0 };
        let e = p.expr()?;
        if p.pos != p.tokens.len() {
            return Err(format!("unexpected `{:?}` in `{text}`", p.tokens[p.pos]));
        }
        Ok(e)
    }

    /// Evaluate with the given variables.
    pub fn eval(&self, vars: &HashMap<String, f64>) -> Result<f64, String> {
        Ok(match self {
            Expr::Num(v) => *v,
            Expr::Var(name) => match vars.get(name) {
                Some(v) => *v,
                None => match name.as_str() {
                    "pi" => std::f64::consts::PI,
                    "e" => std::f64::consts::E,
                    _ => return Err(format!("unknown variable `{name}`")),
                },
            },
            Expr::Neg(a) => -a.eval(vars)?,
            Expr::Bin(op, a, b) => {
                let (a, b) = (a.eval(vars)?, b.eval(vars)?);
                match op {
                    '+' => a + b,
                    '-' => a - b,
                    '*' => a * b,
                    '/' => a / b,
                    _ => a.powf(b),
                }
            }
            Expr::Call(f, args) => {
                let v: Vec<f64> = args
                    .iter()
                    .map(|a| a.eval(vars))
                    .collect::<Result<_, _>>()?;
                call(f, &v)?
            }
        })
    }
}

fn call(f: &str, v: &[f64]) -> Result<f64, String> {
    let unary: Option<fn(f64) -> f64> = match f {
        "sqrt" => Some(f64::sqrt),
        "exp" => Some(f64::exp),
        "log" | "ln" => Some(f64::ln),
        "sin" => Some(f64::sin),
        "cos" => Some(f64::cos),
        "tan" => Some(f64::tan),
        "tanh" => Some(f64::tanh),
        "atan" => Some(f64::atan),
        "abs" | "fabs" => Some(f64::abs),
        _ => None,
    };
    match (unary, v) {
        (Some(op), [x]) => Ok(op(*x)),
        (None, [a, b]) => match f {
            "pow" => Ok(a.powf(*b)),
            "atan2" => Ok(a.atan2(*b)),
            "max" => Ok(a.max(*b)),
            "min" => Ok(a.min(*b)),
            _ => Err(format!("unknown function `{f}` with 2 arguments")),
        },
        _ => Err(format!("unknown function `{f}` with {} arguments", v.len())),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(char),
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next_is_digit = chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == '.' && next_is_digit) {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    i = j;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let s: String = chars[start..i].iter().collect();
            out.push(Tok::Num(
                s.parse().map_err(|_| format!("bad number `{s}`"))?,
            ));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            // `math.sqrt`, `np.exp` -> `sqrt`, `exp`
            let s = s.rsplit('.').next().unwrap_or(&s).to_string();
            out.push(Tok::Ident(s));
        } else if c == '*' && chars.get(i + 1) == Some(&'*') {
            out.push(Tok::Op('^'));
            i += 2;
        } else if "+-*/^(),".contains(c) {
            out.push(Tok::Op(c));
            i += 1;
        } else {
            return Err(format!("unexpected character `{c}` in `{text}`"));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_op(&self) -> Option<char> {
        match self.tokens.get(self.pos) {
            Some(Tok::Op(c)) => Some(*c),
            _ => None,
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.peek_op() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected `{c}`"))
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut left = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek_op() {
            self.pos += 1;
            left = Expr::Bin(op, Box::new(left), Box::new(self.term()?));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while let Some(op @ ('*' | '/')) = self.peek_op() {
            self.pos += 1;
            left = Expr::Bin(op, Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    // As in Python: -x**2 == -(x**2), and ** binds to the right.
    fn unary(&mut self) -> Result<Expr, String> {
        match self.peek_op() {
            Some('-') => {
                self.pos += 1;
                Ok(Expr::Neg(Box::new(self.unary()?)))
            }
            Some('+') => {
                self.pos += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Result<Expr, String> {
        let base = self.primary()?;
        if self.peek_op() == Some('^') {
            self.pos += 1;
            let exponent = self.unary()?;
            return Ok(Expr::Bin('^', Box::new(base), Box::new(exponent)));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<Expr, String> {
        match self.tokens.get(self.pos).cloned() {
            Some(Tok::Num(v)) => {
                self.pos += 1;
                Ok(Expr::Num(v))
            }
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                if self.peek_op() != Some('(') {
                    return Ok(Expr::Var(name));
                }
                self.pos += 1;
                let mut args = Vec::new();
                if self.peek_op() != Some(')') {
                    args.push(self.expr()?);
                    while self.peek_op() == Some(',') {
                        self.pos += 1;
                        args.push(self.expr()?);
                    }
                }
                self.expect(')')?;
                Ok(Expr::Call(name, args))
            }
            Some(Tok::Op('(')) => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect(')')?;
                Ok(e)
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

/// The gradient program of a path case: statements `name = expr` evaluated in order.
#[derive(Clone, Debug)]
pub struct GradientProgram {
    statements: Vec<(String, Expr)>,
}

impl GradientProgram {
    /// Parse the statement list; it must assign `df/dx` and `df/dy`.
    pub fn parse(lines: &[String]) -> Result<Self, String> {
        let mut statements = Vec::new();
        for line in lines {
            let (lhs, rhs) = line
                .split_once('=')
                .ok_or_else(|| format!("statement without `=`: `{line}`"))?;
            statements.push((lhs.trim().to_string(), Expr::parse(rhs)?));
        }
        for needed in ["df/dx", "df/dy"] {
            if !statements.iter().any(|(n, _)| n == needed) {
                return Err(format!("the gradient never assigns `{needed}`"));
            }
        }
        Ok(Self { statements })
    }

    /// (df/dx, df/dy) at (x, y), in f64.
    pub fn eval(&self, x: f64, y: f64) -> Result<(f64, f64), String> {
        let mut vars = HashMap::new();
        vars.insert("x".to_string(), x);
        vars.insert("y".to_string(), y);
        for (name, e) in &self.statements {
            let v = e.eval(&vars)?;
            vars.insert(name.clone(), v);
        }
        Ok((vars["df/dx"], vars["df/dy"]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rosenbrock_gradient_matches_hand_code() {
        let prog = GradientProgram::parse(&[
            "t = y - x*x".into(),
            "df/dx = -2.0*(1.0 - x) - 400.0*x*t".into(),
            "df/dy = 200.0*t".into(),
        ])
        .unwrap();
        let (x, y) = (-1.5f64, 1.5f64);
        let t = y - x * x;
        assert_eq!(
            prog.eval(x, y).unwrap(),
            (-2.0 * (1.0 - x) - 400.0 * x * t, 200.0 * t)
        );
    }

    #[test]
    fn precedence_and_functions() {
        let v = HashMap::from([("x".to_string(), 3.0)]);
        let e = |s: &str| Expr::parse(s).unwrap().eval(&v).unwrap();
        assert_eq!(e("-x**2"), -9.0);
        assert_eq!(e("2^3^2"), 512.0);
        assert_eq!(e("1e-3*x + 2.5E2"), 250.003);
        assert_eq!(e("sqrt(x*x + 16) / pow(2, 2)"), 1.25);
        assert_eq!(e("math.exp(0) - (x - 1)/2"), 0.0);
        assert!(Expr::parse("x +").is_err());
        assert!(Expr::parse("foo(1)").unwrap().eval(&v).is_err());
    }
}
