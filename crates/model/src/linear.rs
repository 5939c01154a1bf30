//! Linear models: logistic regression (linfa-logistic) and linear
//! regression (linfa-linear), fitted by linfa and stored as plain
//! coefficients so that serving is a dot product with no allocation.

use linfa::dataset::DatasetBase;
use linfa::traits::Fit;
use linfa_logistic::{LogisticRegression, MultiLogisticRegression};
use ndarray::{Array1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::error::FitError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Link {
    /// Two classes: `p(positive) = sigmoid(w·x + b)`.
    Binary { positive: u32, negative: u32 },
    /// Softmax over `classes.len()` rows of weights; row `k` is class
    /// `classes[k]` (classes absent from training get probability 0).
    Softmax { classes: Vec<u32> },
    /// Regression: the value itself.
    Identity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearModel {
    pub link: Link,
    /// Row-major, one row of `width` per output row.
    pub weights: Vec<f64>,
    pub intercepts: Vec<f64>,
    pub width: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogisticParams {
    /// L2 penalty (linfa's `alpha`; scikit-learn's `1/C`).
    pub alpha: f64,
    pub max_iterations: u64,
}

impl Default for LogisticParams {
    fn default() -> Self {
        LogisticParams {
            alpha: 1.0,
            max_iterations: 200,
        }
    }
}

fn converged_or_data(e: linfa_logistic::error::Error) -> FitError {
    FitError::Linfa(format!("logistic regression: {e}"))
}

/// Fits binary (2 classes seen) or multinomial logistic regression.
pub fn fit_logistic(
    x: ArrayView2<f64>,
    y: &[usize],
    n_classes: usize,
    params: &LogisticParams,
) -> Result<LinearModel, FitError> {
    let mut seen: Vec<usize> = y.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() < 2 {
        return Err(FitError::Data(
            "logistic regression needs at least two classes in the training split".into(),
        ));
    }
    if seen.iter().any(|c| *c >= n_classes) {
        return Err(FitError::Data("label index out of range".into()));
    }
    let width = x.ncols();
    let ds = DatasetBase::new(x.to_owned(), Array1::from(y.to_vec()));
    if seen.len() == 2 {
        let fitted = LogisticRegression::default()
            .alpha(params.alpha)
            .max_iterations(params.max_iterations)
            .fit(&ds)
            .map_err(converged_or_data)?;
        // linfa's probability is that of `labels().pos`, the class that was
        // more frequent in training, not of class 1: map it explicitly.
        let labels = fitted.labels();
        Ok(LinearModel {
            link: Link::Binary {
                positive: labels.pos.class as u32,
                negative: labels.neg.class as u32,
            },
            weights: fitted.params().to_vec(),
            intercepts: vec![fitted.intercept()],
            width,
        })
    } else {
        let fitted = MultiLogisticRegression::default()
            .alpha(params.alpha)
            .max_iterations(params.max_iterations)
            .fit(&ds)
            .map_err(converged_or_data)?;
        // params: width × k (column per class); store row-major per class.
        let p = fitted.params();
        let k = p.ncols();
        let mut weights = Vec::with_capacity(width * k);
        for c in 0..k {
            weights.extend(p.column(c).iter().copied());
        }
        Ok(LinearModel {
            link: Link::Softmax {
                classes: fitted.classes().iter().map(|c| *c as u32).collect(),
            },
            weights,
            intercepts: fitted.intercept().to_vec(),
            width,
        })
    }
}

/// Ordinary least squares (linfa-linear).
pub fn fit_linear(x: ArrayView2<f64>, y: &[f64]) -> Result<LinearModel, FitError> {
    use linfa_linear::LinearRegression;
    let ds = DatasetBase::new(x.to_owned(), Array1::from(y.to_vec()));
    let fitted = LinearRegression::new()
        .fit(&ds)
        .map_err(|e| FitError::Linfa(format!("linear regression: {e}")))?;
    Ok(LinearModel {
        link: Link::Identity,
        weights: fitted.params().to_vec(),
        intercepts: vec![fitted.intercept()],
        width: x.ncols(),
    })
}

impl LinearModel {
    /// Class probabilities (or the regression value in `out[0]`).
    #[inline]
    pub fn predict_into(&self, x: &[f64], out: &mut [f64]) {
        let dot = |row: usize| -> f64 {
            let w = &self.weights[row * self.width..(row + 1) * self.width];
            w.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + self.intercepts[row]
        };
        match &self.link {
            Link::Identity => out[0] = dot(0),
            Link::Binary { positive, negative } => {
                out.fill(0.0);
                let p = 1.0 / (1.0 + (-dot(0)).exp());
                out[*positive as usize] = p;
                out[*negative as usize] = 1.0 - p;
            }
            Link::Softmax { classes } => {
                out.fill(0.0);
                let mut max = f64::NEG_INFINITY;
                for k in 0..classes.len() {
                    let z = dot(k);
                    out[classes[k] as usize] = z;
                    max = max.max(z);
                }
                let mut sum = 0.0;
                for &c in classes {
                    let e = (out[c as usize] - max).exp();
                    out[c as usize] = e;
                    sum += e;
                }
                for &c in classes {
                    out[c as usize] /= sum;
                }
            }
        }
    }

    pub(crate) fn validate(&self, width: usize, n_outputs: usize) -> Result<(), String> {
        let rows = match &self.link {
            Link::Identity => 1,
            Link::Binary { positive, negative } => {
                if *positive as usize >= n_outputs || *negative as usize >= n_outputs {
                    return Err("logistic class out of range".into());
                }
                1
            }
            Link::Softmax { classes } => {
                if classes.iter().any(|c| *c as usize >= n_outputs) {
                    return Err("softmax class out of range".into());
                }
                classes.len()
            }
        };
        if self.width != width
            || self.weights.len() != rows * width
            || self.intercepts.len() != rows
        {
            return Err("linear model weights do not match the pipeline width".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn binary_probabilities_belong_to_the_right_label_even_when_class_1_is_the_minority() {
        // Class 1 is rare and lives at large x; linfa's "positive" is class 0.
        let xs: Vec<f64> = (0..100).map(|i| i as f64 / 10.0).collect();
        let y: Vec<usize> = xs.iter().map(|v| usize::from(*v > 8.0)).collect();
        let x = Array2::from_shape_vec((100, 1), xs).unwrap();
        let m = fit_logistic(
            x.view(),
            &y,
            2,
            &LogisticParams {
                alpha: 0.01,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            m.link,
            Link::Binary {
                positive: 0,
                negative: 1
            }
        );
        let mut out = [0.0; 2];
        m.predict_into(&[9.9], &mut out);
        assert!(out[1] > 0.8, "{out:?}");
        m.predict_into(&[0.0], &mut out);
        assert!(out[0] > 0.9, "{out:?}");
        assert!((out[0] + out[1] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn multinomial_sums_to_one_and_separates() {
        let xs: Vec<f64> = (0..90)
            .map(|i| (i / 30) as f64 * 5.0 + (i % 5) as f64 * 0.1)
            .collect();
        let y: Vec<usize> = (0..90).map(|i| i / 30).collect();
        let x = Array2::from_shape_vec((90, 1), xs).unwrap();
        let m = fit_logistic(
            x.view(),
            &y,
            3,
            &LogisticParams {
                alpha: 0.001,
                ..Default::default()
            },
        )
        .unwrap();
        let mut out = [0.0; 3];
        m.predict_into(&[10.1], &mut out);
        assert!((out.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(crate::tree::argmax(&out), 2, "{out:?}");
    }

    #[test]
    fn linear_regression_recovers_coefficients() {
        let x = Array2::from_shape_fn((50, 2), |(i, j)| (i * (j + 1)) as f64 + (i % 3) as f64);
        let y: Vec<f64> = x
            .rows()
            .into_iter()
            .map(|r| 3.0 * r[0] - 2.0 * r[1] + 7.0)
            .collect();
        let m = fit_linear(x.view(), &y).unwrap();
        let mut out = [0.0];
        m.predict_into(&[1.0, 1.0], &mut out);
        assert!((out[0] - 8.0).abs() < 1e-6, "{out:?}");
    }
}
