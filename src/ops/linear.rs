//! Grouped linear layer: y[b, g*O + o] = bias[g*O + o] + sum_i w[g*O + o, i] * x[b, g*I + i].
//! Groups = 1 is the standard network's classifier; groups = N gives every expert its own
//! 2-way head over its own features (PyTorch: a 1x1 Conv2d with groups = N, weight [N*O, I]).

use anyhow::{Result, ensure};

use crate::autograd::{Tape, Var};
use crate::tensor::Tensor;

impl Tape {
    /// `x`: [B, G*I]; `w`: [G*O, I]; `bias`: [G*O].
    pub fn grouped_linear(&self, x: &Var, w: &Var, bias: &Var, groups: usize) -> Result<Var> {
        let (xs, ws) = (x.shape(), w.shape());
        ensure!(xs.len() == 2 && ws.len() == 2, "grouped linear needs [B, F] input and [O, I] weight");
        let (b, i_n) = (xs[0], ws[1]);
        let o_n = ws[0] / groups;
        ensure!(
            xs[1] == groups * i_n && ws[0] == groups * o_n && bias.value().len() == ws[0],
            "grouped linear: input {xs:?}, weight {ws:?}, bias {:?}, groups {groups} do not fit",
            bias.shape()
        );
        let (xv, wv, bv) = (x.value().as_slice(), w.value().as_slice(), bias.value().as_slice());
        let out_n = groups * o_n;
        let mut y = vec![0.0f32; b * out_n];
        for n in 0..b {
            for g in 0..groups {
                let xr = &xv[n * xs[1] + g * i_n..][..i_n];
                for o in 0..o_n {
                    let row = g * o_n + o;
                    let wr = &wv[row * i_n..(row + 1) * i_n];
                    y[n * out_n + row] = bv[row] + xr.iter().zip(wr).map(|(a, c)| a * c).sum::<f32>();
                }
            }
        }
        let y = Tensor::from_vec(&[b, out_n], y);
        if !self.needs_grad(&[x, w, bias]) {
            return Ok(Var::constant(y));
        }
        let (x_saved, w_saved) = (x.value().clone(), w.value().clone());
        let in_n = xs[1];
        Ok(self.record(
            y,
            &[x, w, bias],
            Box::new(move |dy, needs| {
                let (dyv, xv, wv) = (dy.as_slice(), x_saved.as_slice(), w_saved.as_slice());
                let mut dx = vec![0.0f32; b * in_n];
                let mut dw = vec![0.0f32; out_n * i_n];
                let mut db = vec![0.0f32; out_n];
                for n in 0..b {
                    for row in 0..out_n {
                        let g = row / o_n;
                        let d = dyv[n * out_n + row];
                        db[row] += d;
                        let xr = &xv[n * in_n + g * i_n..][..i_n];
                        let dxr = &mut dx[n * in_n + g * i_n..][..i_n];
                        let wr = &wv[row * i_n..(row + 1) * i_n];
                        let dwr = &mut dw[row * i_n..(row + 1) * i_n];
                        for k in 0..i_n {
                            dxr[k] += d * wr[k];
                            dwr[k] += d * xr[k];
                        }
                    }
                }
                Ok(vec![
                    needs[0].then(|| Tensor::from_vec(&[b, in_n], dx)),
                    needs[1].then(|| Tensor::from_vec(&[out_n, i_n], dw)),
                    needs[2].then(|| Tensor::from_vec(&[out_n], db)),
                ])
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::gradcheck::{check_gradients, random_tensor};

    #[test]
    fn gradients_dense_and_grouped() {
        for (groups, i_n, o_n) in [(1, 7, 5), (4, 3, 2)] {
            let x = random_tensor(&[5, groups * i_n], 1);
            let w = random_tensor(&[groups * o_n, i_n], 2);
            let b = random_tensor(&[groups * o_n], 3);
            check_gradients(&[x, w, b], |t, v| t.grouped_linear(&v[0], &v[1], &v[2], groups));
        }
    }
}
