//! Two-dimensional test functions for watching optimizers move.

/// A 2-D test function with a known minimum value of 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestFunction {
    /// (1 - x)^2 + 100 (y - x^2)^2: a curved, flat-bottomed valley; minimum (1, 1).
    Rosenbrock,
    /// (x^2 + y - 11)^2 + (x + y^2 - 7)^2: four minima.
    Himmelblau,
    /// x^2 / 20 + y^2: an elongated bowl (condition number 20); minimum (0, 0).
    Bowl,
}

impl TestFunction {
    /// All of them.
    pub const ALL: [TestFunction; 3] = [Self::Rosenbrock, Self::Himmelblau, Self::Bowl];

    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Rosenbrock => "rosenbrock",
            Self::Himmelblau => "himmelblau",
            Self::Bowl => "bowl",
        }
    }

    /// f(x, y).
    pub fn value(&self, x: f64, y: f64) -> f64 {
        match self {
            Self::Rosenbrock => (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2),
            Self::Himmelblau => (x * x + y - 11.0).powi(2) + (x + y * y - 7.0).powi(2),
            Self::Bowl => x * x / 20.0 + y * y,
        }
    }

    /// (df/dx, df/dy).
    pub fn gradient(&self, x: f64, y: f64) -> (f64, f64) {
        match self {
            Self::Rosenbrock => {
                let t = y - x * x;
                (-2.0 * (1.0 - x) - 400.0 * x * t, 200.0 * t)
            }
            Self::Himmelblau => {
                let a = x * x + y - 11.0;
                let b = x + y * y - 7.0;
                (4.0 * x * a + 2.0 * b, 2.0 * a + 4.0 * y * b)
            }
            Self::Bowl => (x / 10.0, 2.0 * y),
        }
    }

    /// The usual starting point.
    pub fn start(&self) -> (f64, f64) {
        match self {
            Self::Rosenbrock => (-1.5, 1.5),
            Self::Himmelblau => (0.0, 0.0),
            Self::Bowl => (-7.0, 2.0),
        }
    }

    /// The global minima (all with f = 0).
    pub fn minima(&self) -> Vec<(f64, f64)> {
        match self {
            Self::Rosenbrock => vec![(1.0, 1.0)],
            Self::Himmelblau => vec![
                (3.0, 2.0),
                (-2.805_118, 3.131_312),
                (-3.779_310, -3.283_186),
                (3.584_428, -1.848_126),
            ],
            Self::Bowl => vec![(0.0, 0.0)],
        }
    }

    /// ((x_min, x_max), (y_min, y_max)) for a plot.
    pub fn plot_range(&self) -> ((f64, f64), (f64, f64)) {
        match self {
            Self::Rosenbrock => ((-2.0, 2.0), (-1.0, 3.0)),
            Self::Himmelblau => ((-5.0, 5.0), (-5.0, 5.0)),
            Self::Bowl => ((-8.0, 8.0), (-3.0, 3.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_match_finite_differences_and_minima_are_zero() {
        for f in TestFunction::ALL {
            for &(x, y) in &[(0.3, -0.7), (-1.2, 1.9), (2.5, 0.4)] {
                let h = 1e-6;
                let dx = (f.value(x + h, y) - f.value(x - h, y)) / (2.0 * h);
                let dy = (f.value(x, y + h) - f.value(x, y - h)) / (2.0 * h);
                let (gx, gy) = f.gradient(x, y);
                assert!((gx - dx).abs() <= 1e-5 * dx.abs().max(1.0), "{f:?} dx");
                assert!((gy - dy).abs() <= 1e-5 * dy.abs().max(1.0), "{f:?} dy");
            }
            for (x, y) in f.minima() {
                assert!(f.value(x, y) < 1e-9, "{f:?} at ({x}, {y})");
            }
        }
    }
}
