//! Grouped linear layer: y[b, g*O + o] = bias[g*O + o] + sum_i w[g*O + o, i] * x[b, g*I + i].
//! Groups = 1 is the standard network's classifier; groups = N gives every expert its own
//! 2-way head over its own features (PyTorch: a 1x1 Conv2d with groups = N, weight [N*O, I]).

use anyhow::{Result, ensure};

use crate::autograd::{Tape, Var};
use crate::device::Device;
use crate::gpu::{self, LaunchConfig, int};
use crate::precision;
use crate::tensor::Tensor;

/// Sizes of one grouped linear layer.
#[derive(Clone, Copy, Debug)]
pub struct LinearShape {
    pub batch: usize,
    pub groups: usize,
    pub in_per_group: usize,
    pub out_per_group: usize,
}

impl LinearShape {
    fn ins(&self) -> usize {
        self.groups * self.in_per_group
    }

    fn outs(&self) -> usize {
        self.groups * self.out_per_group
    }

    fn args(&self) -> [gpu::Arg; 4] {
        [int(self.batch), int(self.groups), int(self.in_per_group), int(self.out_per_group)]
    }
}

/// The kernel of the calling thread's precision (`--precision`; checked by `on`).
fn kernel_name(family: &str) -> String {
    format!("{family}_{}", precision::current().kernel_suffix())
}

/// The device of an op's operand, which must compute in the thread's precision.
fn on(t: &Tensor) -> Result<Device> {
    precision::current().check_device(t.device())?;
    Ok(t.device())
}

pub fn linear_forward(x: &Tensor, w: &Tensor, bias: &Tensor, s: LinearShape) -> Result<Tensor> {
    let (ins, outs, i_n) = (s.ins(), s.outs(), s.in_per_group);
    match on(x)? {
        Device::Cpu => {
            let (xv, wv, bv) = (x.as_slice(), w.as_slice(), bias.as_slice());
            let mut y = vec![0.0f32; s.batch * outs];
            for n in 0..s.batch {
                for row in 0..outs {
                    let g = row / s.out_per_group;
                    let xr = &xv[n * ins + g * i_n..][..i_n];
                    let wr = &wv[row * i_n..(row + 1) * i_n];
                    y[n * outs + row] = bv[row] + xr.iter().zip(wr).map(|(a, c)| a * c).sum::<f32>();
                }
            }
            Ok(Tensor::from_vec(&[s.batch, outs], y))
        }
        d => {
            let y = Tensor::output_on(d, &[s.batch, outs])?;
            let mut args = vec![y.arg(), x.arg(), w.arg(), bias.arg()];
            args.extend(s.args());
            gpu::launch(d, &kernel_name("grouped_linear_fwd"), LaunchConfig::for_elements(y.len()), &args)?;
            Ok(y)
        }
    }
}

pub fn linear_backward_data(dy: &Tensor, w: &Tensor, s: LinearShape) -> Result<Tensor> {
    let (ins, outs, i_n) = (s.ins(), s.outs(), s.in_per_group);
    match on(dy)? {
        Device::Cpu => {
            let (dyv, wv) = (dy.as_slice(), w.as_slice());
            let mut dx = vec![0.0f32; s.batch * ins];
            for n in 0..s.batch {
                for col in 0..ins {
                    let (g, i) = (col / i_n, col % i_n);
                    let mut acc = 0.0f32;
                    for o in 0..s.out_per_group {
                        let row = g * s.out_per_group + o;
                        acc += dyv[n * outs + row] * wv[row * i_n + i];
                    }
                    dx[n * ins + col] = acc;
                }
            }
            Ok(Tensor::from_vec(&[s.batch, ins], dx))
        }
        d => {
            let dx = Tensor::output_on(d, &[s.batch, ins])?;
            let mut args = vec![dx.arg(), dy.arg(), w.arg()];
            args.extend(s.args());
            gpu::launch(
                d,
                &kernel_name("grouped_linear_bwd_data"),
                LaunchConfig::for_elements(dx.len()),
                &args,
            )?;
            Ok(dx)
        }
    }
}

/// (dw, dbias).
pub fn linear_backward_weight(dy: &Tensor, x: &Tensor, s: LinearShape) -> Result<(Tensor, Tensor)> {
    let (ins, outs, i_n) = (s.ins(), s.outs(), s.in_per_group);
    match on(dy)? {
        Device::Cpu => {
            let (dyv, xv) = (dy.as_slice(), x.as_slice());
            let mut dw = vec![0.0f32; outs * i_n];
            let mut db = vec![0.0f32; outs];
            for row in 0..outs {
                let g = row / s.out_per_group;
                for n in 0..s.batch {
                    let d = dyv[n * outs + row];
                    db[row] += d;
                    for (acc, xv) in
                        dw[row * i_n..(row + 1) * i_n].iter_mut().zip(&xv[n * ins + g * i_n..][..i_n])
                    {
                        *acc += d * xv;
                    }
                }
            }
            Ok((Tensor::from_vec(&[outs, i_n], dw), Tensor::from_vec(&[outs], db)))
        }
        d => {
            let (dw, db) = (Tensor::output_on(d, &[outs, i_n])?, Tensor::output_on(d, &[outs])?);
            let mut args = vec![dw.arg(), db.arg(), dy.arg(), x.arg()];
            args.extend(s.args());
            gpu::launch(
                d,
                &kernel_name("grouped_linear_bwd_weight"),
                LaunchConfig::for_elements(dw.len()),
                &args,
            )?;
            Ok((dw, db))
        }
    }
}

impl Tape {
    /// `x`: [B, G*I]; `w`: [G*O, I]; `bias`: [G*O].
    pub fn grouped_linear(&self, x: &Var, w: &Var, bias: &Var, groups: usize) -> Result<Var> {
        let (xs, ws) = (x.shape(), w.shape());
        ensure!(xs.len() == 2 && ws.len() == 2, "grouped linear needs [B, F] input and [O, I] weight");
        let s = LinearShape { batch: xs[0], groups, in_per_group: ws[1], out_per_group: ws[0] / groups };
        ensure!(
            xs[1] == s.ins() && ws[0] == s.outs() && bias.value().len() == ws[0],
            "grouped linear: input {xs:?}, weight {ws:?}, bias {:?}, groups {groups} do not fit",
            bias.shape()
        );
        let y = linear_forward(x.value(), w.value(), bias.value(), s)?;
        if !self.needs_grad(&[x, w, bias]) {
            return Ok(Var::constant(y));
        }
        let (x_saved, w_saved) = (x.value().clone(), w.value().clone());
        Ok(self.record(
            y,
            &[x, w, bias],
            Box::new(move |dy, needs| {
                let dx = if needs[0] { Some(linear_backward_data(dy, &w_saved, s)?) } else { None };
                let (dw, db) = if needs[1] || needs[2] {
                    let (dw, db) = linear_backward_weight(dy, &x_saved, s)?;
                    (needs[1].then_some(dw), needs[2].then_some(db))
                } else {
                    (None, None)
                };
                Ok(vec![dx, dw, db])
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
